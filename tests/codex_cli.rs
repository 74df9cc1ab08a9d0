//! End-to-end tests with the real Codex CLI: `codex exec` talks to the real proxy binary, which
//! forwards to a mock Responses upstream on loopback.
//!
//! The Codex binary comes from `CODEX_BIN` (see `tests/install-codex.sh`). Without it the tests
//! print "skipped: CODEX_BIN not set" and pass, except under CI (env `CI` set) where they fail.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const CODEX_VERSION: &str = "0.169.0";
const CODEX_TIMEOUT: Duration = Duration::from_secs(120);
/// The key Codex itself sends to the proxy; the proxy must replace it with TEST_KEY.
const CODEX_SIDE_KEY: &str = "codex-side-dummy-key";
const MODEL: &str = "gpt-5.5";

/// Builds a Responses API event stream shaped like the one api.openai.com sends: every event
/// has `type` and a running `sequence_number`, is framed with an `event:` line, and the output
/// items are announced, streamed and closed in order. Reusable for other mocks (bridge tests).
struct ResponsesStream {
    response_id: String,
    events: Vec<Value>,
    output: Vec<Value>,
}

impl ResponsesStream {
    /// Starts with `response.created` and `response.in_progress`.
    fn new(response_id: &str) -> ResponsesStream {
        let mut stream = ResponsesStream {
            response_id: response_id.to_string(),
            events: Vec::new(),
            output: Vec::new(),
        };
        let response = stream.response("in_progress", None);
        stream.push(json!({"type": "response.created", "response": response}));
        let response = stream.response("in_progress", None);
        stream.push(json!({"type": "response.in_progress", "response": response}));
        stream
    }

    fn response(&self, status: &str, usage: Option<Value>) -> Value {
        json!({
            "id": self.response_id,
            "object": "response",
            "created_at": 1_763_740_000,
            "status": status,
            "error": null,
            "incomplete_details": null,
            "model": MODEL,
            "output": if status == "in_progress" { json!([]) } else { json!(self.output) },
            "parallel_tool_calls": true,
            "store": false,
            "tool_choice": "auto",
            "usage": usage,
        })
    }

    fn push(&mut self, mut event: Value) {
        event["sequence_number"] = json!(self.events.len());
        self.events.push(event);
    }

    /// An assistant message whose text arrives as the given deltas.
    fn message(mut self, item_id: &str, deltas: &[&str]) -> ResponsesStream {
        let index = self.output.len();
        let text: String = deltas.concat();
        let part_empty =
            json!({"type": "output_text", "annotations": [], "logprobs": [], "text": ""});
        let part_full =
            json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text});
        self.push(json!({
            "type": "response.output_item.added", "output_index": index,
            "item": {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []},
        }));
        self.push(json!({
            "type": "response.content_part.added", "item_id": item_id, "output_index": index,
            "content_index": 0, "part": part_empty,
        }));
        for delta in deltas {
            self.push(json!({
                "type": "response.output_text.delta", "item_id": item_id, "output_index": index,
                "content_index": 0, "delta": delta, "logprobs": [],
            }));
        }
        self.push(json!({
            "type": "response.output_text.done", "item_id": item_id, "output_index": index,
            "content_index": 0, "text": text, "logprobs": [],
        }));
        self.push(json!({
            "type": "response.content_part.done", "item_id": item_id, "output_index": index,
            "content_index": 0, "part": part_full,
        }));
        let item = json!({
            "id": item_id, "type": "message", "status": "completed", "role": "assistant",
            "content": [part_full],
        });
        self.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
        self.output.push(item);
        self
    }

    /// A call of a function tool; `arguments` is sent as a JSON string in two deltas.
    fn function_call(
        mut self,
        item_id: &str,
        call_id: &str,
        name: &str,
        arguments: &Value,
    ) -> ResponsesStream {
        let index = self.output.len();
        let arguments = arguments.to_string();
        self.push(json!({
            "type": "response.output_item.added", "output_index": index,
            "item": {"id": item_id, "type": "function_call", "status": "in_progress",
                     "call_id": call_id, "name": name, "arguments": ""},
        }));
        let middle = arguments.len() / 2;
        let middle = (middle..arguments.len())
            .find(|&i| arguments.is_char_boundary(i))
            .unwrap_or(arguments.len());
        for delta in [&arguments[..middle], &arguments[middle..]] {
            self.push(json!({
                "type": "response.function_call_arguments.delta", "item_id": item_id,
                "output_index": index, "delta": delta,
            }));
        }
        self.push(json!({
            "type": "response.function_call_arguments.done", "item_id": item_id,
            "output_index": index, "arguments": arguments,
        }));
        let item = json!({
            "id": item_id, "type": "function_call", "status": "completed",
            "call_id": call_id, "name": name, "arguments": arguments,
        });
        self.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
        self.output.push(item);
        self
    }

    /// Ends with `response.completed` carrying usage, and renders the SSE body.
    fn completed(mut self, input_tokens: u64, output_tokens: u64) -> String {
        let usage = json!({
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        });
        let response = self.response("completed", Some(usage));
        self.push(json!({"type": "response.completed", "response": response}));
        self.events
            .iter()
            .map(|event| {
                format!(
                    "event: {}\ndata: {event}\n\n",
                    event["type"].as_str().unwrap()
                )
            })
            .collect()
    }
}

