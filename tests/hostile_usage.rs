//! Hostile local users against accounting, billing and the key, with the real binary: token
//! limits dodged with `Accept-Encoding: gzip`, refused requests that should cost nothing,
//! unknown expectations, billing headers chosen by the caller, and an upstream that quotes
//! the key back in its errors.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A Responses stream whose usage is 150,000 tokens (149,000 in, 1,000 out).
const BIG_COMPLETED: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\"}}\n\nevent: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":3,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"model\":\"gpt-test\",\"status\":\"completed\",\"output\":[],\"usage\":{\"input_tokens\":149000,\"output_tokens\":1000,\"total_tokens\":150000}}}\n\n";

/// The same usage from a Chat Completions upstream (bridge mode).
const BIG_CHAT: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":null}]}\n\ndata: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-test\",\"choices\":[],\"usage\":{\"prompt_tokens\":149000,\"completion_tokens\":1000,\"total_tokens\":150000}}\n\ndata: [DONE]\n\n";

/// CRC-32 (IEEE), for the gzip trailer.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `data` as a gzip member made of stored deflate blocks: real gzip any client can inflate,
/// and bytes the usage tap cannot read as they pass.
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let blocks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// A mock upstream that compresses whenever the request's `Accept-Encoding` allows gzip,
/// and answers identity otherwise.
async fn gzip_capable_upstream(body: &'static str, content_type: &'static str) -> MockUpstream {
    MockUpstream::start(move |seen| {
        let gzip_ok = seen
            .header("accept-encoding")
            .is_some_and(|e| e.to_ascii_lowercase().contains("gzip"));
        let mut headers = vec![("content-type".to_string(), content_type.to_string())];
        let bytes = if gzip_ok {
            headers.push(("content-encoding".into(), "gzip".into()));
            gzip(body.as_bytes())
        } else {
            body.as_bytes().to_vec()
        };
        Reply::Full {
            status: 200,
            headers,
            body: bytes.into(),
        }
    })
    .await
}

fn usage_file(state: &Path) -> PathBuf {
    state.join("usage.jsonl")
}

