//! The worker→supervisor pipe: the only thing the root side ever reads from the worker. Each
//! message is one byte, so a message can never be split or run into the next, and whatever
//! else arrives is ignored by the supervisor (and logged).
//!
//! Uses: nothing else of the crate and nix.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// What the worker may tell the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WorkerMessage {
    /// The worker is serving: the supervisor writes `--server-info` and tells systemd READY.
    Serving,
    /// `GET /shutdown` was called (and enabled): the supervisor stops the whole service.
    ShutdownRequested,
}

impl WorkerMessage {
    const SERVING: u8 = b'R';
    const SHUTDOWN_REQUESTED: u8 = b'S';

    pub(crate) fn to_byte(self) -> u8 {
        match self {
            WorkerMessage::Serving => Self::SERVING,
            WorkerMessage::ShutdownRequested => Self::SHUTDOWN_REQUESTED,
        }
    }

    pub(crate) fn from_byte(byte: u8) -> Option<WorkerMessage> {
        match byte {
            Self::SERVING => Some(WorkerMessage::Serving),
            Self::SHUTDOWN_REQUESTED => Some(WorkerMessage::ShutdownRequested),
            _ => None,
        }
    }
}

/// The worker's end of the pipe.
#[derive(Debug)]
pub(crate) struct WorkerPipe(OwnedFd);

impl WorkerPipe {
    pub(crate) fn new(fd: OwnedFd) -> WorkerPipe {
        WorkerPipe(fd)
    }

    /// Sends one message. A one-byte write to a pipe is atomic; it is retried when interrupted.
    pub(crate) fn send(&self, message: WorkerMessage) -> io::Result<()> {
        loop {
            match nix::unistd::write(self.0.as_fd(), &[message.to_byte()]) {
                Ok(1) => return Ok(()),
                Ok(_) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io::Error::from_raw_os_error(e as i32)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_single_bytes_and_nothing_else_decodes() {
        for message in [WorkerMessage::Serving, WorkerMessage::ShutdownRequested] {
            assert_eq!(WorkerMessage::from_byte(message.to_byte()), Some(message));
        }
        let known = (0..=255u8)
            .filter(|b| WorkerMessage::from_byte(*b).is_some())
            .count();
        assert_eq!(known, 2);
    }

    #[test]
    fn a_sent_message_arrives_and_a_closed_pipe_is_an_error() {
        let (read, write) = nix::unistd::pipe().unwrap();
        let pipe = WorkerPipe::new(write);
        pipe.send(WorkerMessage::ShutdownRequested).unwrap();
        let mut byte = [0u8; 2];
        assert_eq!(nix::unistd::read(&read, &mut byte).unwrap(), 1);
        assert_eq!(
            WorkerMessage::from_byte(byte[0]),
            Some(WorkerMessage::ShutdownRequested)
        );
        drop(read);
        // SIGPIPE is ignored by the test harness? Make sure: ignore it here.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        assert!(pipe.send(WorkerMessage::Serving).is_err());
    }
}
