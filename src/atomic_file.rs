//! Replacing a file atomically, safely even in a directory shared with other users: the one
//! procedure behind root's `--server-info` file and the worker's saved ChatGPT tokens.
//!
//! It never follows a link and never reuses a file someone else could have planted:
//! - the directory is opened once (its last component not followed) and every later step is
//!   relative to that handle, so it cannot be swapped underneath us;
//! - a directory that another user owns, or that others may write without the sticky bit, is
//!   refused: whoever can write there unchecked could replace the file after we wrote it;
//! - the temporary file gets an unpredictable name and is created with `O_CREAT | O_EXCL |
//!   O_NOFOLLOW`, so a planted link or file at that name makes the create fail (and another
//!   name is tried) instead of being written through;
//! - `renameat` then replaces the final name itself: a link planted there is replaced, never
//!   followed, and a planted file is replaced by ours (owned by the caller, with `mode`).
//!
//! Uses only `nix`/`libc` system calls (all in the worker's seccomp allow-list); nothing else
//! of the crate, so both sides of the privilege boundary may use it.

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fstat, Mode};
use nix::unistd::{fsync, unlinkat, UnlinkatFlags};
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// How many unpredictable temporary names are tried before giving up (each clash means someone
/// planted a file at a 64-bit random name, which only an attacker who reads our memory could do).
const TEMPORARY_NAME_ATTEMPTS: usize = 16;

/// Replaces `path` with a new file holding `contents`, with permissions `mode` (umask aside),
/// owned by the caller, and makes the change durable.
pub(crate) fn replace(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path
        .file_name()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("the path names no file"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let directory = open_directory(parent)?;
    let (temporary, file) = create_temporary(&directory, name, mode)?;
    let written = write_and_sync(file, contents, mode)
        .and_then(|()| renameat(&directory, temporary.as_os_str(), &directory, name).map_err(from));
    if let Err(e) = written {
        let _ = unlinkat(
            &directory,
            temporary.as_os_str(),
            UnlinkatFlags::NoRemoveDir,
        );
        return Err(e);
    }
    // The rename is durable once the directory is.
    fsync(&directory).map_err(from)
}

/// Opens the directory without following its last component, and refuses one where another
/// user could replace or alter what we write.
fn open_directory(parent: &Path) -> std::io::Result<OwnedFd> {
    let directory = nix::fcntl::open(
        parent,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => invalid("its directory is a link or not a directory"),
        other => from(other),
    })?;
    let stat = fstat(directory.as_fd()).map_err(from)?;
    let ours = nix::unistd::geteuid().as_raw();
    if stat.st_uid != 0 && stat.st_uid != ours {
        return Err(invalid(format!(
            "its directory belongs to uid {}, who could replace the file",
            stat.st_uid
        )));
    }
    let others_may_write = stat.st_mode & 0o022 != 0;
    let sticky = stat.st_mode & libc::S_ISVTX != 0;
    if others_may_write && !sticky {
        return Err(invalid(
            "its directory is writable by other users and has no sticky bit",
        ));
    }
    Ok(directory)
}

/// Creates a new temporary file with an unpredictable name beside the final one.
fn create_temporary(
    directory: &OwnedFd,
    name: &std::ffi::OsStr,
    mode: u32,
) -> std::io::Result<(OsString, OwnedFd)> {
    for _ in 0..TEMPORARY_NAME_ATTEMPTS {
        let mut temporary = OsString::from(".");
        temporary.push(name);
        temporary.push(format!(".{:016x}.tmp", random_u64()?));
        if temporary.as_bytes().len() > 255 {
            return Err(invalid("the file name is too long"));
        }
        match openat(
            directory,
            temporary.as_os_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode),
        ) {
            Ok(file) => return Ok((temporary, file)),
            // Someone planted something at that name: never touch it, pick another.
            Err(Errno::EEXIST) | Err(Errno::ELOOP) => continue,
            Err(e) => return Err(from(e)),
        }
    }
    Err(invalid("could not create a temporary file there"))
}

