//! What the worker remembers of conversations, for the stateful parts of the Responses API
//! that a Chat Completions upstream lacks: stored responses (`response_store`: bounded, per
//! local user, for `previous_response_id`, `item_reference` and `GET /v1/responses/{id}`) and
//! the key that seals the summaries of remote compaction (`compaction_seal`).
//!
//! May use: `identity` (owners), `openai_wire`. Nothing of the server side or the upstream.

pub(crate) mod compaction_seal;
pub(crate) mod response_store;