fn usage_lines(state: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(usage_file(state))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until the store holds `count` records (the after-response thread writes them a
/// moment after the response).
fn wait_for_records(state: &Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = usage_lines(state);
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} usage records after 10 s: {lines:?}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn start_with_state(upstream: &str, extra: &[&str]) -> (Proxy, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut args = vec![
        "--upstream-url".to_string(),
        upstream.to_string(),
        "--state-directory".to_string(),
        state.to_str().unwrap().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let proxy = Proxy::start_with(ProxyOptions {
        args,
        ..Default::default()
    });
    (proxy, dir, state)
}

async fn post_gzip_accepting(proxy: &Proxy) -> (u16, Vec<u8>) {
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .header("content-type", "application/json")
        .header("accept-encoding", "gzip, deflate, br")
        .body(r#"{"model":"gpt-test","input":"hi","stream":true}"#)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.bytes().await.unwrap().to_vec())
}

/// Item: token limits bypassed with `Accept-Encoding: gzip`, on both upstream paths (the
/// strict route's own client; the general client, which bridge mode uses).
#[tokio::test(flavor = "multi_thread")]
async fn gzip_accepting_clients_are_still_counted_and_limited() {
    for bridge in [false, true] {
        let (body, upstream_path, mode) = if bridge {
            (BIG_CHAT, "/v1/chat/completions", &["--bridge-to-chat"][..])
        } else {
            (BIG_COMPLETED, "/v1/responses", &[][..])
        };
        let mock = gzip_capable_upstream(body, "text/event-stream").await;
        let mut extra = vec!["--tokens-per-day", "200000"];
        extra.extend_from_slice(mode);
        let (proxy, _dir, state) = start_with_state(&mock.url(upstream_path), &extra);
        let (status, body) = post_gzip_accepting(&proxy).await;
        assert_eq!(status, 200, "bridge={bridge}");
        assert!(
            String::from_utf8_lossy(&body).contains("149000"),
            "the client reads the usage in the clear (bridge={bridge})"
        );
        let seen = mock.seen();
        assert_eq!(
            seen[0].header("accept-encoding").as_deref(),
            Some("identity"),
            "bridge={bridge}"
        );
        let records = wait_for_records(&state, 1);
        assert_eq!(records[0]["input_tokens"], 149000, "bridge={bridge}");
        assert_eq!(records[0]["output_tokens"], 1000, "bridge={bridge}");
        // 150,000 of 200,000 used: one more request is admitted, then the limit trips.
        assert_eq!(post_gzip_accepting(&proxy).await.0, 200, "bridge={bridge}");
        wait_for_records(&state, 2);
        let (status, body) = post_gzip_accepting(&proxy).await;
        assert_eq!(
            status,
            429,
            "bridge={bridge}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(mock.seen().len(), 2, "the refused request is not forwarded");
    }
}

/// Item: refused requests whose path looks like a model route (`/typo/responses`,
/// `GET /v1/responses`, a query string) are neither recorded nor counted against the
/// caller's `--requests-per-minute`, with and without the wrapper routes.
#[tokio::test(flavor = "multi_thread")]
async fn refused_requests_are_neither_recorded_nor_counted() {
    const COMPLETED: &str = "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"m\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n";
    for wrapper in [false, true] {
        let mock = MockUpstream::start(|_| Reply::sse(COMPLETED)).await;
        let mut extra = vec!["--requests-per-minute", "2"];
        if wrapper {
            extra.push("--wrapper-routes");
        }
        let (proxy, _dir, state) = start_with_state(&mock.url("/v1/responses"), &extra);
        let refused: [(&str, &str); 7] = [
            ("POST", "/typo/responses"),
            ("POST", "/v2/responses"),
            ("GET", "/v1/responses"),
            ("PUT", "/v1/responses"),
            ("POST", "/v1/responses?x=1"),
            ("POST", "/x/chat/completions"),
            ("POST", "/typo/completions"),
        ];
        for round in 0..20 {
            for (method, path) in refused {
                let request = format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                );
                let answer = raw_request(proxy.port, request.as_bytes());
                let status = status_of(&answer);
                assert!(
                    [403, 404, 405].contains(&status),
                    "wrapper={wrapper} round {round}: {method} {path} got {status}"
                );
            }
        }
        // Give the after-response thread time to write anything it would have written.
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            usage_lines(&state).is_empty(),
            "wrapper={wrapper}: refused requests recorded: {:?}",
            usage_lines(&state)
        );
        assert!(mock.seen().is_empty());
        // The whole budget is still there: two requests pass, the third is limited.
        for expected in [200, 200, 429] {
            let response = http_client()
                .post(proxy.url("/v1/responses"))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), expected, "wrapper={wrapper}");
            response.bytes().await.unwrap();
        }
        assert_eq!(wait_for_records(&state, 2).len(), 2);
    }
}

/// Item: an expectation other than `100-continue` gets 417 and is never forwarded;
/// `Expect: 100-continue` keeps working (and is not passed upstream either).
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_expectation_is_417_and_100_continue_still_works() {
    let mock = MockUpstream::start(|_| Reply::json(200, "{\"ok\":true}")).await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    for expect in ["999-bogus", "100-continue, 999-bogus"] {
        let answer = raw_request(
            proxy.port,
            format!(
                "POST /v1/responses HTTP/1.1\r\nHost: x\r\nExpect: {expect}\r\nContent-Length: 2\r\n\r\n{{}}"
            )
            .as_bytes(),
        );
        assert_eq!(status_of(&answer), 417, "{expect}: {answer}");
        assert!(answer.contains("expectation_failed"), "{answer}");
    }
    assert!(mock.seen().is_empty(), "nothing forwarded");
    let answer = raw_request(
        proxy.port,
        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    );
    assert!(answer.contains("{\"ok\":true}"), "{answer}");
    let seen = mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("expect"), None);
}

