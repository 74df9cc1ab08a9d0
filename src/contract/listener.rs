//! A listening socket handed from root to the worker: bound by the supervisor on 127.0.0.1 or
//! inherited from systemd socket activation, with the name systemd gave it. Plain std sockets;
//! the worker makes them non-blocking and serves them.
//!
//! Uses: nothing else of the crate.

use std::fmt;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;

/// One listening socket and the name systemd gave it (`FileDescriptorName=`).
pub(crate) enum Listener {
    Tcp { socket: TcpListener, name: String },
    Unix { socket: UnixListener, name: String },
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::Tcp { socket, name } => {
                write!(f, "tcp {:?} ({name})", socket.local_addr().ok())
            }
            Listener::Unix { socket, name } => write!(
                f,
                "unix {:?} ({name})",
                socket
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_pathname().map(|p| p.to_owned()))
            ),
        }
    }
}

impl Listener {
    /// Another descriptor for the same socket (the supervisor keeps one of each listener so
    /// that a worker started later, after a key rotation, serves the same sockets).
    pub(crate) fn try_clone(&self) -> std::io::Result<Listener> {
        Ok(match self {
            Listener::Tcp { socket, name } => Listener::Tcp {
                socket: socket.try_clone()?,
                name: name.clone(),
            },
            Listener::Unix { socket, name } => Listener::Unix {
                socket: socket.try_clone()?,
                name: name.clone(),
            },
        })
    }

    pub(crate) fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Listener::Tcp { socket, .. } => socket.as_raw_fd(),
            Listener::Unix { socket, .. } => socket.as_raw_fd(),
        }
    }
}
