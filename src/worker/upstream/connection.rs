//! How the worker reaches any upstream: the one TLS configuration (trusted roots, client
//! certificate) and the one egress-proxy decision, applied to every HTTP client it builds (the
//! upstream client of the strict, bridge and wrapper routes, the token endpoint of
//! `chatgpt_token`, the Ollama pass-through) and to the strict route's fast path
//! (`direct_upstream.rs`), which takes the same configuration offering only HTTP/1.1 by ALPN.
//!
//! Trust: the system store (Debian's `ca-certificates`; `SSL_CERT_FILE` / `SSL_CERT_DIR` are
//! honoured by rustls-native-certs), plus the CA certificates of `--upstream-ca-file`, which add
//! to it. Only when the system store yields no certificate at all are the built-in Mozilla roots
//! (webpki-roots) used instead, with a warning, so a minimal container still reaches public
//! upstreams. The files root read for the worker arrive in `contract::UpstreamTlsFiles`.
//!
//! Egress: `--upstream-proxy` (all schemes), else `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY`
//! (either case); `NO_PROXY` exempts hosts either way. The decision uses hyper-util's matcher,
//! the same code reqwest applies, so the fast path and reqwest never disagree; the WebSocket
//! relay asks the same proxy for a CONNECT tunnel (`open_stream`). A proxy URL may
//! carry credentials: it is never logged and never repeated in an error.
//!
//! May use: rustls, rustls-native-certs, webpki-roots, hyper-util's proxy matcher and CONNECT
//! tunnel, reqwest, `crate::contract`.

use crate::contract::UpstreamTlsFiles;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;
use tower_service::Service;
use tracing::{info, warn};

/// What every upstream connection shares. Cheap to clone.
#[derive(Clone)]
pub(crate) struct UpstreamConnection {
    tls: Arc<rustls::ClientConfig>,
    /// The same, offering only `http/1.1` by ALPN (the fast path speaks nothing else); it
    /// shares the TLS session cache with `tls`, so every shard resumes the sessions of all.
    http1_tls: Arc<rustls::ClientConfig>,
    proxy: EgressProxy,
}

#[derive(Clone)]
struct EgressProxy {
    /// `--upstream-proxy`, for reqwest (which otherwise reads the environment itself).
    configured: Option<reqwest::Proxy>,
    /// Which URLs go through a proxy.
    matcher: Arc<Matcher>,
}

