//! The OpenAI wire formats the proxy speaks and the conversions between them, as pure
//! functions from parsed input to output: no I/O, no clocks, no sockets, no logging. The proxy
//! (its worker) feeds them bytes and sends what they return; the tests and the fuzz targets
//! call them directly.
//!
//! Owns:
//! - [`sse`]: the one server-sent-events reader and writer;
//! - [`bridge`]: Responses requests and streams ⇄ Chat Completions (`--bridge-to-chat`);
//! - [`wrapper`]: Chat Completions, Completions and reasoning modes ⇄ Responses
//!   (`--wrapper-routes`), and the wrapper's settings;
//! - [`api_error`]: OpenAI-style error bodies;
//! - [`usage`]: the token-usage object of both APIs, read once.
//!
//! Uses nothing of the proxy; the proxy uses this crate.

pub mod api_error;
pub mod bridge;
mod chat;
pub mod sse;
pub mod usage;
pub mod wrapper;
