#!/usr/bin/env python3
"""Small measuring clients for bench/run.sh (standard library only). Each prints one JSON line.

  clients.py stream --rounds N NAME=PORT[:KEY] ...
      Time to first byte, first SSE event and last byte of one POST /v1/responses stream,
      N times per target over one keep-alive connection each, targets alternating in
      rotating order; prints the median (and min) of each per target, in milliseconds.

  clients.py hold --port P --streams N --pids PID,PID [--batch B]
      Opens N connections to 127.0.0.1:P, sends POST /v1/responses on each, waits until
      every one has received its first event (the mock holds the rest back), then reads
      VmRSS/VmHWM of the given pids; closes everything and reads them again.

  clients.py soak --port P --streams N --seconds S --pids PID,PID
      Opens N streams like `hold` (the mock holds each back for longer than S seconds after
      its first event), samples the proxy's memory every 10 s for S seconds, then waits for
      every stream to finish with response.completed; prints the samples and the errors.

  clients.py mem --pids PID,PID
      VmRSS and VmHWM of each pid and their sums, in KiB.

  clients.py coldstart --port P --runs N --ready-timeout S -- COMMAND...
      N times: starts COMMAND (e.g. systemd-socket-activate -l 127.0.0.1:P ... proxy),
      waits until 127.0.0.1:P is listening (read from /proc/net/tcp, without connecting),
      then connects, sends POST /v1/responses and times the first response byte; kills the
      command's process group. Prints the median and all runs in milliseconds.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

BODY = b'{"model":"gpt-bench","input":"hello","stream":true}'


def request_bytes(port, key=None, body=BODY, path="/v1/responses"):
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body)}",
    ]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_stream(sock, started):
    """Reads one chunked SSE response; returns (first byte, first event, last byte) times."""
    first = first_event = None
    buf = bytearray()
    while True:
        data = sock.recv(262144)
        now = time.perf_counter()
        if not data:
            raise RuntimeError("connection closed mid-response: %r" % bytes(buf[:200]))
        if first is None:
            first = now
            if not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError("not a 200: %r" % data[:200])
        buf += data
        if first_event is None and b"data:" in buf:
            first_event = now
        if buf.endswith(b"\r\n0\r\n\r\n"):
            return (first - started, first_event - started, now - started)


def cmd_stream(args):
    targets = []
    for spec in args.targets:
        name, rest = spec.split("=", 1)
        port, _, key = rest.partition(":")
        targets.append((name, int(port), key or None))
    socks = {}
    for name, port, _ in targets:
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks[name] = s
    samples = {name: [] for name, _, _ in targets}
    for i in range(args.warmup + args.rounds):
        order = targets[i % len(targets):] + targets[: i % len(targets)]
        for name, port, key in order:
            s = socks[name]
            req = request_bytes(port, key)
            started = time.perf_counter()
            s.sendall(req)
            times = read_stream(s, started)
            if i >= args.warmup:
                samples[name].append(times)
    out = {}
    for name, rows in samples.items():
        cols = list(zip(*rows))
        out[name] = {
            "ttfb_ms": statistics.median(cols[0]) * 1e3,
            "first_event_ms": statistics.median(cols[1]) * 1e3,
            "ttlb_ms": statistics.median(cols[2]) * 1e3,
            "ttfb_min_ms": min(cols[0]) * 1e3,
            "ttlb_min_ms": min(cols[2]) * 1e3,
            "n": len(rows),
        }
    print(json.dumps(out))


def proc_memory(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except FileNotFoundError:
        pass
    return out


def total_memory(pids):
    rss = hwm = 0
    for pid in pids:
        m = proc_memory(pid)
        rss += m.get("VmRSS", 0)
        hwm += m.get("VmHWM", 0)
    return {"rss_kb": rss, "hwm_kb": hwm}


async def open_stream(port, ready):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes(port))
    await writer.drain()
    buf = b""
    while b"data:" not in buf:
        data = await reader.read(65536)
        if not data:
            raise RuntimeError("stream closed before its first event: %r" % buf[:200])
        buf += data
    if not buf.startswith(b"HTTP/1.1 200"):
        raise RuntimeError("not a 200: %r" % buf[:200])
    ready.append(writer)


async def hold(args):
    pids = [int(p) for p in args.pids.split(",") if p]
    before = total_memory(pids)
    writers = []
    started = time.perf_counter()
    for i in range(0, args.streams, args.batch):
        n = min(args.batch, args.streams - i)
        await asyncio.gather(*(open_stream(args.port, writers) for _ in range(n)))
    opened_s = time.perf_counter() - started
    await asyncio.sleep(0.5)
    during = total_memory(pids)
    for w in writers:
        w.close()
    await asyncio.sleep(1.0)
    after = total_memory(pids)
    print(
        json.dumps(
            {
                "streams": len(writers),
                "open_seconds": opened_s,
                "idle": before,
                "open": during,
                "closed": after,
                "per_stream_kb": (during["rss_kb"] - before["rss_kb"]) / max(1, len(writers)),
            }
        )
    )


async def finish_stream(reader, writer):
    """Reads a held stream to its end; True when it ended with response.completed."""
    buf = b""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            buf += data
            if b"response.completed" in buf and buf.endswith(b"\r\n0\r\n\r\n"):
                break
    finally:
        writer.close()
    return b"response.completed" in buf


async def soak(args):
    pids = [int(p) for p in args.pids.split(",") if p]
    idle = total_memory(pids)
    streams = []

    async def open_one():
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        writer.write(request_bytes(args.port))
        await writer.drain()
        first = await reader.read(65536)
        if not first.startswith(b"HTTP/1.1 200"):
            raise RuntimeError("not a 200: %r" % first[:200])
        streams.append((reader, writer))

    for i in range(0, args.streams, 100):
        await asyncio.gather(*(open_one() for _ in range(min(100, args.streams - i))))
    samples = []
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        samples.append({"t": round(time.perf_counter() - started), **total_memory(pids)})
        await asyncio.sleep(10)
    samples.append({"t": round(time.perf_counter() - started), **total_memory(pids)})
    results = await asyncio.gather(*(finish_stream(r, w) for r, w in streams), return_exceptions=True)
    completed = sum(1 for r in results if r is True)
    rss = [s["rss_kb"] for s in samples]
    print(json.dumps({
        "streams": len(streams),
        "seconds": args.seconds,
        "idle": idle,
        "samples": samples,
        "rss_kb_min": min(rss),
        "rss_kb_max": max(rss),
        "completed": completed,
        "errors": len(streams) - completed,
    }))


def listening(port):
    want = ":%04X" % port
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[1].endswith(want) and fields[3] == "0A":
                        return True
        except FileNotFoundError:
            pass
    return False


def cmd_mem(args):
    pids = [int(p) for p in args.pids.split(",") if p]
    per = {str(pid): proc_memory(pid) for pid in pids}
    print(json.dumps({"pids": per, **total_memory(pids)}))


def cmd_coldstart(args):
    runs = []
    for _ in range(args.runs):
        proc = subprocess.Popen(
            args.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + args.ready_timeout
            while not listening(args.port):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the socket was never bound")
                time.sleep(0.005)
            time.sleep(0.05)
            started = time.perf_counter()
            s = socket.create_connection(("127.0.0.1", args.port))
            s.sendall(request_bytes(args.port))
            data = s.recv(65536)
            first = time.perf_counter() - started
            if not data.startswith(b"HTTP/1.1 200"):
                raise RuntimeError("not a 200: %r" % data[:200])
            s.close()
            runs.append(first * 1e3)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        deadline = time.monotonic() + 10
        while listening(args.port) and time.monotonic() < deadline:
            time.sleep(0.01)
    print(json.dumps({"median_ms": statistics.median(runs), "runs_ms": runs}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stream")
    s.add_argument("--rounds", type=int, default=30)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("targets", nargs="+")
    k = sub.add_parser("soak")
    k.add_argument("--port", type=int, required=True)
    k.add_argument("--streams", type=int, default=1000)
    k.add_argument("--seconds", type=int, default=180)
    k.add_argument("--pids", required=True)
    h = sub.add_parser("hold")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--streams", type=int, default=1000)
    h.add_argument("--batch", type=int, default=100)
    h.add_argument("--pids", required=True)
    m = sub.add_parser("mem")
    m.add_argument("--pids", required=True)
    c = sub.add_parser("coldstart")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--runs", type=int, default=10)
    c.add_argument("--ready-timeout", type=float, default=10)
    c.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.cmd == "stream":
        cmd_stream(args)
    elif args.cmd == "soak":
        asyncio.run(soak(args))
    elif args.cmd == "hold":
        asyncio.run(hold(args))
    elif args.cmd == "mem":
        cmd_mem(args)
    else:
        if args.command and args.command[0] == "--":
            args.command = args.command[1:]
        cmd_coldstart(args)


if __name__ == "__main__":
    sys.exit(main())
