//! The worker's Prometheus metrics and the admin-only endpoint that serves them: `GET
//! /metrics` (OpenMetrics text when the scraper asks for it, as Prometheus does, else the
//! Prometheus text format 0.0.4) on the unix socket root bound for `--metrics-socket` (root's,
//! mode 0660, so the file system lets only root and the metrics group connect). Nothing is
//! recorded unless that socket was handed over: then every hook costs one load and returns.
//!
//! What is counted, and where (README "Metrics" lists every metric):
//! - a finished request (route, status, upstream timings, tokens, upstream failures) in
//!   [`request_finished`], called with the request's log line, on the after-response thread;
//! - requests in flight with an [`InFlight`] guard held from the request's start to the end
//!   of its response, open WebSockets with [`websocket_opened`]/[`websocket_closed`];
//! - refusals by a limit in [`limit_refused`] (admission and the fair shares).
//!
//! Label values are bounded: routes, statuses, limits and error kinds are fixed words, users
//! are local accounts named by the kernel, and at most [`MAX_MODELS`] model names are kept
//! (the rest are counted as `other`).
//!
//! Uses: `crate::usage` (token counts), the worker's request record (`server::http`), the
//! caller (`identity`), its connection timer, and prometheus-client, hyper, hyper_util, tokio,
//! tracing.

use crate::usage::TokenUsage;
use crate::worker::identity::peer_identity::PeerIdentity;
use crate::worker::server::http::RequestRecord;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Most distinct model names kept as label values; later ones are counted as `other`.
pub(crate) const MAX_MODELS: usize = 64;

/// Upper bounds of the latency histograms, in seconds: from a fast local upstream to a long
/// reasoning stream.
const LATENCY_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Longest a scraper may take to send its request head.
const SCRAPE_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

static METRICS: OnceLock<Metrics> = OnceLock::new();

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    user: String,
    uid: String,
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

#[derive(Clone)]
struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(LATENCY_BUCKETS)
    }
}

/// Every metric of the worker, and the registry that encodes them.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    upstream_duration: Family<RouteLabels, Histogram, LatencyHistogram>,
    upstream_first_byte: Family<RouteLabels, Histogram, LatencyHistogram>,
    tokens: Family<TokenLabels, Counter>,
    requests_in_flight: Gauge,
    websockets_open: Gauge,
    limit_refusals: Family<LimitLabels, Counter>,
    upstream_errors: Family<ErrorLabels, Counter>,
    /// The model names given a label of their own so far.
    models: Mutex<HashSet<String>>,
    /// The input and output token counters by uid and model name, so that a request's tokens
    /// are counted without building its labels (three strings) again.
    token_counters: Mutex<TokenCounters>,
}

