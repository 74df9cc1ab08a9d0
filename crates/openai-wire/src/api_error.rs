//! OpenAI-style error bodies: `{"error":{"message","type","param","code"}}`, the shape every
//! OpenAI client library knows how to read and show to its user.
//!
//! Uses: nothing else of this crate and serde, serde_json.

use serde::Serialize;

#[derive(Serialize)]
struct ErrorEnvelope<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

/// Serializes an OpenAI-style error body. `kind` is the error `type`
/// (`invalid_request_error`, `authentication_error`, `server_error`, …).
pub fn error_body(message: &str, kind: &str, code: Option<&str>, param: Option<&str>) -> String {
    serde_json::to_string(&ErrorEnvelope {
        error: ErrorObject {
            message,
            kind,
            param,
            code,
        },
    })
    .expect("JSON serialization into memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_openai_shape() {
        let v: serde_json::Value = serde_json::from_str(&error_body(
            "bad \"thing\"",
            "invalid_request_error",
            Some("bad_field"),
            Some("input"),
        ))
        .unwrap();
        assert_eq!(v["error"]["message"], "bad \"thing\"");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "bad_field");
        assert_eq!(v["error"]["param"], "input");
        let v: serde_json::Value =
            serde_json::from_str(&error_body("x", "server_error", None, None)).unwrap();
        assert!(v["error"]["code"].is_null() && v["error"]["param"].is_null());
    }
}
