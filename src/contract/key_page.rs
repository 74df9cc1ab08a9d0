//! The upstream key as it crosses the fork: the finished `Authorization` header value
//! (`Bearer <key>`) in its own page (pages, for a long GitHub OIDC request token), locked in
//! RAM, excluded from core dumps and read-only once written. Key intake (`supervisor::key`)
//! fills it as root; the worker re-locks it after fork (locks are not inherited) and reads it. Its `Debug` never shows the key. When the key is
//! rotated, the supervisor wipes and unmaps a page once no worker of its own uses it
//! ([`ApiKeyHeader::discard`]), and a newly forked worker discards the pages it does not use.
//!
//! Also [`LockedBytes`]: the same kind of page for secrets the worker obtains at run time (the
//! short-lived workload-identity access token), wiped and unmapped when dropped.
//!
//! Uses: nothing else of the crate and libc.

use std::fmt;
use std::io;

/// What key intake produced.
#[derive(Debug, Clone, Copy)]
pub enum KeySource {
    /// A key, from stdin or a credential.
    Key(ApiKeyHeader),
    /// The credential says `unset`: no key installed yet.
    NotConfigured,
}

/// The `Bearer <key>` header value in its own page: locked in RAM, excluded from core dumps and
/// read-only after it is written. It lives as long as the process, so its bytes are `'static`.
#[derive(Clone, Copy)]
pub struct ApiKeyHeader {
    bytes: &'static [u8],
}

impl fmt::Debug for ApiKeyHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeyHeader([REDACTED])")
    }
}

impl ApiKeyHeader {
    /// Copies `header` (`Bearer <key>`) into fresh locked pages (one for any API key; a GitHub
    /// OIDC request token may need a few).
    pub(crate) fn store(header: &[u8]) -> io::Result<ApiKeyHeader> {
        let bytes = LockedBytes::copy_of(header)?.into_read_only_forever();
        Ok(ApiKeyHeader { bytes })
    }

    /// Locks the pages again. Memory locks are not inherited across fork, so the worker calls
    /// this.
    pub(crate) fn lock_in_memory(&self) -> io::Result<()> {
        let start = self.bytes.as_ptr();
        // SAFETY: locking an existing mapping of ours (it starts where the header starts) does
        // not touch its contents.
        if unsafe { libc::mlock(start.cast::<libc::c_void>(), mapped_len(self.bytes.len())) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether two pages hold the same header (the supervisor skips a rotation to the key it
    /// already serves). Every byte is compared, whatever differs first.
    pub(crate) fn same_as(&self, other: &ApiKeyHeader) -> bool {
        self.bytes.len() == other.bytes.len()
            && self
                .bytes
                .iter()
                .zip(other.bytes)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Wipes the page and unmaps it.
    ///
    /// # Safety
    /// Nothing may read this header (or a copy of it: the type is `Copy`) afterwards: the
    /// caller owns the last use, as the supervisor does for a retired worker's key and a new
    /// worker does for the keys it inherited but does not serve.
    pub(crate) unsafe fn discard(self) {
        let start = self.bytes.as_ptr().cast_mut().cast::<libc::c_void>();
        let mapped = mapped_len(self.bytes.len());
        // SAFETY: the pages are ours (mapped by `store`, starting where the header starts), and
        // the caller guarantees no reader.
        unsafe {
            if libc::mprotect(start, mapped, libc::PROT_READ | libc::PROT_WRITE) == 0 {
                let bytes = std::slice::from_raw_parts_mut(start.cast::<u8>(), mapped);
                zeroize::Zeroize::zeroize(bytes);
            }
            libc::munmap(start, mapped);
        }
    }

    /// The whole `Authorization` value, `Bearer <key>`. It points at the locked page; whoever
    /// puts it in a header marks that header sensitive and makes no copy that outlives it.
    pub fn bytes(&self) -> &'static [u8] {
        self.bytes
    }
}

/// A secret the worker obtained at run time, in pages of its own: locked in RAM, excluded from
/// core dumps, zeroed and unmapped on drop. It can back a `bytes::Bytes` (it is `AsRef<[u8]>`
/// and `Send`), so a header value can point at it without another copy.
pub(crate) struct LockedBytes {
    ptr: *mut u8,
    mapped: usize,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone and is only read after construction.
unsafe impl Send for LockedBytes {}
// SAFETY: shared access only reads.
unsafe impl Sync for LockedBytes {}

impl LockedBytes {
    /// Copies `secret` into fresh locked pages.
    pub(crate) fn copy_of(secret: &[u8]) -> io::Result<LockedBytes> {
        let mapped = mapped_len(secret.len());
        // SAFETY: an anonymous private mapping; we check the result.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ptr points at `mapped` writable bytes that nothing else references.
        unsafe {
            libc::madvise(ptr, mapped, libc::MADV_DONTDUMP);
            if libc::mlock(ptr, mapped) != 0 {
                let error = io::Error::last_os_error();
                libc::munmap(ptr, mapped);
                return Err(error);
            }
            std::ptr::copy_nonoverlapping(secret.as_ptr(), ptr.cast::<u8>(), secret.len());
        }
        Ok(LockedBytes {
            ptr: ptr.cast::<u8>(),
            mapped,
            len: secret.len(),
        })
    }

    /// Makes the pages read-only and keeps them for the life of the process (never wiped on
    /// drop; [`ApiKeyHeader::discard`] wipes a one-page key explicitly).
    fn into_read_only_forever(self) -> &'static [u8] {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: the mapping is ours and, not dropped, is never unmapped or written again, so
        // the slice is valid forever.
        unsafe {
            libc::mprotect(
                this.ptr.cast::<libc::c_void>(),
                this.mapped,
                libc::PROT_READ,
            );
            std::slice::from_raw_parts(this.ptr, this.len)
        }
    }
}

impl AsRef<[u8]> for LockedBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the mapping lives as long as self and holds `len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for LockedBytes {
    fn drop(&mut self) {
        // SAFETY: we own the mapping; volatile writes keep the wipe from being optimised away.
        unsafe {
            for i in 0..self.mapped {
                std::ptr::write_volatile(self.ptr.add(i), 0);
            }
            libc::munmap(self.ptr.cast::<libc::c_void>(), self.mapped);
        }
    }
}

impl fmt::Debug for LockedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockedBytes([REDACTED])")
    }
}

/// The bytes of whole pages `len` bytes occupy (at least one page).
fn mapped_len(len: usize) -> usize {
    let page = page_size();
    len.max(1).div_ceil(page) * page
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}
