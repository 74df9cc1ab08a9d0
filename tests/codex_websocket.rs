//! The real Codex CLI configured the way users point it at the proxy (`openai_base_url`, the
//! built-in provider, which opens a WebSocket on `GET /v1/responses` first), through strict
//! mode over both kinds of upstream:
//! - a WebSocket upstream (as api.openai.com): the proxy relays the socket, message by
//!   message, the key only in the upstream handshake (`tests/common/ws_upstream.rs`);
//! - an HTTP-only upstream: the proxy serves the socket itself and sends each turn as one
//!   whole-conversation POST.
//!
//! Each kind of turn Codex takes — a text answer, an `exec_command` round trip, an
//! `apply_patch` in `workspace-write`, a remote compaction — completes with no retry or
//! fallback line. The time each run took is printed (it is not a timed test).
//!
//! Codex offers permessage-deflate, and each run checks that the proxy's socket negotiated it.
//!
//! Without `CODEX_BIN` the tests print "skipped" and pass, except under CI where they fail.

mod codex_support;
mod common;

use codex_support::*;
use common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// What the test asks Codex to do.
#[derive(Clone, Copy, Debug)]
enum Scenario {
    Text,
    ExecCommand,
    ApplyPatch,
    RemoteCompaction,
}

const EXEC_COMMAND: &str = "echo ran > ws-proof.txt && echo codex-ws-$((6*7))";
const PATCH: &str =
    "*** Begin Patch\n*** Add File: hello.txt\n+hello over the socket\n*** End Patch\n";
/// The compaction blob the upstream makes; strict mode must pass it back untouched.
const COMPACTION_BLOB: &str = "opaque-upstream-compaction-blob-77";

impl Scenario {
    fn prompt(self) -> &'static str {
        match self {
            Scenario::Text => "Say hello, please.",
            Scenario::ExecCommand => "Run the proof command.",
            Scenario::ApplyPatch => "Create hello.txt.",
            Scenario::RemoteCompaction => "Run the proof command, then stop.",
        }
    }

    fn expected_answer(self) -> &'static str {
        match self {
            Scenario::Text => "Hello over the socket.",
            Scenario::ExecCommand => "The command ran.",
            Scenario::ApplyPatch => "Patched hello.txt.",
            Scenario::RemoteCompaction => "All done.",
        }
    }

    /// The model's next answer to a request with these input items: the new ones only over
    /// a relayed socket, the whole conversation over HTTP — the cues are the same.
    fn answer(self, input: &[Value], id: &str) -> Vec<Value> {
        let has = |kind: &str| input.iter().any(|item| item["type"] == kind);
        let stream = ResponsesStream::new(id);
        let final_message = |stream: ResponsesStream| {
            let words = self.expected_answer();
            let (a, b) = words.split_at(words.len() / 2);
            stream
                .message(&format!("msg_{id}"), &[a, b])
                .completed_events(400, 6)
        };
        match self {
            Scenario::Text => final_message(stream),
            Scenario::ExecCommand if has("function_call_output") => final_message(stream),
            Scenario::ExecCommand => stream
                .function_call(
                    &format!("fc_{id}"),
                    "call_ws_exec",
                    "exec_command",
                    &json!({"cmd": EXEC_COMMAND}),
                )
                .completed_events(300, 20),
            Scenario::ApplyPatch if has("custom_tool_call_output") => final_message(stream),
            Scenario::ApplyPatch => stream
                .custom_tool_call(&format!("ctc_{id}"), "call_ws_patch", "apply_patch", PATCH)
                .completed_events(350, 40),
            Scenario::RemoteCompaction if has("compaction_trigger") => stream
                .compaction(&format!("cmp_{id}"), COMPACTION_BLOB)
                .completed_events(500, 20),
            Scenario::RemoteCompaction if has("compaction") => final_message(stream),
            // Far past the limit Codex is given, so that it compacts before going on.
            Scenario::RemoteCompaction => stream
                .function_call(
                    &format!("fc_{id}"),
                    "call_ws_compact",
                    "exec_command",
                    &json!({"cmd": "echo compaction-proof-$((6*7))"}),
                )
                .completed_events(90_000, 20),
        }
    }
}

