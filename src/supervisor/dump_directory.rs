//! The directory of `--dump-dir`, made safe by root before the fork: exchange dumps hold users'
//! prompts, so only the worker (which writes them) and root may read them, and no user may
//! choose where they go.
//!
//! - The path must be absolute. Every directory on the way is opened relative to the one
//!   before it without following links, and must belong to root (or to whoever runs the
//!   proxy when that is not root); one that others may write needs the sticky bit, and the
//!   dump directory's own parent may be written by its owner only, so nobody else can plant,
//!   rename or replace the dump directory.
//! - The dump directory itself is created (mode 0700) when missing. One that is a symbolic
//!   link or not a directory, that belongs to someone other than root or the worker user, or
//!   that others could write, is refused: someone could have planted it, or files in it.
//! - It is then given to the worker user, mode 0700, and handed over as an open descriptor,
//!   so the worker never resolves the path again.
//!
//! Uses: `crate::sandbox::privilege_drop` (the worker user) and nix.

use crate::sandbox::privilege_drop::WorkerUser;
use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, FileStat, Mode};
use nix::unistd::{fchown, getegid, geteuid, Gid, Uid};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

const DIRECTORY: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Creates or checks `path` and returns it open, owned by the worker user (or by us when
/// there is no privilege drop), mode 0700. The error says what is wrong and how to fix it.
pub(crate) fn prepare(path: &Path, worker: Option<&WorkerUser>) -> Result<OwnedFd, String> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("--dump-dir {shown}: must be an absolute path"));
    }
    let mut names = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => {}
            Component::Normal(name) => names.push(name),
            _ => return Err(format!("--dump-dir {shown}: must not contain `..`")),
        }
    }
    let Some(name) = names.pop() else {
        return Err(format!("--dump-dir {shown}: names no directory"));
    };
    let me = geteuid().as_raw();
    let mut parent = open("/", DIRECTORY, Mode::empty())
        .map_err(|e| format!("--dump-dir {shown}: cannot open /: {e}"))?;
    let mut walked = PathBuf::from("/");
    check_ancestor(
        &fstat(&parent).map_err(|e| e.to_string())?,
        &walked,
        me,
        names.is_empty(),
    )
    .map_err(|why| format!("--dump-dir {shown}: {why}"))?;
    for (index, component) in names.iter().enumerate() {
        walked.push(component);
        parent = openat(&parent, *component, DIRECTORY, Mode::empty())
            .map_err(|e| format!("--dump-dir {shown}: {}", open_failure(&walked, e)))?;
        let stat = fstat(&parent).map_err(|e| e.to_string())?;
        check_ancestor(&stat, &walked, me, index + 1 == names.len())
            .map_err(|why| format!("--dump-dir {shown}: {why}"))?;
    }
    let fresh = match mkdirat(&parent, name, Mode::from_bits_truncate(0o700)) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(format!("--dump-dir {shown}: cannot create it: {e}")),
    };
    let directory = openat(&parent, name, DIRECTORY, Mode::empty())
        .map_err(|e| format!("--dump-dir {shown}: {}", open_failure(path, e)))?;
    let stat = fstat(&directory).map_err(|e| format!("--dump-dir {shown}: {e}"))?;
    let (uid, gid) = match worker {
        Some(user) => (user.uid, user.gid),
        None => (Uid::from_raw(me), getegid()),
    };
    if stat.st_uid != uid.as_raw() && stat.st_uid != 0 && stat.st_uid != me {
        return Err(format!(
            "--dump-dir {shown}: it belongs to uid {}, neither root nor the worker user; someone may have planted it: remove it (the proxy creates it)",
            stat.st_uid
        ));
    }
    if !fresh && stat.st_mode & 0o022 != 0 {
        return Err(format!(
            "--dump-dir {shown}: other users may write in it (mode {:o}), so files in it may have been planted: remove it (the proxy creates it)",
            stat.st_mode & 0o7777
        ));
    }
    if stat.st_uid != uid.as_raw() || stat.st_gid != gid.as_raw() {
        fchown(&directory, Some(uid), Some(Gid::from_raw(gid.as_raw()))).map_err(|e| {
            format!(
                "--dump-dir {shown}: cannot give it to uid {}: {e} (without CAP_CHOWN, as under the packaged unit, create it beforehand: install -d -o USER -g GROUP -m 0700 {shown})",
                uid.as_raw()
            )
        })?;
    }
    if stat.st_mode & 0o7777 != 0o700 {
        fchmod(&directory, Mode::from_bits_truncate(0o700))
            .map_err(|e| format!("--dump-dir {shown}: cannot make it mode 0700: {e}"))?;
    }
    Ok(directory)
}

/// A directory on the way to the dump directory: root's (or ours), and written by no one
/// else — except, above the parent, with the sticky bit (as `/tmp`).
fn check_ancestor(stat: &FileStat, shown: &Path, me: u32, is_parent: bool) -> Result<(), String> {
    let shown = shown.display();
    if stat.st_uid != 0 && stat.st_uid != me {
        return Err(format!(
            "{shown} belongs to uid {}, who could replace the dump directory; choose a place in directories of root's",
            stat.st_uid
        ));
    }
    let others_may_write = stat.st_mode & 0o022 != 0;
    if is_parent && others_may_write {
        return Err(format!(
            "its parent {shown} may be written by other users (mode {:o}), who could plant the dump directory; choose a parent only root may write",
            stat.st_mode & 0o7777
        ));
    }
    if others_may_write && stat.st_mode & libc::S_ISVTX == 0 {
        return Err(format!(
            "{shown} may be written by other users and has no sticky bit (mode {:o})",
            stat.st_mode & 0o7777
        ));
    }
    Ok(())
}

fn open_failure(path: &Path, error: Errno) -> String {
    let shown = path.display();
    match error {
        Errno::ELOOP => format!("{shown} is a symbolic link; refusing to follow it"),
        Errno::ENOTDIR => format!("{shown} is not a directory (or is a symbolic link)"),
        Errno::ENOENT => format!("{shown} does not exist"),
        other => format!("cannot open {shown}: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn creates_a_private_directory_and_accepts_it_again() {
        let dir = private_dir();
        let path = dir.path().join("dumps");
        prepare(&path, None).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
        assert_eq!(meta.uid(), geteuid().as_raw());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&path, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o700);
    }

    #[test]
    fn links_relative_paths_and_open_parents_are_refused() {
        let dir = private_dir();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let e = prepare(&link, None).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let e = prepare(&link.join("dumps"), None).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
        let e = prepare(Path::new("dumps"), None).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = prepare(&open.join("dumps"), None).unwrap_err();
        assert!(e.contains("may be written by other users"), "{e}");
        assert!(!open.join("dumps").exists());
        let writable = dir.path().join("writable");
        std::fs::create_dir(&writable).unwrap();
        std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&writable.join("dumps"), None).unwrap_err();
        assert!(e.contains("may be written"), "{e}");
    }

    #[test]
    fn a_directory_others_could_write_is_refused() {
        let dir = private_dir();
        let path = dir.path().join("dumps");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&path, None).unwrap_err();
        assert!(e.contains("planted"), "{e}");
    }
}
