//! Benchmark (not a test): translate a 10,000-event Responses stream into Chat Completions
//! chunks N times on one thread and print events per second.
//!
//! `cargo run --release --example bench_wrapper -- [ITERATIONS]` (default 200).
//!
//! The stream is built here in the exact shape the OpenAI API streams (created, in_progress,
//! a reasoning item with two summary parts, a message, two parallel function calls, and a
//! `response.completed` carrying the full output), so the benchmark needs no files.

use std::hint::black_box;
use std::time::Instant;

use openai_wire::sse::SseReader;
use openai_wire::wrapper::chat_stream::ChatStream;
use openai_wire::wrapper::settings::ReasoningOutputMode;
use openai_wire::wrapper::ClientMeta;
use serde_json::{json, Value};

const EVENTS: usize = 10_000;

/// Builds the recorded stream as SSE bytes (`event:` + `data:` lines).
fn recorded_stream() -> Vec<u8> {
    let mut events: Vec<Value> = Vec::with_capacity(EVENTS);
    let response = |status: &str, output: Value, usage: Value| {
        json!({"id": "resp_bench", "object": "response", "created_at": 1_763_740_000,
               "status": status, "error": null, "incomplete_details": null, "instructions": null,
               "model": "gpt-5-2025-08-07", "output": output, "parallel_tool_calls": true,
               "temperature": 1.0, "tool_choice": "auto", "tools": [], "top_p": 1.0,
               "usage": usage, "metadata": {}})
    };
    events.push(json!({"type": "response.created", "response": response("in_progress", json!([]), Value::Null)}));
    events.push(json!({"type": "response.in_progress", "response": response("in_progress", json!([]), Value::Null)}));

    // Budget: 2 + reasoning (1 + 2×(1+N+2) + 1) + message (2 + M + 3) + 2 calls × (1 + K + 2) + 1.
    let reasoning_deltas = 1_500;
    let call_deltas = 700;
    let fixed = 2 + (1 + 2 * 3 + 1) + 5 + 2 * 3 + 1;
    let text_deltas = EVENTS - fixed - 2 * reasoning_deltas - 2 * call_deltas;

    events.push(
        json!({"type": "response.output_item.added", "output_index": 0,
        "item": {"id": "rs_bench", "type": "reasoning", "summary": []}}),
    );
    let mut summary = Vec::new();
    for part in 0..2 {
        events.push(json!({"type": "response.reasoning_summary_part.added", "item_id": "rs_bench",
            "output_index": 0, "summary_index": part, "part": {"type": "summary_text", "text": ""}}));
        let mut text = String::new();
        for i in 0..reasoning_deltas {
            let delta = format!(" step{i}");
            text.push_str(&delta);
            events.push(
                json!({"type": "response.reasoning_summary_text.delta", "item_id": "rs_bench",
                "output_index": 0, "summary_index": part, "delta": delta, "obfuscation": "aBc"}),
            );
        }
        events.push(
            json!({"type": "response.reasoning_summary_text.done", "item_id": "rs_bench",
            "output_index": 0, "summary_index": part, "text": text}),
        );
        events.push(json!({"type": "response.reasoning_summary_part.done", "item_id": "rs_bench",
            "output_index": 0, "summary_index": part, "part": {"type": "summary_text", "text": text}}));
        summary.push(json!({"type": "summary_text", "text": text}));
    }
    let reasoning_item = json!({"id": "rs_bench", "type": "reasoning", "summary": summary});
    events.push(
        json!({"type": "response.output_item.done", "output_index": 0, "item": reasoning_item}),
    );

    events.push(json!({"type": "response.output_item.added", "output_index": 1,
        "item": {"id": "msg_bench", "type": "message", "status": "in_progress", "content": [], "role": "assistant"}}));
    events.push(json!({"type": "response.content_part.added", "item_id": "msg_bench", "output_index": 1,
        "content_index": 0, "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}}));
    let mut text = String::new();
    for i in 0..text_deltas {
        let delta = if i % 10 == 9 {
            " \"quoted\"\n".to_string()
        } else {
            format!(" word{i}")
        };
        text.push_str(&delta);
        events.push(
            json!({"type": "response.output_text.delta", "item_id": "msg_bench", "output_index": 1,
            "content_index": 0, "delta": delta, "logprobs": [], "obfuscation": "xY"}),
        );
    }
    let part = json!({"type": "output_text", "annotations": [], "logprobs": [], "text": text});
    events.push(
        json!({"type": "response.output_text.done", "item_id": "msg_bench", "output_index": 1,
        "content_index": 0, "text": text, "logprobs": []}),
    );
    events.push(
        json!({"type": "response.content_part.done", "item_id": "msg_bench", "output_index": 1,
        "content_index": 0, "part": part}),
    );
    let message_item = json!({"id": "msg_bench", "type": "message", "status": "completed",
        "content": [part], "role": "assistant"});
    events.push(
        json!({"type": "response.output_item.done", "output_index": 1, "item": message_item}),
    );

    let mut output = vec![reasoning_item, message_item];
    for call in 0..2 {
        let (id, call_id, index) = (
            format!("fc_bench{call}"),
            format!("call_bench{call}"),
            2 + call,
        );
        events.push(
            json!({"type": "response.output_item.added", "output_index": index,
            "item": {"id": id, "type": "function_call", "status": "in_progress", "arguments": "",
                     "call_id": call_id, "name": "lookup"}}),
        );
        let mut arguments = String::from("{\"q\":\"");
        events.push(
            json!({"type": "response.function_call_arguments.delta", "item_id": id,
            "output_index": index, "delta": arguments}),
        );
        for i in 0..call_deltas - 2 {
            let delta = format!("k{i} ");
            arguments.push_str(&delta);
            events.push(
                json!({"type": "response.function_call_arguments.delta", "item_id": id,
                "output_index": index, "delta": delta, "obfuscation": "q"}),
            );
        }
        arguments.push_str("\"}");
        events.push(
            json!({"type": "response.function_call_arguments.delta", "item_id": id,
            "output_index": index, "delta": "\"}"}),
        );
        events.push(
            json!({"type": "response.function_call_arguments.done", "item_id": id,
            "output_index": index, "arguments": arguments, "name": "lookup"}),
        );
        let item = json!({"id": id, "type": "function_call", "status": "completed",
            "arguments": arguments, "call_id": call_id, "name": "lookup"});
        events.push(
            json!({"type": "response.output_item.done", "output_index": index, "item": item}),
        );
        output.push(item);
    }
    let usage = json!({"input_tokens": 1200, "input_tokens_details": {"cached_tokens": 1024},
        "output_tokens": 9000, "output_tokens_details": {"reasoning_tokens": 3000}, "total_tokens": 10200});
    events.push(json!({"type": "response.completed", "response": response("completed", Value::Array(output), usage)}));
    assert_eq!(
        events.len(),
        EVENTS,
        "the recorded stream has exactly {EVENTS} events"
    );

    let mut bytes = Vec::new();
    for (seq, mut event) in events.into_iter().enumerate() {
        event["sequence_number"] = seq.into();
        let kind = event["type"].as_str().unwrap_or_default().to_string();
        openai_wire::sse::write_json_event(&mut bytes, Some(&kind), &event);
    }
    bytes
}

fn meta() -> ClientMeta {
    ClientMeta {
        stream: true,
        include_usage: true,
        model: "gpt-5".into(),
    }
}

/// Translation only: events already split into `data` strings.
fn bench_translate(datas: &[String], iterations: usize) -> (f64, usize) {
    let mut out = Vec::with_capacity(4 << 20);
    let start = Instant::now();
    for _ in 0..iterations {
        out.clear();
        let mut stream = ChatStream::new(&meta(), ReasoningOutputMode::OpenAi, 1, "chatcmpl-bench");
        for data in datas {
            let _ = stream.push_event(data, &mut out);
        }
        stream.finish(&mut out);
        black_box(&out);
    }
    (start.elapsed().as_secs_f64(), out.len())
}

/// SSE parsing plus translation, bytes fed in 16 KiB reads.
fn bench_end_to_end(bytes: &[u8], iterations: usize) -> f64 {
    let mut out = Vec::with_capacity(4 << 20);
    let start = Instant::now();
    for _ in 0..iterations {
        out.clear();
        let mut reader = SseReader::default();
        let mut stream = ChatStream::new(&meta(), ReasoningOutputMode::OpenAi, 1, "chatcmpl-bench");
        for read in bytes.chunks(16 * 1024) {
            reader.push(read);
            while let Ok(Some(event)) = reader.next_event() {
                let _ = stream.push_event(event.data, &mut out);
            }
        }
        stream.finish(&mut out);
        black_box(&out);
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let bytes = recorded_stream();
    let mut reader = SseReader::default();
    reader.push(&bytes);
    let mut datas = Vec::with_capacity(EVENTS);
    while let Ok(Some(event)) = reader.next_event() {
        datas.push(event.data.to_string());
    }
    println!(
        "stream: {} events, {:.1} MiB of SSE; {iterations} iterations, one thread",
        datas.len(),
        bytes.len() as f64 / (1 << 20) as f64
    );
    // Warm up.
    bench_translate(&datas, 2);
    let (secs, out_len) = bench_translate(&datas, iterations);
    let total = (datas.len() * iterations) as f64;
    println!(
        "translate only:      {:>12.0} events/s ({:.3} s, {:.1} MiB of chunks per stream)",
        total / secs,
        secs,
        out_len as f64 / (1 << 20) as f64
    );
    let secs = bench_end_to_end(&bytes, iterations);
    println!(
        "SSE parse+translate: {:>12.0} events/s ({:.3} s)",
        total / secs,
        secs
    );
}
