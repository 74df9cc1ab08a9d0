//! Replays fuzzer inputs through the same checks the fuzz targets assert (`fuzz/src/checks.rs`):
//! every saved crash in `tests/fixtures/fuzz-regressions/` (named `<target>-<n>.<ext>`), and a
//! small seed corpus built here from the fixtures, the way `fuzz/seed.sh` builds it.

#[path = "../fuzz/src/checks.rs"]
#[allow(dead_code)]
mod checks;

use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The files of a fixture directory, sorted; a missing or empty one fails the test (a replay
/// of nothing would pass whatever the code does).
fn files_in(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures().join(dir))
        .unwrap_or_else(|e| panic!("tests/fixtures/{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!files.is_empty(), "tests/fixtures/{dir} is empty");
    files.sort();
    files
}

/// The `data` of each event of an `.sse` fixture.
fn sse_data(path: &Path) -> Vec<String> {
    let body = std::fs::read(path).unwrap();
    let mut reader = openai_wire::sse::SseReader::default();
    reader.push(&body);
    let mut events = Vec::new();
    while let Some(event) = reader.next_event().unwrap() {
        events.push(event.data.to_string());
    }
    if let Some(event) = reader.finish().unwrap() {
        events.push(event.data.to_string());
    }
    events
}

fn with_flags(flags: u8, events: &[String]) -> Vec<u8> {
    let mut input = vec![flags];
    input.extend_from_slice(events.join("\0").as_bytes());
    input
}

fn replay(target: &str, inputs: &[Vec<u8>]) {
    assert!(!inputs.is_empty(), "{target}: no inputs");
    for input in inputs {
        checks::check(target, input);
    }
}

#[test]
fn saved_fuzz_crashes_replay_cleanly() {
    let mut failing = Vec::new();
    for path in files_in("fuzz-regressions") {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let target = checks::TARGETS
            .iter()
            .find(|t| name.starts_with(&format!("{t}-")))
            .unwrap_or_else(|| panic!("{name}: name does not start with a fuzz target"));
        let input = std::fs::read(&path).unwrap();
        // The check's own panic message (printed above) says what is wrong.
        if std::panic::catch_unwind(|| checks::check(target, &input)).is_err() {
            failing.push(name);
        }
    }
    assert!(
        failing.is_empty(),
        "fuzz regressions fail their checks: {failing:?}"
    );
}

#[test]
fn key_intake_seeds() {
    let key = [b"sk-proj_".as_slice(), &[b'A'; 40]].concat();
    let mut inputs = Vec::new();
    for (flags, sizes, tail) in [
        (0u8, &b""[..], &b"\n"[..]),
        (0, b"", b"\r\n"),
        (0, b"", b""),
        (6, b"\x01\x00\x05", b"\nsecond line\n"),
        (4, b"\x03\xff", b"\n"),
    ] {
        inputs.push([&[flags][..], sizes, &key, tail].concat());
    }
    for body in [
        &b"unset\n"[..],
        b"sk key with spaces\n",
        b"\xc3\xa9t\xc3\xa9\n",
        b"\n",
        b"",
    ] {
        inputs.push([&[0u8][..], body].concat());
        inputs.push([&[1u8][..], body].concat());
    }
    for len in [1016, 1017, 1018] {
        inputs.push([vec![0u8], vec![b'A'; len]].concat());
        inputs.push([vec![0u8], vec![b'A'; len], b"\r\n".to_vec()].concat());
    }
    replay("key_intake", &inputs);
}

#[test]
fn sse_reader_seeds() {
    let mut inputs = Vec::new();
    for dir in ["chat-streams", "responses-streams"] {
        for path in files_in(dir) {
            let body = std::fs::read(&path).unwrap();
            inputs.push([&b"\x00\x00"[..], &body].concat());
            inputs.push([&b"\x00\x03\x00\x06\x3f"[..], &body].concat());
            inputs.push([&b"\xff\x21\x10"[..], &body[..body.len().min(2000)]].concat());
        }
    }
    for body in [
        &b"data: a\r\n\r\ndata: b\r\rdata:c\n\n"[..],
        b"event: x\ndata: 1\ndata: 2\n\n: c\n\n",
        b"data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n\n",
    ] {
        inputs.push([&b"\x90\x12\x00\x04"[..], body].concat());
    }
    replay("sse_reader", &inputs);
}

#[test]
fn bridge_request_seeds() {
    let mut inputs = Vec::new();
    for path in files_in("codex-0.169.0") {
        let recorded: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        inputs.push(serde_json::to_vec(&recorded["body"]).unwrap());
    }
    inputs.push(br#"{"model":"m","input":"hi"}"#.to_vec());
    inputs.push(br#"{"model":"m","input":[],"tools":[{"type":"custom","name":"c"}]}"#.to_vec());
    replay("bridge_request", &inputs);
}

#[test]
fn bridge_stream_seeds() {
    let mut inputs = Vec::new();
    for path in files_in("chat-streams") {
        let events = sse_data(&path);
        for flags in [0, 1, 2, 3] {
            inputs.push(with_flags(flags, &events));
        }
    }
    replay("bridge_stream", &inputs);
}

#[test]
fn wrapper_request_seeds() {
    let inputs: Vec<Vec<u8>> = [
        r#"{"model":"gpt-5","stream":true,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"}]}"#,
        r#"{"model":"gpt-5-high","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"ok"}],"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}],"stream_options":{"include_usage":true}}"#,
        r#"{"model":"gpt-5","prompt":"Say hi","max_tokens":5,"stream":true}"#,
        r#"{"model":"gpt-5","prompt":["one"],"temperature":0.2,"stop":["\n"]}"#,
        r#"{"model":"gpt-5_high","prompt":["one","two"],"stream":true}"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    replay("wrapper_request", &inputs);
}

#[test]
fn wrapper_stream_seeds() {
    let mut inputs = Vec::new();
    for path in files_in("responses-streams") {
        let events = sse_data(&path);
        for flags in [0, 1, 2, 3, 4, 5, 8 | 3, 16, 16 | 8, 32 | 16, 32 | 16 | 8] {
            inputs.push(with_flags(flags, &events));
        }
    }
    replay("wrapper_stream", &inputs);
}

#[test]
fn framing_scanner_seeds() {
    let requests: [&[u8]; 4] = [
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;e=1\r\n{}\r\n0\r\nT: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"\r\nGET / HTTP/1.1\nHost: x\n\n",
    ];
    let pipelined = requests.concat();
    let mut inputs = Vec::new();
    for sizes in [&b""[..], b"\x00", b"\x02\x07"] {
        for data in requests.iter().copied().chain([pipelined.as_slice()]) {
            inputs.push([&[sizes.len() as u8][..], sizes, data].concat());
        }
    }
    replay("framing_scanner", &inputs);
}

#[test]
fn usage_tap_seeds() {
    let mut inputs = Vec::new();
    for path in files_in("responses-streams")
        .into_iter()
        .chain(files_in("chat-streams"))
    {
        let body = std::fs::read(&path).unwrap();
        inputs.push(with_line_ends(&body, b"\r\n"));
        inputs.push(with_line_ends(&body, b"\r"));
        inputs.push(body);
    }
    replay("usage_tap", &inputs);
}

#[test]
fn upstream_response_seeds() {
    let mut inputs: Vec<Vec<u8>> = [
        &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}NEXT"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: 1\r\n\r\nX",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab",
    ]
    .iter()
    .map(|wire| wire.to_vec())
    .collect();
    for path in files_in("responses-streams") {
        let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for line in std::fs::read(&path)
            .unwrap()
            .split_inclusive(|&b| b == b'\n')
        {
            wire.extend_from_slice(format!("{:x}\r\n", line.len()).as_bytes());
            wire.extend_from_slice(line);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        inputs.push(wire);
    }
    replay("upstream_response", &inputs);
    // The same bytes, read by ours and by httparse.
    replay("upstream_httparse", &inputs);
}

/// Heads and chunk lines where a lenient parser and a strict one could part ways, read by
/// ours and by httparse (`check_upstream_httparse`).
#[test]
fn upstream_httparse_seeds() {
    let inputs: Vec<Vec<u8>> = [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: x-drop, keep-alive\r\nX-Drop: 1\r\nX-Kept: 2\r\n\r\nabcNEXT"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n5 ;e\r\nhello\r\n0\r\nx-t: 1\r\n\r\nNEXT",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5 x\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5  \r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nbad trailer line\r\n\r\nX",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\nx: 1\n\r\n",
        b"HTTP/1.1 200 OK\ncontent-length: 1\n\nx",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 01\r\ncontent-length: 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nx-bin: \x80\xff\t\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 1\r\n\r\nx",
        b"HTTP/1.1 200\r\n\r\n",
    ]
    .iter()
    .map(|wire| wire.to_vec())
    .collect();
    replay("upstream_httparse", &inputs);
}

/// `body` with every `\n` replaced by `end`.
fn with_line_ends(body: &[u8], end: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() * 2);
    for &b in body {
        if b == b'\n' {
            out.extend_from_slice(end);
        } else {
            out.push(b);
        }
    }
    out
}
