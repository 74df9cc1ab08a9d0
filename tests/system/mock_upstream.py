#!/usr/bin/env python3
"""Mock Responses API upstream for tests/system/run.sh.

Listens on 127.0.0.1:PORT. Every request is appended as one JSON line to
the --record file (method, path, the Authorization header exactly as
received, body size, model); POST requests are answered with a small
Responses-style SSE stream, anything else with 404. A POST whose model is
"hold" gets its first event at once and the rest only once the file
RELEASE (next to the --record file) exists: a stream held open across a
key rotation.

Usage: mock_upstream.py --port 18080 --record /run/mock-upstream/requests.jsonl
"""

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TEXT = "Hello from the mock upstream"


def sse_body() -> bytes:
    events = [
        ("response.created", {
            "type": "response.created",
            "response": {"id": "resp_mock", "object": "response",
                         "status": "in_progress", "output": []},
        }),
        ("response.output_text.delta", {
            "type": "response.output_text.delta", "item_id": "msg_mock",
            "output_index": 0, "content_index": 0, "delta": TEXT,
        }),
        ("response.completed", {
            "type": "response.completed",
            "response": {
                "id": "resp_mock", "object": "response", "status": "completed",
                "output": [{
                    "type": "message", "id": "msg_mock", "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": TEXT,
                                 "annotations": []}],
                }],
                "usage": {"input_tokens": 3, "output_tokens": 6,
                          "total_tokens": 9},
            },
        }),
    ]
    out = []
    for name, data in events:
        out.append(f"event: {name}\ndata: {json.dumps(data)}\n\n")
    return "".join(out).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-upstream/1"
    record_lock = threading.Lock()
    record_path = ""

    def log_message(self, fmt, *args):  # keep stderr (the journal) short
        sys.stderr.write("mock-upstream: " + (fmt % args) + "\n")

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until the empty line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def record(self, body: bytes) -> None:
        model = None
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            pass
        entry = {
            "method": self.command,
            "path": self.path,
            "authorization": self.headers.get("Authorization"),
            "body_bytes": len(body),
            "model": model,
        }
        with self.record_lock, open(self.record_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def reply(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True

    def do_POST(self):
        body = self.read_body()
        self.record(body)
        try:
            model = json.loads(body).get("model")
        except (ValueError, AttributeError):
            model = None
        if model == "hold":
            self.held_stream()
        else:
            self.reply(200, "text/event-stream", sse_body())

    def held_stream(self) -> None:
        """The first event now, the rest once RELEASE exists (at most 120 s)."""
        events = sse_body().split(b"\n\n")
        first = events[0] + b"\n\n"
        rest = b"\n\n".join(events[1:])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()

        def chunk(data: bytes) -> None:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        chunk(first)
        release = os.path.join(os.path.dirname(self.record_path), "RELEASE")
        deadline = time.time() + 120
        while not os.path.exists(release) and time.time() < deadline:
            time.sleep(0.1)
        chunk(rest)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True

    def do_GET(self):
        self.record(b"")
        self.reply(404, "application/json",
                   b'{"error":{"message":"mock upstream: no such route"}}')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=18080)
    ap.add_argument("--record", required=True)
    ap.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key", help="the certificate's key (PEM)")
    args = ap.parse_args()
    Handler.record_path = args.record
    open(args.record, "a", encoding="utf-8").close()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.tls_cert:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    sys.stderr.write(f"mock-upstream: listening on 127.0.0.1:{args.port}\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
