//! `--github-oidc` end to end: the real binary with a GitHub OIDC request token on standard
//! input, a mock of GitHub's ID-token endpoint and a mock of OpenAI's workload identity token
//! exchange (both the tests' own hyper servers on loopback, checking the exact request shape),
//! and a mock upstream that records which access token reached it. The schedule is the
//! reference proxy's: a token at start, renewal when a request finds it due (a tenth of its
//! lifetime ahead, at most a minute) or after a 401 (which is passed on), back-off after a failed renewal.

mod codex_support;
mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const REQUEST_TOKEN: &str = "eyJhbGciOiJub25lIn0.GHREQUESTTOKENSECRET-0123456789_abc.c2ln";
const AUDIENCE: &str = "https://api.openai.com/v1";
const PROVIDER: &str = "wip_test123";
const SERVICE_ACCOUNT: &str = "svc_acct_test456";

fn id_token(n: usize) -> String {
    format!("eyJhbGciOiJSUzI1NiJ9.GHIDTOKENSECRET{n}.sig")
}

fn access_token(n: usize) -> String {
    format!("wif-ACCESSTOKENSECRET-{n}")
}

/// The two token endpoints of the tests' own, numbering what they hand out.
struct TokenEndpoints {
    github: MockUpstream,
    exchange: MockUpstream,
}

