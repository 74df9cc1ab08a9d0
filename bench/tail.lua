-- wrk script for bench/tail.sh: POSTs the bench request and prints the latency percentiles
-- (microseconds) from p50 to p99.9 on one line.
wrk.method = "POST"
wrk.body = '{"model":"gpt-bench","input":"hello","stream":true}'
wrk.headers["Content-Type"] = "application/json"

function done(summary, latency, requests)
  io.write(string.format(
    "TAIL n=%d p50=%d p90=%d p95=%d p98=%d p99=%d p99.5=%d p99.9=%d max=%d\n",
    summary.requests, latency:percentile(50), latency:percentile(90), latency:percentile(95),
    latency:percentile(98), latency:percentile(99), latency:percentile(99.5),
    latency:percentile(99.9), latency.max))
end
