//! The supervisor's control socket (`--control-socket PATH`) and its one client, the
//! `rotate-key` subcommand. Root hands a running service a new API key over it; the supervisor
//! starts a worker with the new key and lets the old one drain.
//!
//! The socket is root's alone: it is created mode 0600 in a directory that must be owned by
//! root and writable by no one else (created 0700 when missing), and every peer must be uid 0
//! by the kernel's account (`SO_PEERCRED`), whatever the file's mode. The protocol is one
//! request per connection: `rotate-key\n<key>\n`, answered `ok\n` once a worker serves with
//! the key, or `error: <reason>\n`. The key is read like standard input or a credential
//! (`key::read_key`: raw reads into a zeroized buffer, then the locked page); no reply, log line
//! or error ever contains it.
//!
//! Uses: `crate::supervisor::key` (intake) and nix, tracing.

use super::key::{self, KeyError, KeySource, HEADER_PREFIX};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tracing::warn;

/// The one command the socket knows.
const ROTATE_KEY: &[u8] = b"rotate-key";
/// How long a connected client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `rotate-key` waits for the answer (a new worker must start and serve first).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);

/// The listening control socket; the file is removed when the supervisor drops it.
pub(crate) struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Creates the socket at `path` (see the module comment for what is checked).
    pub(crate) fn open(path: &Path) -> Result<ControlSocket, String> {
        let shown = path.display();
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .ok_or_else(|| format!("--control-socket {shown}: give an absolute path"))?;
        if !path.is_absolute() {
            return Err(format!("--control-socket {shown}: give an absolute path"));
        }
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            return Err(format!(
                "refusing --control-socket {shown}: {} must be a directory owned by root and writable by no one else",
                dir.display()
            ));
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove the stale socket {shown}: {e}"))?,
            Ok(_) => {
                return Err(format!(
                    "refusing --control-socket {shown}: it exists and is not a socket"
                ))
            }
            Err(_) => {}
        }
        // The process is single-threaded here: the umask covers exactly this bind.
        let previous = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = UnixListener::bind(path);
        nix::sys::stat::umask(previous);
        let listener =
            bound.map_err(|e| format!("cannot create the control socket {shown}: {e}"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot restrict {shown}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("cannot use the control socket {shown}: {e}"))?;
        Ok(ControlSocket {
            listener,
            path: path.to_owned(),
        })
    }

    pub(crate) fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }

    pub(crate) fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// A waiting connection, if any.
    pub(crate) fn accept(&self) -> Option<UnixStream> {
        match self.listener.accept() {
            Ok((stream, _)) => Some(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => {
                warn!("control socket: accept failed: {e}");
                None
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one request from a connected client: checks that the peer is root, then reads
/// `rotate-key\n` and the key. An `Err` is the reason to answer (it never contains the key).
pub(crate) fn read_request(stream: &mut UnixStream) -> Result<KeySource, String> {
    stream
        .set_nonblocking(false)
        .and_then(|_| stream.set_read_timeout(Some(REQUEST_TIMEOUT)))
        .and_then(|_| stream.set_write_timeout(Some(REQUEST_TIMEOUT)))
        .map_err(|e| format!("cannot use the connection: {e}"))?;
    let peer = nix::sys::socket::getsockopt(&*stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot tell who is connected: {e}"))?;
    if peer.uid() != 0 {
        warn!(
            peer_uid = peer.uid(),
            peer_pid = peer.pid(),
            "control socket: refused a peer that is not root"
        );
        return Err("permission denied: only root may use the control socket".into());
    }
    read_command(stream)?;
    match key::read_key(stream, false) {
        Ok(source) => Ok(source),
        Err(KeyError::NoInput) => Err("no key after the command".into()),
        Err(KeyError::Read(kind)) => Err(format!("cannot read the key: {kind}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads the command line one byte at a time, so that no byte of the key is read here.
fn read_command(stream: &mut UnixStream) -> Result<(), String> {
    let mut line = Vec::with_capacity(16);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err("the request ended before its command".into()),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 32 => line.push(byte[0]),
            Ok(_) => return Err("unknown command".into()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("cannot read the command: {}", e.kind())),
        }
    }
    if line.strip_suffix(b"\r").unwrap_or(&line) == ROTATE_KEY {
        Ok(())
    } else {
        Err("unknown command (this socket knows only rotate-key)".into())
    }
}

/// Answers a client: `ok` or `error: <reason>`. A client that went away is only logged.
pub(crate) fn answer(mut stream: UnixStream, result: Result<(), &str>) {
    let line = match result {
        Ok(()) => "ok\n".to_owned(),
        Err(reason) => format!("error: {}\n", reason.replace('\n', " ")),
    };
    if let Err(e) = stream.write_all(line.as_bytes()) {
        warn!("control socket: cannot answer the client: {e}");
    }
}

/// `codex-responses-api-proxy rotate-key`: reads the key from standard input (the same intake
/// as the service's: first line, checked, never echoed), sends it over the control socket and
/// prints the answer. Exit status 0 = in use, 1 = refused, 3 = socket unreachable.
pub fn rotate_key_command(socket: &Path) -> ExitCode {
    const ME: &str = "codex-responses-api-proxy rotate-key";
    let header = match key::load(None) {
        Ok(KeySource::Key(header)) => header,
        Ok(KeySource::NotConfigured) => unreachable!("stdin never reads as unset"),
        Err(e) => {
            eprintln!("{ME}: {e}");
            return ExitCode::from(1);
        }
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e) => {
            let hint = match e.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    "; is the service running with --control-socket?"
                }
                io::ErrorKind::PermissionDenied => "; only root may rotate the key",
                _ => "",
            };
            eprintln!("{ME}: cannot connect to {}: {e}{hint}", socket.display());
            return ExitCode::from(3);
        }
    };
    let key = &header.bytes()[HEADER_PREFIX.len()..];
    let sent = stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .and_then(|_| stream.write_all(b"rotate-key\n"))
        .and_then(|_| stream.write_all(key))
        .and_then(|_| stream.write_all(b"\n"));
    // SAFETY: the header is not used after this point.
    unsafe { header.discard() };
    // A refusal may come (and the connection close) before the key was sent: read it anyway.
    let mut reply = Vec::new();
    let read = stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .and_then(|_| (&mut stream).take(512).read_to_end(&mut reply));
    let reply = String::from_utf8_lossy(&reply);
    let reply = reply.trim_end();
    if let (Err(e), "") = (&sent, reply) {
        eprintln!("{ME}: cannot send the key: {e}");
        return ExitCode::from(3);
    }
    match (read, reply) {
        (_, "ok") => {
            eprintln!("{ME}: the new key is in use; the old worker finishes its streams");
            ExitCode::SUCCESS
        }
        (Ok(_), "") => {
            eprintln!("{ME}: the service closed the connection without an answer");
            ExitCode::from(1)
        }
        (Err(e), "") => {
            eprintln!("{ME}: no answer from the service: {e}");
            ExitCode::from(1)
        }
        // A refusal may be followed by a reset (the service closed before reading all).
        (_, reply) => {
            eprintln!("{ME}: {}", reply.strip_prefix("error: ").unwrap_or(reply));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(bytes: &[u8]) -> Result<KeySource, String> {
        let (mut server, mut client) = UnixStream::pair().unwrap();
        client.write_all(bytes).unwrap();
        drop(client);
        read_request(&mut server)
    }

    #[test]
    fn a_rotate_key_request_yields_the_key_and_anything_else_is_refused() {
        if nix::unistd::geteuid().as_raw() != 0 {
            // The peer of a socket pair is this process: only as root is it allowed.
            let err = request(b"rotate-key\nsk-a\n").unwrap_err();
            assert!(err.contains("only root"), "{err}");
            return;
        }
        let KeySource::Key(header) = request(b"rotate-key\nsk-new_KEY-1\n").unwrap() else {
            panic!("a key")
        };
        assert_eq!(header.bytes(), b"Bearer sk-new_KEY-1");
        assert!(request(b"rotate-key\r\nsk-x\r\n").is_ok());
        for (bad, says) in [
            (&b"rotate-key\nsk bad\n"[..], "characters other than"),
            (b"rotate-key\n", "no key"),
            (b"rotate-key", "ended before"),
            (b"rotate-key\nunset\n", ""),
            (b"reload\nsk-a\n", "unknown command"),
            (&[b'x'; 100], "unknown command"),
        ] {
            match request(bad) {
                Err(e) => {
                    assert!(e.contains(says), "{e}");
                    assert!(!e.contains("sk bad") && !e.contains("sk-a"), "{e}");
                }
                // `unset` is a valid key here (only credentials give it a meaning).
                Ok(KeySource::Key(h)) => assert_eq!(h.bytes(), b"Bearer unset"),
                Ok(KeySource::NotConfigured) => panic!("unset is not special on the socket"),
            }
        }
    }

    #[test]
    fn the_socket_is_refused_where_others_could_replace_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        std::fs::write(&path, b"not a socket").unwrap();
        let err = ControlSocket::open(&path).err().unwrap();
        assert!(err.contains("not a socket"), "{err}");
        std::fs::remove_file(&path).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ControlSocket::open(&path).err().unwrap();
        assert!(err.contains("writable by no one else"), "{err}");
        assert!(ControlSocket::open(Path::new("relative.sock")).is_err());
    }
}