/// Item: a user cannot choose which organization or project the key bills. By default the
/// client's `OpenAI-Organization`/`OpenAI-Project` are dropped; the admin may pin them or
/// let them through. `OpenAI-Beta` passes (Codex needs its betas). Both upstream paths.
#[tokio::test(flavor = "multi_thread")]
async fn billing_headers_are_dropped_pinned_or_forwarded_as_the_admin_says() {
    let cases: [(&[&str], Option<&str>, Option<&str>); 4] = [
        (&[], None, None),
        (
            &[
                "--openai-organization",
                "org-admin",
                "--openai-project",
                "proj-admin",
            ],
            Some("org-admin"),
            Some("proj-admin"),
        ),
        (
            &["--forward-billing-headers"],
            Some("org-evil"),
            Some("proj-evil"),
        ),
        (
            &[
                "--forward-billing-headers",
                "--openai-project",
                "proj-admin",
            ],
            Some("org-evil"),
            Some("proj-admin"),
        ),
    ];
    for bridge in [false, true] {
        for (flags, organization, project) in cases {
            let mock =
                MockUpstream::start(|_| Reply::json(400, "{\"error\":{\"message\":\"no\"}}")).await;
            let mut args: Vec<&str> = flags.to_vec();
            let path = if bridge {
                args.push("--bridge-to-chat");
                "/v1/chat/completions"
            } else {
                "/v1/responses"
            };
            let proxy = Proxy::start(&mock.url(path), &args);
            let response = http_client()
                .post(proxy.url("/v1/responses"))
                .header("OpenAI-Organization", "org-evil")
                .header("OpenAI-Project", "proj-evil")
                .header("OpenAI-Beta", "responses_websockets=2026-02-04")
                .body(r#"{"model":"m","input":"hi"}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400);
            let seen = &mock.seen()[0];
            let case = format!("bridge={bridge} {flags:?}");
            assert_eq!(
                seen.header("openai-organization").as_deref(),
                organization,
                "{case}"
            );
            assert_eq!(seen.header("openai-project").as_deref(), project, "{case}");
            assert_eq!(
                seen.headers.get_all("openai-organization").iter().count(),
                usize::from(organization.is_some()),
                "{case}"
            );
            assert_eq!(
                seen.header("openai-beta").as_deref(),
                Some("responses_websockets=2026-02-04"),
                "{case}"
            );
        }
    }
}

/// Item: the upstream's own 401 quotes our key, in full and masked the way OpenAI masks it
/// (prefix, stars, last four), in its body and a header: the user sees neither.
#[tokio::test(flavor = "multi_thread")]
async fn the_key_and_its_masked_forms_never_come_back_from_upstream_errors() {
    let masked = format!(
        "{}{}{}",
        &TEST_KEY[..8],
        "*".repeat(24),
        &TEST_KEY[TEST_KEY.len() - 4..]
    );
    for mode in ["strict", "bridge", "wrapper"] {
        let body = format!(
            "{{\"error\":{{\"message\":\"Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys. (sent: {TEST_KEY})\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"invalid_api_key\"}}}}"
        );
        let header_masked = masked.clone();
        let mock = MockUpstream::start(move |_| Reply::Full {
            status: 401,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-echo-key".into(), format!("Bearer {TEST_KEY}")),
                (
                    "www-authenticate".into(),
                    format!("Bearer error=\"invalid_token\", key=\"{header_masked}\""),
                ),
            ],
            body: body.clone().into(),
        })
        .await;
        let (path, args, route) = match mode {
            "strict" => ("/v1/responses", vec![], "/v1/responses"),
            "bridge" => (
                "/v1/chat/completions",
                vec!["--bridge-to-chat"],
                "/v1/responses",
            ),
            _ => (
                "/v1/responses",
                vec!["--wrapper-routes"],
                "/v1/chat/completions",
            ),
        };
        let proxy = Proxy::start(&mock.url(path), &args);
        let response = http_client()
            .post(proxy.url(route))
            .header("content-type", "application/json")
            .body(r#"{"model":"m","input":"hi","messages":[{"role":"user","content":"hi"}]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{mode}");
        let headers = format!("{:?}", response.headers());
        let text = response.text().await.unwrap();
        let last4 = &TEST_KEY[TEST_KEY.len() - 4..];
        for shown in [&headers, &text] {
            assert!(!shown.contains(TEST_KEY), "{mode}: key in {shown}");
            assert!(!shown.contains(&masked), "{mode}: masked key in {shown}");
            assert!(
                !shown.contains(last4),
                "{mode}: the key's last four in {shown}"
            );
        }
        assert!(
            text.contains("Incorrect API key provided: [redacted]."),
            "{mode}: {text}"
        );
        if mode == "strict" {
            assert!(headers.contains("[redacted]"), "{headers}");
        }
    }
}

/// Item: a client that resets its connection mid-stream, before the usage event, does not
/// dodge accounting: the upstream stream is read on (without the client connection) and
/// the usage recorded for that caller. Both upstream paths.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_resets_mid_stream_is_still_charged() {
    for bridge in [false, true] {
        let (mock, tx) = MockUpstream::streaming().await;
        let (path, mode, first, last): (&str, &[&str], &str, &str) = if bridge {
            (
                "/v1/chat/completions",
                &["--bridge-to-chat"],
                "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-test\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"hi\"},\"finish_reason\":null}]}\n\n",
                BIG_CHAT,
            )
        } else {
            (
                "/v1/responses",
                &[],
                "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\"}}\n\n",
                BIG_COMPLETED,
            )
        };
        let (proxy, _dir, state) = start_with_state(&mock.url(path), mode);
        tx.send(first.into()).await.unwrap();
        let port = proxy.port;
        // A raw client that reads the first bytes, then resets (SO_LINGER 0).
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            let body = r#"{"model":"m","input":"hi","stream":true}"#;
            client
                .write_all(
                    format!(
                        "POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = client.read(&mut buf).unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&client),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    &linger as *const libc::linger as *const libc::c_void,
                    std::mem::size_of::<libc::linger>() as u32,
                );
            }
            drop(client);
        })
        .await
        .unwrap();
        // The usage comes later, after the client is gone.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = tx.send(last.into()).await;
        drop(tx);
        let records = wait_for_records(&state, 1);
        assert_eq!(
            records[0]["input_tokens"], 149000,
            "bridge={bridge}: {records:?}"
        );
        assert_eq!(records[0]["output_tokens"], 1000, "bridge={bridge}");
        assert_eq!(
            records[0]["uid"],
            unsafe { libc::geteuid() },
            "charged to the caller (bridge={bridge})"
        );
    }
}

