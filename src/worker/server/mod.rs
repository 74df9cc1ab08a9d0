//! The HTTP server side: what stands between a client's bytes and a route. HTTP/1.1 serving
//! glue (`http`: bodies, responses, request records), the framing guard that judges every
//! request's framing on the raw bytes before hyper parses it, the RFC 9112 token rules both use
//! (`http1_syntax`), the connection timers (`connection_timer`, `stall_guard`), and the
//! per-user fair shares of connections and body memory (`fair_share`).
//!
//! May use: `identity` (who is calling, for fair shares), `crate::usage`, `crate::logging`,
//! `openai_wire`. Never the upstream side.

pub(crate) mod connection_timer;
pub(crate) mod fair_share;
pub(crate) mod framing_guard;
pub(crate) mod http;
pub(crate) mod http1_syntax;
pub(crate) mod stall_guard;