/// Input and output counters by uid, then by model name.
type TokenCounters = HashMap<Option<u32>, HashMap<String, [Counter; 2]>>;

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("codex_proxy");
        let metrics = Metrics {
            requests: Family::default(),
            upstream_duration: Family::new_with_constructor(LatencyHistogram),
            upstream_first_byte: Family::new_with_constructor(LatencyHistogram),
            tokens: Family::default(),
            requests_in_flight: Gauge::default(),
            websockets_open: Gauge::default(),
            limit_refusals: Family::default(),
            upstream_errors: Family::default(),
            models: Mutex::default(),
            token_counters: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "requests",
            "Requests answered, by route and HTTP status (WebSocket turns as route websocket_turn)",
            metrics.requests.clone(),
        );
        registry.register_with_unit(
            "upstream_duration",
            "Time from a request's arrival to the end of the upstream's response, for requests the upstream answered",
            Unit::Seconds,
            metrics.upstream_duration.clone(),
        );
        registry.register_with_unit(
            "upstream_time_to_first_byte",
            "Time from a request's arrival to the first byte of the upstream's response body sent on to the client",
            Unit::Seconds,
            metrics.upstream_first_byte.clone(),
        );
        registry.register(
            "tokens",
            "Tokens the upstream reported, by local user, model and kind (input or output)",
            metrics.tokens.clone(),
        );
        registry.register(
            "requests_in_flight",
            "Requests being served now (from arrival to the end of the response stream)",
            metrics.requests_in_flight.clone(),
        );
        registry.register(
            "websockets_open",
            "WebSockets open now",
            metrics.websockets_open.clone(),
        );
        registry.register(
            "limit_refusals",
            "Requests or connections refused by a limit, by limit",
            metrics.limit_refusals.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures, by kind: connect, tls, timeout, protocol, auth, stream (broken mid-response), status_5xx",
            metrics.upstream_errors.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The OpenMetrics text of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The same in the Prometheus text format 0.0.4, for scrapers that do not ask for
    /// OpenMetrics (see [`prometheus_text`]).
    pub(crate) fn encode_prometheus(&self) -> String {
        prometheus_text(&self.encode())
    }

    /// The label of a model name: itself while fewer than [`MAX_MODELS`] are known, else
    /// `other`; only printable, short names are kept as they are.
    fn model_label(&self, model: Option<&str>) -> String {
        let Some(model) = model.filter(|m| !m.is_empty()) else {
            return "unknown".to_owned();
        };
        let clean = model.len() <= 100
            && model
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:/@+-".contains(&b));
        if !clean {
            return "other".to_owned();
        }
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        if models.contains(model) {
            return model.to_owned();
        }
        if models.len() >= MAX_MODELS {
            return "other".to_owned();
        }
        models.insert(model.to_owned());
        model.to_owned()
    }

    /// Adds a request's tokens to its user's and model's counters.
    fn count_tokens(&self, identity: &PeerIdentity, usage: &TokenUsage) {
        let model = usage.model.as_deref().filter(|m| !m.is_empty());
        let key = model.unwrap_or("");
        let mut cache = self
            .token_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some([input, output]) = cache.get(&identity.uid).and_then(|m| m.get(key)) {
            input.inc_by(usage.input_tokens);
            output.inc_by(usage.output_tokens);
            return;
        }
        let label = self.model_label(model);
        let user = identity.display_name();
        let uid = identity
            .uid
            .map_or_else(|| "unknown".to_owned(), |uid| uid.to_string());
        let counters = ["input", "output"].map(|kind| {
            self.tokens.get_or_create_owned(&TokenLabels {
                user: user.clone(),
                uid: uid.clone(),
                model: label.clone(),
                kind,
            })
        });
        counters[0].inc_by(usage.input_tokens);
        counters[1].inc_by(usage.output_tokens);
        // A name counted as `other` is not kept: the cache stays as bounded as the labels.
        if model.is_none() || label == key {
            cache
                .entry(identity.uid)
                .or_default()
                .insert(key.to_owned(), counters);
        }
    }
}

/// OpenMetrics text rewritten in the Prometheus text format 0.0.4: a counter's family is
/// named as its samples are (`x_total`, where OpenMetrics names it `x`), and the `# UNIT` and
/// `# EOF` lines, which that format lacks, are left out. Samples are the same in both.
pub(crate) fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // A family's `# HELP` comes before its `# TYPE`: held until the type is known.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = help.take() {
                push_help(&mut out, name, "", text);
            }
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some((help_name, text)) = help.take() {
                let help_suffix = if help_name == name { suffix } else { "" };
                push_help(&mut out, help_name, help_suffix, text);
            }
            out.push_str("# TYPE ");
            out.push_str(name);
            out.push_str(suffix);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        if let Some((name, text)) = help.take() {
            push_help(&mut out, name, "", text);
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn push_help(out: &mut String, name: &str, suffix: &str, text: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push_str(suffix);
    out.push(' ');
    out.push_str(text);
    out.push('\n');
}

/// Turns the metrics on (the worker received a metrics socket); the hooks record from then on.
pub(crate) fn enable() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// The metrics, when they are on.
pub(crate) fn get() -> Option<&'static Metrics> {
    METRICS.get()
}