impl TokenEndpoints {
    /// `exchange_reply(n)` answers the n-th exchange (1-based); `expires_in` is the lifetime
    /// every token gets.
    async fn start(exchange_reply: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Self {
        let issued = Arc::new(AtomicUsize::new(0));
        let github = MockUpstream::start(move |_| {
            let n = issued.fetch_add(1, Ordering::SeqCst) + 1;
            Reply::json(200, &json!({ "value": id_token(n) }).to_string())
        })
        .await;
        let exchanges = Arc::new(AtomicUsize::new(0));
        let exchange = MockUpstream::start(move |_| {
            exchange_reply(exchanges.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .await;
        TokenEndpoints { github, exchange }
    }

    /// Tokens valid for `expires_in` seconds (`expires_at` an hour away).
    fn granting(expires_in: u64) -> impl Fn(usize) -> Reply + Send + Sync + 'static {
        move |n| {
            Reply::json(
                200,
                &json!({
                    "access_token": access_token(n),
                    "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                    "token_type": "Bearer",
                    "expires_in": expires_in,
                    "expires_at": unix_now() + 3600,
                })
                .to_string(),
            )
        }
    }

    fn args(&self, upstream_url: &str) -> Vec<String> {
        [
            "--upstream-url",
            upstream_url,
            "--github-oidc",
            "--oidc-audience",
            AUDIENCE,
            "--identity-provider-id",
            PROVIDER,
            "--service-account-id",
            SERVICE_ACCOUNT,
            "--github-oidc-request-url",
            &self.github.url("/_apis/actions/idtoken?api-version=2.0"),
            "--oidc-token-url",
            &self.exchange.url("/oauth/token"),
            "--log-level",
            "trace",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs the binary with `args` and the request token on standard input, expecting it to exit
/// (not to serve) within a minute; returns its standard error.
fn start_expecting_exit(args: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(binary())
        .args(args)
        .arg("--server-info")
        .arg(dir.path().join("info.json"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("{REQUEST_TOKEN}\n").as_bytes())
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the proxy kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    assert!(
        !dir.path().join("info.json").exists(),
        "it never announced serving"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn start(args: Vec<String>) -> Proxy {
    Proxy::start_with(ProxyOptions {
        args,
        key: Some(REQUEST_TOKEN),
        ..Default::default()
    })
}

async fn upstream_ok() -> MockUpstream {
    MockUpstream::start(|_| Reply::json(200, r#"{"id":"resp_1","object":"response"}"#)).await
}

async fn post(proxy: &Proxy) -> (u16, String) {
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-5","input":"hi"}"#)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn authorizations(upstream: &MockUpstream) -> Vec<String> {
    upstream
        .seen()
        .iter()
        .map(|s| s.header("authorization").unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_exchange_has_the_reference_shape_and_its_token_reaches_the_upstream() {
    let endpoints = TokenEndpoints::start(TokenEndpoints::granting(3600)).await;
    let upstream = upstream_ok().await;
    let proxy = start(endpoints.args(&upstream.url("/v1/responses")));

    let (status, body) = post(&proxy).await;
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());

    // GitHub: GET of the runner's URL plus the audience, with the request token as bearer.
    let github = endpoints.github.seen();
    assert_eq!(github.len(), 1);
    assert_eq!(github[0].method, "GET");
    assert_eq!(
        github[0].uri,
        "/_apis/actions/idtoken?api-version=2.0&audience=https%3A%2F%2Fapi.openai.com%2Fv1"
    );
    let authorization = github[0].header("authorization").unwrap();
    let (scheme, token) = authorization.split_once(' ').unwrap();
    assert!(scheme.eq_ignore_ascii_case("bearer"), "{authorization}");
    assert_eq!(token, REQUEST_TOKEN);

    // OpenAI: a JSON POST of exactly the documented token-exchange fields.
    let exchange = endpoints.exchange.seen();
    assert_eq!(exchange.len(), 1);
    assert_eq!(exchange[0].method, "POST");
    assert_eq!(exchange[0].uri, "/oauth/token");
    assert_eq!(
        exchange[0].header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(exchange[0].header("authorization"), None);
    assert_eq!(
        exchange[0].json(),
        json!({
            "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "subject_token": id_token(1),
            "identity_provider_id": PROVIDER,
            "service_account_id": SERVICE_ACCOUNT,
        })
    );

    // The upstream gets the exchanged token; a second request reuses it.
    let (status, _) = post(&proxy).await;
    assert_eq!(status, 200);
    assert_eq!(
        authorizations(&upstream),
        vec![
            format!("Bearer {}", access_token(1)),
            format!("Bearer {}", access_token(1))
        ]
    );
    assert_eq!(endpoints.exchange.seen().len(), 1, "the token is cached");
    assert_eq!(endpoints.github.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_due_for_renewal_is_replaced_before_it_is_used() {
    // A one-second token is due for renewal after 0.9 s; each request waits a second first.
    let endpoints = TokenEndpoints::start(TokenEndpoints::granting(1)).await;
    let upstream = upstream_ok().await;
    let proxy = start(endpoints.args(&upstream.url("/v1/responses")));
    assert_eq!(endpoints.exchange.seen().len(), 1, "a token at start");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (status, body) = post(&proxy).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        authorizations(&upstream),
        (2..=4)
            .map(|n| format!("Bearer {}", access_token(n)))
            .collect::<Vec<_>>()
    );
    // Every exchange presented a GitHub ID token fetched for it.
    let subjects: Vec<Value> = endpoints
        .exchange
        .seen()
        .iter()
        .map(|s| s.json()["subject_token"].clone())
        .collect();
    assert_eq!(
        subjects,
        (1..=4).map(|n| json!(id_token(n))).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_401_is_passed_on_and_the_next_request_renews_the_token() {
    let endpoints = TokenEndpoints::start(TokenEndpoints::granting(3600)).await;
    let revoked = format!("Bearer {}", access_token(1));
    let upstream = MockUpstream::start(move |seen| {
        if seen.header("authorization").as_deref() == Some(revoked.as_str()) {
            Reply::json(401, r#"{"error":{"message":"token revoked"}}"#)
        } else {
            Reply::json(200, r#"{"id":"resp_2"}"#)
        }
    })
    .await;
    let proxy = start(endpoints.args(&upstream.url("/v1/responses")));
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token revoked"), "{body}");
    assert_eq!(
        endpoints.exchange.seen().len(),
        1,
        "no renewal, no retry yet"
    );
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        authorizations(&upstream),
        vec![
            format!("Bearer {}", access_token(1)),
            format!("Bearer {}", access_token(2))
        ]
    );
    assert_eq!(endpoints.exchange.seen().len(), 2);

    // An upstream that refuses every token: every request gets its 401, and each renews the
    // token the one before it got refused.
    let always = MockUpstream::start(|_| Reply::json(401, r#"{"error":{"message":"no"}}"#)).await;
    let endpoints = TokenEndpoints::start(TokenEndpoints::granting(3600)).await;
    let proxy = start(endpoints.args(&always.url("/v1/responses")));
    for _ in 0..2 {
        assert_eq!(post(&proxy).await.0, 401);
    }
    assert_eq!(
        authorizations(&always),
        vec![
            format!("Bearer {}", access_token(1)),
            format!("Bearer {}", access_token(2))
        ]
    );
    assert_eq!(endpoints.exchange.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_exchange_at_start_stops_the_proxy_with_a_clear_message_without_secrets() {
    let endpoints = TokenEndpoints::start(|_| {
        Reply::json(
            400,
            &json!({"error": {"code": "invalid_subject_token", "message": format!("bad token {}", id_token(1))}}).to_string(),
        )
    })
    .await;
    let upstream = upstream_ok().await;
    let stderr = start_expecting_exit(&endpoints.args(&upstream.url("/v1/responses")));
    assert!(
        stderr.contains("workload identity token exchange"),
        "{stderr}"
    );
    assert!(stderr.contains("400"), "{stderr}");
    assert!(stderr.contains("invalid_subject_token"), "{stderr}");
    for secret in [REQUEST_TOKEN, &id_token(1), "SECRET"] {
        assert!(!stderr.contains(secret), "{stderr}");
    }
    assert!(upstream.seen().is_empty(), "nothing went upstream");

    // GitHub refusing the request token is just as clear.
    let github = MockUpstream::start(|_| Reply::json(403, r#"{"message":"forbidden"}"#)).await;
    let exchange = MockUpstream::start(|_| Reply::json(500, "{}")).await;
    let endpoints = TokenEndpoints { github, exchange };
    let stderr = start_expecting_exit(&endpoints.args(&upstream.url("/v1/responses")));
    assert!(stderr.contains("GitHub OIDC token endpoint"), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert!(!stderr.contains("GHREQUESTTOKENSECRET"), "{stderr}");
    assert!(endpoints.exchange.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_renewal_is_a_clear_502_and_is_not_repeated_by_every_request() {
    // The first exchange (at start) grants a one-second token; every later one fails.
    let endpoints = TokenEndpoints::start(|n| {
        if n == 1 {
            TokenEndpoints::granting(1)(n)
        } else {
            Reply::json(503, r#"{"error":"temporarily_unavailable"}"#)
        }
    })
    .await;
    let upstream = upstream_ok().await;
    let proxy = start(endpoints.args(&upstream.url("/v1/responses")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 502, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "workload_identity_exchange_failed");
    assert_eq!(error["error"]["type"], "upstream_error");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("503"), "{message}");
    assert!(message.contains("temporarily_unavailable"), "{message}");
    assert_eq!(endpoints.exchange.seen().len(), 2);
    // The next request, within the back-off (1 s, then 2, 4 … 30), is refused without an
    // exchange; were this machine paused past the back-off, it would have tried once more.
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 502, "{body}");
    if endpoints.exchange.seen().len() == 2 {
        assert!(body.contains("temporarily unavailable"), "{body}");
    }
    for secret in [REQUEST_TOKEN, "SECRET"] {
        assert!(!body.contains(secret), "{body}");
    }
    assert!(upstream.seen().is_empty(), "nothing went upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_never_reach_logs_argv_or_the_environment() {
    // Renewals, a 401 on the second token, at the most verbose log level; then a second proxy
    // whose exchange fails at start.
    let endpoints = TokenEndpoints::start(TokenEndpoints::granting(1)).await;
    let rejected = format!("Bearer {}", access_token(2));
    let upstream = MockUpstream::start(move |seen| {
        if seen.header("authorization").as_deref() == Some(rejected.as_str()) {
            Reply::json(401, r#"{"error":{"message":"expired"}}"#)
        } else {
            Reply::json(200, r#"{"id":"resp_3"}"#)
        }
    })
    .await;
    let proxy = start(endpoints.args(&upstream.url("/v1/responses")));
    let mut statuses = Vec::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    statuses.push(post(&proxy).await.0);
    statuses.push(post(&proxy).await.0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    statuses.push(post(&proxy).await.0);
    assert_eq!(statuses, vec![401, 200, 200]);
    // At start, after the first second, after the 401, after the next second.
    assert_eq!(endpoints.exchange.seen().len(), 4);

    let failing = TokenEndpoints::start(|_| {
        Reply::json(
            401,
            &json!({"error": "invalid_grant", "subject": id_token(1)}).to_string(),
        )
    })
    .await;
    let failing_log = start_expecting_exit(&failing.args(&upstream.url("/v1/responses")));
    assert!(failing_log.contains("invalid_grant"), "{failing_log}");
    assert!(failing_log.contains("DEBUG"), "verbose: {failing_log}");

    let mut places = Vec::new();
    let needle = "issued a token for 1 s";
    let log = proxy.stderr_once_it_has(needle, Duration::from_secs(5));
    assert!(log.contains(needle), "{log}");
    assert!(log.contains("DEBUG"), "verbose: {log}");
    places.push(("log".to_string(), log));
    for pid in [proxy.pid, proxy.worker_pid()] {
        for file in ["cmdline", "environ"] {
            let bytes = std::fs::read(format!("/proc/{pid}/{file}")).unwrap();
            places.push((
                format!("/proc/{pid}/{file}"),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    places.push(("the failing proxy's log".to_string(), failing_log));
    assert!(
        places[1].1.contains("--github-oidc"),
        "the supervisor's cmdline was read"
    );
    let mut secrets = vec![REQUEST_TOKEN.to_string(), "GHREQUESTTOKENSECRET".into()];
    for n in 1..=4 {
        secrets.push(id_token(n));
        secrets.push(access_token(n));
    }
    secrets.push("GHIDTOKENSECRET".into());
    secrets.push("ACCESSTOKENSECRET".into());
    for (place, text) in &places {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{secret} found in {place}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_settings_stop_the_service_with_a_clear_message() {
    let endpoints = TokenEndpoints::start(TokenEndpoints::granting(3600)).await;
    // Missing flags: clap names them.
    let output = std::process::Command::new(binary())
        .args(["--github-oidc", "--oidc-audience", AUDIENCE])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--identity-provider-id"), "{stderr}");

    // A plain-HTTP request URL off loopback, and an upstream other than OpenAI's.
    for (flag, value, expected) in [
        (
            "--github-oidc-request-url",
            "http://example.com/token",
            "--github-oidc-request-url must be an https:// URL",
        ),
        (
            "--upstream-url",
            "https://example.com/v1/responses",
            "only to https://api.openai.com",
        ),
    ] {
        let mut args = endpoints.args("http://127.0.0.1:9/v1/responses");
        let at = args.iter().position(|a| a == flag).unwrap();
        args[at + 1] = value.to_string();
        let stderr = start_expecting_exit(&args);
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("GHREQUESTTOKENSECRET"), "{stderr}");
    }

    // No request token on standard input.
    let output = std::process::Command::new(binary())
        .args(endpoints.args("http://127.0.0.1:9/v1/responses"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no GitHub OIDC request token was given"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn both_token_endpoints_use_the_egress_proxy_like_the_upstream() {
    let endpoints = TokenEndpoints::start(TokenEndpoints::granting(3600)).await;
    let upstream = upstream_ok().await;
    let egress = EgressProxy::start().await;
    let mut args = endpoints.args(&upstream.url("/v1/responses"));
    args.extend([
        "--upstream-proxy".to_string(),
        format!("http://{}", egress.addr),
    ]);
    let proxy = start(args);
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 200, "{body}");
    let mut lines: Vec<String> = egress.seen().into_iter().map(|(line, _)| line).collect();
    lines.sort();
    let mut expected = vec![
        format!(
            "GET {}&audience=https%3A%2F%2Fapi.openai.com%2Fv1 HTTP/1.1",
            endpoints
                .github
                .url("/_apis/actions/idtoken?api-version=2.0")
        ),
        format!("POST {} HTTP/1.1", endpoints.exchange.url("/oauth/token")),
        format!("POST {} HTTP/1.1", upstream.url("/v1/responses")),
    ];
    expected.sort();
    assert_eq!(lines, expected);
    assert_eq!(
        upstream.seen()[0].header("authorization").unwrap(),
        format!("Bearer {}", access_token(1))
    );
}

// --- the reference proxy and ours, side by side ---------------------------------------------
//
// The reference (`codex responses-api-proxy --github-oidc`) insists on HTTPS for the GitHub
// URL and has OpenAI's token endpoint and Responses URL built in. Both binaries are therefore
// pointed at the same real names (`github.test`, `auth.openai.com`, `api.openai.com`) through an
// egress proxy of the test's own on 127.0.0.1 that answers CONNECT, ends TLS with a certificate
// of a throw-away CA and hands the plain requests to one recording mock per name. The reference
// finds the proxy in `HTTPS_PROXY` and trusts the CA through `SSL_CERT_FILE` (no root and no
// change to the system store needed); ours gets `--upstream-proxy` and `--upstream-ca-file`.

/// The three endpoints one binary talks to, behind one intercepting egress proxy.
struct Intercepted {
    proxy: std::net::SocketAddr,
    github: MockUpstream,
    exchange: MockUpstream,
    api: MockUpstream,
}

/// The names the intercepting proxy's certificate is valid for.
const INTERCEPTED_NAMES: [&str; 3] = ["github.test", "auth.openai.com", "api.openai.com"];

/// What each comparison of the reference and ours shares: the reference binary, the
/// interception's TLS configuration, and its CA in a file of a directory every user may read
/// (which is also the reference's empty home).
struct Both {
    codex: std::path::PathBuf,
    tls: Arc<rustls::ServerConfig>,
    dir: tempfile::TempDir,
    ca_file: std::path::PathBuf,
}

impl Both {
    /// `None` (the test skips) without the reference binary outside CI.
    fn set_up() -> Option<Both> {
        let codex = codex_support::codex_bin()?;
        let (ca_pem, tls) = intercepting_tls();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca_pem).unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Some(Both {
            codex,
            tls,
            dir,
            ca_file,
        })
    }

    /// Starts `which` ("reference" or "ours") through `intercepted`.
    fn start(&self, which: &str, intercepted: &Intercepted, request_token: &str) -> Started {
        match which {
            "reference" => Started::reference(
                &self.codex,
                intercepted,
                &self.ca_file,
                self.dir.path(),
                request_token,
            ),
            _ => Started::ours(intercepted, &self.ca_file, request_token),
        }
    }
}

/// A throw-away CA (PEM) and a server configuration with a certificate it issued for
/// [`INTERCEPTED_NAMES`].
fn intercepting_tls() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "workload identity test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(INTERCEPTED_NAMES.map(String::from).to_vec()).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (ca.pem(), Arc::new(config))
}

impl Intercepted {
    async fn start(
        tls: Arc<rustls::ServerConfig>,
        exchange_reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
        api_reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Intercepted {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let endpoints = TokenEndpoints::start(exchange_reply).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let api =
            MockUpstream::start(move |_| api_reply(calls.fetch_add(1, Ordering::SeqCst) + 1)).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = listener.local_addr().unwrap();
        let backends: std::collections::HashMap<String, std::net::SocketAddr> = [
            ("github.test:443", endpoints.github.addr),
            ("auth.openai.com:443", endpoints.exchange.addr),
            ("api.openai.com:443", api.addr),
        ]
        .into_iter()
        .map(|(name, addr)| (name.to_string(), addr))
        .collect();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (tls, backends) = (tls.clone(), backends.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if client.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let mut words = head.split(' ');
                    let backend = match (words.next(), words.next()) {
                        (Some("CONNECT"), Some(target)) => backends.get(target).copied(),
                        _ => None,
                    };
                    let Some(backend) = backend else {
                        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
                        return;
                    };
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let Ok(mut plain_side) =
                        tokio_rustls::TlsAcceptor::from(tls).accept(client).await
                    else {
                        return;
                    };
                    let Ok(mut mock) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut plain_side, &mut mock).await;
                });
            }
        });
        Intercepted {
            proxy,
            github: endpoints.github,
            exchange: endpoints.exchange,
            api,
        }
    }

    /// The flags both binaries share.
    fn common_args() -> Vec<String> {
        [
            "--github-oidc",
            "--oidc-audience",
            AUDIENCE,
            "--identity-provider-id",
            PROVIDER,
            "--service-account-id",
            SERVICE_ACCOUNT,
            "--github-oidc-request-url",
            "https://github.test/_apis/actions/idtoken?api-version=2.0",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Everything the two token endpoints and the upstream saw, in a form that must be the
    /// same for both binaries: the token endpoints' requests whole (method, target, every
    /// header, body); of the upstream's, what the proxy itself decides (method, target,
    /// `Authorization`, body), not the client headers each passes on by its own rules.
    fn record(&self) -> Vec<String> {
        let whole = |what: &str, seen: Vec<Seen>| -> Vec<String> {
            seen.iter()
                .map(|s| {
                    let mut headers: Vec<String> = s
                        .headers
                        .iter()
                        .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("<binary>")))
                        .collect();
                    headers.sort();
                    format!(
                        "{what}: {} {}\n  {}\n  {}",
                        s.method,
                        s.uri,
                        headers.join("\n  "),
                        String::from_utf8_lossy(&s.body)
                    )
                })
                .collect()
        };
        let mut record = whole("github", self.github.seen());
        record.extend(whole("exchange", self.exchange.seen()));
        record.extend(self.api.seen().iter().map(|s| {
            format!(
                "upstream: {} {} {:?} {}",
                s.method,
                s.uri,
                s.header("authorization"),
                String::from_utf8_lossy(&s.body)
            )
        }));
        record
    }
}

/// A proxy process (the reference or ours) started with the request token on standard input;
/// `port` is `None` when it exited instead of serving. Killed when dropped.
struct Started {
    child: std::process::Child,
    port: Option<u16>,
    _dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let worker = worker_pid_of_opt(self.child.id());
            let _ = self.child.kill();
            let _ = self.child.wait();
            if let Some(worker) = worker {
                unsafe {
                    libc::kill(worker as i32, libc::SIGKILL);
                }
            }
        }
    }
}

impl Started {
    /// Runs `command` plus `--server-info`; waits until it serves (its server-info names a
    /// port that accepts connections) or exits.
    fn run(mut command: std::process::Command, request_token: &str) -> Started {
        let dir = tempfile::tempdir().unwrap();
        let info = dir.path().join("server-info.json");
        command
            .arg("--server-info")
            .arg(&info)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = command.spawn().expect("start a proxy");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(format!("{request_token}\n").as_bytes());
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let port = loop {
            if child.try_wait().unwrap().is_some() {
                break None;
            }
            let port = std::fs::read_to_string(&info)
                .ok()
                .and_then(|text| serde_json::from_str::<Value>(&text).ok())
                .and_then(|v| v["port"].as_u64())
                .and_then(|p| u16::try_from(p).ok());
            if let Some(port) = port {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break Some(port);
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{command:?} neither served nor exited"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Started {
            child,
            port,
            _dir: dir,
        }
    }

    /// The reference, through `intercepted`'s proxy (`HTTPS_PROXY`), trusting `ca_file`
    /// (`SSL_CERT_FILE`), with an empty home.
    fn reference(
        codex: &std::path::Path,
        intercepted: &Intercepted,
        ca_file: &std::path::Path,
        home: &std::path::Path,
        request_token: &str,
    ) -> Started {
        let mut command = std::process::Command::new(codex);
        command
            .arg("responses-api-proxy")
            .args(Intercepted::common_args())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("CODEX_HOME", home)
            .env("HTTPS_PROXY", format!("http://{}", intercepted.proxy))
            .env("SSL_CERT_FILE", ca_file);
        Started::run(command, request_token)
    }

    /// Ours, through `intercepted`'s proxy (`--upstream-proxy`), trusting `ca_file`
    /// (`--upstream-ca-file`).
    fn ours(intercepted: &Intercepted, ca_file: &std::path::Path, request_token: &str) -> Started {
        let mut command = std::process::Command::new(binary());
        command
            .args(Intercepted::common_args())
            .arg("--upstream-proxy")
            .arg(format!("http://{}", intercepted.proxy))
            .arg("--upstream-ca-file")
            .arg(ca_file)
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        Started::run(command, request_token)
    }

    async fn post(&self) -> u16 {
        let port = self.port.expect("the proxy serves");
        http_client()
            .post(format!("http://127.0.0.1:{port}/v1/responses"))
            .header("content-type", "application/json")
            .body(r#"{"model":"gpt-5","input":"hi"}"#)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// An exchange answer granting token `n` for `expires_in` seconds, with `changes` applied
/// (`null` removes a field).
fn grant(n: usize, expires_in: u64, changes: Value) -> Reply {
    let mut answer = json!({
        "access_token": access_token(n),
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "token_type": "Bearer",
        "expires_in": expires_in,
        "expires_at": unix_now() + 3600,
    });
    for (name, value) in changes.as_object().unwrap() {
        if value.is_null() {
            answer.as_object_mut().unwrap().remove(name);
        } else {
            answer[name] = value.clone();
        }
    }
    Reply::json(200, &answer.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_proxy_and_ours_make_the_same_exchanges() {
    let Some(both) = Both::set_up() else {
        return;
    };

    // A token at start; the upstream refuses the second request (401); the renewal after it
    // grants a one-second token, so the request a second later renews again.
    let mut records = Vec::new();
    for which in ["reference", "ours"] {
        let intercepted = Intercepted::start(
            both.tls.clone(),
            |n| grant(n, if n == 2 { 1 } else { 3600 }, json!({})),
            |n| {
                if n == 2 {
                    Reply::json(
                        401,
                        r#"{"error":{"message":"revoked","code":"invalid_api_key"}}"#,
                    )
                } else {
                    Reply::json(200, r#"{"id":"resp_1","object":"response"}"#)
                }
            },
        )
        .await;
        let proxy = both.start(which, &intercepted, REQUEST_TOKEN);
        assert!(proxy.port.is_some(), "{which} serves");
        assert_eq!(
            intercepted.exchange.seen().len(),
            1,
            "{which}: a token at start"
        );
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(proxy.post().await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        statuses.push(proxy.post().await);
        assert_eq!(statuses, vec![200, 401, 200, 200], "{which}");
        let record = intercepted.record();
        assert_eq!(record.len(), 3 + 3 + 4, "{which}: {record:#?}");
        records.push(record);
    }
    assert_eq!(
        records[0], records[1],
        "the reference's exchanges, then ours"
    );
    let upstream: Vec<&String> = records[1]
        .iter()
        .filter(|r| r.starts_with("upstream"))
        .collect();
    for (line, n) in upstream.iter().zip([1, 1, 2, 3]) {
        assert!(line.contains(&access_token(n)), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_proxy_and_ours_accept_and_refuse_the_same_exchange_answers() {
    let Some(both) = Both::set_up() else {
        return;
    };
    let now = unix_now();
    let cases = [
        (
            json!({"token_type": "bearer", "scope": "api", "expires_at": now + 120}),
            true,
        ),
        (
            json!({"expires_in": 3600, "access_token": "aZ09-._~+/="}),
            true,
        ),
        (json!({"expires_at": null}), false),
        (json!({"issued_token_type": null}), false),
        (json!({"expires_in": 3601}), false),
        (json!({"expires_in": 0}), false),
        (json!({"expires_at": now - 5}), false),
        (json!({"expires_in": -1}), false),
        (json!({"token_type": "DPoP"}), false),
        (json!({"access_token": "a b"}), false),
        (json!({"access_token": " padded"}), false),
        (json!({"access_token": "a!b"}), false),
    ];
    for (changes, starts) in cases {
        for which in ["reference", "ours"] {
            let answer = changes.clone();
            let intercepted = Intercepted::start(
                both.tls.clone(),
                move |n| grant(n, 60, answer.clone()),
                |_| Reply::json(200, "{}"),
            )
            .await;
            let proxy = both.start(which, &intercepted, REQUEST_TOKEN);
            assert_eq!(
                proxy.port.is_some(),
                starts,
                "{which} with an exchange answer changed by {changes}"
            );
            assert_eq!(intercepted.exchange.seen().len(), 1, "{which}, {changes}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_proxy_and_ours_fail_and_back_off_the_same_way() {
    let Some(both) = Both::set_up() else {
        return;
    };
    // A one-second token at start; every renewal fails. A second later a request needs a
    // renewal, which fails (502, though the old token has not quite expired); the request
    // right after it falls within the back-off and gets its 502 without an exchange.
    let mut records = Vec::new();
    for which in ["reference", "ours"] {
        let intercepted = Intercepted::start(
            both.tls.clone(),
            |n| {
                if n == 1 {
                    grant(n, 1, json!({}))
                } else {
                    Reply::json(503, r#"{"error":"temporarily_unavailable"}"#)
                }
            },
            |_| Reply::json(200, r#"{"id":"resp_1","object":"response"}"#),
        )
        .await;
        let proxy = both.start(which, &intercepted, REQUEST_TOKEN);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let statuses = vec![proxy.post().await, proxy.post().await];
        assert_eq!(statuses, vec![502, 502], "{which}");
        records.push(intercepted.record());
    }
    assert_eq!(
        records[0], records[1],
        "the reference's exchanges, then ours"
    );
    assert_eq!(records[1].len(), 2 + 2, "{:#?}", records[1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_proxy_and_ours_take_request_tokens_of_up_to_16_kib() {
    let Some(both) = Both::set_up() else {
        return;
    };
    for (length, starts) in [(16 * 1024, true), (16 * 1024 + 1, false)] {
        let token = format!("{}.{}", "eyJhbGciOiJub25lIn0", "x".repeat(length - 20));
        assert_eq!(token.len(), length);
        let mut records = Vec::new();
        for which in ["reference", "ours"] {
            let intercepted = Intercepted::start(
                both.tls.clone(),
                |n| grant(n, 3600, json!({})),
                |_| Reply::json(200, "{}"),
            )
            .await;
            let proxy = both.start(which, &intercepted, &token);
            assert_eq!(
                proxy.port.is_some(),
                starts,
                "{which}, a request token of {length} bytes"
            );
            records.push(intercepted.record());
        }
        assert_eq!(
            records[0], records[1],
            "{length} bytes: the reference's exchanges, then ours"
        );
        if starts {
            assert!(records[1][0].contains(&format!("authorization: Bearer {token}\n")));
        }
    }
}
