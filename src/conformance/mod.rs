//! Conformance checkers for the streams and bodies the proxy produces: the invariants strict
//! OpenAI clients rely on (required fields, sequencing, deltas that add up, one terminal
//! event). Used by the unit tests of the converters and by the black-box tests.

pub mod chat;
pub mod responses;