/// Whether the metrics are on (what a hot path checks before measuring anything).
pub(crate) fn enabled() -> bool {
    METRICS.get().is_some()
}

/// A finished request: its route and status, its upstream timings and failure, its tokens.
pub(crate) fn request_finished(r: &RequestRecord, tokens: Option<&TokenUsage>, duration_ms: u64) {
    let Some(m) = get() else { return };
    m.requests
        .get_or_create(&RequestLabels {
            route: r.route,
            status: r.status,
        })
        .inc();
    if let Some(upstream_status) = r.upstream_status {
        let route = RouteLabels { route: r.route };
        m.upstream_duration
            .get_or_create(&route)
            .observe(duration_ms as f64 / 1000.0);
        if let Some(first_byte) = r.first_byte {
            m.upstream_first_byte
                .get_or_create(&route)
                .observe(first_byte.as_secs_f64());
        }
        let failure = if upstream_status >= 500 {
            Some("status_5xx")
        } else if r.failed {
            Some("stream")
        } else {
            None
        };
        if let Some(kind) = failure {
            m.upstream_errors.get_or_create(&ErrorLabels { kind }).inc();
        }
    }
    if let Some(kind) = r.upstream_failure {
        m.upstream_errors.get_or_create(&ErrorLabels { kind }).inc();
    }
    if let Some(usage) = tokens {
        m.count_tokens(&r.identity, usage);
    }
}

/// A refusal by `limit` (`requests_per_minute`, `tokens_per_day`, `connections_per_user`, …).
pub(crate) fn limit_refused(limit: &'static str) {
    if let Some(m) = get() {
        m.limit_refusals.get_or_create(&LimitLabels { limit }).inc();
    }
}

/// A WebSocket opened (paired with [`websocket_closed`]).
pub(crate) fn websocket_opened() {
    if let Some(m) = get() {
        m.websockets_open.inc();
    }
}

/// A WebSocket closed.
pub(crate) fn websocket_closed() {
    if let Some(m) = get() {
        m.websockets_open.dec();
    }
}

/// A request in flight, counted from its start until this is dropped (with its response).
pub(crate) struct InFlight(Option<&'static Metrics>);

impl InFlight {
    pub(crate) fn start() -> InFlight {
        let metrics = get();
        if let Some(m) = metrics {
            m.requests_in_flight.inc();
        }
        InFlight(metrics)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            m.requests_in_flight.dec();
        }
    }
}

