//! Which headers cross the proxy: hop-by-hop headers (and those named by `Connection`) never do;
//! the client's `Authorization` and `Host` are replaced; everything else is end-to-end and passes.

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
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Names listed in the `Connection` header(s), lowercased.
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect()
}

/// The end-to-end fields of `headers` in order, leaving out those named in `also_drop`.
fn end_to_end<'a>(
    headers: &'a HeaderMap,
    also_drop: &'a [HeaderName],
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
    let listed = connection_listed(headers);
    headers.iter().filter(move |(name, _)| {
        !(is_hop_by_hop(name)
            || also_drop.contains(name)
            || listed.iter().any(|l| l == name.as_str()))
    })
}

/// Set by the upstream client from the URL, the key and the body.
const SET_FOR_UPSTREAM: [HeaderName; 3] =
    [header::AUTHORIZATION, header::HOST, header::CONTENT_LENGTH];

/// The client's fields as they go upstream, before the key is added: what the direct
/// upstream client writes as they are, and [`for_upstream`] collects.
pub fn upstream_fields(
    client_headers: &HeaderMap,
) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
    end_to_end(client_headers, &SET_FOR_UPSTREAM)
}

/// The client's headers as they go upstream, before the key is added. `Host` and
/// `Content-Length` are set by the upstream client from the URL and the body.
pub fn for_upstream(client_headers: &HeaderMap) -> HeaderMap {
    collect(upstream_fields(client_headers), client_headers.len())
}

/// The upstream's response headers as they go back to the client.
pub fn for_client(upstream_headers: &HeaderMap) -> HeaderMap {
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
