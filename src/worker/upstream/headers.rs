//! Which headers cross the proxy: hop-by-hop headers (and those named by `Connection`) never do;
//! the client's `Authorization` and `Host` are replaced; `Accept-Encoding` is always `identity`
//! upstream (the usage tap reads every response as it passes, and cannot read a compressed
//! one); `Expect` is answered by the proxy and never forwarded; the billing headers
//! (`OpenAI-Organization`, `OpenAI-Project`) follow the admin's [`UpstreamRequestPolicy`];
//! everything else is end-to-end and passes.
//!
//! Uses: nothing else of the crate and hyper.

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1, plus the
/// legacy proxy ones).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` describes the connection rather than the message.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// The end-to-end fields of `headers` in order, leaving out those named in `also_drop` and
/// those the `Connection` header(s) list (compared without regard to case; no allocation).
fn end_to_end<'a>(
    headers: &'a HeaderMap,
    also_drop: &'a [HeaderName],
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
    let listed = headers.get_all(header::CONNECTION);
    headers.iter().filter(move |(name, _)| {
        !(is_hop_by_hop(name)
            || also_drop.contains(name)
            || listed
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|listed| listed.trim().eq_ignore_ascii_case(name.as_str())))
    })
}

/// Set by the upstream client from the URL, the key and the body, or by the proxy itself
/// (`Accept-Encoding: identity`; `Expect` is the proxy's to answer, and the body is read whole
/// before anything goes upstream).
const SET_FOR_UPSTREAM: [HeaderName; 5] = [
    header::AUTHORIZATION,
    header::HOST,
    header::CONTENT_LENGTH,
    header::ACCEPT_ENCODING,
    header::EXPECT,
];

/// Which OpenAI organization the key bills, when a request names one.
pub(crate) static OPENAI_ORGANIZATION: HeaderName = HeaderName::from_static("openai-organization");
/// Which OpenAI project the key bills, when a request names one.
pub(crate) static OPENAI_PROJECT: HeaderName = HeaderName::from_static("openai-project");
static IDENTITY: HeaderValue = HeaderValue::from_static("identity");

/// What the proxy decides about the request headers that choose how the key is billed, and
/// the encoding of the answer. By default a client's `OpenAI-Organization` and
/// `OpenAI-Project` are dropped (a local user must not pick which organization or project
/// the key bills); the admin may pin either (`--openai-organization`, `--openai-project`) or
/// let the client's pass (`--forward-billing-headers`; a pinned value still wins).
#[derive(Clone, Debug, Default)]
pub(crate) struct UpstreamRequestPolicy {
    pub organization: Option<HeaderValue>,
    pub project: Option<HeaderValue>,
    pub forward_client_billing: bool,
}

impl UpstreamRequestPolicy {
    /// Whether a client's field `name` may go upstream as far as this policy is concerned.
    fn passes(&self, name: &HeaderName) -> bool {
        if *name == OPENAI_ORGANIZATION {
            self.forward_client_billing && self.organization.is_none()
        } else if *name == OPENAI_PROJECT {
            self.forward_client_billing && self.project.is_none()
        } else {
            true
        }
    }

    /// The fields the proxy adds itself.
    pub(crate) fn fixed_fields(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        let pinned = [
            self.organization
                .as_ref()
                .map(|v| (&OPENAI_ORGANIZATION, v)),
            self.project.as_ref().map(|v| (&OPENAI_PROJECT, v)),
        ];
        std::iter::once((&header::ACCEPT_ENCODING, &IDENTITY)).chain(pinned.into_iter().flatten())
    }

    /// Applies the policy to headers already collected for the upstream (the general
    /// client's path, whichever route built them).
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        headers.remove(header::EXPECT);
        headers.remove(header::ACCEPT_ENCODING);
        for name in [&OPENAI_ORGANIZATION, &OPENAI_PROJECT] {
            if !self.passes(name) {
                headers.remove(name);
            }
        }
        for (name, value) in self.fixed_fields() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The fields as they go upstream, before the key is added: the client's permitted ones
/// and the proxy's own. What the direct upstream client writes as they are.
pub(crate) fn upstream_fields<'a>(
    client_headers: &'a HeaderMap,
    policy: &'a UpstreamRequestPolicy,
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
    end_to_end(client_headers, &SET_FOR_UPSTREAM)
        .filter(|(name, _)| policy.passes(name))
        .chain(policy.fixed_fields())
}

/// The client's headers as they go upstream, before the key is added. `Host` and
/// `Content-Length` are set by the upstream client from the URL and the body; the general
/// upstream client applies the [`UpstreamRequestPolicy`].
pub(crate) fn for_upstream(client_headers: &HeaderMap) -> HeaderMap {
    collect(
        end_to_end(client_headers, &SET_FOR_UPSTREAM),
        client_headers.len(),
    )
}

/// The upstream's response headers as they go back to the client.
pub(crate) fn for_client(upstream_headers: &HeaderMap) -> HeaderMap {
    collect(end_to_end(upstream_headers, &[]), upstream_headers.len())
}

fn collect<'a>(
    fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    capacity: usize,
) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(capacity);
    for (name, value) in fields {
        out.append(name.clone(), value.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    #[test]
    fn request_headers_lose_auth_host_and_hop_by_hop() {
        let out = for_upstream(&map(&[
            ("authorization", "Bearer client"),
            ("host", "127.0.0.1:1"),
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-length", "10"),
            ("content-type", "application/json"),
            ("session-id", "abc"),
            ("x-custom", "a"),
            ("x-custom", "b"),
        ]));
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "session-id", "x-custom"]);
        assert_eq!(out.get_all("x-custom").iter().count(), 2);
    }

    #[test]
    fn the_policy_asks_for_identity_and_decides_the_billing_headers() {
        let client = map(&[
            ("accept-encoding", "gzip, br"),
            ("expect", "100-continue"),
            ("openai-organization", "org-client"),
            ("openai-project", "proj-client"),
            ("openai-beta", "responses=v1"),
        ]);
        let fields = |policy: &UpstreamRequestPolicy| -> Vec<(String, String)> {
            upstream_fields(&client, policy)
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
                .collect()
        };
        let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
        let dropped = UpstreamRequestPolicy::default();
        assert_eq!(
            fields(&dropped),
            [
                pair("openai-beta", "responses=v1"),
                pair("accept-encoding", "identity")
            ]
        );
        let pinned = UpstreamRequestPolicy {
            organization: Some(HeaderValue::from_static("org-admin")),
            project: None,
            forward_client_billing: true,
        };
        assert_eq!(
            fields(&pinned),
            [
                pair("openai-project", "proj-client"),
                pair("openai-beta", "responses=v1"),
                pair("accept-encoding", "identity"),
                pair("openai-organization", "org-admin"),
            ]
        );
        // The general client's path applies the same policy to collected headers.
        let mut collected = for_upstream(&client);
        pinned.apply(&mut collected);
        let mut names: Vec<&str> = collected.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "accept-encoding",
                "openai-beta",
                "openai-organization",
                "openai-project"
            ]
        );
        assert_eq!(collected["openai-organization"], "org-admin");
        assert_eq!(collected["accept-encoding"], "identity");
    }

    #[test]
    fn response_headers_keep_end_to_end_ones() {
        let out = for_client(&map(&[
            ("content-type", "text/event-stream"),
            ("x-request-id", "req_1"),
            ("x-ratelimit-remaining-requests", "9"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
        ]));
        assert_eq!(out.len(), 3);
        assert!(out.contains_key("x-request-id") && !out.contains_key("connection"));
    }
}
