//! The metrics socket (`--metrics-socket PATH`, `--metrics-group GROUP`): a unix socket that
//! root binds before the fork and hands to the worker, which serves `GET /metrics` on it.
//! Who may read the metrics is decided by the file system alone: the socket is root's, in the
//! metrics group, mode 0660, so any other user's `connect(2)` fails with EACCES.
//!
//! That holds only if no one else can replace the socket or the directories on its way: every
//! directory from `/` down to the socket's must be root's and writable by no one else (an
//! ancestor such as `/tmp` may instead have the sticky bit; the socket's own directory may
//! not), and a symbolic link on the way must be root's too (the socket's directory itself may
//! not be a link). Anything else is refused with a message that says what to fix. The socket
//! is bound at the resolved path, so nothing can redirect it between the check and the bind.
//!
//! Uses: nothing else of the crate; nix and std.

use nix::unistd::{Gid, Group};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Component, Path, PathBuf};

/// The mode of the socket: read and write (connect) for root and the metrics group.
const SOCKET_MODE: u32 = 0o660;

/// A bound metrics socket and where it is (to remove it when the service ends).
pub(crate) struct MetricsSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
}

/// Binds the metrics socket at `path`, owned by root and `group` (a name or a gid), mode
/// 0660, after checking that only root controls the way to it. Must run as root, while the
/// process is single-threaded (it changes the umask and the effective group for the bind).
pub(crate) fn bind(path: &Path, group: &str) -> Result<MetricsSocket, String> {
    let fail = |why: String| format!("--metrics-socket {}: {why}", path.display());
    let gid = resolve_group(group).map_err(|why| format!("--metrics-group {group:?}: {why}"))?;
    let name = match path.components().next_back() {
        Some(Component::Normal(name)) => name.to_owned(),
        _ => return Err(fail("the path names no socket file".into())),
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let directory = root_controlled_directory(parent).map_err(fail)?;
    let socket_path = directory.join(&name);
    // A socket left by an earlier run is replaced; nothing else is touched.
    if let Ok(meta) = std::fs::symlink_metadata(&socket_path) {
        if !meta.file_type().is_socket() {
            return Err(fail(format!(
                "{} exists and is not a socket; remove it or choose another path",
                socket_path.display()
            )));
        }
        std::fs::remove_file(&socket_path)
            .map_err(|e| fail(format!("cannot remove the old socket: {e}")))?;
    }
    let listener = bind_as_group(&socket_path, gid).map_err(fail)?;
    let socket = MetricsSocket {
        listener,
        path: socket_path,
    };
    settle_owner_and_mode(&socket.path, gid).map_err(|why| {
        remove(&socket.path);
        fail(why)
    })?;
    Ok(socket)
}

/// Removes the socket file when the service ends (only if it is still a socket).
pub(crate) fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

fn resolve_group(group: &str) -> Result<Gid, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(Gid::from_raw(gid));
    }
    match Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid),
        Ok(None) => Err("no such group".into()),
        Err(e) => Err(format!("cannot look the group up: {e}")),
    }
}

/// Binds with the socket created as `0660` and in group `gid` from the start (the umask and
/// the effective group decide both), so there is no moment when another user could connect.
fn bind_as_group(socket_path: &Path, gid: Gid) -> Result<UnixListener, String> {
    use nix::sys::stat::{umask, Mode};
    let own_gid = nix::unistd::getegid();
    let old_umask = umask(Mode::from_bits_truncate(0o777 & !SOCKET_MODE));
    let switched = if gid != own_gid {
        nix::unistd::setegid(gid)
            .map_err(|e| format!("cannot bind as group {gid} (the proxy must start as root): {e}"))
    } else {
        Ok(())
    };
    let bound = switched.and_then(|()| {
        UnixListener::bind(socket_path).map_err(|e| format!("cannot listen there: {e}"))
    });
    let restored = if gid != own_gid {
        nix::unistd::setegid(own_gid)
    } else {
        Ok(())
    };
    umask(old_umask);
    if let Err(e) = restored {
        return Err(format!("cannot return to group {own_gid}: {e}"));
    }
    bound
}

