//! The Ollama pass-through (`/api/*` with `--wrapper-routes` and `OLLAMA_API_URL`) stays under
//! `/api/` on the Ollama host: raw request targets that climb out of it (dot segments, also
//! percent-encoded, doubled slashes, backslashes, encoded slashes) get a 400 and never reach
//! the mock Ollama upstream; harmless spellings are resolved the way a URL is.

mod common;

use common::*;
use std::time::Duration;

fn proxy_in_front_of(ollama_url: &str, upstream: &MockUpstream) -> Proxy {
    Proxy::start_with(ProxyOptions {
        args: vec![
            "--upstream-url".into(),
            upstream.url("/v1/responses"),
            "--wrapper-routes".into(),
        ],
        env: vec![("OLLAMA_API_URL".into(), ollama_url.into())],
        ..Default::default()
    })
}

fn raw(proxy: &Proxy, method: &str, target: &str) -> String {
    raw_request(
        proxy.port,
        format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
}

const ESCAPES: &[&str] = &[
    "/api/../../admin/secret",
    "/api/../admin/secret",
    "/api/%2e%2e/admin/secret",
    "/api/%2E%2E/%2e%2E/admin/secret",
    "/api/.%2e/admin/secret",
    "/api//..//..//admin/secret",
    "/api/..%2fadmin/secret",
    "/api/%5c..%5cadmin/secret",
    "/api/..\\..\\admin/secret",
    "/api/tags/../../admin/secret",
];

#[tokio::test(flavor = "multi_thread")]
async fn ollama_paths_that_leave_api_are_400_and_never_forwarded() {
    let ollama = MockUpstream::start(|_| Reply::json(200, r#"{"ok":true}"#)).await;
    let upstream = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    for (base, prefix) in [
        (format!("http://{}", ollama.addr), ""),
        (format!("http://{}/ollama", ollama.addr), "/ollama"),
    ] {
        let proxy = proxy_in_front_of(&base, &upstream);
        let before = ollama.seen().len();
        for target in ESCAPES {
            for method in ["DELETE", "GET"] {
                let answer = raw(&proxy, method, target);
                assert_eq!(status_of(&answer), 400, "{method} {target}: {answer}");
                let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
                if let Ok(error) = serde_json::from_str::<serde_json::Value>(body) {
                    assert_eq!(error["error"]["code"], "invalid_path", "{target}: {body}");
                    assert!(
                        error["error"]["message"]
                            .as_str()
                            .unwrap()
                            .contains("/api/"),
                        "{body}"
                    );
                } else {
                    // hyper itself refuses a raw backslash before any route runs.
                    assert!(target.contains('\\'), "{target}: no JSON error in {answer}");
                }
            }
        }
        let forwarded: Vec<String> = ollama.seen()[before..]
            .iter()
            .map(|s| s.uri.clone())
            .collect();
        assert!(forwarded.is_empty(), "forwarded: {forwarded:?}");
        // Harmless spellings are resolved and forwarded under the prefix.
        for (target, forwarded) in [
            ("/api//tags", "/api/tags"),
            ("/api/./tags?verbose=1", "/api/tags?verbose=1"),
            ("/api/x/%2e%2E/tags", "/api/tags"),
        ] {
            let answer = raw(&proxy, "GET", target);
            assert_eq!(status_of(&answer), 200, "{target}: {answer}");
            let seen = ollama.seen();
            assert_eq!(
                seen.last().unwrap().uri,
                format!("{prefix}{forwarded}"),
                "{target}"
            );
        }
        let log = proxy.stderr_once_it_has("refused: Ollama path", Duration::from_secs(10));
        assert!(log.contains("refused: Ollama path"), "{log}");
    }
    assert!(upstream.seen().is_empty());
}
