//! HTTPS upstreams end to end: a throw-away CA, server and client certificates (rcgen), a TLS
//! upstream of the tests' own (tokio-rustls in front of the hyper mock) on 127.0.0.1, an egress
//! proxy of the tests' own (CONNECT and absolute-form HTTP), and the real binary.
//!
//! Trust through the system store (`SSL_CERT_FILE`, read by rustls-native-certs) and through
//! `--upstream-ca-file`; untrusted, misnamed and expired certificates get a 502 that says why;
//! `HTTPS_PROXY` / `--upstream-proxy` / `NO_PROXY`; a client certificate for an upstream that
//! requires one, whose key never shows in the log, the environment or the command line.

mod common;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SSE: &str = "data: {\"type\":\"response.completed\"}\n\n";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A throw-away certificate authority.
struct Pki {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate issued by a [`Pki`], as PEM and as rustls wants it.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

impl Pki {
    fn new(name: &str) -> Pki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Pki { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    fn issue(&self, names: &[&str], client: bool, expired: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            if client { "proxy client" } else { "upstream" },
        );
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Leaf {
        self.issue(&["localhost", "127.0.0.1"], false, false)
    }
}

fn server_config(leaf: &Leaf, client_ca: Option<&Pki>) -> rustls::ServerConfig {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(leaf.chain.clone(), leaf.key())
        .unwrap()
}

/// TLS on 127.0.0.1 in front of a plain [`MockUpstream`]: the decrypted bytes are piped to it.
/// The certificate can be swapped between connections.
struct TlsUpstream {
    mock: MockUpstream,
    addr: SocketAddr,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    /// Handshakes that failed (e.g. a client without the required certificate).
    refused: Arc<std::sync::atomic::AtomicUsize>,
    /// The protocol ALPN chose on each connection that completed its handshake.
    handshakes: Arc<Mutex<Vec<Option<Vec<u8>>>>>,
}

impl TlsUpstream {
    async fn start(
        config: rustls::ServerConfig,
        reply: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> TlsUpstream {
        let mock = MockUpstream::start(reply).await;
        let backend = mock.addr;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(Mutex::new(Arc::new(config)));
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let (current, refused2, handshakes2) =
            (config.clone(), refused.clone(), handshakes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(current.lock().unwrap().clone());
                let refused = refused2.clone();
                let handshakes = handshakes2.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        return;
                    };
                    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    handshakes.lock().unwrap().push(alpn);
                    let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsUpstream {
            mock,
            addr,
            config,
            refused,
            handshakes,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    fn use_config(&self, config: rustls::ServerConfig) {
        *self.config.lock().unwrap() = Arc::new(config);
    }
}

/// Writes `text` to `name` in a directory every user may read (the worker reads the system
/// store as its own unprivileged user, as it reads /etc/ssl/certs).
fn world_readable(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

/// Writes `text` to a file only root can read (0600 in a 0700 directory).
fn root_only(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// [`start`] in front of the HTTPS upstream at `url`, trusting `ca_file`'s CA.
fn start_trusting(url: impl Into<String>, ca_file: &Path, env: Vec<(&str, String)>) -> Proxy {
    start(
        vec![
            "--upstream-url".into(),
            url.into(),
            "--upstream-ca-file".into(),
            ca_file.display().to_string(),
        ],
        env,
    )
}

fn start(args: Vec<String>, env: Vec<(&str, String)>) -> Proxy {
    Proxy::start_with(ProxyOptions {
        args,
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        ..Default::default()
    })
}

type ClientConnection = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// One HTTP/1.1 connection to the proxy (reqwest may open another for the next request, and
/// so reach another shard with a pool of its own).
async fn one_client_connection(proxy: &Proxy) -> ClientConnection {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// A POST on `sender`: expects 200, returns the body.
async fn post_on(sender: &mut ClientConnection) -> bytes::Bytes {
    use http_body_util::BodyExt;
    sender.ready().await.unwrap();
    let request = hyper::Request::post("/v1/responses")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"model":"m","input":"hi"}"#,
        )))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap().to_bytes()
}

async fn post(proxy: &Proxy) -> (u16, String) {
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .body(r#"{"model":"m","input":"hi"}"#)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn error_message(body: &str) -> String {
    let value: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(value["error"]["type"], "upstream_error", "{body}");
    value["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_in_the_system_store_is_trusted() {
    let ca = Pki::new("system store CA");
    let upstream = TlsUpstream::start(server_config(&ca.server(), None), |_| Reply::sse(SSE)).await;
    let dir = tempfile::tempdir().unwrap();
    let bundle = world_readable(dir.path(), "ca-certificates.crt", &ca.pem());
    let proxy = start(
        vec!["--upstream-url".into(), upstream.url("/v1/responses")],
        vec![("SSL_CERT_FILE", bundle.display().to_string())],
    );
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 200, "{body}");
    let seen = upstream.mock.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization").unwrap(),
        format!("Bearer {TEST_KEY}")
    );
}

/// `--upstream-ca-file` (root-only, read by the supervisor) adds to the system store: the
/// upstream's CA comes from the file, the token endpoint's from the system store, and
/// `chatgpt_token`'s refresh reaches the endpoint over the same trust.
#[tokio::test(flavor = "multi_thread")]
async fn the_ca_file_adds_to_the_system_store_for_the_upstream_and_the_token_endpoint() {
    let upstream_ca = Pki::new("upstream CA (file)");
    let token_ca = Pki::new("token endpoint CA (system store)");
    let upstream = TlsUpstream::start(server_config(&upstream_ca.server(), None), |seen| {
        if seen.header("authorization").as_deref() == Some("Bearer access-NEW") {
            Reply::sse(SSE)
        } else {
            Reply::json(401, r#"{"error":{"message":"token expired"}}"#)
        }
    })
    .await;
    let token_endpoint = TlsUpstream::start(server_config(&token_ca.server(), None), |_| {
        Reply::json(
            200,
            r#"{"access_token":"access-NEW","refresh_token":"refresh-NEW","id_token":null}"#,
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = root_only(dir.path(), "upstream-ca.pem", &upstream_ca.pem());
    let auth_json = root_only(
        dir.path(),
        "auth.json",
        r#"{"OPENAI_API_KEY":null,"tokens":{"id_token":null,"access_token":"access-OLD","refresh_token":"refresh-OLD","account_id":"acct"},"last_refresh":"2099-01-01T00:00:00Z"}"#,
    );
    let system = tempfile::tempdir().unwrap();
    let bundle = world_readable(system.path(), "bundle.crt", &token_ca.pem());
    let state = dir.path().join("state");
    let proxy = Proxy::start_with(ProxyOptions {
        args: vec![
            "--upstream-url".into(),
            upstream.url("/backend-api/codex/responses"),
            "--upstream-ca-file".into(),
            ca_file.display().to_string(),
            "--upstream-auth-mode".into(),
            "chatgpt_token".into(),
            "--codex-auth-file".into(),
            auth_json.display().to_string(),
            "--state-directory".into(),
            state.display().to_string(),
            "--token-url".into(),
            token_endpoint.url("/oauth/token"),
            "--oauth-client-id".into(),
            "test-client".into(),
        ],
        key: None,
        env: vec![("SSL_CERT_FILE".into(), bundle.display().to_string())],
        ..Default::default()
    });
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    assert_eq!(token_endpoint.mock.seen().len(), 1, "refreshed over TLS");
    assert_eq!(upstream.mock.seen().len(), 2, "one 401, one retry");
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_misnamed_and_expired_certificates_get_a_502_that_says_why() {
    let ca = Pki::new("trusted CA");
    let stranger = Pki::new("unknown CA");
    let upstream =
        TlsUpstream::start(server_config(&stranger.server(), None), |_| Reply::sse(SSE)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = root_only(dir.path(), "ca.pem", &ca.pem());
    // Credentials in the URL must not be echoed.
    let url = format!(
        "https://url-user:url-SECRET@localhost:{}/v1/responses",
        upstream.addr.port()
    );
    let proxy = start_trusting(url, &ca_file, vec![("CODEX_PROXY_LOG", "trace".into())]);
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 502, "{body}");
    let message = error_message(&body);
    assert!(
        message.contains("not trusted") && message.contains("issuer is unknown"),
        "{message}"
    );

    upstream.use_config(server_config(
        &ca.issue(&["upstream.example"], false, false),
        None,
    ));
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 502, "{body}");
    let message = error_message(&body);
    assert!(message.contains("not valid for the host name"), "{message}");

    upstream.use_config(server_config(&ca.issue(&["localhost"], false, true), None));
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 502, "{body}");
    let message = error_message(&body);
    assert!(message.contains("has expired"), "{message}");

    assert!(upstream.mock.seen().is_empty());
    let log = proxy.stderr_once_it_has("has expired", Duration::from_secs(5));
    assert!(log.contains("issuer is unknown"), "{log}");
    for text in [&body, &log] {
        assert!(
            !text.contains("url-SECRET"),
            "URL credentials echoed: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn https_proxy_carries_an_https_upstream_through_connect() {
    let ca = Pki::new("CA");
    let mut config = server_config(&ca.server(), None);
    // reqwest would pick h2; the fast path offers only HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let upstream = TlsUpstream::start(config, |_| Reply::sse(SSE)).await;
    let egress = EgressProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = root_only(dir.path(), "ca.pem", &ca.pem());
    let proxy = start_trusting(
        upstream.url("/v1/responses"),
        &ca_file,
        vec![
            ("HTTPS_PROXY", egress.url_with_credentials()),
            ("CODEX_PROXY_LOG", "trace".into()),
        ],
    );
    // One client connection (so one shard and its pool), its requests one after another.
    let mut sender = one_client_connection(&proxy).await;
    for _ in 0..3 {
        assert_eq!(post_on(&mut sender).await, SSE.as_bytes());
    }
    // The fast path through the tunnel: one CONNECT, one TLS connection reused.
    let seen = egress.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].0,
        format!("CONNECT localhost:{} HTTP/1.1", upstream.addr.port())
    );
    assert_eq!(
        *upstream.handshakes.lock().unwrap(),
        vec![Some(b"http/1.1".to_vec())],
        "one TLS connection, HTTP/1.1 by ALPN (the fast path)"
    );
    // Basic puser:proxy-SECRET-pw
    assert_eq!(
        seen[0].1.as_deref(),
        Some("Basic cHVzZXI6cHJveHktU0VDUkVULXB3")
    );
    assert_eq!(upstream.mock.seen().len(), 3);
    let log = proxy.stderr_once_it_has("POST /v1/responses", Duration::from_secs(5));
    assert!(
        log.contains(&format!(
            "the upstream is reached through the proxy at 127.0.0.1:{}",
            egress.addr.port()
        )),
        "{log}"
    );
    assert!(!log.contains("proxy-SECRET-pw"), "{log}");
}

/// A plain-HTTP upstream behind `--upstream-proxy` leaves the fast path: the proxy gets the
/// absolute-form request.
#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_flag_gets_the_absolute_form_request_of_an_http_upstream() {
    let upstream = MockUpstream::start(|_| Reply::sse(SSE)).await;
    let egress = EgressProxy::start().await;
    let proxy = start(
        vec!["--upstream-url".into(), upstream.url("/v1/responses")],
        vec![
            ("CODEX_PROXY_UPSTREAM_PROXY", egress.url_with_credentials()),
            ("CODEX_PROXY_LOG", "trace".into()),
        ],
    );
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 200, "{body}");
    let seen = egress.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].0,
        format!("POST {} HTTP/1.1", upstream.url("/v1/responses"))
    );
    assert_eq!(
        seen[0].1.as_deref(),
        Some("Basic cHVzZXI6cHJveHktU0VDUkVULXB3")
    );
    assert_eq!(
        upstream.seen()[0].header("authorization").unwrap(),
        format!("Bearer {TEST_KEY}")
    );
    let log = proxy.stderr_once_it_has("POST /v1/responses", Duration::from_secs(5));
    assert!(
        log.contains(&format!("the proxy at 127.0.0.1:{}", egress.addr.port())),
        "{log}"
    );
    assert!(!log.contains("proxy-SECRET-pw"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_proxy_bypasses_the_proxy() {
    let upstream = MockUpstream::start(|_| Reply::sse(SSE)).await;
    let egress = EgressProxy::start().await;
    let proxy = start(
        vec!["--upstream-url".into(), upstream.url("/v1/responses")],
        vec![
            ("http_proxy", egress.url_with_credentials()),
            ("NO_PROXY", "127.0.0.1".into()),
        ],
    );
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 200, "{body}");
    assert!(egress.seen().is_empty(), "{:?}", egress.seen());
    assert_eq!(upstream.seen().len(), 1);

    // The same with the flag and an https upstream (the fast path).
    let ca = Pki::new("CA");
    let tls = TlsUpstream::start(server_config(&ca.server(), None), |_| Reply::sse(SSE)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = root_only(dir.path(), "ca.pem", &ca.pem());
    let proxy = start_trusting(
        tls.url("/v1/responses"),
        &ca_file,
        vec![
            ("CODEX_PROXY_UPSTREAM_PROXY", egress.url_with_credentials()),
            ("no_proxy", "localhost".into()),
        ],
    );
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 200, "{body}");
    assert!(egress.seen().is_empty(), "{:?}", egress.seen());
    assert_eq!(tls.mock.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_proxy_gets_a_502_without_its_credentials() {
    let upstream = MockUpstream::start(|_| Reply::sse(SSE)).await;
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let proxy = start(
        vec!["--upstream-url".into(), upstream.url("/v1/responses")],
        vec![
            (
                "CODEX_PROXY_UPSTREAM_PROXY",
                format!("http://puser:proxy-SECRET-pw@127.0.0.1:{port}"),
            ),
            ("CODEX_PROXY_LOG", "trace".into()),
        ],
    );
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 502, "{body}");
    error_message(&body);
    assert!(!body.contains("proxy-SECRET-pw"), "{body}");
    let log = proxy.stderr_once_it_has("POST /v1/responses", Duration::from_secs(5));
    assert!(!log.contains("proxy-SECRET-pw"), "{log}");
    assert!(upstream.seen().is_empty());
}

/// An upstream that requires a client certificate refuses a proxy without one and accepts ours;
/// the key (a root-only file, overridden by the systemd credential) shows nowhere.
#[tokio::test(flavor = "multi_thread")]
async fn mtls_upstream_accepts_our_client_certificate_whose_key_shows_nowhere() {
    require_root("reads /proc/PID/environ of the non-dumpable proxy processes");
    let ca = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let upstream = TlsUpstream::start(server_config(&ca.server(), Some(&clients)), |_| {
        Reply::sse(SSE)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = root_only(dir.path(), "ca.pem", &ca.pem());
    let base = vec![
        "--upstream-url".to_string(),
        upstream.url("/v1/responses"),
        "--upstream-ca-file".into(),
        ca_file.display().to_string(),
    ];

    let without = start(base.clone(), vec![]);
    let (status, body) = post(&without).await;
    assert_eq!(status, 502, "{body}");
    assert!(upstream.mock.seen().is_empty());
    assert!(upstream.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    drop(without);

    let ours = clients.issue(&["proxy-client"], true, false);
    let cert = root_only(dir.path(), "client.pem", &ours.cert_pem);
    // The flag names a key that does not match; the credential (which wins) holds the right one.
    let wrong = clients.issue(&["someone-else"], true, false);
    let wrong_key = root_only(dir.path(), "wrong-key.pem", &wrong.key_pem);
    let credentials = tempfile::tempdir().unwrap();
    root_only(credentials.path(), "upstream-client-key", &ours.key_pem);
    let mut args = base;
    args.extend([
        "--upstream-client-cert".into(),
        cert.display().to_string(),
        "--upstream-client-key".into(),
        wrong_key.display().to_string(),
    ]);
    let proxy = start(
        args,
        vec![
            (
                "CREDENTIALS_DIRECTORY",
                credentials.path().display().to_string(),
            ),
            ("CODEX_PROXY_LOG", "trace".into()),
        ],
    );
    let (status, body) = post(&proxy).await;
    assert_eq!(status, 200, "{body}\n{}", proxy.stderr());
    assert_eq!(upstream.mock.seen().len(), 1);

    // The key's base64 lines (and its DER) appear nowhere.
    let key_lines: Vec<&str> = ours
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!key_lines.is_empty());
    let log = proxy.stderr_once_it_has("POST /v1/responses", Duration::from_secs(5));
    let mut places = vec![("stderr".to_string(), log.into_bytes())];
    for pid in [proxy.pid, proxy.worker_pid()] {
        for file in ["environ", "cmdline"] {
            let path = format!("/proc/{pid}/{file}");
            places.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    for (place, bytes) in &places {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains("PRIVATE KEY"), "key in {place}");
        for line in &key_lines {
            assert!(!text.contains(line), "key line in {place}");
        }
        assert!(
            !bytes
                .windows(32)
                .any(|w| w == &ours.key_der[ours.key_der.len() - 32..]),
            "key bytes in {place}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bridge_route_works_over_tls() {
    let ca = Pki::new("CA");
    let chat = std::fs::read_to_string(format!(
        "{}/tests/fixtures/chat-streams/text.sse",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let upstream = TlsUpstream::start(server_config(&ca.server(), None), move |_| {
        Reply::sse(&chat)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = root_only(dir.path(), "ca.pem", &ca.pem());
    let proxy = start(
        vec![
            "--upstream-url".into(),
            upstream.url("/v1/chat/completions"),
            "--bridge-to-chat".into(),
            "--upstream-ca-file".into(),
            ca_file.display().to_string(),
        ],
        vec![],
    );
    let response = http_client()
        .post(proxy.url("/v1/responses"))
        .json(&serde_json::json!({"model":"m","input":"hi","stream":true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    assert!(body.contains("response.completed"), "{body}");
    let seen = upstream.mock.seen();
    assert_eq!(seen[0].uri, "/v1/chat/completions");
    assert_eq!(seen[0].json()["stream"], true);
}

/// Bad TLS settings stop the service before it serves, with a message naming the setting.
#[test]
fn bad_tls_settings_stop_the_service_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = root_only(dir.path(), "not.pem", "hello\n");
    let key_only = root_only(
        dir.path(),
        "key.pem",
        &Pki::new("x").issue(&["c"], true, false).key_pem,
    );
    for (args, expected) in [
        (
            vec!["--upstream-ca-file", not_pem.to_str().unwrap()],
            "--upstream-ca-file holds no PEM certificate",
        ),
        (
            vec!["--upstream-ca-file", "/nonexistent/ca.pem"],
            "cannot read --upstream-ca-file /nonexistent/ca.pem",
        ),
        (
            vec!["--upstream-client-key", key_only.to_str().unwrap()],
            "client key was given without its certificate",
        ),
        (
            vec!["--upstream-proxy", "socks5://host:1"],
            "is not an http:// proxy URL",
        ),
        (
            vec!["--upstream-proxy", "http://u:p-SECRET@127.0.0.1:1"],
            "--upstream-proxy on the command line carries credentials",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let mut child = std::process::Command::new(binary())
            .args(&args)
            .env_remove("CREDENTIALS_DIRECTORY")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(format!("{TEST_KEY}\n").as_bytes()).unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                if let Some(worker) = worker_pid_of_opt(child.id()) {
                    unsafe { libc::kill(worker as i32, libc::SIGKILL) };
                }
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{args:?}: the service did not stop: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = std::process::Output {
            status,
            stdout: vec![],
            stderr: std::fs::read(&log).unwrap(),
        };
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("SECRET") && !stderr.contains("PRIVATE KEY"),
            "{stderr}"
        );
    }
}

/// The Ollama pass-through uses the same trust and the same egress proxy.
#[tokio::test(flavor = "multi_thread")]
async fn the_ollama_pass_through_uses_the_same_trust_and_proxy() {
    let ca = Pki::new("CA");
    let ollama = TlsUpstream::start(server_config(&ca.server(), None), |_| {
        Reply::json(200, r#"{"models":[]}"#)
    })
    .await;
    let upstream = MockUpstream::start(|_| Reply::json(200, "{}")).await;
    let egress = EgressProxy::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = root_only(dir.path(), "ca.pem", &ca.pem());
    let proxy = start(
        vec![
            "--upstream-url".into(),
            upstream.url("/v1/responses"),
            "--wrapper-routes".into(),
            "--upstream-ca-file".into(),
            ca_file.display().to_string(),
        ],
        vec![
            ("OLLAMA_API_URL", ollama.url("")),
            ("HTTPS_PROXY", egress.url_with_credentials()),
        ],
    );
    let response = http_client()
        .get(proxy.url("/api/tags"))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(ollama.mock.seen()[0].uri, "/api/tags");
    assert_eq!(
        egress.seen()[0].0,
        format!("CONNECT localhost:{} HTTP/1.1", ollama.addr.port())
    );
}

/// The strict route's https upstream takes the fast path: one TLS connection carries every
/// request of a client connection, and it offered only `http/1.1` by ALPN (reqwest's client
/// offers `h2` first, which this upstream would have chosen).
#[tokio::test(flavor = "multi_thread")]
async fn https_requests_take_the_fast_path_over_one_reused_tls_connection() {
    let ca = Pki::new("CA");
    let mut config = server_config(&ca.server(), None);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let upstream = TlsUpstream::start(config, |_| Reply::sse(SSE)).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = root_only(dir.path(), "ca.pem", &ca.pem());
    let proxy = start_trusting(upstream.url("/v1/responses"), &ca_file, vec![]);
    // One client connection (so one shard and its pool), its requests one after another.
    let mut sender = one_client_connection(&proxy).await;
    for _ in 0..5 {
        assert_eq!(post_on(&mut sender).await, SSE.as_bytes());
    }
    assert_eq!(upstream.mock.seen().len(), 5);
    assert_eq!(
        *upstream.handshakes.lock().unwrap(),
        vec![Some(b"http/1.1".to_vec())],
        "one TLS connection, HTTP/1.1 by ALPN"
    );
}

/// What a [`ClosingUpstream`] counts.
#[derive(Default)]
struct Closings {
    accepted: std::sync::atomic::AtomicUsize,
    resumed: std::sync::atomic::AtomicUsize,
    closed: std::sync::atomic::AtomicUsize,
}

/// A TLS upstream that answers one request per connection and then closes it: with a TLS
/// close_notify, or by dropping the TCP connection without one. `framed`: the answer has a
/// length (so the connection looks reusable), else the close ends its body. Counts
/// connections, resumed TLS sessions and closes.
async fn closing_upstream(
    config: rustls::ServerConfig,
    close_notify: bool,
    framed: bool,
) -> (u16, Arc<Closings>) {
    use std::sync::atomic::Ordering::SeqCst;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let counts = Arc::new(Closings::default());
    let counts2 = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, counts) = (acceptor.clone(), counts2.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                counts.accepted.fetch_add(1, SeqCst);
                if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                    counts.resumed.fetch_add(1, SeqCst);
                }
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let complete = loop {
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if request.len() >= end + 4 + length {
                            break true;
                        }
                    }
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break false,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                };
                if complete {
                    let answer = if framed {
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n{SSE}",
                            SSE.len()
                        )
                    } else {
                        format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n{SSE}")
                    };
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.flush().await;
                }
                if close_notify {
                    let _ = tls.shutdown().await;
                }
                drop(tls);
                counts.closed.fetch_add(1, SeqCst);
            });
        }
    });
    (port, counts)
}

/// An upstream that closes a kept-alive TLS connection between two requests (with or
/// without its close_notify) costs the client nothing: the next request goes on a new
/// connection, which resumes the TLS session.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_closing_a_kept_alive_tls_connection_between_requests_is_no_error() {
    use std::sync::atomic::Ordering::SeqCst;
    let ca = Pki::new("CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = root_only(dir.path(), "ca.pem", &ca.pem());
    for close_notify in [true, false] {
        let (port, counts) =
            closing_upstream(server_config(&ca.server(), None), close_notify, true).await;
        let proxy = start_trusting(
            format!("https://localhost:{port}/v1/responses"),
            &ca_file,
            vec![],
        );
        let client = http_client();
        for round in 1..=3 {
            let response = client
                .post(proxy.url("/v1/responses"))
                .body(r#"{"model":"m","input":"hi"}"#)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert_eq!(
                (status.as_u16(), body.as_str()),
                (200, SSE),
                "close_notify {close_notify}, request {round}\n{}",
                proxy.stderr()
            );
            // The upstream has closed this connection before the next request.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while counts.closed.load(SeqCst) < round {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the upstream never closed"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        assert_eq!(
            counts.accepted.load(SeqCst),
            3,
            "close_notify {close_notify}"
        );
        assert_eq!(
            counts.resumed.load(SeqCst),
            2,
            "close_notify {close_notify}: the later connections resume the TLS session"
        );
    }
}

/// A body that the upstream's close ends (no length, no chunks) arrives whole over TLS, whether
/// the upstream sends its close_notify or only ends the TCP connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_tls_body_ended_by_the_close_arrives_whole_with_or_without_close_notify() {
    let ca = Pki::new("CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_file = root_only(dir.path(), "ca.pem", &ca.pem());
    for close_notify in [true, false] {
        let (port, _) =
            closing_upstream(server_config(&ca.server(), None), close_notify, false).await;
        let proxy = start_trusting(
            format!("https://localhost:{port}/v1/responses"),
            &ca_file,
            vec![],
        );
        let (status, body) = post(&proxy).await;
        assert_eq!(
            (status, body.as_str()),
            (200, SSE),
            "close_notify {close_notify}"
        );
    }
}
