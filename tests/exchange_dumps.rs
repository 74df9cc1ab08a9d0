//! Black-box tests of `--dump-dir`: the real binary in front of the tests' own upstreams
//! (a Responses mock, a Chat Completions mock for the bridge), its exchanges dumped as JSON
//! files in the reference proxy's shape; credentials redacted, the directory private to the
//! worker user, the caps and the per-user filter kept, a planted directory refused.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// What a client sends as its own credentials: never in a dump either.
const CLIENT_SECRET: &str = "client-secret-token-4711";

/// A private parent (root's, mode 0700) and the dump directory path inside it.
fn dump_location() -> (tempfile::TempDir, PathBuf) {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("dumps");
    (parent, dir)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The dump files once `count` response files are there (they are written a moment after
/// the response ends), as (name, JSON) in name order.
fn dumps_once(dir: &Path, responses: usize) -> Vec<(String, Value)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let names = names(dir);
        let done = names
            .iter()
            .filter(|n| n.ends_with("-response.json"))
            .count();
        if done >= responses {
            return names
                .into_iter()
                .map(|name| {
                    let text = std::fs::read_to_string(dir.join(&name)).unwrap();
                    let value = serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("{name} is not JSON ({e}): {text}"));
                    (name, value)
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {responses} response dumps appeared: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn one<'a>(dumps: &'a [(String, Value)], suffix: &str) -> &'a Value {
    let found: Vec<_> = dumps.iter().filter(|(n, _)| n.ends_with(suffix)).collect();
    assert_eq!(found.len(), 1, "one {suffix}: {dumps:?}");
    &found[0].1
}

fn header<'a>(dump: &'a Value, name: &str) -> Option<&'a str> {
    dump["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == name)
        .and_then(|h| h["value"].as_str())
}

/// No byte of the key or of the client's credentials is in any file of the directory.
fn assert_no_secrets(dir: &Path) {
    for name in names(dir) {
        let text = std::fs::read_to_string(dir.join(&name)).unwrap();
        for secret in [TEST_KEY, CLIENT_SECRET, "session=abc", "theirs=1"] {
            assert!(!text.contains(secret), "{name} holds {secret:?}:\n{text}");
        }
    }
}

fn worker_uid(proxy: &Proxy) -> u32 {
    proc_status(proxy.worker_pid())["Uid"]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Every request a client could dress with credentials: its own Authorization, cookies, an
/// api-key header, and the key itself in its prompt.
async fn post_with_credentials(proxy: &Proxy, body: &Value) -> reqwest::Response {
    http_client()
        .post(proxy.url("/v1/responses"))
        .header("authorization", format!("Bearer {CLIENT_SECRET}"))
        .header("cookie", "session=abc")
        .header("x-api-key", CLIENT_SECRET)
        .header("x-trace", "kept")
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_strict_exchange_is_dumped_in_the_reference_shape_without_credentials() {
    require_root("the dump directory is given to the worker user");
    let answer = json!({"id": "resp_1", "object": "response", "status": "completed", "output": []});
    let answer_text = answer.to_string();
    let mock = MockUpstream::start(move |_| Reply::Full {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("set-cookie".into(), "theirs=1".into()),
            ("x-echo".into(), format!("you sent {TEST_KEY}")),
        ],
        body: answer_text.clone().into(),
    })
    .await;
    let (_parent, dir) = dump_location();
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--dump-dir", dir.to_str().unwrap()],
    );
    let body = json!({"model": "gpt-test", "input": format!("my key is {TEST_KEY} ok")});
    let response = post_with_credentials(&proxy, &body).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();

    let dumps = dumps_once(&dir, 1);
    assert_eq!(dumps.len(), 2, "{dumps:?}");
    let (request_name, response_name) = (&dumps[0].0, &dumps[1].0);
    let prefix = request_name.strip_suffix("-request.json").unwrap();
    assert_eq!(response_name, &format!("{prefix}-response.json"));
    let (number, millis) = prefix.split_once('-').unwrap();
    assert_eq!(number.len(), 6, "{prefix}");
    assert!(number.parse::<u64>().is_ok() && millis.parse::<u64>().is_ok());

    let request = one(&dumps, "-request.json");
    assert_eq!(request["method"], "POST");
    assert_eq!(request["url"], "/v1/responses");
    assert_eq!(request["uid"], 0, "the caller is root");
    assert_eq!(request["body"]["model"], "gpt-test");
    assert!(request["body"]["input"]
        .as_str()
        .unwrap()
        .starts_with("my key is "));
    for name in ["authorization", "cookie", "x-api-key"] {
        assert_eq!(header(request, name), Some("[REDACTED]"), "{name}");
    }
    assert_eq!(header(request, "x-trace"), Some("kept"));

    let response = one(&dumps, "-response.json");
    assert_eq!(response["status"], 200);
    assert_eq!(response["body"], answer);
    assert_eq!(response["termination"], "eof");
    assert_eq!(response["uid"], 0);
    assert_eq!(header(response, "content-type"), Some("application/json"));
    assert_eq!(header(response, "set-cookie"), Some("[REDACTED]"));
    assert!(header(response, "x-echo").unwrap().starts_with("you sent "));
    assert_no_secrets(&dir);

    // Private to the worker user: the directory 0700, the files 0600, both theirs.
    let worker = worker_uid(&proxy);
    assert_ne!(worker, 0);
    let meta = std::fs::symlink_metadata(&dir).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700);
    assert_eq!(meta.uid(), worker);
    for (name, _) in &dumps {
        let meta = std::fs::symlink_metadata(dir.join(name)).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o777, 0o600, "{name}");
        assert_eq!(meta.uid(), worker, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_bridge_exchange_is_dumped_once_the_stream_ends() {
    require_root("the dump directory is given to the worker user");
    let chat = std::fs::read_to_string(format!(
        "{}/tests/fixtures/chat-streams/text.sse",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mock = MockUpstream::start(move |_| Reply::sse(&chat)).await;
    let (_parent, dir) = dump_location();
    let proxy = Proxy::start(
        &mock.url("/v1/chat/completions"),
        &["--bridge-to-chat", "--dump-dir", dir.to_str().unwrap()],
    );
    let body = json!({"model": "gpt-test", "stream": true, "input": "hello"});
    let response = post_with_credentials(&proxy, &body).await;
    assert_eq!(response.status(), 200);
    let streamed = response.text().await.unwrap();
    assert!(streamed.contains("response.completed"));

    let dumps = dumps_once(&dir, 1);
    let request = one(&dumps, "-request.json");
    assert_eq!(request["method"], "POST");
    assert_eq!(request["url"], "/v1/responses");
    assert_eq!(request["body"], body);
    assert_eq!(header(request, "authorization"), Some("[REDACTED]"));
    let response = one(&dumps, "-response.json");
    assert_eq!(response["status"], 200);
    assert_eq!(response["termination"], "eof");
    // The stream as the client got it, whole.
    assert_eq!(response["body"].as_str(), Some(streamed.as_str()));
    assert!(header(response, "content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_no_secrets(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrapper_exchanges_are_dumped_as_the_client_saw_them() {
    require_root("the dump directory is given to the worker user");
    let stream = std::fs::read_to_string(format!(
        "{}/tests/fixtures/responses-streams/text.sse",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mock = MockUpstream::start(move |_| Reply::sse(&stream)).await;
    let (_parent, dir) = dump_location();
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--wrapper-routes", "--dump-dir", dir.to_str().unwrap()],
    );
    let body = json!({"model": "gpt-5", "stream": false,
        "messages": [{"role": "user", "content": format!("Hello {TEST_KEY}")}]});
    let response = http_client()
        .post(proxy.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {CLIENT_SECRET}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["object"], "chat.completion");

    let dumps = dumps_once(&dir, 1);
    let request = one(&dumps, "-request.json");
    assert_eq!(request["method"], "POST");
    assert_eq!(request["url"], "/v1/chat/completions");
    assert_eq!(request["body"]["model"], "gpt-5");
    assert_eq!(header(request, "authorization"), Some("[REDACTED]"));
    let response = one(&dumps, "-response.json");
    assert_eq!(response["status"], 200);
    // The converted answer the client got, not the upstream's stream.
    assert_eq!(response["body"], answer);
    assert_no_secrets(&dir);

    // A route without a request body is dumped too, with an empty one.
    let models = http_client()
        .get(proxy.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let models: Value = models.json().await.unwrap();
    let dumps = dumps_once(&dir, 2);
    let request = &dumps
        .iter()
        .find(|(n, v)| n.ends_with("-request.json") && v["method"] == "GET")
        .expect("the GET is dumped")
        .1;
    assert_eq!(request["url"], "/v1/models");
    assert_eq!(request["body"], "");
    let prefix = dumps
        .iter()
        .find(|(_, v)| std::ptr::eq(v, request))
        .unwrap()
        .0
        .strip_suffix("-request.json")
        .unwrap()
        .to_owned();
    let response = &dumps
        .iter()
        .find(|(n, _)| *n == format!("{prefix}-response.json"))
        .unwrap()
        .1;
    assert_eq!(response["body"], models);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_from_auth_json_is_cleaned_out_of_bridge_dumps_too() {
    require_root("the dump directory is given to the worker user");
    const AUTH_JSON_KEY: &str = "sk-authjson-0123456789abcdefSECRET2";
    let chat = std::fs::read_to_string(format!(
        "{}/tests/fixtures/chat-streams/text.sse",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mock = MockUpstream::start(move |_| Reply::sse(&chat)).await;
    let (parent, dir) = dump_location();
    let auth_json = parent.path().join("auth.json");
    std::fs::write(
        &auth_json,
        json!({"OPENAI_API_KEY": AUTH_JSON_KEY}).to_string(),
    )
    .unwrap();
    let proxy = Proxy::start(
        &mock.url("/v1/chat/completions"),
        &[
            "--bridge-to-chat",
            "--upstream-auth-mode",
            "apikey_auth_json",
            "--codex-auth-file",
            auth_json.to_str().unwrap(),
            "--dump-dir",
            dir.to_str().unwrap(),
        ],
    );
    let body = json!({"model": "gpt-test", "stream": true,
        "input": format!("is {AUTH_JSON_KEY} the key?")});
    let response = post_with_credentials(&proxy, &body).await;
    assert_eq!(response.status(), 200);
    response.text().await.unwrap();
    assert_eq!(
        mock.seen()[0].header("authorization").unwrap(),
        format!("Bearer {AUTH_JSON_KEY}")
    );
    let dumps = dumps_once(&dir, 1);
    let request = one(&dumps, "-request.json");
    assert!(request["body"]["input"]
        .as_str()
        .unwrap()
        .starts_with("is "));
    for name in names(&dir) {
        let text = std::fs::read_to_string(dir.join(&name)).unwrap();
        assert!(!text.contains(AUTH_JSON_KEY), "{name}:\n{text}");
    }
    assert_no_secrets(&dir);
}

/// A Responses stream whose one output item is an assistant message saying `text`.
fn responses_stream(id: &str, text: &str) -> String {
    let item = json!({"type": "message", "id": format!("msg_{id}"), "role": "assistant", "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}]});
    [
        json!({"type": "response.created", "response": {"id": id, "object": "response", "status": "in_progress", "output": []}}),
        json!({"type": "response.output_item.done", "output_index": 0, "item": item}),
        json!({"type": "response.completed", "response": {"id": id, "object": "response", "status": "completed", "output": [item]}}),
    ]
    .iter()
    .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_websocket_turn_is_dumped_as_the_post_it_is_served_as() {
    require_root("the dump directory is given to the worker user");
    let mock =
        MockUpstream::start(|_| Reply::sse(&responses_stream("resp_ws_1", "hi there"))).await;
    let (_parent, dir) = dump_location();
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--dump-dir", dir.to_str().unwrap()],
    );
    let url = format!("ws://127.0.0.1:{}/v1/responses", proxy.port);
    let (mut socket, handshake) = tokio_tungstenite::connect_async(ws_request(&url))
        .await
        .unwrap();
    assert_eq!(handshake.status(), 101);
    let create = json!({"type": "response.create", "model": "gpt-test", "stream": true,
        "store": false, "input": [{"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "hello"}]}]});
    completed_turn(&mut socket, &create).await;

    // The handshake is not an exchange of its own: one turn, two files.
    let dumps = dumps_once(&dir, 1);
    assert_eq!(dumps.len(), 2, "{dumps:?}");
    let request = one(&dumps, "-request.json");
    assert_eq!(request["method"], "POST");
    assert_eq!(request["url"], "/v1/responses");
    assert_eq!(request["websocket"], true);
    assert_eq!(request["uid"], 0);
    assert_eq!(request["body"]["model"], "gpt-test");
    assert_eq!(request["body"]["input"][0]["content"][0]["text"], "hello");
    assert_eq!(header(request, "authorization"), Some("[REDACTED]"));
    assert_eq!(header(request, "cookie"), Some("[REDACTED]"));
    let response = one(&dumps, "-response.json");
    assert_eq!(response["status"], 200);
    assert_eq!(response["termination"], "eof");
    assert!(response["body"]
        .as_str()
        .unwrap()
        .contains("\"response.completed\""));
    assert_no_secrets(&dir);
    socket.close(None).await.ok();
}

/// Strict mode's relay (an upstream with a WebSocket of its own): each `response.create` is
/// dumped as the handshake's GET with the message as its body, and its answer as the
/// upstream's events for that response, one message a line.
#[tokio::test(flavor = "multi_thread")]
async fn each_relayed_websocket_turn_is_dumped_with_the_upstreams_events() {
    require_root("the dump directory is given to the worker user");
    let upstream = WsUpstream::start(|_request, id| {
        vec![
            json!({"type": "response.created", "response": {"id": id, "output": []}}),
            json!({"type": "response.output_text.delta", "delta": format!("relayed {id}")}),
            json!({"type": "response.completed", "response": {"id": id, "status": "completed", "output": []}}),
        ]
    })
    .await;
    let (_parent, dir) = dump_location();
    let proxy = Proxy::start(
        &upstream.url(),
        &[
            "--websocket-upstream",
            "relay",
            "--dump-dir",
            dir.to_str().unwrap(),
        ],
    );
    let url = format!("ws://127.0.0.1:{}/v1/responses", proxy.port);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_request(&url))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for text in ["first", "second"] {
        let create = json!({"type": "response.create", "model": "gpt-ws", "input": text});
        let completed = completed_turn(&mut socket, &create).await;
        ids.push(completed["response"]["id"].as_str().unwrap().to_owned());
    }
    socket.close(None).await.ok();

    let dumps = dumps_once(&dir, 2);
    assert_eq!(dumps.len(), 4, "{dumps:?}");
    // In name order: request and response of the first turn, then of the second.
    for (turn, (text, id)) in ["first", "second"].iter().zip(&ids).enumerate() {
        let request = &dumps[turn * 2].1;
        assert!(dumps[turn * 2].0.ends_with("-request.json"), "{dumps:?}");
        assert_eq!(request["method"], "GET");
        assert_eq!(request["url"], "/v1/responses");
        assert_eq!(request["websocket"], true);
        assert_eq!(request["uid"], 0);
        assert_eq!(request["body"]["type"], "response.create");
        assert_eq!(request["body"]["input"], *text);
        assert_eq!(header(request, "authorization"), Some("[REDACTED]"));
        let response = &dumps[turn * 2 + 1].1;
        assert_eq!(response["status"], 200);
        assert_eq!(response["termination"], "eof");
        let events: Vec<Value> = response["body"]
            .as_str()
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.output_text.delta",
                "response.completed"
            ]
        );
        assert_eq!(events[1]["delta"], format!("relayed {id}"));
    }
    assert_no_secrets(&dir);
}

type WsClient =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends `create` and reads events until `response.completed`, which it returns.
async fn completed_turn(socket: &mut WsClient, create: &Value) -> Value {
    socket
        .send(Message::text(create.to_string()))
        .await
        .unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let event: Value = serde_json::from_str(text.as_str()).unwrap();
            if event["type"] == "response.completed" {
                return event;
            }
        }
    }
}

/// A WebSocket handshake carrying the same credentials as [`post_with_credentials`].
fn ws_request(url: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {CLIENT_SECRET}").parse().unwrap(),
    );
    headers.insert("cookie", "session=abc".parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn the_oldest_dumps_are_removed_beyond_the_file_cap() {
    require_root("the dump directory is given to the worker user");
    let mock = MockUpstream::start(|seen| {
        let n = seen.json()["n"].as_u64().unwrap();
        Reply::json(200, &json!({"id": format!("resp_{n}")}).to_string())
    })
    .await;
    let (_parent, dir) = dump_location();
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &["--dump-dir", dir.to_str().unwrap(), "--dump-max-files", "4"],
    );
    for n in 1..=5u64 {
        let response = post_with_credentials(&proxy, &json!({"n": n})).await;
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        // One exchange at a time, so that the files come in order.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !names(&dir).iter().any(|name| {
            name.ends_with("-response.json")
                && std::fs::read_to_string(dir.join(name))
                    .is_ok_and(|t| t.contains(&format!("resp_{n}")))
        }) {
            assert!(Instant::now() < deadline, "no dump of exchange {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let dumps = dumps_once(&dir, 2);
    assert_eq!(dumps.len(), 4, "{:?}", names(&dir));
    let kept: Vec<u64> = dumps
        .iter()
        .filter(|(n, _)| n.ends_with("-request.json"))
        .map(|(_, v)| v["body"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(kept, vec![4, 5], "the newest two exchanges are kept");
    assert_no_secrets(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_listed_users_are_dumped() {
    require_root("a test user makes requests of its own");
    let mock = MockUpstream::start(|_| Reply::json(200, r#"{"id":"resp_u"}"#)).await;
    let user = TestUser::create("dmp");
    let (_parent, dir) = dump_location();
    // One shard: the dumps are written in the order the requests end.
    let proxy = Proxy::start(
        &mock.url("/v1/responses"),
        &[
            "--dump-dir",
            dir.to_str().unwrap(),
            "--dump-user",
            &user.name,
            "--worker-threads",
            "1",
        ],
    );
    // Root's request first: not dumped.
    let response = post_with_credentials(&proxy, &json!({"who": "root"})).await;
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let url = proxy.url("/v1/responses");
    let (status, _) = curl_as(
        user.uid,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"who":"user"}"#,
            &url,
        ],
    );
    assert_eq!(status, 200);
    let dumps = dumps_once(&dir, 1);
    assert_eq!(dumps.len(), 2, "{dumps:?}");
    for (name, dump) in &dumps {
        assert_eq!(dump["uid"], user.uid, "{name}");
    }
    assert_eq!(one(&dumps, "-request.json")["body"]["who"], "user");
    // The user cannot read their own dump: only the worker user and root can.
    let read = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("cat")
            .arg(dir.join(&dumps[0].0))
            .uid(user.uid)
            .gid(65534)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
    };
    assert!(!read.success(), "a user read a dump");
}

/// Starts the binary expecting it to refuse to start; returns its log.
fn refused_start(dump_dir: &Path) -> String {
    use std::io::Write;
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(binary())
        .args(["--upstream-url", "http://127.0.0.1:9/v1/responses"])
        .arg("--dump-dir")
        .arg(dump_dir)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{TEST_KEY}").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the proxy started with --dump-dir {}", dump_dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    std::fs::read_to_string(log.path()).unwrap()
}

#[test]
fn a_planted_dump_directory_is_refused_at_start() {
    require_root("a directory is planted as another user");
    let parent = tempfile::tempdir().unwrap();
    // A link where the directory should be: refused, never followed.
    let elsewhere = parent.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let link = parent.path().join("dumps");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let log = refused_start(&link);
    assert!(log.contains("is a symbolic link"), "{log}");
    assert!(log.contains("--dump-dir"), "{log}");
    // A directory another user made.
    let user = TestUser::create("pln");
    let planted = parent.path().join("planted");
    std::fs::create_dir(&planted).unwrap();
    nix::unistd::chown(&planted, Some(user.uid.into()), None).unwrap();
    let log = refused_start(&planted);
    assert!(log.contains("may have planted it"), "{log}");
    // A parent other users may write in.
    let open = parent.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).unwrap();
    let log = refused_start(&open.join("dumps"));
    assert!(log.contains("may be written by other users"), "{log}");
    assert!(!open.join("dumps").exists());
}
