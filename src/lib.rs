//! codex-responses-api-proxy: a privilege-separated proxy that lets unprivileged local users
//! reach a model provider without ever seeing its API key. ARCHITECTURE.md draws the parts.
//!
//! The tree follows the privilege boundary:
//! - `supervisor` runs as root: hardening, key intake, listeners, and then it only waits on
//!   the worker's pipe and signals. It never parses client input.
//! - `sandbox` confines the forked child (privilege drop, seccomp) before any worker code runs.
//! - `worker` runs unprivileged and serves HTTP; `usage` is its accounting.
//! - `contract` is all the two sides share (key page, listeners, pipe protocol, handover);
//!   `cli` is the plain configuration both read. `main.rs` forks and names both sides.
//! - The OpenAI wire formats and conversions are the pure crate `openai-wire`.
//!
//! `tests/architecture.rs` fails the build's tests on any use across the boundary.

pub mod cli;
mod clock;
pub mod contract;
pub mod logging;
pub mod sandbox;
pub mod supervisor;
pub mod usage;
pub mod worker;