/// Runs Codex through the proxy, configured the usual way, with a compaction limit for the
/// compaction scenario.
async fn run(
    codex: &std::path::Path,
    proxy: &Proxy,
    scenario: Scenario,
) -> (CodexRun, tempfile::TempDir) {
    let workdir = scratch_dir();
    let limit = "model_auto_compact_token_limit=2000";
    let extra: &[&str] = match scenario {
        Scenario::RemoteCompaction => &[limit],
        _ => &[],
    };
    let run = run_codex_builtin_with(
        codex,
        &proxy.url("/v1"),
        workdir.path(),
        scenario.prompt(),
        extra,
    )
    .await;
    run.assert_success(proxy);
    run.assert_no_websocket_fallback();
    assert_eq!(
        run.stdout.trim_end(),
        scenario.expected_answer(),
        "stderr:\n{}",
        run.stderr
    );
    match scenario {
        Scenario::ExecCommand => assert_eq!(
            std::fs::read_to_string(workdir.path().join("ws-proof.txt")).unwrap(),
            "ran\n"
        ),
        Scenario::ApplyPatch => assert_eq!(
            std::fs::read_to_string(workdir.path().join("hello.txt")).unwrap(),
            "hello over the socket\n",
            "Codex applied the patch in the workspace; stderr:\n{}",
            run.stderr
        ),
        Scenario::RemoteCompaction => assert!(
            run.stderr.contains("context compacted"),
            "stderr:\n{}",
            run.stderr
        ),
        Scenario::Text => {}
    }
    let log = proxy.stderr_once_it_has("WS /v1/responses 200", Duration::from_secs(5));
    assert!(log.contains("GET /v1/responses 101"), "{log}");
    // Codex offers permessage-deflate, and its socket is compressed (the proxy runs with
    // `--log-level debug`, which names what each socket negotiated).
    assert!(
        log.contains("websocket: negotiated permessage-deflate"),
        "{log}"
    );
    assert!(
        !log.contains("POST /v1/responses"),
        "Codex fell back to HTTP: {log}"
    );
    assert!(!log.contains(TEST_KEY), "the key is in the log:\n{log}");
    (run, workdir)
}

fn items<'a>(request: &'a Value, kind: &str) -> Vec<&'a Value> {
    request["input"]
        .as_array()
        .map(|input| input.iter().filter(|i| i["type"] == kind).collect())
        .unwrap_or_default()
}

/// Strict mode relaying Codex's socket to a WebSocket upstream: every message reaches the
/// upstream as Codex sent it (the prewarm included, `previous_response_id` unexpanded), over
/// one upstream socket opened with the key.
async fn over_a_websocket_upstream(scenario: Scenario) {
    let Some(codex) = codex_bin() else { return };
    let upstream = WsUpstream::start(move |request, id| {
        let input = request["input"].as_array().cloned().unwrap_or_default();
        scenario.answer(&input, id)
    })
    .await;
    let proxy = Proxy::start(
        &upstream.url(),
        &["--websocket-upstream", "relay", "--log-level", "debug"],
    );
    let (run, _workdir) = run(&codex, &proxy, scenario).await;

    let seen = upstream.seen.lock().unwrap();
    assert!(!seen.authorizations.is_empty());
    assert!(
        seen.authorizations
            .iter()
            .all(|a| *a == format!("Bearer {TEST_KEY}")),
        "{:?}",
        seen.authorizations
    );
    let first: Value = serde_json::from_str(&seen.messages[0]).unwrap();
    assert_eq!(
        first["generate"], false,
        "Codex's prewarm is relayed: {first:#}"
    );
    let turns = seen.generating_requests();
    let expected_turns = match scenario {
        Scenario::Text => 1,
        Scenario::ExecCommand | Scenario::ApplyPatch => 2,
        Scenario::RemoteCompaction => 3,
    };
    assert_eq!(turns.len(), expected_turns, "{turns:#?}");
    // After the first turn, each sends only the new items and names the previous response.
    if let Some(second) = turns.get(1) {
        assert!(second["previous_response_id"].is_string(), "{second:#}");
        let kind = match scenario {
            Scenario::ApplyPatch => "custom_tool_call_output",
            _ => "function_call_output",
        };
        assert_eq!(items(second, kind).len(), 1, "{second:#}");
        assert!(
            items(second, "message").is_empty(),
            "only the new items: {second:#}"
        );
    }
    if let Scenario::RemoteCompaction = scenario {
        let trigger = &turns[1];
        let last = trigger["input"].as_array().unwrap().last().unwrap();
        assert_eq!(last["type"], "compaction_trigger", "{trigger:#}");
        let after = &turns[2];
        let compaction = items(after, "compaction");
        assert_eq!(compaction.len(), 1, "{after:#}");
        assert_eq!(compaction[0]["encrypted_content"], COMPACTION_BLOB);
    }
    eprintln!(
        "codex exec ({scenario:?}, strict, WebSocket upstream) took {:?}",
        run.elapsed
    );
}

