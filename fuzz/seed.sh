#!/usr/bin/env bash
# Writes the seed corpora fuzz/corpus/<target>/ from the repository's fixtures (nothing binary
# is committed). Safe to run again: seeds are named by content. Usage: bash fuzz/seed.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec python3 - "$here" "$here/../tests/fixtures" <<'PY'
import glob, hashlib, json, os, sys

fuzz, fixtures = sys.argv[1], sys.argv[2]

def write(target, data):
    d = os.path.join(fuzz, "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def sse_data(path):
    """The `data` of each event of an .sse fixture (the same rules as the proxy's reader)."""
    events, data = [], None
    text = open(path, "rb").read().decode()
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if data is not None:
                events.append("\n".join(data))
            data = None
        elif line.startswith(":"):
            continue
        elif line.startswith("data"):
            value = line[5:] if line.startswith("data:") else ""
            if value.startswith(" "):
                value = value[1:]
            data = (data or []) + [value]
    if data is not None:
        events.append("\n".join(data))
    return events

def fixture_files(sub):
    return sorted(glob.glob(os.path.join(fixtures, sub, "*")))

# key_intake: flags byte (bit 0 allow_unset, bits 1-4 piece-size count), sizes, input.
key = b"sk-proj_" + b"A" * 40
for flags, sizes, body in [
    (0, b"", key + b"\n"),
    (0, b"", key + b"\r\n"),
    (0, b"", key),
    (1, b"", b"unset\n"),
    (0, b"", b"unset\n"),
    (2 * 3, b"\x01\x00\x05", key + b"\nsecond line\n"),
    (2 * 2, b"\x03\xff", key + b"\n"),
    (0, b"", b"A" * 1017),
    (0, b"", b"A" * 1017 + b"\r\n"),
    (0, b"", b"A" * 1017 + b"\rx\n"),
    (0, b"", b"A" * 1018),
    (0, b"", b"sk key with spaces\n"),
    (0, b"", b"\xc3\xa9t\xc3\xa9\n"),
    (0, b"", b"\n"),
    (0, b"", b""),
]:
    write("key_intake", bytes([flags]) + sizes + body)

# sse_reader: limit byte, layout byte (piece-size count | repetitions << 4), sizes, body.
for sub in ("chat-streams", "responses-streams"):
    for path in fixture_files(sub):
        body = open(path, "rb").read()
        write("sse_reader", b"\x00\x00" + body)
        write("sse_reader", b"\x00\x03\x00\x06\x3f" + body)
        write("sse_reader", b"\xff\x21\x10" + body[:2000])
for body in [b"data: a\r\n\r\ndata: b\r\rdata:c\n\n", b"event: x\ndata: 1\ndata: 2\n\n: c\n\n",
             b"data: " + b"x" * 300 + b"\n\n"]:
    write("sse_reader", b"\x90\x12\x00\x04" + body)

# bridge_request: the Codex CLI request bodies, and a few small ones.
for path in fixture_files("codex-0.169.0"):
    write("bridge_request", json.dumps(json.load(open(path))["body"]).encode())
for body in [
    {"model": "m", "input": "hi"},
    {"model": "m", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
     "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}, {"type": "custom", "name": "c"}],
     "tool_choice": {"type": "function", "name": "f"}, "text": {"format": {"type": "json_schema", "name": "s", "schema": {}}}},
]:
    write("bridge_request", json.dumps(body).encode())

# bridge_stream: flags byte (bit 0 assume_think_open, bit 1 fixture tools), NUL-joined data.
for path in fixture_files("chat-streams"):
    events = "\0".join(sse_data(path)).encode()
    write("bridge_stream", b"\x02" + events)
    write("bridge_stream", b"\x03" + events)

# wrapper_request: Chat Completions and Completions bodies.
for body in [
    {"model": "gpt-5", "stream": True, "messages": [{"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "English."}, {"role": "user", "content": "Hello"}]},
    {"model": "gpt-5-high", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
     "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
     "tool_choice": "auto", "stream_options": {"include_usage": True}, "max_tokens": 10,
     "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {}}}},
    {"model": "gpt-5", "prompt": "Say hi", "max_tokens": 5, "stream": True},
    {"model": "gpt-5", "prompt": ["one"], "temperature": 0.2, "stop": ["\n"]},
    {"model": "gpt-5_high", "prompt": ["one", "two"], "stream": True},
]:
    write("wrapper_request", json.dumps(body).encode())

# wrapper_stream: flags byte (bits 0-2 mode, bit 3 include_usage, bit 4 completions, bit 5 two
# prompts), events.
for path in fixture_files("responses-streams"):
    events = "\0".join(sse_data(path)).encode()
    for flags in (0, 1, 2, 3, 4, 5, 8 | 3, 16, 16 | 8, 32 | 16, 32 | 16 | 8):
        write("wrapper_stream", bytes([flags]) + events)

# framing_scanner: byte 0 low nibble number of piece sizes, the sizes (+1), then raw requests.
requests = [
    b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;e=1\r\n{}\r\n0\r\nT: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"\r\nGET / HTTP/1.1\nHost: x\n\n",
    b"GET / HTTP/1.1\r\nUpgrade: x\r\n\r\n",
]
pipelined = b"".join(requests)
for sizes in (b"", b"\x00", b"\x02\x07", b"\x00\x01\x02\x03\x04"):
    for data in requests + [pipelined]:
        write("framing_scanner", bytes([len(sizes)]) + sizes + data)

# usage_tap: raw response bodies, the recorded streams as they are and with other line ends.
for path in fixture_files("responses-streams") + fixture_files("chat-streams"):
    body = open(path, "rb").read()
    write("usage_tap", body)
    write("usage_tap", body.replace(b"\n", b"\r\n"))
    write("usage_tap", body.replace(b"\n", b"\r"))

# upstream_response: what an upstream sends on a connection, in every framing.
responses = [
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    b"f\r\ndata: {\"a\":1}\n\n\r\n5;e=\"x\"\r\nhello\r\n0\r\nx-t: 1\r\n\r\nHTTP/1.1",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 401 Unauthorized\r\ncontent-length: 2, 2\r\n\r\n{}NEXT",
    b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\n\r\nuntil the end",
    b"HTTP/1.1 204 No Content\r\ncontent-length: 4\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 9\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\nraw",
]
for path in fixture_files("responses-streams"):
    body = open(path, "rb").read()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(line), line) for line in body.splitlines(True))
    responses.append(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
for response in responses:
    write("upstream_response", response)
    # upstream_httparse: the same bytes, read by ours and by httparse.
    write("upstream_httparse", response)

for t in sorted(os.listdir(os.path.join(fuzz, "corpus"))):
    print(f"seeded {t}: {len(os.listdir(os.path.join(fuzz, 'corpus', t)))} inputs")
PY
