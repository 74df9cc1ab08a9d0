//! Black-box tests of the wrapper routes: OpenAI Chat Completions, Completions, Models and
//! Ollama clients → the real binary with `--wrapper-routes` → real hyper upstreams.

mod common;

use common::*;
use openai_conformance::chat::{
    check_chat_completion, check_chat_stream, check_completion, check_completions_stream,
};
use openai_wire::sse::SseReader;
use serde_json::{json, Value};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// A Responses upstream replaying one recorded stream.
async fn responses_upstream(stream: &'static str) -> MockUpstream {
    let body = fixture(&format!("responses-streams/{stream}"));
    MockUpstream::start(move |_| Reply::sse(&body)).await
}

fn wrapper_proxy(upstream: &MockUpstream, extra: &[&str], env: &[(&str, &str)]) -> Proxy {
    let mut args = vec![
        "--upstream-url".to_string(),
        upstream.url("/v1/responses"),
        "--wrapper-routes".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Proxy::start_with(ProxyOptions {
        args,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

fn data_lines(body: &str) -> Vec<String> {
    let mut reader = SseReader::default();
    reader.push(body.as_bytes());
    let mut out = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        out.push(event.data.to_string());
    }
    out
}

fn chunks(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .filter(|l| *l != "[DONE]")
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn chat(proxy: &Proxy, prefix: &str, body: Value) -> reqwest::Response {
    http_client()
        .post(proxy.url(&format!("{prefix}/v1/chat/completions")))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn simple_chat(stream: bool) -> Value {
    json!({
        "model": "gpt-5",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": "Hello"}
        ]
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_stream_is_conforming_and_the_upstream_gets_a_responses_request_with_the_key() {
    let upstream = responses_upstream("text.sse").await;
    let proxy = wrapper_proxy(&upstream, &[], &[]);
    let response = chat(&proxy, "", simple_chat(true)).await;
    assert_eq!(response.status(), 200);
    let lines = data_lines(&response.text().await.unwrap());
    check_chat_stream(&lines).unwrap();
    assert_eq!(lines.last().unwrap(), "[DONE]");
    let seen = &upstream.seen()[0];
    assert_eq!(seen.uri, "/v1/responses");
    assert_eq!(
        seen.header("authorization").unwrap(),
        format!("Bearer {TEST_KEY}")
    );
    let body = seen.json();
    assert_eq!(body["stream"], true);
    assert_eq!(body["store"], false);
    // Both the system and the developer message survive, in order.
    let text = body.to_string();
    let system = text.find("Be brief.").expect("system message kept");
    let developer = text
        .find("Answer in English.")
        .expect("developer message kept");
    assert!(system < developer);
    assert!(body["prompt_cache_key"].is_string());
    assert!(seen.header("session_id").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn parallel_tool_calls_get_their_own_indices_and_finish_with_tool_calls() {
    let upstream = responses_upstream("parallel-tools.sse").await;
    let proxy = wrapper_proxy(&upstream, &[], &[]);
    let mut body = simple_chat(true);
    body["stream_options"] = json!({"include_usage": true});
    body["tools"] = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let lines = data_lines(&chat(&proxy, "", body.clone()).await.text().await.unwrap());
    check_chat_stream(&lines).unwrap();
    let chunks = chunks(&lines);
    let mut indices = std::collections::BTreeSet::new();
    for chunk in &chunks {
        for call in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            indices.insert(call["index"].as_u64().unwrap());
        }
    }
    assert_eq!(indices.into_iter().collect::<Vec<_>>(), vec![0, 1]);
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["finish_reason"] == "tool_calls"));
    let usage = chunks
        .iter()
        .find(|c| c["usage"].is_object())
        .expect("usage chunk");
    assert!(usage["choices"].as_array().unwrap().is_empty());
    assert!(usage["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    body["stream"] = json!(false);
    let whole: Value = chat(&proxy, "", body).await.json().await.unwrap();
    check_chat_completion(&whole).unwrap();
    assert_eq!(whole["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        whole["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(whole["usage"]["total_tokens"].as_u64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_reasoning_output_mode_and_the_prefixed_routes() {
    let upstream = responses_upstream("reasoning.sse").await;
    let tagged = wrapper_proxy(&upstream, &["--reasoning-output-mode", "tagged"], &[]);
    let lines = data_lines(
        &chat(&tagged, "", simple_chat(true))
            .await
            .text()
            .await
            .unwrap(),
    );
    check_chat_stream(&lines).unwrap();
    let content: String = chunks(&lines)
        .iter()
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert!(
        content.starts_with("<think>") && content.contains("</think>"),
        "{content}"
    );
    let not_all = chat(&tagged, "/openai", simple_chat(true)).await;
    assert_eq!(not_all.status(), 404);

    let all = wrapper_proxy(&upstream, &[], &[("REASONING_OUTPUT_MODE", "all")]);
    for (prefix, field) in [
        ("", "reasoning_content"),
        ("/openai", "reasoning_content"),
        ("/r1", "reasoning_content"),
        ("/o3", "reasoning"),
        ("/hidden", ""),
    ] {
        let lines = data_lines(
            &chat(&all, prefix, simple_chat(true))
                .await
                .text()
                .await
                .unwrap(),
        );
        check_chat_stream(&lines).unwrap_or_else(|e| panic!("{prefix}: {e}"));
        let has_reasoning = chunks(&lines).iter().any(|c| {
            let delta = &c["choices"][0]["delta"];
            delta.get("reasoning_content").is_some() || delta.get("reasoning").is_some()
        });
        assert_eq!(has_reasoning, !field.is_empty(), "{prefix}");
        if !field.is_empty() {
            assert!(
                chunks(&lines)
                    .iter()
                    .any(|c| c["choices"][0]["delta"].get(field).is_some()),
                "{prefix}"
            );
        }
    }
    let models = http_client()
        .get(all.url("/tagged/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_stream_and_body() {
    let upstream = responses_upstream("text.sse").await;
    let proxy = wrapper_proxy(&upstream, &[], &[]);
    let streamed = http_client()
        .post(proxy.url("/v1/completions"))
        .json(&json!({"model": "gpt-5", "prompt": "Say hi", "stream": true}))
        .send()
        .await
        .unwrap();
    let lines = data_lines(&streamed.text().await.unwrap());
    check_completions_stream(&lines).unwrap();
    let whole: Value = http_client()
        .post(proxy.url("/v1/completions"))
        .json(&json!({"model": "gpt-5", "prompt": "Say hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    check_completion(&whole).unwrap();
    assert_eq!(whole["object"], "text_completion");
}

#[tokio::test(flavor = "multi_thread")]
async fn models_default_and_exposed() {
    let upstream = responses_upstream("text.sse").await;
    let proxy = wrapper_proxy(&upstream, &[], &[]);
    let list: Value = http_client()
        .get(proxy.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"gpt-5") && ids.contains(&"codex-mini-latest"),
        "{ids:?}"
    );
    let exposed = wrapper_proxy(&upstream, &[], &[("EXPOSE_MODELS", "a-model, b-model")]);
    let list: Value = http_client()
        .get(exposed.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a-model", "b-model"]);
    assert!(upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn client_access_key_guards_everything_but_health_and_preflight() {
    let upstream = responses_upstream("text.sse").await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("client-key");
    std::fs::write(&key_file, "client-secret-1\n").unwrap();
    let proxy = wrapper_proxy(
        &upstream,
        &["--client-api-key-file", key_file.to_str().unwrap()],
        &[],
    );
    for path in ["/", "/health"] {
        let r = http_client().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");
    }
    let preflight = http_client()
        .request(reqwest::Method::OPTIONS, proxy.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let cases = [
        (None, "Missing Authorization header"),
        (
            Some("Basic abc"),
            "Invalid Authorization header format. Expected: Bearer <token>",
        ),
        (Some("Bearer wrong"), "Invalid API key"),
    ];
    for path in [
        "/v1/models",
        "/v1/chat/completions",
        "/v1/responses",
        "/api/tags",
    ] {
        for (auth, message) in cases {
            let mut request = http_client()
                .post(proxy.url(path))
                .json(&simple_chat(false));
            if path.ends_with("models") || path.ends_with("tags") {
                request = http_client().get(proxy.url(path));
            }
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} {auth:?}");
            assert_eq!(
                r.json::<Value>().await.unwrap()["error"]["message"],
                message
            );
        }
    }
    let ok = http_client()
        .get(proxy.url("/v1/models"))
        .header("authorization", "Bearer client-secret-1")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let chat_ok = http_client()
        .post(proxy.url("/v1/chat/completions"))
        .header("authorization", "Bearer client-secret-1")
        .json(&simple_chat(false))
        .send()
        .await
        .unwrap();
    assert_eq!(chat_ok.status(), 200);
    // The client's key never travels upstream: the proxy's key does.
    assert_eq!(
        upstream.seen()[0].header("authorization").unwrap(),
        format!("Bearer {TEST_KEY}")
    );
    assert!(!proxy.stderr().contains("client-secret-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_become_errors_a_client_can_read() {
    let upstream = responses_upstream("failed.sse").await;
    let proxy = wrapper_proxy(&upstream, &[], &[]);
    let whole = chat(&proxy, "", simple_chat(false)).await;
    assert_eq!(whole.status(), 502);
    assert!(whole.json::<Value>().await.unwrap()["error"]["message"].is_string());
    let streamed = chat(&proxy, "", simple_chat(true))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        data_lines(&streamed)
            .iter()
            .any(|l| l.contains("\"error\"")),
        "{streamed}"
    );

    let rejecting = MockUpstream::start(|_| Reply::json(401, r#"{"error":{"message":"bad upstream key","type":"invalid_request_error","code":"invalid_api_key"}}"#)).await;
    let proxy = wrapper_proxy(&rejecting, &[], &[]);
    let r = chat(&proxy, "", simple_chat(true)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );

    let bad = http_client()
        .post(proxy.url("/v1/chat/completions"))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Invalid JSON body"));
    for (body, param) in [
        (json!({"model": "m", "messages": "hi"}), "messages"),
        (
            json!({"model": "m", "n": 2, "messages": [{"role": "user", "content": "x"}]}),
            "n",
        ),
        (
            json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
    ] {
        let r = chat(&proxy, "", body).await;
        assert_eq!(r.status(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["param"], param);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ollama_pass_through_streams_ndjson_and_is_a_clear_404_when_unset() {
    let ollama = MockUpstream::start(|seen| {
        if seen.uri.starts_with("/api/chat") {
            Reply::Full {
                status: 200,
                headers: vec![("content-type".into(), "application/x-ndjson".into())],
                body: bytes::Bytes::from_static(b"{\"message\":{\"content\":\"Hel\"},\"done\":false}\n{\"message\":{\"content\":\"lo\"},\"done\":true}\n"),
            }
        } else {
            Reply::json(200, r#"{"models":[{"name":"llama3"}]}"#)
        }
    })
    .await;
    let upstream = responses_upstream("text.sse").await;
    let proxy = wrapper_proxy(
        &upstream,
        &[],
        &[("OLLAMA_API_URL", &format!("http://{}", ollama.addr))],
    );
    let r = http_client()
        .post(proxy.url("/api/chat"))
        .header("authorization", "Bearer should-not-pass")
        .json(&json!({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert_eq!(r.text().await.unwrap().lines().count(), 2);
    let tags = http_client()
        .get(proxy.url("/api/tags?verbose=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        tags.json::<Value>().await.unwrap()["models"][0]["name"],
        "llama3"
    );
    let seen = ollama.seen();
    assert_eq!(seen[0].uri, "/api/chat");
    assert!(seen[0].header("authorization").is_none());
    assert_eq!(seen[1].uri, "/api/tags?verbose=1");
    assert!(
        upstream.seen().is_empty(),
        "Ollama traffic went to the Responses upstream"
    );

    let without = wrapper_proxy(&upstream, &[], &[]);
    let r = http_client()
        .get(without.url("/api/tags"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("OLLAMA_API_URL"));
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_chat_upstream_chat_passes_through_and_completions_are_chained() {
    let chat_stream = fixture("chat-streams/text.sse");
    let upstream = MockUpstream::start(move |_| Reply::sse(&chat_stream)).await;
    let proxy = Proxy::start_with(ProxyOptions {
        args: vec![
            "--upstream-url".into(),
            upstream.url("/v1/chat/completions"),
            "--bridge-to-chat".into(),
            "--wrapper-routes".into(),
        ],
        ..Default::default()
    });
    let original = simple_chat(true);
    let r = chat(&proxy, "", original.clone()).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    assert_eq!(
        upstream.seen()[0].json(),
        original,
        "chat body passed through unchanged"
    );
    assert_eq!(
        upstream.seen()[0].header("authorization").unwrap(),
        format!("Bearer {TEST_KEY}")
    );

    let completion = http_client()
        .post(proxy.url("/v1/completions"))
        .json(&json!({"model": "gpt-5", "prompt": "Say hi", "stream": true}))
        .send()
        .await
        .unwrap();
    let lines = data_lines(&completion.text().await.unwrap());
    check_completions_stream(&lines).unwrap();
    let text: String = chunks(&lines)
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert!(!text.is_empty());
    assert!(
        upstream.seen()[1].json()["messages"].is_array(),
        "completions reached the chat upstream as chat"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_header_forwarding_modes() {
    let upstream = responses_upstream("text.sse").await;
    let safe = wrapper_proxy(&upstream, &[], &[("FORWARD_CLIENT_HEADERS_MODE", "safe")]);
    http_client()
        .post(safe.url("/v1/chat/completions"))
        .header("user-agent", "my-chat-ui/2.0")
        .header("x-private", "not-forwarded")
        .json(&simple_chat(false))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let codex = wrapper_proxy(
        &upstream,
        &[],
        &[("FORWARD_CLIENT_HEADERS_MODE", "override-codex")],
    );
    chat(&codex, "", simple_chat(false))
        .await
        .text()
        .await
        .unwrap();
    let seen = upstream.seen();
    assert_eq!(seen[0].header("user-agent").unwrap(), "my-chat-ui/2.0");
    assert!(seen[0].header("x-private").is_none());
    assert_eq!(seen[1].header("originator").unwrap(), "codex_cli_rs");
    assert!(seen[1]
        .header("user-agent")
        .unwrap()
        .starts_with("codex_cli_rs/"));
    let bad = std::process::Command::new(binary())
        .args([
            "--wrapper-routes",
            "--forward-client-headers-mode",
            "sometimes",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
