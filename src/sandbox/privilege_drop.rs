//! The worker's first act after fork, still as root: become the worker user with no
//! capabilities and no way to regain privileges. Nothing here parses client input.
//!
//! Choosing that user is part of the security model: every process that runs as the same
//! uid may signal the worker (stop or kill it, cutting off every local user) even though it
//! cannot read its memory. So the worker user must be an account of its own: uid 0 is
//! refused, and a user that looks shared or human — `nobody`, a uid in the range of people's
//! accounts (`UID_MIN` in /etc/login.defs), a login shell, a home directory it owns, other
//! processes already running as it — is named in a warning at start ([`sharing_risks`]).
//!
//! Uses: `crate::cli` and caps, libc, nix, tracing.

use caps::CapSet;
use nix::unistd::{Gid, Uid, User};
use std::io;

/// The unprivileged account the worker runs as.
#[derive(Debug, Clone)]
pub(crate) struct WorkerUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Chooses the worker's user when running as root; `None` when not root (nothing to drop).
pub(crate) fn resolve(requested: Option<&str>) -> Result<Option<WorkerUser>, String> {
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
    let risks = sharing_risks(&user);
    if !risks.is_empty() {
        tracing::warn!(
            worker_user = %name,
            "the worker user {name} (uid {uid}) {}; whoever runs as uid {uid} can stop or kill the worker and so cut off every user of the proxy. Run the worker as an account of its own: the package's {package} user, or one made with `useradd --system --no-create-home --shell /usr/sbin/nologin`, passed with --user",
            risks.join(", "),
            uid = user.uid,
            package = crate::cli::PACKAGE_USER,
        );
    }
    Ok(Some(WorkerUser {
        name,
        uid: user.uid,
        gid: user.gid,
    }))
}

/// The uid where people's accounts start (`UID_MIN` in /etc/login.defs, else 1000).
fn first_human_uid() -> u32 {
    std::fs::read_to_string("/etc/login.defs")
        .ok()
        .and_then(|defs| {
            defs.lines().find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some("UID_MIN"))
                    .then(|| words.next()?.parse().ok())
                    .flatten()
            })
        })
        .unwrap_or(1000)
}

/// Shells that let nobody log in.
fn is_no_login_shell(shell: &std::path::Path) -> bool {
    let shell = shell.to_string_lossy();
    shell.is_empty() || shell.ends_with("/nologin") || shell.ends_with("/false")
}

/// How many other processes run as `uid` (real or effective), and one of them for the
/// message. Read from /proc; a process that vanishes meanwhile is skipped.
fn processes_running_as(uid: Uid) -> (usize, Option<String>) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (0, None);
    };
    let mut count = 0;
    let mut example = None;
    for entry in entries.flatten() {
        let pid = entry.file_name();
        let Some(pid) = pid
            .to_str()
            .filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        // A zombie signals nobody.
        let zombie = status
            .lines()
            .find_map(|l| l.strip_prefix("State:"))
            .is_some_and(|state| state.trim_start().starts_with('Z'));
        let runs_as = !zombie
            && status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .is_some_and(|ids| {
                    ids.split_whitespace()
                        .take(2)
                        .any(|id| id.parse() == Ok(uid.as_raw()))
                });
        if runs_as {
            count += 1;
            if example.is_none() {
                let name = status
                    .lines()
                    .find_map(|l| l.strip_prefix("Name:"))
                    .map_or("", str::trim);
                example = Some(format!("pid {pid} {name}"));
            }
        }
    }
    (count, example)
}

/// Why `user` looks shared with someone or something else, each reason a phrase for the
/// start-up warning; empty for a dedicated system account.
pub(crate) fn sharing_risks(user: &User) -> Vec<String> {
    let mut risks = Vec::new();
    let uid = user.uid.as_raw();
    if user.name == "nobody" || uid == 65534 {
        risks.push(
            "is nobody, which other services (and NFS, for unmapped users) run as".to_owned(),
        );
    } else if uid >= first_human_uid() {
        risks.push(format!(
            "has a uid in the range of people's accounts (UID_MIN {})",
            first_human_uid()
        ));
    }
    if !is_no_login_shell(&user.shell) {
        risks.push(format!("has the login shell {}", user.shell.display()));
    }
    let home = &user.dir;
    if home != std::path::Path::new("/") {
        if let Ok(meta) = std::fs::metadata(home) {
            if std::os::unix::fs::MetadataExt::uid(&meta) == uid {
                risks.push(format!("owns the home directory {}", home.display()));
            }
        }
    }
    let (running, example) = processes_running_as(user.uid);
    if running > 0 {
        risks.push(format!(
            "already runs {running} other process(es) ({})",
            example.unwrap_or_default()
        ));
    }
    risks
}

/// Drops to `user` (when given), clears every capability set, and sets no_new_privs.
/// The process stays non-dumpable.
pub(crate) fn drop_privileges(user: Option<&WorkerUser>) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_and_human_looking_users_are_named() {
        let nobody = User::from_name("nobody").unwrap().expect("user nobody");
        let risks = sharing_risks(&nobody);
        assert!(risks.iter().any(|r| r.contains("is nobody")), "{risks:?}");
        let me = User::from_uid(Uid::effective()).unwrap().unwrap();
        // This test process runs as that user, so at least that is found.
        let risks = sharing_risks(&me);
        assert!(
            risks.iter().any(|r| r.contains("already runs")),
            "{risks:?}"
        );
        assert!(is_no_login_shell(std::path::Path::new("/usr/sbin/nologin")));
        assert!(is_no_login_shell(std::path::Path::new("/bin/false")));
        assert!(!is_no_login_shell(std::path::Path::new("/bin/bash")));
        assert!(first_human_uid() > 0);
    }
}
