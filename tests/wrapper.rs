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

/// One Responses event: `type` first, as upstreams send it (the interpreter's fast path
/// reads the type from the front of the data).
fn event(kind: &str, fields: Value) -> String {
    let rest = fields.to_string();
    let data = format!("{{\"type\":{},{}", json!(kind), &rest[1..]);
    format!("event: {kind}\ndata: {data}\n\n")
}

/// A short Responses event stream answering `text` with these token counts, reporting
/// `model` as the upstream's `response.model` (none when `None`).
fn text_stream(text: &str, model: Option<&str>, input_tokens: u64, output_tokens: u64) -> String {
    let response = |status: &str, output: Value, usage: Value| {
        let mut response = json!({"id": "resp_gen", "object": "response",
            "created_at": 1763740000, "status": status, "output": output, "usage": usage});
        if let Some(model) = model {
            response["model"] = json!(model);
        }
        response
    };
    let message = json!({"id": "msg_gen", "type": "message", "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "annotations": [], "text": text}]});
    let usage = json!({"input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0}, "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens});
    [
        event(
            "response.created",
            json!({"sequence_number": 0, "response": response("in_progress", json!([]), Value::Null)}),
        ),
        event(
            "response.output_item.added",
            json!({"sequence_number": 1, "output_index": 0, "item": {"id": "msg_gen",
                "type": "message", "status": "in_progress", "content": [], "role": "assistant"}}),
        ),
        event(
            "response.output_text.delta",
            json!({"sequence_number": 2, "item_id": "msg_gen", "output_index": 0,
                "content_index": 0, "delta": text}),
        ),
        event(
            "response.output_item.done",
            json!({"sequence_number": 3, "output_index": 0, "item": message}),
        ),
        event(
            "response.completed",
            json!({"sequence_number": 4,
                "response": response("completed", json!([message]), usage)}),
        ),
    ]
    .concat()
}

/// The prompt a Responses request from the completions route carries.
fn prompt_of(seen: &Seen) -> String {
    seen.json()["input"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn complete(proxy: &Proxy, body: Value) -> reqwest::Response {
    http_client()
        .post(proxy.url("/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn effort_suffixes_with_an_underscore_reach_the_upstream_as_model_and_effort() {
    let upstream = responses_upstream("text.sse").await;
    // The configured effort is `high`: a suffix in the model name wins over it.
    let proxy = wrapper_proxy(&upstream, &["--reasoning-effort", "high"], &[]);
    let cases = [
        ("gpt-5_minimal", "gpt-5", "minimal"),
        ("gpt-5_low", "gpt-5", "low"),
        ("gpt-5_medium", "gpt-5", "medium"),
        ("gpt-5-codex_minimal", "gpt-5-codex", "minimal"),
        ("gpt-5-minimal", "gpt-5", "minimal"),
        ("gpt-5", "gpt-5", "high"),
        // Not an effort: passed on as it is.
        ("gpt-5_mini", "gpt-5_mini", "high"),
    ];
    for (i, (requested, model, effort)) in cases.iter().enumerate() {
        let mut body = simple_chat(false);
        body["model"] = json!(requested);
        let r = chat(&proxy, "", body).await;
        assert_eq!(r.status(), 200, "{requested}");
        let whole: Value = r.json().await.unwrap();
        check_chat_completion(&whole).unwrap();
        let sent = upstream.seen()[i].json();
        assert_eq!(
            (sent["model"].as_str(), sent["reasoning"]["effort"].as_str()),
            (Some(*model), Some(*effort)),
            "{requested}"
        );
    }
    // The completions route resolves names the same way.
    let r = complete(
        &proxy,
        json!({"model": "gpt-5_minimal", "prompt": "Say hi", "stream": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    check_completions_stream(&data_lines(&r.text().await.unwrap())).unwrap();
    let sent = upstream.seen()[cases.len()].json();
    assert_eq!(sent["model"], "gpt-5");
    assert_eq!(sent["reasoning"]["effort"], "minimal");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completions_prompt_array_gets_one_choice_per_prompt_in_order() {
    // Each prompt is answered with its own text and its own token counts; the answer to the
    // first prompt is held back until every prompt's request has arrived, so the choices'
    // order is the prompts' order, not the order in which the answers came.
    let (held_tx, held_rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let held_rx = std::sync::Mutex::new(Some(held_rx));
    let prompts = ["one", "two", "three"];
    let tokens = move |prompt: &str| {
        let i = prompts.iter().position(|p| *p == prompt).unwrap() as u64;
        (10 * (i + 1), i + 1)
    };
    let upstream = MockUpstream::start(move |seen| {
        let prompt = prompt_of(seen);
        let (input, output) = tokens(&prompt);
        let body = text_stream(&format!("answer to {prompt}"), None, input, output);
        if prompt == "one" {
            if let Some(chunks) = held_rx.lock().unwrap().take() {
                return Reply::Stream {
                    status: 200,
                    headers: vec![("content-type".into(), "text/event-stream".into())],
                    chunks,
                };
            }
        }
        Reply::sse(&body)
    })
    .await;
    let proxy = wrapper_proxy(&upstream, &[], &[]);
    let request = json!({"model": "gpt-5-high", "prompt": prompts, "stream": true,
        "stream_options": {"include_usage": true}});
    let streamed = tokio::spawn({
        let url = proxy.url("/v1/completions");
        async move {
            let r = http_client().post(url).json(&request).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    });
    let mut waited = 0;
    while upstream.seen().len() < prompts.len() {
        waited += 1;
        assert!(waited < 6000, "the proxy did not send every prompt at once");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    held_tx
        .send(text_stream("answer to one", None, 10, 1).into())
        .await
        .unwrap();
    drop(held_tx);
    let lines = data_lines(&streamed.await.unwrap());
    check_completions_stream(&lines).unwrap();
    let chunks = chunks(&lines);
    let mut texts = vec![String::new(); prompts.len()];
    let mut last_index = 0;
    for chunk in &chunks {
        for choice in chunk["choices"].as_array().unwrap() {
            let index = choice["index"].as_u64().unwrap() as usize;
            assert!(
                index >= last_index,
                "choices out of prompt order: {lines:?}"
            );
            last_index = index;
            texts[index].push_str(choice["text"].as_str().unwrap());
        }
    }
    assert_eq!(texts, ["answer to one", "answer to two", "answer to three"]);
    let finishes = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"].is_string())
        .count();
    assert_eq!(finishes, prompts.len());
    let usage: Vec<&Value> = chunks.iter().filter(|c| c["usage"].is_object()).collect();
    assert_eq!(usage.len(), 1, "one usage chunk for the whole request");
    assert_eq!(usage[0]["usage"]["prompt_tokens"], 10 + 20 + 30);
    assert_eq!(usage[0]["usage"]["completion_tokens"], 1 + 2 + 3);
    assert_eq!(usage[0]["usage"]["total_tokens"], 66);
    let mut sent: Vec<Value> = upstream.seen().iter().map(Seen::json).collect();
    sent.sort_by_key(|body| body["input"][0]["content"][0]["text"].to_string());
    for body in &sent {
        assert_eq!(body["model"], "gpt-5");
        assert_eq!(body["reasoning"]["effort"], "high");
        assert_eq!(body["input"].as_array().unwrap().len(), 1);
    }

    // Without streaming: one choice per prompt in a `text_completion`, usage summed.
    let r = complete(
        &proxy,
        json!({"model": "gpt-5", "prompt": ["three", "one", "two"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let whole: Value = r.json().await.unwrap();
    check_completion(&whole).unwrap();
    let choices = whole["choices"].as_array().unwrap();
    let texts: Vec<&str> = choices
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["answer to three", "answer to one", "answer to two"]);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["finish_reason"], "stop");
    }
    assert_eq!(whole["usage"]["prompt_tokens"], 60);
    assert_eq!(whole["usage"]["completion_tokens"], 6);

    // One prompt in an array is one choice; bad arrays are clear 400s that reach no upstream.
    let r = complete(&proxy, json!({"model": "gpt-5", "prompt": ["two"]})).await;
    let whole: Value = r.json().await.unwrap();
    assert_eq!(whole["choices"].as_array().unwrap().len(), 1);
    assert_eq!(whole["choices"][0]["text"], "answer to two");
    let before = upstream.seen().len();
    for (prompt, param) in [
        (json!([]), "prompt"),
        (json!(vec!["one"; 17]), "prompt"),
        (json!(["one", [1, 2]]), "prompt[1]"),
        (json!([1, 2, 3]), "prompt[0]"),
    ] {
        let r = complete(&proxy, json!({"model": "gpt-5", "prompt": prompt})).await;
        assert_eq!(r.status(), 400);
        let error: Value = r.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{error}");
        assert!(error["error"]["message"].as_str().unwrap().len() > 10);
    }
    assert_eq!(upstream.seen().len(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_prompt_fails_the_whole_completions_request() {
    let failed = fixture("responses-streams/failed.sse");
    let upstream = MockUpstream::start(move |seen| match prompt_of(seen).as_str() {
        "refused" => Reply::json(
            429,
            r#"{"error":{"message":"slow down","type":"rate_limit_error","code":"rate_limit_exceeded"}}"#,
        ),
        "failing" => Reply::sse(&failed),
        prompt => Reply::sse(&text_stream(prompt, None, 1, 1)),
    })
    .await;
    let proxy = wrapper_proxy(&upstream, &[], &[]);
    // An upstream refusal of any prompt is the answer, with its status.
    let r = complete(
        &proxy,
        json!({"model": "gpt-5", "prompt": ["ok", "refused"]}),
    )
    .await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "rate_limit_exceeded"
    );
    // A stream that fails after the first prompt's choice ends with the error.
    let r = complete(
        &proxy,
        json!({"model": "gpt-5", "prompt": ["ok", "failing", "ok"], "stream": true}),
    )
    .await;
    let lines = data_lines(&r.text().await.unwrap());
    assert_eq!(lines.last().unwrap(), "[DONE]");
    assert!(lines[lines.len() - 2].contains("\"error\""), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("\"index\":2")),
        "{lines:?}"
    );
    let r = complete(
        &proxy,
        json!({"model": "gpt-5", "prompt": ["ok", "failing"]}),
    )
    .await;
    assert_eq!(r.status(), 502);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
}

/// A Responses upstream replaying `text.sse` with `response.model` set to the model it was
/// sent plus a date, as OpenAI's API names a snapshot, or with no model at all.
async fn model_reporting_upstream(reports_model: bool) -> MockUpstream {
    let body = fixture("responses-streams/text.sse");
    MockUpstream::start(move |seen| {
        let sent = seen.json()["model"].as_str().unwrap().to_string();
        let stream = if reports_model {
            body.replace("gpt-5-2025-08-07", &format!("{sent}-2025-08-07"))
        } else {
            body.replace(r#""model":"gpt-5-2025-08-07","#, "")
        };
        Reply::sse(&stream)
    })
    .await
}

/// Every `model` the client sees from the chat and completions routes, streamed and not.
async fn reported_models(proxy: &Proxy, requested: &str) -> Vec<String> {
    let mut models = Vec::new();
    for stream in [true, false] {
        let mut body = simple_chat(stream);
        body["model"] = json!(requested);
        let mut completion = json!({"model": requested, "prompt": ["Say hi", "Say bye"],
            "stream": stream});
        if stream {
            // The usage chunk carries the model too.
            body["stream_options"] = json!({"include_usage": true});
            completion["stream_options"] = json!({"include_usage": true});
        }
        let r = chat(proxy, "", body).await;
        assert_eq!(r.status(), 200);
        let c = complete(proxy, completion).await;
        assert_eq!(c.status(), 200);
        if stream {
            for r in [r, c] {
                let lines = data_lines(&r.text().await.unwrap());
                let chunks = chunks(&lines);
                assert!(chunks.len() > 2);
                models.extend(
                    chunks
                        .iter()
                        .map(|c| c["model"].as_str().unwrap().to_string()),
                );
                if chunks[0]["object"] == "chat.completion.chunk" {
                    check_chat_stream(&lines).unwrap();
                } else {
                    check_completions_stream(&lines).unwrap();
                }
            }
        } else {
            let whole: Value = r.json().await.unwrap();
            check_chat_completion(&whole).unwrap();
            models.push(whole["model"].as_str().unwrap().to_string());
            let whole: Value = c.json().await.unwrap();
            check_completion(&whole).unwrap();
            models.push(whole["model"].as_str().unwrap().to_string());
        }
    }
    models
}

fn all_are(models: &[String], expected: &str) -> bool {
    !models.is_empty() && models.iter().all(|m| m == expected)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_model_reported_is_the_model_used_not_the_alias() {
    // The upstream names the model it used: that name is reported, as OpenAI's API does.
    let upstream = model_reporting_upstream(true).await;
    let proxy = wrapper_proxy(&upstream, &[], &[]);
    let models = reported_models(&proxy, "gpt-5-high").await;
    assert!(all_are(&models, "gpt-5-2025-08-07"), "{models:?}");
    assert!(upstream.seen().iter().all(|s| s.json()["model"] == "gpt-5"));
    // It does not: the model sent upstream, after aliases and the effort suffix.
    let silent = model_reporting_upstream(false).await;
    let proxy = wrapper_proxy(&silent, &[], &[]);
    let models = reported_models(&proxy, "gpt5_high").await;
    assert!(all_are(&models, "gpt-5"), "{models:?}");
    let models = reported_models(&proxy, "codex-mini-minimal").await;
    assert!(all_are(&models, "codex-mini-latest"), "{models:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn under_debug_model_the_forced_model_is_reported() {
    // The wrapper's own setting name (DEBUG_MODEL) and this proxy's flag (--debug-model).
    let silent = model_reporting_upstream(false).await;
    let by_env = wrapper_proxy(&silent, &[], &[("DEBUG_MODEL", "gpt-5-codex")]);
    let models = reported_models(&by_env, "gpt-5-high").await;
    assert!(all_are(&models, "gpt-5-codex"), "{models:?}");
    for seen in silent.seen() {
        let sent = seen.json();
        assert_eq!(sent["model"], "gpt-5-codex");
        // The requested suffix still chooses the effort when the forced name has none.
        assert_eq!(sent["reasoning"]["effort"], "high");
    }
    let reporting = model_reporting_upstream(true).await;
    let by_flag = wrapper_proxy(&reporting, &["--debug-model", "codex_minimal"], &[]);
    let models = reported_models(&by_flag, "gpt-5").await;
    assert!(
        all_are(&models, "codex-mini-latest-2025-08-07"),
        "{models:?}"
    );
    for seen in reporting.seen() {
        let sent = seen.json();
        assert_eq!(sent["model"], "codex-mini-latest");
        assert_eq!(sent["reasoning"]["effort"], "minimal");
    }
}

/// A short Chat Completions event stream answering `text`, usage in a trailing chunk.
fn chat_text_stream(text: &str, prompt_tokens: u64) -> String {
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut chunk = json!({"id": "chatcmpl-gen", "object": "chat.completion.chunk",
            "created": 1795268307, "model": "upstream-model", "choices": choices});
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        format!("data: {chunk}\n\n")
    };
    [
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": text},
                "logprobs": null, "finish_reason": null}]),
            None,
        ),
        chunk(
            json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}]),
            None,
        ),
        chunk(
            json!([]),
            Some(
                json!({"prompt_tokens": prompt_tokens, "completion_tokens": 1,
                "total_tokens": prompt_tokens + 1}),
            ),
        ),
        "data: [DONE]\n\n".to_string(),
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread")]
async fn on_a_chat_upstream_a_prompt_array_gets_one_choice_per_prompt() {
    let prompts = ["alpha", "beta", "gamma"];
    let upstream = MockUpstream::start(move |seen| {
        let sent = seen.json()["messages"].to_string();
        let i = prompts.iter().position(|p| sent.contains(p)).unwrap();
        Reply::sse(&chat_text_stream(
            &format!("answer to {}", prompts[i]),
            10 * (i as u64 + 1),
        ))
    })
    .await;
    let proxy = Proxy::start_with(ProxyOptions {
        args: vec![
            "--upstream-url".into(),
            upstream.url("/v1/chat/completions"),
            "--bridge-to-chat".into(),
            "--wrapper-routes".into(),
        ],
        ..Default::default()
    });
    let r = complete(
        &proxy,
        json!({"model": "gpt-5", "prompt": prompts, "stream": true,
            "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let lines = data_lines(&r.text().await.unwrap());
    check_completions_stream(&lines).unwrap();
    let mut texts = vec![String::new(); prompts.len()];
    for chunk in chunks(&lines) {
        for choice in chunk["choices"].as_array().unwrap() {
            texts[choice["index"].as_u64().unwrap() as usize]
                .push_str(choice["text"].as_str().unwrap());
        }
    }
    assert_eq!(
        texts,
        ["answer to alpha", "answer to beta", "answer to gamma"]
    );
    let usage = chunks(&lines)
        .into_iter()
        .find(|c| c["usage"].is_object())
        .expect("usage chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], 60);
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(upstream.seen().len(), 3);
    assert!(upstream
        .seen()
        .iter()
        .all(|s| s.json()["messages"].is_array()));

    let r = complete(
        &proxy,
        json!({"model": "gpt-5", "prompt": ["gamma", "alpha"]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let whole: Value = r.json().await.unwrap();
    check_completion(&whole).unwrap();
    let texts: Vec<&str> = whole["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["answer to gamma", "answer to alpha"]);
    assert_eq!(whole["usage"]["prompt_tokens"], 40);
}
