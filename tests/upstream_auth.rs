//! Upstream authentication modes end to end: a Codex auth.json given to the real binary,
//! a mock token endpoint, and a mock upstream that rejects stale tokens.

mod common;

use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn jwt_with_account(account: &str) -> String {
    fn b64url(data: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in data.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
    let claims = json!({"https://api.openai.com/auth": {"chatgpt_account_id": account}});
    format!(
        "{}.{}.sig",
        b64url(b"{\"alg\":\"none\"}"),
        b64url(claims.to_string().as_bytes())
    )
}

fn start(args: Vec<String>) -> Proxy {
    Proxy::start_with(ProxyOptions {
        args,
        key: None,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn chatgpt_tokens_are_refreshed_after_a_401_retried_once_and_saved_0600() {
    let token_endpoint = MockUpstream::start(|_| {
        Reply::json(
            200,
            r#"{"access_token":"access-NEW","refresh_token":"refresh-NEW","id_token":null}"#,
        )
    })
    .await;
    let upstream = MockUpstream::start(|seen| {
        if seen.header("authorization").as_deref() == Some("Bearer access-NEW") {
            Reply::sse("data: {\"type\":\"response.completed\"}\n\n")
        } else {
            Reply::json(401, r#"{"error":{"message":"token expired"}}"#)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let auth_json = dir.path().join("auth.json");
    std::fs::write(
        &auth_json,
        json!({
            "OPENAI_API_KEY": null,
            "tokens": {"id_token": jwt_with_account("acct-from-claim"), "access_token": "access-OLD", "refresh_token": "refresh-OLD"},
            "last_refresh": chrono_like_now(),
        })
        .to_string(),
    )
    .unwrap();
    let state = dir.path().join("state");
    let proxy = start(vec![
        "--upstream-url".into(),
        upstream.url("/backend-api/codex/responses"),
        "--upstream-auth-mode".into(),
        "chatgpt_token".into(),
        "--codex-auth-file".into(),
        auth_json.to_str().unwrap().into(),
        "--state-directory".into(),
        state.to_str().unwrap().into(),
        "--token-url".into(),
        token_endpoint.url("/oauth/token"),
        "--oauth-client-id".into(),
        "test-client".into(),
    ]);
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "one 401, one retry");
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        "Bearer access-OLD"
    );
    assert_eq!(
        seen[1].header("authorization").unwrap(),
        "Bearer access-NEW"
    );
    assert_eq!(
        seen[1].header("chatgpt-account-id").unwrap(),
        "acct-from-claim"
    );
    let refresh: Value = token_endpoint.seen()[0].json();
    assert_eq!(refresh["grant_type"], "refresh_token");
    assert_eq!(refresh["refresh_token"], "refresh-OLD");
    assert_eq!(refresh["client_id"], "test-client");
    let saved = state.join("codex-auth.json");
    let meta = std::fs::metadata(&saved).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    if is_root() {
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        assert_eq!(
            meta.uid(),
            nobody.uid.as_raw(),
            "saved by the unprivileged worker"
        );
    }
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(saved["tokens"]["refresh_token"], "refresh-NEW");
    let log = proxy.stderr_once_it_has("POST /v1/responses", std::time::Duration::from_secs(5));
    assert!(log.contains("POST /v1/responses"), "{log}");
    for secret in ["access-OLD", "access-NEW", "refresh-OLD", "refresh-NEW"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// An RFC 3339 timestamp for "now" without a date crate.
fn chrono_like_now() -> String {
    let output = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_can_come_from_a_field_of_auth_json() {
    let upstream = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let dir = tempfile::tempdir().unwrap();
    let auth_json = dir.path().join("auth.json");
    std::fs::write(&auth_json, r#"{"OPENAI_API_KEY":"sk-from-auth-json"}"#).unwrap();
    let proxy = start(vec![
        "--upstream-url".into(),
        upstream.url("/v1/responses"),
        "--upstream-auth-mode".into(),
        "apikey_auth_json".into(),
        "--codex-auth-file".into(),
        auth_json.to_str().unwrap().into(),
    ]);
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        upstream.seen()[0].header("authorization").unwrap(),
        "Bearer sk-from-auth-json"
    );
}

#[test]
fn missing_or_malformed_credentials_are_clear_startup_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("auth.json");
    std::fs::write(&bad, "{not json").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--upstream-auth-mode".into(), "chatgpt_token".into()],
            "needs a Codex auth.json",
        ),
        (vec!["--upstream-auth-mode".into(), "magic".into()], "magic"),
        (
            vec![
                "--upstream-auth-mode".into(),
                "apikey_auth_json".into(),
                "--codex-auth-file".into(),
                bad.to_str().unwrap().into(),
            ],
            "auth.json",
        ),
    ];
    for (args, expected) in cases {
        let output = std::process::Command::new(binary())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
}
