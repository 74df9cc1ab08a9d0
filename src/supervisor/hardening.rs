//! Process hardening that runs first, before the key is read: no core dumps, no ptrace by
//! other users (non-dumpable), and no dynamic-loader variables left in the environment.
//!
//! Uses: nothing else of the crate and libc.

use std::ffi::CStr;
use std::io;

extern "C" {
    static mut environ: *mut *mut libc::c_char;
}

/// Makes the process non-dumpable (also blocks ptrace and /proc/PID/environ for other users)
/// and sets the core size limit to 0/0.
pub(crate) fn forbid_dumps() -> io::Result<()> {
    // SAFETY: plain prctl/setrlimit calls with valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard one: every open stream holds two descriptors
/// (client and upstream), and the usual soft limit of 1024 would cap the service near 500.
pub(crate) fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Removes every `LD_*` variable, and also blanks its original bytes, which the kernel keeps
/// showing in /proc/PID/environ after a plain unsetenv. Must run while single-threaded.
pub(crate) fn remove_loader_variables() {
    let mut originals: Vec<*mut libc::c_char> = Vec::new();
    // SAFETY: single-threaded at this point; environ is a NULL-terminated array of C strings.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            if CStr::from_ptr(*entry).to_bytes().starts_with(b"LD_") {
                originals.push(*entry);
            }
            entry = entry.add(1);
        }
    }
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("LD_"))
        .collect();
    for name in names {
        std::env::remove_var(name);
    }
    for original in originals {
        // SAFETY: unsetenv only dropped the pointer from environ; the string itself (in the
        // initial environment block, or leaked by setenv) is still ours and no longer used.
        unsafe {
            let len = libc::strlen(original);
            std::ptr::write_bytes(original, 0, len);
        }
    }
}
