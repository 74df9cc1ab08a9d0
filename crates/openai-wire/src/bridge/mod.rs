//! Bridge mode: serving Responses API clients (the Codex CLI in particular) from upstreams that
//! only speak Chat Completions.
//!
//! This module owns the pure conversions and nothing else — no I/O, no HTTP, no async:
//! - [`request`] turns a Responses request body into the Chat Completions request sent upstream
//!   (always streaming, with usage), plus the [`request::StreamMeta`] that the stream converter
//!   needs to map names and echo fields back.
//! - [`stream`] is the state machine that turns the upstream's chat chunks into Responses
//!   events, and builds the final `Response` object (the same code path serves `stream: false`).
//! - [`stored`] expands `previous_response_id` and `item_reference` from stored responses that
//!   the caller looks up.
//! - [`compaction`] answers Codex's remote compaction with a summary from the chat model.
//!
//! Uses: nothing else of this crate.

pub mod compaction;
pub mod request;
pub mod stored;
pub mod stream;
