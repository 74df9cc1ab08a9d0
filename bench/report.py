#!/usr/bin/env python3
"""Turns the raw measurements of bench/run.sh (results.jsonl and the outputs of the
bench_bridge and bench_wrapper examples) into one markdown report on stdout.

Every wrk run is checked: no non-2xx answer, no socket error, and the mock counted at least as
many requests with the right key as wrk completed and none with a wrong key or to another path.
Exit status 3 when a check failed (the report is still printed, with the failures listed).

usage: report.py RESULTS.jsonl BRIDGE.out WRAPPER.out [--seconds S] [--rounds R]
"""

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
from collections import defaultdict

TARGET_NAMES = {
    "direct": "direct to the mock",
    "ours": "**ours (strict)**",
    "nginx": "nginx-light",
    "bare": "bare hyper+reqwest forwarder",
    "reference": "reference `codex responses-api-proxy`",
    "direct1k": "direct to the mock",
    "ours1k": "ours, strict (pass-through)",
    "bridge": "ours, `--bridge-to-chat`",
    "wrapper": "ours, `--wrapper-routes` (/v1/chat/completions)",
}


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0, suffix=""):
    if v is None:
        return "–"
    if digits == 0:
        return f"{v:,.0f}{suffix}"
    return f"{v:,.{digits}f}{suffix}"


def ratio(a, b, digits=2):
    if a is None or not b:
        return "–"
    return f"{a / b:.{digits}f}×"


def sh(cmd):
    try:
        out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except Exception:
        return "?"


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": sh("nproc"),
        "cpu": cpu,
        "kernel": platform.release(),
        "mem": sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'"),
        "nginx": sh("nginx -v 2>&1"),
        "wrk": sh("wrk -v 2>&1 | head -1"),
        "rustc": sh("rustc --version"),
    }


def check(row):
    """Problems with one wrk run, as a list of strings."""
    w, before, after = row["wrk"], row["mock_before"], row["mock_after"]
    problems = []
    if w["non2xx"]:
        problems.append(f"{w['non2xx']} non-2xx")
    errors = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"]
    if errors:
        problems.append(f"{errors} socket errors")
    good = after["good"] - before["good"]
    if good < w["requests"]:
        problems.append(f"mock saw {good} good requests < {w['requests']} completed")
    if after["bad"] != before["bad"]:
        problems.append(f"mock saw {after['bad'] - before['bad']} requests with a wrong key")
    if after["other"] != before["other"]:
        problems.append(f"mock saw {after['other'] - before['other']} requests to other paths")
    if w["requests"] == 0:
        problems.append("no request completed")
    return problems


def check_alternating(row):
    """Problems with one round of the alternating client, as a list of strings."""
    before, after = row["mock_before"], row["mock_after"]
    targets = row["result"]["targets"]
    problems = [f"{t['name']}: {t['errors']} errors" for t in targets if t["errors"]]
    problems += [f"{t['name']}: no request completed" for t in targets if not t["requests"]]
    sizes = {(t["body_min"], t["body_max"]) for t in targets if t["requests"]}
    if len(sizes) != 1 or any(lo != hi for lo, hi in sizes):
        problems.append(f"bodies of different sizes (smallest, largest per target): {sorted(sizes)}")
    completed = sum(t["requests"] for t in targets)
    good = after["good"] - before["good"]
    if good < completed:
        problems.append(f"mock saw {good} good requests < {completed} completed")
    if after["bad"] != before["bad"]:
        problems.append(f"mock saw {after['bad'] - before['bad']} requests with a wrong key")
    if after["other"] != before["other"]:
        problems.append(f"mock saw {after['other'] - before['other']} requests to other paths")
    return problems


