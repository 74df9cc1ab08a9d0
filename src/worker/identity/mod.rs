//! Who is calling: the peer's uid from the kernel (`peer_identity`: socket diagnostics for
//! TCP, `SO_PEERCRED` for the unix socket — never anything the client says) and the
//! allow-lists (`access_control`). Look-ups run off the accept loop.
//!
//! May use: std, nix/libc. Nothing else of the worker.

pub(crate) mod access_control;
pub(crate) mod peer_identity;
