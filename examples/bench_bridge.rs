//! Benchmark of the bridge stream converter (not a test): builds a 10,000-chunk Chat
//! Completions stream in memory (reasoning, text and a fragmented tool call, shaped like real
//! upstream chunks), converts it to Responses events N times on one thread, and prints chunks/s.
//!
//! Run: `cargo run --release --example bench_bridge [STREAMS_PER_ROUND] [ROUNDS]`; it prints
//! the best round (the machine's capability when nothing else competes for the CPU) and the
//! median round.
//!
//! It also prints the time bridge mode adds before the first byte compared with strict
//! proxying (whose network path is the same): parsing a real Codex request, converting it,
//! encoding the chat body, and converting the first upstream chunk into the first events.

use std::hint::black_box;
use std::time::Instant;

use openai_wire::bridge::request::{responses_to_chat, StreamMeta};
use openai_wire::bridge::stream::ChatStreamConverter;
use serde_json::json;

const CHUNKS: usize = 10_000;

fn chunk_json(delta: serde_json::Value, finish_reason: Option<&str>) -> String {
    json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_795_268_307,
        "model": "deepseek-chat",
        "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}]
    })
    .to_string()
}

/// 10% reasoning, 80% text, 10% tool-call argument fragments, then finish and usage.
fn build_stream() -> Vec<String> {
    let mut chunks = Vec::with_capacity(CHUNKS);
    chunks.push(chunk_json(
        json!({"role": "assistant", "content": ""}),
        None,
    ));
    let reasoning = CHUNKS / 10;
    let tool = CHUNKS / 10;
    let text = CHUNKS - reasoning - tool - 3;
    for i in 0..reasoning {
        chunks.push(chunk_json(
            json!({"reasoning_content": format!("step {i} ")}),
            None,
        ));
    }
    for i in 0..text {
        chunks.push(chunk_json(
            json!({"content": format!("word{i} \"q\" ")}),
            None,
        ));
    }
    chunks.push(chunk_json(
        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": "exec_command", "arguments": "{\"cmd\":\""}}]}),
        None,
    ));
    for _ in 1..tool {
        chunks.push(chunk_json(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "ls "}}]}),
            None,
        ));
    }
    chunks.push(chunk_json(json!({}), Some("tool_calls")));
    chunks.push(
        json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "choices": [],
               "usage": {"prompt_tokens": 1000, "completion_tokens": 9000, "total_tokens": 10000}})
        .to_string(),
    );
    chunks
}

/// Converts the whole stream once; returns the number of output bytes.
fn convert_once(meta: &StreamMeta, chunks: &[String], round: usize, out: &mut Vec<u8>) -> usize {
    out.clear();
    let mut converter = ChatStreamConverter::new(meta.clone(), &format!("resp_bench{round}"), 1);
    converter.start(out);
    for chunk in chunks {
        if let Err(err) = converter.push_chunk(chunk, out) {
            eprintln!("chunk failed: {err}");
            return 0;
        }
    }
    converter.finish(out);
    black_box(&out);
    out.len()
}

/// The bridge's own work before the client's first byte, for a real Codex request.
fn added_first_byte_time() -> std::time::Duration {
    const CODEX_REQUEST: &str =
        include_str!("../tests/fixtures/codex-0.169.0/codex-request-tool-turn2.json");
    let fixture: serde_json::Value = serde_json::from_str(CODEX_REQUEST).expect("fixture is JSON");
    let body = serde_json::to_vec(&fixture["body"]).expect("body encodes");
    let first_chunk = chunk_json(json!({"role": "assistant", "content": "Hi"}), None);
    let mut samples = Vec::with_capacity(2000);
    for i in 0..2000 {
        let started = Instant::now();
        let request: serde_json::Value = serde_json::from_slice(&body).expect("parses");
        let plan = responses_to_chat(&request).expect("converts");
        let chat_body = serde_json::to_vec(&plan.chat_body).expect("encodes");
        let mut converter =
            ChatStreamConverter::new(plan.meta, &format!("resp_bench{i:08}"), 1_795_268_307);
        let mut out = Vec::new();
        converter.start(&mut out);
        let _ = converter.push_chunk(&first_chunk, &mut out);
        black_box((&chat_body, &out));
        samples.push(started.elapsed());
    }
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>().ok());
    let iterations = args.next().flatten().unwrap_or(10).max(1);
    let rounds = args.next().flatten().unwrap_or(15).max(1);
    let request = json!({"model": "deepseek-chat", "input": "hi", "stream": true,
        "tools": [{"type": "function", "name": "exec_command", "parameters": {"type": "object"}}]});
    let meta = match responses_to_chat(&request) {
        Ok(plan) => plan.meta,
        Err(err) => {
            eprintln!("bench request rejected: {err}");
            return;
        }
    };
    let chunks = build_stream();
    let input_bytes: usize = chunks.iter().map(String::len).sum();
    let mut out = Vec::with_capacity(4 * input_bytes);
    let mut output_bytes = convert_once(&meta, &chunks, 0, &mut out);
    let mut rates = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let started = Instant::now();
        for i in 0..iterations {
            output_bytes = convert_once(&meta, &chunks, round * iterations + i, &mut out);
        }
        let elapsed = started.elapsed().as_secs_f64();
        rates.push((chunks.len() * iterations) as f64 / elapsed);
    }
    rates.sort_by(f64::total_cmp);
    let best = rates[rates.len() - 1];
    let median = rates[rates.len() / 2];
    println!(
        "{} chunks/stream ({} bytes in, {output_bytes} bytes out), {rounds} rounds x {iterations} \
         streams, one thread: best {best:.0} chunks/s ({:.0} MB/s in), median {median:.0} chunks/s",
        chunks.len(),
        input_bytes,
        best * input_bytes as f64 / chunks.len() as f64 / 1e6,
    );
    println!(
        "added first-byte time versus strict proxying (a {}-byte real Codex request, median of 2000): {:.1} µs",
        include_str!("../tests/fixtures/codex-0.169.0/codex-request-tool-turn2.json").len(),
        added_first_byte_time().as_secs_f64() * 1e6
    );
}
