//! Wrapper routes' conversions: OpenAI Chat Completions and legacy Completions clients served
//! from a Responses API upstream. Pure functions and state machines, no I/O.
//!
//! - [`settings`]: reasoning settings, output modes, model aliases, the `/v1/models` body.
//! - [`chat_request`]: a Chat Completions request → the upstream Responses request
//!   ([`ResponsesPlan`]).
//! - [`chat_stream`]: upstream Responses events → `chat.completion.chunk` SSE, or one
//!   `chat.completion` body for non-streaming clients, from the same state machine.
//! - [`completions`]: the same for legacy `/v1/completions` (`text_completion`).
//!
//! Flow for one request: `chat_to_responses` (or `completion_to_responses`) gives the upstream
//! body (always `stream: true`) and the [`ClientMeta`] the client needs back. Each upstream
//! SSE event's `data` goes to `push_event`; when the upstream body ends, `finish`. A streaming
//! client receives the bytes written to `out`; a non-streaming client receives
//! `final_completion()` when `outcome()` is `Completed`, or a 502 with the failure otherwise.
//!
//! Uses: `api_error` and serde_json.

pub mod chat_request;
pub mod chat_stream;
pub mod completions;
pub mod settings;

use std::fmt;

use crate::api_error::error_body;
use settings::WrapperSettings;

/// A request the wrapper refuses, or an upstream failure, with the HTTP status to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapperError {
    pub status: u16,
    pub message: String,
    /// The request field at fault (`messages[2].role`), when there is one.
    pub param: Option<String>,
    pub code: Option<String>,
}

impl WrapperError {
    /// A 400 `invalid_request_error` naming the offending field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        WrapperError {
            status: 400,
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    /// A 502: the upstream failed or sent something unusable.
    pub fn upstream(message: impl Into<String>, code: Option<String>) -> Self {
        WrapperError {
            status: 502,
            message: message.into(),
            param: None,
            code,
        }
    }

    /// The OpenAI error `type` for this status.
    pub fn kind(&self) -> &'static str {
        match self.status {
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The OpenAI-style JSON body `{"error":{message,type,param,code}}`.
    pub fn to_body(&self) -> String {
        error_body(
            &self.message,
            self.kind(),
            self.code.as_deref(),
            self.param.as_deref(),
        )
    }
}

impl fmt::Display for WrapperError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl std::error::Error for WrapperError {}

/// What the request conversion needs besides the client's body.
#[derive(Debug, Clone, Copy)]
pub struct ConvertContext<'a> {
    pub settings: &'a WrapperSettings,
    /// Becomes `prompt_cache_key` (the upstream `session_id`).
    pub session_id: Option<&'a str>,
    /// Upstream `instructions`. The ChatGPT Codex endpoint accepts only its own Codex
    /// instructions text, so the lead passes that text there and `None` for the OpenAI API;
    /// the client's system/developer messages always travel as developer input items.
    pub instructions: Option<&'a str>,
}

/// What the response side must remember about the client's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMeta {
    /// The client asked for SSE (`stream: true`).
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// The model name reported in every chunk/body until the upstream names the model it
    /// used (`response.model`, which then wins, as on the OpenAI API): the model sent
    /// upstream, after aliases, effort suffixes and `DEBUG_MODEL` (`gpt-5-high` → `gpt-5`).
    pub model: String,
}

/// A converted request: the upstream Responses body and the client's expectations.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsesPlan {
    /// The JSON body to POST to the Responses endpoint (`stream: true`, `store: false`).
    pub upstream_body: serde_json::Value,
    pub client: ClientMeta,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_names_the_field() {
        let e = WrapperError::invalid("messages", "`messages` must be an array");
        let v: serde_json::Value = serde_json::from_str(&e.to_body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
        let e = WrapperError::upstream("boom", Some("server_error".into()));
        let v: serde_json::Value = serde_json::from_str(&e.to_body()).unwrap();
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(e.status, 502);
    }
}