/// Serves `GET /metrics` on the metrics socket until `stop` turns true. Whoever connects got
/// past the socket's permissions (root or the metrics group); anything but `GET /metrics`
/// gets 404.
pub(crate) async fn serve(
    listener: std::os::unix::net::UnixListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixListener::from_std(listener))
    {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("worker: cannot serve the metrics socket: {e}");
            return;
        }
    };
    let metrics = enable();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve_scraper(stream, metrics));
                }
                Err(e) => {
                    tracing::warn!("worker: metrics socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn serve_scraper(stream: tokio::net::UnixStream, metrics: &'static Metrics) {
    let service = hyper::service::service_fn(move |request: hyper::Request<_>| async move {
        Ok::<_, std::convert::Infallible>(answer(metrics, &request))
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(crate::worker::server::connection_timer::ConnectionTimer::default())
        .header_read_timeout(SCRAPE_HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!("metrics connection ended with an error: {e}");
    }
}

/// The answer to one request on the metrics socket.
fn answer<B>(
    metrics: &Metrics,
    request: &hyper::Request<B>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
    let (status, content_type, body) =
        if request.method() == hyper::Method::GET && request.uri().path() == "/metrics" {
            // Prometheus asks for OpenMetrics first; anything else gets the classic format.
            let openmetrics = request.headers().get_all(ACCEPT).iter().any(|value| {
                value
                    .to_str()
                    .is_ok_and(|v| v.contains("application/openmetrics-text"))
            });
            if openmetrics {
                (
                    hyper::StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    metrics.encode(),
                )
            } else {
                (
                    hyper::StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    metrics.encode_prometheus(),
                )
            }
        } else {
            (
                hyper::StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "Only GET /metrics is served here.\n".to_owned(),
            )
        };
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions_and_models_are_bounded() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                route: "responses",
                status: 200,
            })
            .inc();
        m.upstream_duration
            .get_or_create(&RouteLabels { route: "responses" })
            .observe(0.2);
        let text = m.encode();
        assert!(
            text.contains("codex_proxy_requests_total{route=\"responses\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("# UNIT codex_proxy_upstream_duration_seconds seconds"));
        assert!(
            text.contains(
                "codex_proxy_upstream_duration_seconds_bucket{le=\"0.25\",route=\"responses\"} 1"
            ) || text.contains(
                "codex_proxy_upstream_duration_seconds_bucket{route=\"responses\",le=\"0.25\"} 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        for n in 0..MAX_MODELS {
            assert_eq!(m.model_label(Some(&format!("m{n}"))), format!("m{n}"));
        }
        assert_eq!(m.model_label(Some("m0")), "m0");
        assert_eq!(m.model_label(Some("one-too-many")), "other");
        assert_eq!(m.model_label(Some("bad\nname")), "other");
        assert_eq!(m.model_label(None), "unknown");
        assert_eq!(m.model_label(Some("")), "unknown");
    }

    #[test]
    fn tokens_are_counted_by_user_model_and_kind_from_the_cache_too() {
        let m = Metrics::new();
        let alice = PeerIdentity {
            uid: Some(1001),
            user: Some("alice".into()),
        };
        let usage = |model: Option<&str>, input, output| TokenUsage {
            model: model.map(str::to_owned),
            input_tokens: input,
            output_tokens: output,
            ..TokenUsage::default()
        };
        m.count_tokens(&alice, &usage(Some("gpt-5"), 10, 1));
        m.count_tokens(&alice, &usage(Some("gpt-5"), 20, 2));
        m.count_tokens(&alice, &usage(None, 5, 5));
        m.count_tokens(&PeerIdentity::unknown(), &usage(Some("gpt-5"), 1, 0));
        let text = m.encode();
        for line in [
            "codex_proxy_tokens_total{user=\"alice\",uid=\"1001\",model=\"gpt-5\",kind=\"input\"} 30",
            "codex_proxy_tokens_total{user=\"alice\",uid=\"1001\",model=\"gpt-5\",kind=\"output\"} 3",
            "codex_proxy_tokens_total{user=\"alice\",uid=\"1001\",model=\"unknown\",kind=\"input\"} 5",
            "codex_proxy_tokens_total{user=\"unknown\",uid=\"unknown\",model=\"gpt-5\",kind=\"input\"} 1",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn the_classic_format_names_counter_families_as_their_samples() {
        let openmetrics = "# HELP codex_proxy_requests Requests answered.\n# TYPE codex_proxy_requests counter\ncodex_proxy_requests_total{route=\"x\"} 1\n# HELP codex_proxy_open Open now.\n# TYPE codex_proxy_open gauge\ncodex_proxy_open 2\n# HELP codex_proxy_d_seconds Time.\n# TYPE codex_proxy_d_seconds histogram\n# UNIT codex_proxy_d_seconds seconds\ncodex_proxy_d_seconds_sum 0.5\n# EOF\n";
        assert_eq!(
            prometheus_text(openmetrics),
            "# HELP codex_proxy_requests_total Requests answered.\n# TYPE codex_proxy_requests_total counter\ncodex_proxy_requests_total{route=\"x\"} 1\n# HELP codex_proxy_open Open now.\n# TYPE codex_proxy_open gauge\ncodex_proxy_open 2\n# HELP codex_proxy_d_seconds Time.\n# TYPE codex_proxy_d_seconds histogram\ncodex_proxy_d_seconds_sum 0.5\n"
        );
    }
}
