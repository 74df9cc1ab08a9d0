//! The listening sockets: taken from systemd socket activation when `LISTEN_FDS`/`LISTEN_PID`
//! say so (the PID is checked and `LISTEN_FDNAMES` honoured), else a TCP socket bound on
//! 127.0.0.1. Opened by the supervisor and inherited by the worker across fork.
//!
//! Uses: `crate::contract` and listenfd.

use std::fmt;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;

pub(crate) const SD_LISTEN_FDS_START: i32 = 3;

pub(crate) use crate::contract::Listener;

#[derive(Debug)]
pub(crate) enum ListenerError {
    BadEnvironment(String),
    NotAListeningSocket { fd: i32, name: String },
    Bind { port: u16, error: std::io::Error },
}

impl fmt::Display for ListenerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenerError::BadEnvironment(why) => write!(f, "socket activation: {why}"),
            ListenerError::NotAListeningSocket { fd, name } => write!(
                f,
                "socket activation: fd {fd} ({name}) is not a listening TCP or unix stream socket"
            ),
            ListenerError::Bind { port, error } => {
                write!(f, "cannot listen on 127.0.0.1:{port}: {error}")
            }
        }
    }
}

impl std::error::Error for ListenerError {}

/// What the environment says about socket activation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Activation {
    pub count: usize,
    pub names: Vec<String>,
}

/// Reads the activation variables. `None` when this process was not socket-activated.
pub(crate) fn parse_activation(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    own_pid: u32,
) -> Result<Option<Activation>, ListenerError> {
    let Some(fds) = listen_fds else {
        return Ok(None);
    };
    let pid = listen_pid.ok_or_else(|| {
        ListenerError::BadEnvironment("LISTEN_FDS is set but LISTEN_PID is not".into())
    })?;
    let pid: u32 = pid
        .parse()
        .map_err(|_| ListenerError::BadEnvironment(format!("LISTEN_PID={pid:?} is not a pid")))?;
    if pid != own_pid {
        // The variables were meant for another process (e.g. inherited from a parent).
        return Ok(None);
    }
    let count: usize = fds
        .parse()
        .map_err(|_| ListenerError::BadEnvironment(format!("LISTEN_FDS={fds:?} is not a count")))?;
    if count == 0 {
        return Ok(None);
    }
    let names = match listen_fdnames {
        Some(list) => {
            let names: Vec<String> = list.split(':').map(str::to_owned).collect();
            if names.len() != count {
                return Err(ListenerError::BadEnvironment(format!(
                    "LISTEN_FDNAMES has {} names for {count} descriptors",
                    names.len()
                )));
            }
            names
        }
        None => vec!["unknown".to_owned(); count],
    };
    Ok(Some(Activation { count, names }))
}

/// Takes the activated sockets, or binds 127.0.0.1:`port` (0 = ephemeral).
pub(crate) fn open(port: Option<u16>) -> Result<Vec<Listener>, ListenerError> {
    let var = |name: &str| std::env::var(name).ok();
    let activation = parse_activation(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )?;
    let Some(activation) = activation else {
        let port = port.unwrap_or(0);
        let socket = TcpListener::bind(("127.0.0.1", port))
            .map_err(|error| ListenerError::Bind { port, error })?;
        return Ok(vec![Listener::Tcp {
            socket,
            name: "bound".into(),
        }]);
    };
    let mut fds = listenfd::ListenFd::from_env();
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    let mut listeners = Vec::with_capacity(activation.count);
    for (index, name) in activation.names.into_iter().enumerate() {
        let fd = SD_LISTEN_FDS_START + index as i32;
        let not_listening = || ListenerError::NotAListeningSocket {
            fd,
            name: name.clone(),
        };
        if let Ok(Some(socket)) = fds.take_tcp_listener(index) {
            listeners.push(Listener::Tcp { socket, name });
        } else if let Ok(Some(socket)) = fds.take_unix_listener(index) {
            listeners.push(Listener::Unix { socket, name });
        } else {
            return Err(not_listening());
        }
    }
    Ok(listeners)
}

/// Binds the `--unix-socket` listener: any local user may connect (the worker identifies
/// each caller with SO_PEERCRED and applies the allow-lists).
pub(crate) fn bind_unix(path: &std::path::Path) -> Result<Listener, ListenerError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let bad = |error: std::io::Error| {
        ListenerError::BadEnvironment(format!("cannot listen on {}: {error}", path.display()))
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(bad(std::io::Error::other("it exists and is not a socket")));
        }
        std::fs::remove_file(path).map_err(bad)?;
    }
    let socket = UnixListener::bind(path).map_err(bad)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(bad)?;
    Ok(Listener::Unix {
        socket,
        name: "unix-socket".into(),
    })
}

/// The first TCP port we listen on, for `--server-info`.
pub(crate) fn first_tcp_port(listeners: &[Listener]) -> Option<u16> {
    listeners.iter().find_map(|l| match l {
        Listener::Tcp { socket, .. } => socket.local_addr().ok().map(|a| a.port()),
        Listener::Unix { .. } => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_activated_without_variables_or_for_another_pid() {
        assert_eq!(parse_activation(None, None, None, 7).unwrap(), None);
        assert_eq!(
            parse_activation(Some("8"), Some("1"), None, 7).unwrap(),
            None
        );
        assert_eq!(
            parse_activation(Some("7"), Some("0"), None, 7).unwrap(),
            None
        );
    }

    #[test]
    fn activation_with_names() {
        assert_eq!(
            parse_activation(Some("7"), Some("2"), Some("http:unix"), 7).unwrap(),
            Some(Activation {
                count: 2,
                names: vec!["http".into(), "unix".into()]
            })
        );
        assert_eq!(
            parse_activation(Some("7"), Some("1"), None, 7)
                .unwrap()
                .unwrap()
                .names,
            vec!["unknown".to_string()]
        );
    }

    #[test]
    fn inconsistent_variables_are_errors() {
        assert!(parse_activation(None, Some("1"), None, 7).is_err());
        assert!(parse_activation(Some("x"), Some("1"), None, 7).is_err());
        assert!(parse_activation(Some("7"), Some("one"), None, 7).is_err());
        assert!(parse_activation(Some("7"), Some("2"), Some("a"), 7).is_err());
    }
}
