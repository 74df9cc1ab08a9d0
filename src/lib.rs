//! codex-responses-api-proxy: a privilege-separated proxy that lets unprivileged local users
//! reach a model provider without ever seeing its API key.
//!
//! The tree follows the privilege boundary. `supervisor` (and the modules it uses: `key`,
//! `hardening`, `listener`) runs as root and never parses client input. Everything under
//! `worker` runs unprivileged and serves the HTTP routes. The conversions between the OpenAI
//! wire formats are pure functions with no I/O.

pub mod cli;
mod clock;
pub mod contract;
pub mod logging;
pub mod sandbox;
pub mod supervisor;
pub mod usage;
pub mod worker;
