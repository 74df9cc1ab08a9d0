-- wrk script for bench/run.sh: POSTs $BENCH_BODY (a JSON request) to the URL's path with the
-- optional header "Authorization: Bearer $BENCH_KEY", and prints one JSON summary line
-- (requests, non-2xx, socket errors, req/s, latency percentiles in microseconds) at the end.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY") or '{"model":"gpt-bench","input":"hello","stream":true}'
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"rps":%.2f,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
