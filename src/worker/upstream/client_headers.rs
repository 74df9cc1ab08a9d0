//! Which of a wrapper client's own headers reach the upstream (`FORWARD_CLIENT_HEADERS_MODE`).
//! Whatever the mode, the client's `Authorization`, hop-by-hop headers and the headers the
//! proxy sets itself never pass.
//!
//! Uses: nothing else of the crate and hyper, serde_json.

use hyper::header::{HeaderMap, HeaderName, HeaderValue};

/// The forwarding policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientHeaderForwarding {
    /// Nothing from the client.
    Off,
    /// A fixed, harmless set: user-agent, accept-language, sec-ch-ua*, x-forwarded-*.
    Safe,
    /// The named headers (lowercase), minus the protected ones.
    List(Vec<String>),
    /// Fixed headers from configuration, applied last.
    Override(Vec<(HeaderName, HeaderValue)>),
    /// A Codex-like client identity (`User-Agent`, `originator: codex_cli_rs`).
    OverrideCodex,
}

/// Headers no mode may forward or override.
const PROTECTED: [&str; 20] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "content-type",
    "content-length",
    "accept",
    "accept-encoding",
    "session_id",
    "session-id",
    "chatgpt-account-id",
    // Which organization and project the key bills: the admin's (`--openai-organization`,
    // `--openai-project`, `--forward-billing-headers`), never a wrapper setting.
    "openai-organization",
    "openai-project",
    "expect",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_protected(name: &str) -> bool {
    PROTECTED.contains(&name)
}

impl ClientHeaderForwarding {
    pub(crate) fn parse(
        mode: &str,
        list: Option<&str>,
        overrides: Option<&str>,
    ) -> Result<Self, String> {
        match mode.trim().to_ascii_lowercase().as_str() {
            "" | "off" => Ok(Self::Off),
            "safe" => Ok(Self::Safe),
            "list" => {
                let names: Vec<String> = list
                    .unwrap_or_default()
                    .split([',', ' '])
                    .map(|n| n.trim().to_ascii_lowercase())
                    .filter(|n| !n.is_empty() && !is_protected(n))
                    .collect();
                if names.is_empty() {
                    return Err("FORWARD_CLIENT_HEADERS_MODE=list needs FORWARD_CLIENT_HEADERS_LIST with at least one forwardable header name".into());
                }
                Ok(Self::List(names))
            }
            "override" => {
                let text = overrides.ok_or(
                    "FORWARD_CLIENT_HEADERS_MODE=override needs FORWARD_CLIENT_HEADERS_OVERRIDE (a JSON object)",
                )?;
                let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                    .map_err(|e| format!("FORWARD_CLIENT_HEADERS_OVERRIDE is not a JSON object: {e}"))?;
                let mut headers = Vec::new();
                for (name, value) in map {
                    let lower = name.to_ascii_lowercase();
                    if is_protected(&lower) {
                        return Err(format!("FORWARD_CLIENT_HEADERS_OVERRIDE may not set {name}"));
                    }
                    let value = value.as_str().ok_or_else(|| {
                        format!("FORWARD_CLIENT_HEADERS_OVERRIDE: the value of {name} must be a string")
                    })?;
                    let name = HeaderName::from_bytes(lower.as_bytes())
                        .map_err(|_| format!("FORWARD_CLIENT_HEADERS_OVERRIDE: {name:?} is not a header name"))?;
                    let value = HeaderValue::from_str(value)
                        .map_err(|_| format!("FORWARD_CLIENT_HEADERS_OVERRIDE: bad value for {name}"))?;
                    headers.push((name, value));
                }
                Ok(Self::Override(headers))
            }
            "override-codex" => Ok(Self::OverrideCodex),
            other => Err(format!(
                "unknown FORWARD_CLIENT_HEADERS_MODE {other:?}: use off, safe, list, override or override-codex"
            )),
        }
    }

    /// Adds the permitted client headers to `upstream`.
    pub(crate) fn apply(&self, client: &HeaderMap, upstream: &mut HeaderMap) {
        let copy = |upstream: &mut HeaderMap, keep: &dyn Fn(&str) -> bool| {
            for (name, value) in client {
                let n = name.as_str();
                if !is_protected(n) && keep(n) {
                    upstream.append(name.clone(), value.clone());
                }
            }
        };
        match self {
            Self::Off => {}
            Self::Safe => copy(upstream, &|n| {
                n == "user-agent"
                    || n == "accept-language"
                    || n.starts_with("sec-ch-ua")
                    || n.starts_with("x-forwarded-")
            }),
            Self::List(names) => copy(upstream, &|n| names.iter().any(|l| l == n)),
            Self::Override(headers) => {
                for (name, value) in headers {
                    upstream.insert(name.clone(), value.clone());
                }
            }
            Self::OverrideCodex => {
                upstream.insert(
                    hyper::header::USER_AGENT,
                    HeaderValue::from_static(concat!(
                        "codex_cli_rs/0.169.0 (codex-responses-api-proxy/",
                        env!("CARGO_PKG_VERSION"),
                        ")"
                    )),
                );
                upstream.insert("originator", HeaderValue::from_static("codex_cli_rs"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client"),
            ("user-agent", "my-ui/1"),
            ("accept-language", "de"),
            ("sec-ch-ua-platform", "Linux"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-team", "blue"),
            ("cookie", "a=b"),
            ("content-type", "application/json"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn names(mode: &ClientHeaderForwarding) -> Vec<String> {
        let mut out = HeaderMap::new();
        mode.apply(&client(), &mut out);
        let mut n: Vec<String> = out.keys().map(|k| k.to_string()).collect();
        n.sort();
        n
    }

    #[test]
    fn each_mode_forwards_what_it_says_and_never_authorization() {
        assert!(names(&ClientHeaderForwarding::Off).is_empty());
        assert_eq!(
            names(&ClientHeaderForwarding::Safe),
            [
                "accept-language",
                "sec-ch-ua-platform",
                "user-agent",
                "x-forwarded-for"
            ]
        );
        let list =
            ClientHeaderForwarding::parse("list", Some("X-Team, authorization, cookie"), None)
                .unwrap();
        assert_eq!(names(&list), ["x-team"]);
        let over =
            ClientHeaderForwarding::parse("override", None, Some(r#"{"X-Org":"acme"}"#)).unwrap();
        assert_eq!(names(&over), ["x-org"]);
        let codex = ClientHeaderForwarding::parse("override-codex", None, None).unwrap();
        assert_eq!(names(&codex), ["originator", "user-agent"]);
    }

    #[test]
    fn bad_configuration_is_an_error() {
        assert!(ClientHeaderForwarding::parse("sometimes", None, None).is_err());
        assert!(ClientHeaderForwarding::parse("list", Some("authorization"), None).is_err());
        assert!(
            ClientHeaderForwarding::parse("override", None, Some(r#"{"Authorization":"x"}"#))
                .is_err()
        );
        assert!(ClientHeaderForwarding::parse("override", None, Some("[1]")).is_err());
        assert!(ClientHeaderForwarding::parse("override", None, None).is_err());
    }
}
