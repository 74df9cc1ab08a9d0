//! Conformance checkers for the streams and bodies the proxy produces: the invariants strict
//! OpenAI clients rely on (required fields, sequencing, deltas that add up, one terminal
//! event). Used by the unit tests of the converters, the black-box tests and the fuzz checks;
//! a dev-dependency only, so none of it is in the proxy's release binary.

pub mod chat;
pub mod responses;