impl UpstreamConnection {
    /// Parses the TLS files (taking the client key out of `files`) and the proxy setting.
    pub(crate) fn new(
        files: &mut UpstreamTlsFiles,
        proxy_url: Option<&str>,
    ) -> Result<UpstreamConnection, String> {
        let tls = tls_config(files)?;
        let mut http1_tls = tls.clone();
        http1_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamConnection {
            tls: Arc::new(tls),
            http1_tls: Arc::new(http1_tls),
            proxy: EgressProxy::new(proxy_url)?,
        })
    }

    /// Connections with `tls` as given (for every use) and no egress proxy, whatever the
    /// environment says: for the upstream-transport benchmark (`crate::benching`).
    pub(crate) fn with_tls_as_given(tls: Arc<rustls::ClientConfig>) -> UpstreamConnection {
        UpstreamConnection {
            tls: tls.clone(),
            http1_tls: tls,
            proxy: EgressProxy {
                configured: None,
                matcher: Arc::new(Matcher::builder().build()),
            },
        }
    }

    /// The TLS configuration of the fast path and the WebSocket relay (a WebSocket handshake
    /// is an HTTP/1.1 request): the one configuration, HTTP/1.1 only.
    pub(crate) fn http1_tls(&self) -> Arc<rustls::ClientConfig> {
        self.http1_tls.clone()
    }

    /// A reqwest client builder with the trust, client certificate and proxy every upstream
    /// connection uses, no redirects, and the given timeouts.
    pub(crate) fn client_builder(
        &self,
        connect_timeout: Duration,
        idle_timeout: Duration,
    ) -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls).clone())
            .connect_timeout(connect_timeout)
            .read_timeout(idle_timeout)
            .redirect(reqwest::redirect::Policy::none());
        match &self.proxy.configured {
            Some(proxy) => builder.proxy(proxy.clone()),
            None => builder,
        }
    }

    /// Whether requests to `url` go through an egress proxy (the fast path then steps aside:
    /// reqwest sends the absolute-form request, or a CONNECT for https, to the proxy).
    pub(crate) fn proxied(&self, url: &reqwest::Url) -> bool {
        self.proxy_for(url).is_some()
    }

    /// A TCP stream to `host:port`, the destination of `url` (whose `http`/`https` scheme
    /// decides which proxy setting applies): direct, or through the egress proxy's CONNECT
    /// tunnel (with the proxy URL's credentials as `Proxy-Authorization`) when `url` goes
    /// through one. For a connection that cannot be sent through a proxy as a plain request:
    /// the WebSocket relay's (RFC 6455 4.1: a client behind a proxy asks it for a tunnel, for
    /// `ws` as for `wss`). Errors name neither the proxy's credentials nor the URL.
    pub(crate) async fn open_stream(
        &self,
        url: &reqwest::Url,
        host: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, String> {
        let intercept = url
            .as_str()
            .parse::<hyper::Uri>()
            .ok()
            .and_then(|uri| self.proxy.matcher.intercept(&uri));
        let Some(intercept) = intercept else {
            return tokio::net::TcpStream::connect((host, port))
                .await
                .map_err(|e| format!("could not connect: {e}"));
        };
        let proxy = format!(
            "{}:{}",
            intercept.uri().host().unwrap_or_default(),
            intercept.uri().port_u16().unwrap_or(80)
        );
        let mut tunnel = Tunnel::new(intercept.uri().clone(), HttpConnector::new());
        if let Some(credentials) = intercept.basic_auth() {
            tunnel = tunnel.with_auth(credentials.clone());
        }
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let destination = format!("http://{authority}")
            .parse::<hyper::Uri>()
            .map_err(|_| "the upstream host cannot be asked of a proxy".to_string())?;
        let tunnelled = async {
            std::future::poll_fn(|cx| tunnel.poll_ready(cx)).await?;
            tunnel.call(destination).await
        };
        match tunnelled.await {
            Ok(stream) => {
                tracing::debug!("the upstream is reached through a tunnel of the proxy at {proxy}");
                Ok(stream.into_inner())
            }
            Err(e) => Err(format!(
                "the egress proxy at {proxy} opened no tunnel to the upstream: {e}"
            )),
        }
    }

    /// `host:port` of the egress proxy requests to `url` go through (no credentials).
    pub(crate) fn proxy_for(&self, url: &reqwest::Url) -> Option<String> {
        let uri = url.as_str().parse::<hyper::Uri>().ok()?;
        let intercept = self.proxy.matcher.intercept(&uri)?;
        let proxy = intercept.uri();
        Some(format!(
            "{}:{}",
            proxy.host().unwrap_or_default(),
            proxy.port_u16().unwrap_or(80)
        ))
    }
}

impl EgressProxy {
    fn new(proxy_url: Option<&str>) -> Result<EgressProxy, String> {
        let no_proxy = ["NO_PROXY", "no_proxy"]
            .iter()
            .find_map(|name| std::env::var(name).ok())
            .unwrap_or_default();
        let Some(proxy_url) = proxy_url else {
            return Ok(EgressProxy {
                configured: None,
                matcher: Arc::new(Matcher::from_env()),
            });
        };
        // Not repeated in the errors: the URL may carry credentials.
        const BAD: &str = "--upstream-proxy (CODEX_PROXY_UPSTREAM_PROXY) is not an http:// proxy URL with a host (e.g. http://proxy.example:3128)";
        let parsed = reqwest::Url::parse(proxy_url).map_err(|_| BAD.to_string())?;
        if parsed.scheme() != "http" || parsed.host_str().is_none() {
            return Err(BAD.into());
        }
        let configured = reqwest::Proxy::all(proxy_url)
            .map_err(|_| BAD.to_string())?
            .no_proxy(reqwest::NoProxy::from_string(&no_proxy));
        info!(
            "upstream connections go through the proxy at {}:{}{}",
            parsed.host_str().unwrap_or_default(),
            parsed.port_or_known_default().unwrap_or(80),
            if no_proxy.is_empty() {
                ""
            } else {
                " (except NO_PROXY hosts)"
            }
        );
        Ok(EgressProxy {
            configured: Some(configured),
            matcher: Arc::new(Matcher::builder().all(proxy_url).no(no_proxy).build()),
        })
    }
}