def parse_translation(bridge_text, wrapper_text):
    out = {}
    m = re.search(r"best ([\d.]+) chunks/s.*median ([\d.]+) chunks/s", bridge_text, re.S)
    if m:
        out["bridge_best"], out["bridge_median"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"translate only:\s+([\d.]+) events/s", wrapper_text)
    if m:
        out["wrapper_translate"] = float(m.group(1))
    m = re.search(r"SSE parse\+translate:\s+([\d.]+) events/s", wrapper_text)
    if m:
        out["wrapper_parse_translate"] = float(m.group(1))
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("bridge_out")
    p.add_argument("wrapper_out")
    p.add_argument("--seconds", default="?")
    p.add_argument("--rounds", default="?")
    args = p.parse_args()

    rows = [json.loads(line) for line in open(args.results) if line.strip()]
    translation = parse_translation(open(args.bridge_out).read(), open(args.wrapper_out).read())
    failures = []
    runs = defaultdict(list)  # (kind, target, conns) -> rows
    for row in rows:
        if row["kind"] in ("strict", "e2e"):
            problems = check(row)
            if problems:
                failures.append(
                    f"{row['kind']} {row['target']} c{row['conns']} round {row['round']}: "
                    + "; ".join(problems)
                )
            runs[(row["kind"], row["target"], row["conns"])].append(row)
    alternating = [r for r in rows if r["kind"] == "alternating"]
    for row in alternating:
        problems = check_alternating(row)
        if problems:
            failures.append(f"alternating round {row['round']}: " + "; ".join(problems))
    n_checked = sum(len(v) for v in runs.values())
    peaks = {r["target"]: r["memory"] for r in rows if r["kind"] == "peak"}
    stream = next((r["result"] for r in rows if r["kind"] == "stream"), {})
    hold = next((r["result"] for r in rows if r["kind"] == "hold"), None)
    idle = next((r for r in rows if r["kind"] == "idle"), None)
    cold = next((r["result"] for r in rows if r["kind"] == "cold"), None)

    def metric(kind, target, conns, key):
        return med([r["wrk"][key] for r in runs.get((kind, target, conns), [])])

    def cpu_per_request(kind, target, conns):
        """Median CPU time of the target's own processes per completed request, in µs."""
        return med(
            [
                r["cpu_ticks"] * 1e6 / r["clk_tck"] / r["wrk"]["requests"]
                for r in runs.get((kind, target, conns), [])
                if "cpu_ticks" in r and r["wrk"]["requests"]
            ]
        )

    def per_round_ratio(kind, a, b, conns, key="rps"):
        by_round = defaultdict(dict)
        for t in (a, b):
            for r in runs.get((kind, t, conns), []):
                by_round[r["round"]][t] = r["wrk"][key]
        return med([v[a] / v[b] for v in by_round.values() if a in v and b in v and v[b]])

    m = machine()
    out = []
    w = out.append
    w("# Benchmark results (latest run of `bash bench/run.sh`)\n")
    w(
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['mem']}, Linux {m['kernel']}; "
        f"{m['nginx']}; {m['wrk']}; {m['rustc']}. Everything on loopback, on the same 2 cores "
        f"as the load generator and the mock upstream.\n"
    )
    w(
        f"Load: wrk, {args.seconds} s per run, {args.rounds} rounds with the order of the "
        f"targets rotated every round; every number is the median over the rounds; "
        f"ratios (×) are medians of the per-round ratios. c64 = `wrk -t2 -c64`, c1 = `wrk -t1 -c1`. "
        f"Each request: `POST /v1/responses`, answered by the mock with a "
        f"~2.2 KB SSE stream of 9 events.\n"
    )
    n_checked += len(alternating)
    w(
        f"Checks: {n_checked - len(failures)} of {n_checked} runs passed (wrk and the alternating "
        f"client: no non-2xx, no socket error, every completed request reached the mock with "
        f"the key, none without)."
    )
    for f in failures:
        w(f"- **FAILED**: {f}")
    w("")

    # 1. Strict proxy.
    w("## 1. Strict proxy: throughput, latency, peak memory\n")
    w(
        "| target | req/s c64 | × direct | × nginx | p50 c64 ms | p99 c64 ms | p50 c1 ms "
        "| p50 added over direct, c1 | p99 c1 ms | req/s c1 | CPU µs/request c64 | c1 "
        "| peak RSS (all processes) |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    d50 = metric("strict", "direct", 1, "p50_us")
    for t in ["direct", "ours", "nginx", "bare", "reference"]:
        if ("strict", t, 64) not in runs:
            continue
        rps = metric("strict", t, 64, "rps")
        p50_1 = metric("strict", t, 1, "p50_us")
        peak = peaks.get(t)
        w(
            f"| {TARGET_NAMES[t]} | {fmt(rps)} | {ratio_cell(per_round_ratio('strict', t, 'direct', 64))} "
            f"| {ratio_cell(per_round_ratio('strict', t, 'nginx', 64))} "
            f"| {fmt(us_ms(metric('strict', t, 64, 'p50_us')), 2)} "
            f"| {fmt(us_ms(metric('strict', t, 64, 'p99_us')), 2)} "
            f"| {fmt(us_ms(p50_1), 3)} "
            f"| {'–' if t == 'direct' else fmt(us_ms(p50_1 - d50), 3, ' ms')} "
            f"| {fmt(us_ms(metric('strict', t, 1, 'p99_us')), 3)} "
            f"| {fmt(metric('strict', t, 1, 'rps'))} "
            f"| {fmt(cpu_per_request('strict', t, 64), 1)} "
            f"| {fmt(cpu_per_request('strict', t, 1), 1)} "
            f"| {fmt(peak['hwm_kb'] / 1024, 1, ' MB') if peak else '–'} |"
        )
    w("")
    w(
        "CPU µs/request: user + system time of the target's own processes (for direct: the "
        "mock's) over the wrk run, divided by the requests completed; the mock's and wrk's "
        "time is not included for the proxies. On 2 shared cores this is the steadier measure "
        "of what each proxy costs: throughput moves with whatever else the machine runs.\n"
    )

    # 1b. Alternating c1 latency.
    def alt_metric(target, key):
        return med(
            [t[key] for r in alternating for t in r["result"]["targets"] if t["name"] == target]
        )

    def alt_ratio(a, b, key):
        ratios = []
        for r in alternating:
            by_name = {t["name"]: t for t in r["result"]["targets"]}
            if a in by_name and b in by_name and by_name[b][key]:
                ratios.append(by_name[a][key] / by_name[b][key])
        return med(ratios)

    if alternating:
        secs = alternating[0]["result"]["seconds"]
        w("## 1b. Latency at c1, the targets' requests interleaved\n")
        w(
            f"One client (`examples/bench_alternating_client.rs`), one request at a time, "
            f"alternating between the targets request by request (each cycle one request to "
            f"each, in a new random order), one keep-alive connection to each; {len(alternating)} rounds "
            f"of {secs:g} s, medians over the rounds. wrk's c1 runs above measure one target "
            f"after another, so a stall of the whole machine lands on whichever target runs at "
            f"that moment; here such moments fall on all targets alike. Each target waits while "
            f"the others are served, so every request finds it idle (caches cooler than under wrk); "
            f"work a target does after its response (ours: the usage parse and the log line) "
            f"overlaps the next target's request, which is each other target equally often. "
            f"Checked: every response a 200 with the same body as direct's, the mock saw every "
            f"request with the key.\n"
        )
        w("| target | requests per round | p50 µs | p90 µs | p99 µs | p99.9 µs | p50 added over direct | p99 × nginx |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|")
        a50 = alt_metric("direct", "p50_us")
        for t in ["direct", "ours", "nginx", "bare"]:
            if alt_metric(t, "p50_us") is None:
                continue
            p50 = alt_metric(t, "p50_us")
            w(
                f"| {TARGET_NAMES[t]} | {fmt(alt_metric(t, 'requests'))} | {fmt(p50)} "
                f"| {fmt(alt_metric(t, 'p90_us'))} | {fmt(alt_metric(t, 'p99_us'))} "
                f"| {fmt(alt_metric(t, 'p999_us'))} "
                f"| {'–' if t == 'direct' else fmt(p50 - a50, 0, ' µs')} "
                f"| {ratio_cell(alt_ratio(t, 'nginx', 'p99_us'))} |"
            )
        w("")

    # 2. Streaming.
    w("## 2. Streaming: one 1,000-event stream (~150 KB, one write per event at the mock)\n")
    w(f"Median of {next(iter(stream.values()), {}).get('n', '?')} requests per target, one keep-alive connection each, targets alternating.\n")
    w("| target | first byte ms | (min) | first event ms | last byte ms | (min) | added first byte | added last byte |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|")
    sd = stream.get("direct")
    for t in ["direct", "ours", "nginx"]:
        s = stream.get(t)
        if not s:
            continue
        w(
            f"| {TARGET_NAMES[t]} | {s['ttfb_ms']:.3f} | {s['ttfb_min_ms']:.3f} | {s['first_event_ms']:.3f} "
            f"| {s['ttlb_ms']:.2f} | {s['ttlb_min_ms']:.2f} "
            f"| {'–' if t == 'direct' else '%+.3f ms' % (s['ttfb_ms'] - sd['ttfb_ms'])} "
            f"| {'–' if t == 'direct' else '%+.2f ms' % (s['ttlb_ms'] - sd['ttlb_ms'])} |"
        )
    w("")

    # 3. Translation.
    w("## 3. Translation\n")
    w("Conversion alone, one thread (examples `bench_bridge`, `bench_wrapper`, default arguments):\n")
    w("| converter | events/s (one core) |")
    w("|---|---:|")
    if "bridge_best" in translation:
        w(f"| bridge: Chat Completions chunks → Responses events (best round) | {fmt(translation['bridge_best'])} |")
        w(f"| bridge: same, median round | {fmt(translation['bridge_median'])} |")
    if "wrapper_translate" in translation:
        w(f"| wrapper: Responses events → Chat Completions chunks | {fmt(translation['wrapper_translate'])} |")
        w(f"| wrapper: SSE parsing + translation | {fmt(translation['wrapper_parse_translate'])} |")
    w("")
    w(
        "End to end through the proxy: `wrk -t2 -c4`, every response a 1,000-event upstream stream; "
        "events/s = upstream events carried per second (req/s × 1,000).\n"
    )
    w("| route | req/s | upstream events/s | × strict pass-through | p50 ms |")
    w("|---|---:|---:|---:|---:|")
    for t in ["direct1k", "ours1k", "bridge", "wrapper"]:
        if ("e2e", t, 4) not in runs:
            continue
        rps = metric("e2e", t, 4, "rps")
        w(
            f"| {TARGET_NAMES[t]} | {fmt(rps)} | {fmt(rps * 1000 if rps else None)} "
            f"| {ratio_cell(per_round_ratio('e2e', t, 'ours1k', 4))} "
            f"| {fmt(us_ms(metric('e2e', t, 4, 'p50_us')), 2)} |"
        )
    w("")

    # 4. Memory.
    w("## 4. Memory of our proxy (supervisor + worker)\n")
    w("| state | VmRSS, both processes | per process |")
    w("|---|---:|---:|")
    if idle:
        per = ", ".join(f"{v.get('VmRSS', 0) / 1024:.1f} MB" for v in idle["memory"]["pids"].values())
        w(f"| idle, just started | {idle['memory']['rss_kb'] / 1024:.1f} MB | {per} |")
    if hold:
        w(f"| {hold['streams']} streams open | {hold['open']['rss_kb'] / 1024:.1f} MB | |")
        w(f"| after they closed | {hold['closed']['rss_kb'] / 1024:.1f} MB | |")
        w(f"| **per open stream** | **{hold['per_stream_kb']:.1f} KB** | |")
    w("")

    # 5. Cold start.
    if cold:
        w("## 5. Cold start\n")
        runs_ms = cold["runs_ms"]
        w(
            f"`systemd-socket-activate` holds the port; time from connecting to the first response byte "
            f"(launch, key, fork, privilege drop, worker start, upstream round trip): median "
            f"**{cold['median_ms']:.1f} ms** (min {min(runs_ms):.1f}, max {max(runs_ms):.1f}, {len(runs_ms)} launches).\n"
        )

    # Targets.
    w("## Targets\n")
    w("| target | goal | measured | met |")
    w("|---|---|---:|:---:|")

    def goal(name, want, measured, ok):
        w(f"| {name} | {want} | {measured} | {'yes' if ok else '**no**'} |")

    r_ng = per_round_ratio("strict", "ours", "nginx", 64)
    if r_ng is not None:
        goal("throughput c64 vs nginx", "≥ 1.0×", f"{r_ng:.2f}×", r_ng >= 1.0)
    r_ref = per_round_ratio("strict", "ours", "reference", 64)
    if r_ref is not None:
        goal("throughput c64 vs reference", "≥ 10×", f"{r_ref:.1f}×", r_ref >= 10)
    o50, n50 = metric("strict", "ours", 1, "p50_us"), metric("strict", "nginx", 1, "p50_us")
    if None not in (o50, n50, d50):
        goal(
            "p50 added over direct, c1 (wrk)",
            "≤ nginx's",
            f"{(o50 - d50) / 1e3:.3f} ms vs {(n50 - d50) / 1e3:.3f} ms",
            o50 <= n50,
        )
    ao50, an50, ad50 = (alt_metric(t, "p50_us") for t in ("ours", "nginx", "direct"))
    if None not in (ao50, an50, ad50):
        goal(
            "p50 added over direct, c1 (interleaved, 1b)",
            "≤ nginx's",
            f"{(ao50 - ad50) / 1e3:.3f} ms vs {(an50 - ad50) / 1e3:.3f} ms",
            ao50 <= an50,
        )
    for c in (1, 64):
        o99, n99 = metric("strict", "ours", c, "p99_us"), metric("strict", "nginx", c, "p99_us")
        if None not in (o99, n99):
            goal(
                f"p99 c{c} (wrk)", "≤ nginx's", f"{o99 / 1e3:.2f} ms vs {n99 / 1e3:.2f} ms", o99 <= n99
            )
        if c == 1:
            ao99, an99 = alt_metric("ours", "p99_us"), alt_metric("nginx", "p99_us")
            if None not in (ao99, an99):
                goal(
                    "p99 c1 (interleaved, 1b)",
                    "≤ nginx's",
                    f"{ao99 / 1e3:.3f} ms vs {an99 / 1e3:.3f} ms",
                    ao99 <= an99,
                )
    for key, label in (("bridge_best", "bridge conversion"), ("wrapper_translate", "wrapper conversion")):
        if key in translation:
            v = translation[key]
            goal(label + " per core", "≥ 1,000,000 events/s", fmt(v), v >= 1e6)
    if stream.get("ours") and sd:
        added = stream["ours"]["ttfb_ms"] - sd["ttfb_ms"]
        goal("added first-byte time (1,000-event stream)", "≤ 1 ms", f"{added:.3f} ms", added <= 1.0)
    if idle:
        v = idle["memory"]["rss_kb"] / 1024
        goal("idle RSS, both processes", "≤ 12 MB", f"{v:.1f} MB", v <= 12)
    if hold:
        v = hold["per_stream_kb"]
        goal(f"RSS per open stream ({hold['streams']} streams)", "≤ 64 KB", f"{v:.1f} KB", v <= 64)
    if cold:
        goal("cold start to first byte", "≤ 50 ms", f"{cold['median_ms']:.1f} ms", cold["median_ms"] <= 50)
    w("")
    print("\n".join(out))
    return 3 if failures else 0


def us_ms(v):
    return None if v is None else v / 1e3


def ratio_cell(v):
    return "–" if v is None else f"{v:.2f}×"


if __name__ == "__main__":
    sys.exit(main())