/// The Codex binary from `CODEX_BIN`; `None` means "skip this test".
fn codex_bin() -> Option<PathBuf> {
    match std::env::var_os("CODEX_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "CODEX_BIN={} is not a file; install it with tests/install-codex.sh",
                path.display()
            );
            Some(path)
        }
        None if std::env::var_os("CI").is_some() => panic!(
            "CODEX_BIN is not set but CI is: install the Codex CLI with \
             `npm install @openai/codex@{CODEX_VERSION}` (or tests/install-codex.sh) and set \
             CODEX_BIN to its binary"
        ),
        None => {
            eprintln!("skipped: CODEX_BIN not set");
            None
        }
    }
}

/// A scratch directory outside /tmp: Codex refuses to create its helper-binary aliases when
/// CODEX_HOME is under a temporary directory (it warns and goes on without them).
fn scratch_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("codex-cli-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Sandbox flags for `codex exec`. `workspace-write` (what users run, and what apply_patch
/// needs) relies on Codex's bubblewrap, which needs user namespaces; we ask Codex's own
/// `codex sandbox` whether it works here, and fall back to no sandbox otherwise.
fn sandbox_flags(codex: &Path, home: &Path, workdir: &Path) -> Vec<&'static str> {
    let probe = std::process::Command::new(codex)
        .args(["sandbox", "-c", "sandbox_mode=\"workspace-write\"", "--"])
        .args([
            "sh",
            "-c",
            "echo probe > .sandbox-probe && cat .sandbox-probe",
        ])
        .current_dir(workdir)
        .env("CODEX_HOME", home)
        .stdin(Stdio::null())
        .output()
        .expect("run codex sandbox");
    let _ = std::fs::remove_file(workdir.join(".sandbox-probe"));
    if probe.status.success() && String::from_utf8_lossy(&probe.stdout).trim() == "probe" {
        vec!["-s", "workspace-write"]
    } else {
        eprintln!(
            "note: Codex's workspace-write sandbox does not work here ({}: {}); \
             running without a sandbox",
            probe.status,
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        vec!["--dangerously-bypass-approvals-and-sandbox"]
    }
}

struct CodexRun {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

/// Runs `codex exec PROMPT` in `workdir` against the Responses endpoint `base_url`
/// (`http://host:port/v1`), with a fresh CODEX_HOME, stdin from /dev/null, no retries,
/// and a hard timeout after which the whole process group is killed.
async fn run_codex(codex: &Path, base_url: &str, workdir: &Path, prompt: &str) -> CodexRun {
    let home = scratch_dir();
    let sandbox = sandbox_flags(codex, home.path(), workdir);
    let provider = format!(
        "model_providers.proxy={{name='proxy',base_url='{base_url}',env_key='CODEX_TEST_PROVIDER_KEY',\
         wire_api='responses',request_max_retries=0,stream_max_retries=0}}"
    );
    let mut command = tokio::process::Command::new(codex);
    command
        .arg("exec")
        .args(["--skip-git-repo-check", "--ephemeral"])
        .args(&sandbox)
        .arg("-C")
        .arg(workdir)
        .args(["-c", &provider, "-c", "model_provider=proxy", "-m", MODEL])
        .arg(prompt)
        .current_dir(workdir)
        .env("CODEX_HOME", home.path())
        .env("CODEX_TEST_PROVIDER_KEY", CODEX_SIDE_KEY)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("CODEX_API_KEY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let child = command.spawn().expect("start codex");
    let group = child.id().expect("codex pid") as i32;
    match tokio::time::timeout(CODEX_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => {
            let output = output.expect("wait for codex");
            CodexRun {
                status: output.status,
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
                elapsed: started.elapsed(),
            }
        }
        Err(_) => {
            // Dropping the future killed codex itself; take the commands it started with it.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
            panic!("codex exec did not finish within {CODEX_TIMEOUT:?}");
        }
    }
}

impl CodexRun {
    fn assert_success(&self, proxy: &Proxy) {
        assert!(
            self.status.success(),
            "codex exec failed with {} after {:?}\n--- stdout\n{}\n--- stderr\n{}\n--- proxy stderr\n{}",
            self.status,
            self.elapsed,
            self.stdout,
            self.stderr,
            proxy.stderr()
        );
    }
}

/// What every request Codex sent must look like at the upstream.
fn assert_forwarded_from_codex(request: &Seen) {
    assert_eq!(request.method, "POST");
    assert_eq!(request.uri, "/v1/responses");
    assert_eq!(
        request.header("authorization").as_deref(),
        Some(format!("Bearer {TEST_KEY}").as_str()),
        "the upstream must see the proxy's key, not the one Codex sent"
    );
    for (name, value) in request.headers.iter() {
        let value = value.to_str().unwrap_or_default();
        assert!(
            !value.contains(CODEX_SIDE_KEY),
            "Codex's key leaked to the upstream in {name}"
        );
    }
    assert_eq!(
        request.header("accept").as_deref(),
        Some("text/event-stream")
    );
    assert_eq!(request.header("originator").as_deref(), Some("codex_exec"));
    assert!(request
        .header("user-agent")
        .is_some_and(|agent| agent.contains(CODEX_VERSION)));
    let body = request.json();
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stream"], true);
}

fn items_of_type<'a>(body: &'a Value, kind: &str) -> Vec<&'a Value> {
    body["input"]
        .as_array()
        .expect("input is an array")
        .iter()
        .filter(|item| item["type"] == kind)
        .collect()
}

/// The text of the last user message in a request body.
fn last_user_text(body: &Value) -> String {
    items_of_type(body, "message")
        .into_iter()
        .rfind(|item| item["role"] == "user")
        .and_then(|item| item["content"].as_array())
        .map(|parts| {
            parts
                .iter()
                .filter_map(|part| part["text"].as_str())
                .collect::<String>()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_text_turn_through_the_proxy() {
    let Some(codex) = codex_bin() else { return };
    let mock = MockUpstream::start(|_| {
        Reply::sse(
            &ResponsesStream::new("resp_text_1")
                .message("msg_text_1", &["Hello ", "from the ", "mock upstream."])
                .completed(120, 7),
        )
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let workdir = scratch_dir();

    let run = run_codex(
        &codex,
        &proxy.url("/v1"),
        workdir.path(),
        "Say hello, please.",
    )
    .await;
    run.assert_success(&proxy);
    assert_eq!(
        run.stdout.trim_end(),
        "Hello from the mock upstream.",
        "stderr:\n{}",
        run.stderr
    );

    let seen = mock.seen();
    assert_eq!(seen.len(), 1, "one turn, one request, no retries");
    assert_forwarded_from_codex(&seen[0]);
    assert_eq!(last_user_text(&seen[0].json()), "Say hello, please.");
    assert!(!proxy.stderr().contains(TEST_KEY));
    eprintln!("codex exec (text turn) took {:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread")]
async fn codex_tool_call_round_trip_through_the_proxy() {
    let Some(codex) = codex_bin() else { return };
    // The shell has to evaluate the command: the marker "codex-tool-42" is not in the call.
    let command = "echo ran > tool-proof.txt && echo codex-tool-$((6*7))";
    let mock = MockUpstream::start(move |seen| {
        let body = seen.json();
        let answered = !items_of_type(&body, "function_call_output").is_empty();
        let stream = if answered {
            ResponsesStream::new("resp_tool_2").message("msg_tool_2", &["The command ", "ran."])
        } else {
            ResponsesStream::new("resp_tool_1").function_call(
                "fc_tool_1",
                "call_tool_1",
                "exec_command",
                &json!({"cmd": command}),
            )
        };
        Reply::sse(&stream.completed(300, 20))
    })
    .await;
    let proxy = Proxy::start(&mock.url("/v1/responses"), &[]);
    let workdir = scratch_dir();

    let run = run_codex(
        &codex,
        &proxy.url("/v1"),
        workdir.path(),
        "Run the proof command.",
    )
    .await;
    run.assert_success(&proxy);
    assert_eq!(
        run.stdout.trim_end(),
        "The command ran.",
        "stderr:\n{}",
        run.stderr
    );

    let seen = mock.seen();
    assert_eq!(
        seen.len(),
        2,
        "the call, then its output; stderr:\n{}",
        run.stderr
    );
    for request in &seen {
        assert_forwarded_from_codex(request);
    }
    let first = seen[0].json();
    assert!(items_of_type(&first, "function_call_output").is_empty());
    let offered: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tool| tool["name"].as_str())
        .collect();
    assert!(offered.contains(&"exec_command"), "tools: {offered:?}");

    let second = seen[1].json();
    let calls = items_of_type(&second, "function_call");
    assert_eq!(calls.len(), 1, "{second:#}");
    assert_eq!(calls[0]["call_id"], "call_tool_1");
    assert_eq!(calls[0]["name"], "exec_command");
    let outputs = items_of_type(&second, "function_call_output");
    assert_eq!(outputs.len(), 1, "{second:#}");
    assert_eq!(outputs[0]["call_id"], "call_tool_1");
    let output = outputs[0]["output"].as_str().expect("output is a string");
    assert!(
        output.contains("Process exited with code 0") && output.contains("codex-tool-42"),
        "function_call_output: {output}"
    );
    assert_eq!(
        std::fs::read_to_string(workdir.path().join("tool-proof.txt")).unwrap(),
        "ran\n",
        "the command ran in the workspace"
    );
    eprintln!("codex exec (tool round trip) took {:?}", run.elapsed);
}