/// The one TLS client configuration: roots (system store + `--upstream-ca-file`), the client
/// certificate when given, ALPN for HTTP/2 and HTTP/1.1 (reqwest does not add it to a
/// configuration it is handed).
fn tls_config(files: &mut UpstreamTlsFiles) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        warn!("system CA certificates: {error}");
    }
    let (added, _) = roots.add_parsable_certificates(system.certs);
    if added == 0 {
        warn!("no CA certificate found in the system store (install ca-certificates, or set SSL_CERT_FILE); trusting the built-in Mozilla roots instead");
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(pem) = &files.ca_pem {
        let certs = pem_certificates(pem, "--upstream-ca-file")?;
        let count = certs.len();
        for cert in certs {
            roots.add(cert).map_err(|e| {
                format!("--upstream-ca-file holds a certificate that cannot be a trust anchor: {e}")
            })?;
        }
        info!(
            "upstream trust: the system store plus {count} CA certificate(s) of --upstream-ca-file"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot configure TLS: {e}"))?
        .with_root_certificates(roots);
    let client_key = files.client_key_pem.take();
    let mut config = match (&files.client_cert_pem, client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = pem_certificates(cert, "the upstream client certificate")?;
            // The error never shows the key: only which file is wrong.
            let key = PrivateKeyDer::from_pem_slice(key.expose_secret()).map_err(|_| {
                "the upstream client key (--upstream-client-key or the credential upstream-client-key) holds no PEM private key".to_string()
            })?;
            let config = builder.with_client_auth_cert(chain, key).map_err(|e| {
                format!("the upstream client certificate and key cannot be used together: {e}")
            })?;
            info!("upstream connections present a client certificate when asked");
            config
        }
        (Some(_), None) => {
            return Err("an upstream client certificate was given without its key (--upstream-client-key or the credential upstream-client-key)".into())
        }
        (None, Some(_)) => {
            return Err("an upstream client key was given without its certificate (--upstream-client-cert or the credential upstream-client-cert)".into())
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Every certificate of a PEM file; an error when there is none.
fn pem_certificates(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} holds no PEM certificate"));
    }
    Ok(certs)
}

/// Why a TLS handshake with an upstream failed, in words an admin can act on, when `error`
/// (or anything it wraps) is a TLS error. Names no URL and no credential.
pub(crate) fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return Some(describe(tls));
        }
        // An io::Error hides the error it wraps from `source()` (and may wrap another one).
        cause = match current.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => current.source(),
            },
            None => current.source(),
        };
    }
    None
}

fn describe(error: &rustls::Error) -> String {
    use rustls::{AlertDescription, CertificateError, Error};
    match error {
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "the upstream's TLS certificate is not trusted: its issuer is unknown (add the CA to the system store or name it with --upstream-ca-file) [invalid peer certificate: UnknownIssuer]".into(),
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the upstream's TLS certificate is not valid for the host name of the upstream URL [invalid peer certificate: NotValidForName]".into(),
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "the upstream's TLS certificate has expired [invalid peer certificate: Expired]".into(),
        Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        ) => "the upstream's TLS certificate is not valid yet (check the clock) [invalid peer certificate: NotValidYet]".into(),
        Error::InvalidCertificate(other) => {
            format!("the upstream's TLS certificate was rejected: {other:?}")
        }
        Error::AlertReceived(
            alert @ (AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::HandshakeFailure
            | AlertDescription::AccessDenied),
        ) => format!("the upstream refused the TLS handshake ({alert:?}); it may require a client certificate it trusts (--upstream-client-cert, --upstream-client-key)"),
        other => format!("the TLS handshake with the upstream failed: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_say_why() {
        use rustls::{CertificateError, Error};
        let wrapped =
            std::io::Error::other(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        assert!(tls_failure(&wrapped).unwrap().contains("issuer is unknown"));
        let name = Error::InvalidCertificate(CertificateError::NotValidForName);
        assert!(tls_failure(&name)
            .unwrap()
            .contains("not valid for the host name"));
        let expired = Error::InvalidCertificate(CertificateError::Expired);
        assert!(tls_failure(&expired).unwrap().contains("has expired"));
        assert!(tls_failure(&std::io::Error::other("refused")).is_none());
    }

    #[test]
    fn a_bad_proxy_url_is_refused_without_repeating_it() {
        for url in [
            "user:secret@proxy",
            "socks5://user:secret@proxy:1080",
            "http://",
        ] {
            let error = EgressProxy::new(Some(url)).err().unwrap();
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn the_proxy_flag_applies_to_every_scheme() {
        let proxy = EgressProxy::new(Some("http://user:secret@127.0.0.1:3128")).unwrap();
        let tls = Arc::new(tls_config(&mut UpstreamTlsFiles::default()).unwrap());
        let connection = UpstreamConnection {
            http1_tls: tls.clone(),
            tls,
            proxy,
        };
        assert!(connection.proxied(&"http://upstream.example/v1".parse().unwrap()));
        assert!(connection.proxied(&"https://upstream.example/v1".parse().unwrap()));
    }
}