/// Item: accounting survives a worker crash. Many streamed responses are delivered; the
/// worker is SIGKILLed the moment the last client has seen the end of its response; every
/// delivered response is in `usage.jsonl` (each is written, in one O_APPEND write, before
/// its last bytes are released to the client).
#[tokio::test(flavor = "multi_thread")]
async fn every_response_a_client_saw_end_is_recorded_even_if_the_worker_is_killed() {
    const CLIENTS: usize = 24;
    for round in 0..3 {
        let mock = MockUpstream::start(|_| Reply::sse(BIG_COMPLETED)).await;
        let (proxy, _dir, state) = start_with_state(&mock.url("/v1/responses"), &[]);
        let worker = proxy.worker_pid();
        let port = proxy.port;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                std::thread::spawn(move || {
                    let answer = raw_request(
                        port,
                        b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                    );
                    assert!(answer.contains("\"input_tokens\":149000"), "{answer}");
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        unsafe {
            libc::kill(worker as i32, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(200));
        let lines = usage_lines(&state);
        assert_eq!(
            lines.len(),
            CLIENTS,
            "round {round}: {} of {CLIENTS} delivered responses recorded",
            lines.len()
        );
        assert!(lines.iter().all(|l| l["input_tokens"] == 149000));
    }
}

/// The wrapper routes answer in another wire format than the upstream's: a client that does not
/// ask for usage in its stream (no `stream_options.include_usage`, the default of Chat
/// Completions; legacy Completions streams never carry it) still has the upstream's tokens
/// recorded and counted against its limit — the tokens are read from the upstream's stream,
/// not from what the client chose to receive.
#[tokio::test(flavor = "multi_thread")]
async fn wrapper_streams_without_usage_are_still_counted() {
    let body = std::fs::read_to_string(format!(
        "{}/tests/fixtures/responses-streams/text.sse",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let upstream = MockUpstream::start(move |_| Reply::sse(&body)).await;
    let (proxy, _dir, state) = start_with_state(
        &upstream.url("/v1/responses"),
        &["--wrapper-routes", "--tokens-per-day", "30"],
    );
    let client = reqwest::Client::new();
    let requests = [
        (
            "/v1/chat/completions",
            serde_json::json!({"model": "gpt-5", "stream": true,
                "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/completions",
            serde_json::json!({"model": "gpt-5", "stream": true, "prompt": "hi"}),
        ),
    ];
    for (n, (path, body)) in requests.iter().enumerate() {
        let response = client
            .post(proxy.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let text = response.text().await.unwrap();
        assert!(!text.contains("\"usage\""), "{path} sent no usage: {text}");
        let records = wait_for_records(&state, n + 1);
        let record = &records[n];
        assert!(
            record.to_string().contains("\"input_tokens\":12"),
            "{path}: the upstream's tokens are recorded: {record}"
        );
    }
    // Two responses of the fixture's size are past the 30-token day: the next is refused.
    let (path, body) = &requests[0];
    let response = client
        .post(proxy.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
}