/// Checks (and where the directory's set-group-id bit or the kernel decided otherwise,
/// corrects) the socket's owner, group and mode.
fn settle_owner_and_mode(socket_path: &Path, gid: Gid) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(socket_path)
        .map_err(|e| format!("cannot inspect the new socket: {e}"))?;
    if meta.gid() != gid.as_raw() {
        nix::unistd::chown(socket_path, None, Some(gid))
            .map_err(|e| format!("cannot give the socket to group {gid}: {e}"))?;
    }
    if meta.mode() & 0o7777 != SOCKET_MODE {
        std::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(SOCKET_MODE))
            .map_err(|e| format!("cannot make the socket mode 0660: {e}"))?;
    }
    let meta = std::fs::symlink_metadata(socket_path)
        .map_err(|e| format!("cannot inspect the new socket: {e}"))?;
    if meta.uid() != 0 || meta.gid() != gid.as_raw() || meta.mode() & 0o7777 != SOCKET_MODE {
        return Err(format!(
            "the socket came out owned by {}:{} mode {:o}, not root:{gid} mode 0660",
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The socket's directory, resolved, once every step of the way to it is shown to be under
/// root's control alone; else why not.
fn root_controlled_directory(dir: &Path) -> Result<PathBuf, String> {
    let given =
        std::path::absolute(dir).map_err(|e| format!("cannot resolve {}: {e}", dir.display()))?;
    // The path as written: each step root's (a link included: its owner could re-point it),
    // each directory writable by no one else; the last step is the directory itself.
    let steps: Vec<Component<'_>> = given.components().collect();
    let mut prefix = PathBuf::new();
    for (index, step) in steps.iter().enumerate() {
        prefix.push(step);
        let last = index + 1 == steps.len();
        let meta = std::fs::symlink_metadata(&prefix)
            .map_err(|e| format!("cannot inspect {}: {e}", prefix.display()))?;
        if meta.file_type().is_symlink() {
            if last {
                return Err(format!(
                    "its directory {} is a symbolic link; give the directory itself, one only root may write (such as /run/codex-responses-api-proxy)",
                    prefix.display()
                ));
            }
            if meta.uid() != 0 {
                return Err(format!(
                    "{} is a symbolic link owned by uid {}, who could re-point it; give a path only root controls",
                    prefix.display(),
                    meta.uid()
                ));
            }
            continue;
        }
        only_root_may_change(&prefix, &meta, last)?;
    }
    // The path as it resolves (the targets of the links above), where the socket is bound.
    let real = std::fs::canonicalize(&given)
        .map_err(|e| format!("cannot resolve {}: {e}", given.display()))?;
    let mut prefix = PathBuf::new();
    let steps: Vec<Component<'_>> = real.components().collect();
    for (index, step) in steps.iter().enumerate() {
        prefix.push(step);
        let meta = std::fs::metadata(&prefix)
            .map_err(|e| format!("cannot inspect {}: {e}", prefix.display()))?;
        only_root_may_change(&prefix, &meta, index + 1 == steps.len())?;
    }
    Ok(real)
}

/// A directory root owns and no one else may write (an ancestor may instead be sticky, like
/// `/tmp`: others then cannot rename or remove root's entries in it).
fn only_root_may_change(
    path: &Path,
    meta: &std::fs::Metadata,
    is_socket_directory: bool,
) -> Result<(), String> {
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", path.display()));
    }
    if meta.uid() != 0 {
        return Err(format!(
            "{} belongs to uid {}, who could replace the socket; give a directory only root may write (such as /run/codex-responses-api-proxy)",
            path.display(),
            meta.uid()
        ));
    }
    let others_may_write = meta.mode() & 0o022 != 0;
    let sticky = meta.mode() & 0o1000 != 0;
    if others_may_write && (is_socket_directory || !sticky) {
        return Err(format!(
            "{} is writable by users other than root (mode {:o}), who could replace the socket; give a directory only root may write (such as /run/codex-responses-api-proxy)",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (the socket is root's)"
        );
    }

    #[test]
    fn binds_root_and_group_0660_and_replaces_a_stale_socket() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.sock");
        let first = bind(&path, "0").unwrap();
        drop(first.listener);
        let socket = bind(&path, "root").unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (0, 0, 0o660)
        );
        assert_eq!(socket.path, std::fs::canonicalize(&path).unwrap());
        remove(&socket.path);
        assert!(!path.exists());
    }

    #[test]
    fn a_plain_file_at_the_path_is_left_alone() {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.sock");
        std::fs::write(&path, "data").unwrap();
        let e = bind(&path, "root").err().unwrap();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "data");
    }

    #[test]
    fn directories_others_control_are_refused() {
        require_root();
        let outer = tempfile::tempdir().unwrap();
        // Writable by everyone, even with the sticky bit.
        for mode in [0o777, 0o1777, 0o775] {
            let open = outer.path().join(format!("open{mode:o}"));
            std::fs::create_dir(&open).unwrap();
            std::fs::set_permissions(&open, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = bind(&open.join("m.sock"), "root").err().unwrap();
            assert!(e.contains("writable by users other than root"), "{e}");
        }
        // Owned by another user.
        let theirs = outer.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(65534.into()), None).unwrap();
        let e = bind(&theirs.join("m.sock"), "root").err().unwrap();
        assert!(e.contains("uid 65534"), "{e}");
        // A root directory below one another user owns.
        let below = theirs.join("below");
        std::fs::create_dir(&below).unwrap();
        let e = bind(&below.join("m.sock"), "root").err().unwrap();
        assert!(e.contains("uid 65534"), "{e}");
        // The directory given as a link, even to a good directory.
        let good = outer.path().join("good");
        std::fs::create_dir(&good).unwrap();
        let link = outer.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let e = bind(&link.join("m.sock"), "root").err().unwrap();
        assert!(e.contains("symbolic link"), "{e}");
        // A link on the way that another user owns.
        let theirs_link = outer.path().join("theirs_link");
        std::os::unix::fs::symlink(outer.path(), &theirs_link).unwrap();
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &theirs_link,
            Some(65534.into()),
            None,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap();
        let e = bind(&theirs_link.join("good").join("m.sock"), "root")
            .err()
            .unwrap();
        assert!(e.contains("owned by uid 65534"), "{e}");
        assert!(!good.join("m.sock").exists());
        // A root link on the way (like /var/run → /run) is followed.
        let root_link = outer.path().join("root_link");
        std::os::unix::fs::symlink(outer.path(), &root_link).unwrap();
        let socket = bind(&root_link.join("good").join("m.sock"), "root").unwrap();
        assert_eq!(
            socket.path,
            std::fs::canonicalize(good.join("m.sock")).unwrap()
        );
    }

    #[test]
    fn an_unknown_group_is_a_clear_error() {
        let e = bind(Path::new("/run/x.sock"), "no-such-group-here")
            .err()
            .unwrap();
        assert!(
            e.contains("--metrics-group") && e.contains("no such group"),
            "{e}"
        );
    }
}