/// Strict mode serving Codex's socket itself over an HTTP-only upstream: the upgrade is
/// tried once (the mock refuses it), then each turn is one POST carrying the whole
/// conversation; the prewarm stays in the proxy.
async fn over_an_http_upstream(scenario: Scenario) {
    let Some(codex) = codex_bin() else { return };
    let mock = MockUpstream::start(move |seen| {
        let body = seen.json();
        let input = body["input"].as_array().cloned().unwrap_or_default();
        let events = scenario.answer(&input, &format!("resp_http_{}", input.len()));
        Reply::sse(
            &events
                .iter()
                .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                .collect::<String>(),
        )
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &["--log-level", "debug"]);
    let (run, _workdir) = run(&codex, &proxy, scenario).await;

    assert_eq!(
        mock.upgrades_refused
            .load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one upgrade tried, then remembered"
    );
    let seen = mock.seen();
    assert!(seen.iter().all(|s| s.method == "POST"
        && s.header("authorization").as_deref() == Some(format!("Bearer {TEST_KEY}").as_str())));
    let bodies: Vec<Value> = seen.iter().map(Seen::json).collect();
    for body in &bodies {
        assert!(body.get("previous_response_id").is_none(), "{body:#}");
        assert!(body.get("generate").is_none(), "{body:#}");
    }
    if bodies.len() >= 2 {
        // The second POST repeats the first one's input, then the call and its output.
        let first = bodies[0]["input"].as_array().unwrap();
        let second = bodies[1]["input"].as_array().unwrap();
        assert_eq!(&second[..first.len()], &first[..], "{:#}", bodies[1]);
    }
    match scenario {
        Scenario::ApplyPatch => {
            let outputs = items(&bodies[1], "custom_tool_call_output");
            assert_eq!(outputs.len(), 1, "{:#}", bodies[1]);
            assert_eq!(items(&bodies[1], "custom_tool_call")[0]["input"], PATCH);
        }
        Scenario::RemoteCompaction => {
            assert_eq!(bodies.len(), 3, "{bodies:#?}");
            let trigger = bodies[1]["input"].as_array().unwrap();
            assert_eq!(trigger.last().unwrap()["type"], "compaction_trigger");
            let compaction = items(&bodies[2], "compaction");
            assert_eq!(compaction.len(), 1, "{:#}", bodies[2]);
            assert_eq!(compaction[0]["encrypted_content"], COMPACTION_BLOB);
            assert!(items(&bodies[2], "function_call_output").is_empty());
        }
        _ => {}
    }
    eprintln!(
        "codex exec ({scenario:?}, strict, HTTP upstream) took {:?}",
        run.elapsed
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn text_turn_relayed_to_a_websocket_upstream() {
    over_a_websocket_upstream(Scenario::Text).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_command_relayed_to_a_websocket_upstream() {
    over_a_websocket_upstream(Scenario::ExecCommand).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_patch_relayed_to_a_websocket_upstream() {
    over_a_websocket_upstream(Scenario::ApplyPatch).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_compaction_relayed_to_a_websocket_upstream() {
    over_a_websocket_upstream(Scenario::RemoteCompaction).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_patch_served_over_an_http_upstream() {
    over_an_http_upstream(Scenario::ApplyPatch).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_compaction_served_over_an_http_upstream() {
    over_an_http_upstream(Scenario::RemoteCompaction).await;
}
