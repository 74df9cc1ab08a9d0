//! The worker's first act after fork, still as root: become the worker user with no
//! capabilities and no way to regain privileges. Nothing here parses client input.

use caps::CapSet;
use nix::unistd::{Gid, Uid, User};
use std::io;

/// The unprivileged account the worker runs as.
#[derive(Debug, Clone)]
pub struct WorkerUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Chooses the worker's user when running as root; `None` when not root (nothing to drop).
pub fn resolve(requested: Option<&str>) -> Result<Option<WorkerUser>, String> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    let name = match requested {
        Some(name) => name.to_owned(),
        None => match User::from_name(crate::cli::PACKAGE_USER) {
            Ok(Some(_)) => crate::cli::PACKAGE_USER.to_owned(),
            _ => "nobody".to_owned(),
        },
    };
    let user = User::from_name(&name)
        .map_err(|e| format!("cannot look up the worker user {name:?}: {e}"))?
        .ok_or_else(|| {
            format!("the worker user {name:?} does not exist; create it or pass --user")
        })?;
    if user.uid.is_root() {
        return Err(format!(
            "refusing to run the worker as {name:?}: it has uid 0; choose an unprivileged user"
        ));
    }
    Ok(Some(WorkerUser {
        name,
        uid: user.uid,
        gid: user.gid,
    }))
}

/// Drops to `user` (when given), clears every capability set, and sets no_new_privs.
/// The process stays non-dumpable.
pub fn drop_privileges(user: Option<&WorkerUser>) -> io::Result<()> {
    let to_io = |e: caps::errors::CapsError| io::Error::other(e.to_string());
    if let Some(user) = user {
        // The bounding set can only be cleared while we still hold CAP_SETPCAP.
        caps::clear(None, CapSet::Bounding).map_err(to_io)?;
        nix::unistd::setgroups(&[user.gid])?;
        nix::unistd::setresgid(user.gid, user.gid, user.gid)?;
        nix::unistd::setresuid(user.uid, user.uid, user.uid)?;
    }
    caps::clear(None, CapSet::Ambient).map_err(to_io)?;
    caps::clear(None, CapSet::Inheritable).map_err(to_io)?;
    caps::clear(None, CapSet::Effective).map_err(to_io)?;
    caps::clear(None, CapSet::Permitted).map_err(to_io)?;
    // SAFETY: plain prctl calls with valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // A uid change resets dumpability to the system default; set it again.
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        // If the supervisor dies, the worker must not live on holding the key.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