fn write_and_sync(file: OwnedFd, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = std::fs::File::from(file);
    // The umask may have narrowed the mode.
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

fn random_u64() -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the valid buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(bytes))
}

fn invalid(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, message.into())
}

fn from(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_server_info(path: &Path, port: u16, pid: u32) -> std::io::Result<()> {
        replace(
            path,
            format!("{{\"port\":{port},\"pid\":{pid}}}\n").as_bytes(),
            0o644,
        )
    }

    #[test]
    fn a_private_file_keeps_its_mode_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.json");
        let old = unsafe { libc::umask(0o077) };
        replace(&path, b"{}", 0o600).unwrap();
        replace(&path, b"{\"a\":1}", 0o600).unwrap();
        unsafe { libc::umask(old) };
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"a\":1}");
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (it plants files owned by another user)"
        );
    }

    fn shared_tmp() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        dir
    }

    fn victim(dir: &Path) -> std::path::PathBuf {
        let victim = dir.join("victim");
        std::fs::write(&victim, "root only\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        victim
    }

    #[test]
    fn writes_the_line_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("info.json");
        write_server_info(&path, 8719, 42).unwrap();
        write_server_info(&path, 8720, 43).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"port\":8720,\"pid\":43}\n"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("info.json")]);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
    }

    #[test]
    fn a_link_planted_at_the_final_name_is_replaced_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        let victim = victim(outside.path());
        let dir = shared_tmp();
        let path = dir.path().join("info.json");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write_server_info(&path, 1, 2).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root only\n");
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file());
    }

    #[test]
    fn links_planted_at_predictable_temporary_names_are_never_written_through() {
        // The old procedure wrote `.NAME.PID.tmp`; plant links at every such name.
        let outside = tempfile::tempdir().unwrap();
        let victim = victim(outside.path());
        let dir = shared_tmp();
        let path = dir.path().join("info.json");
        for pid in [std::process::id(), 1, 2, 3] {
            let planted = dir.path().join(format!(".info.json.{pid}.tmp"));
            std::os::unix::fs::symlink(&victim, planted).unwrap();
        }
        write_server_info(&path, 1, std::process::id()).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root only\n");
    }

    #[test]
    fn a_file_planted_by_a_user_is_replaced_by_one_they_cannot_write() {
        require_root();
        let dir = shared_tmp();
        let path = dir.path().join("info.json");
        std::fs::write(&path, "planted").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        nix::unistd::chown(&path, Some(65534.into()), Some(65534.into())).unwrap();
        write_server_info(&path, 5, 6).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.uid(), 0);
        assert_eq!(meta.mode() & 0o777, 0o644);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"port\":5,\"pid\":6}\n"
        );
    }

    #[test]
    fn directories_others_control_are_refused() {
        require_root();
        // World-writable without the sticky bit: anyone could rename our file away.
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = write_server_info(&open.path().join("info.json"), 1, 2).unwrap_err();
        assert!(e.to_string().contains("sticky"), "{e}");
        // Owned by another user.
        let theirs = tempfile::tempdir().unwrap();
        nix::unistd::chown(theirs.path(), Some(65534.into()), None).unwrap();
        let e = write_server_info(&theirs.path().join("info.json"), 1, 2).unwrap_err();
        assert!(e.to_string().contains("uid 65534"), "{e}");
        // A link as the directory itself.
        let real = tempfile::tempdir().unwrap();
        let link = real.path().join("link");
        std::os::unix::fs::symlink(real.path(), &link).unwrap();
        let e = write_server_info(&link.join("info.json"), 1, 2).unwrap_err();
        assert!(e.to_string().contains("link"), "{e}");
        for dir in [open.path(), theirs.path()] {
            assert!(!dir.join("info.json").exists());
        }
    }
}
