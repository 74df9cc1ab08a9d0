//! Which headers cross the proxy: hop-by-hop headers (and those named by `Connection`) never do;
//! the client's `Authorization` and `Host` are replaced; everything else is end-to-end and passes.

use hyper::header::{self, HeaderMap, HeaderName};

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

fn is_hop_by_hop(name: &HeaderName) -> bool {
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

fn end_to_end(headers: &HeaderMap, also_drop: &[HeaderName]) -> HeaderMap {
    let listed = connection_listed(headers);
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if is_hop_by_hop(name)
            || also_drop.contains(name)
            || listed.iter().any(|l| l == name.as_str())
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// The client's headers as they go upstream, before the key is added. `Host` and
/// `Content-Length` are set by the upstream client from the URL and the body.
pub fn for_upstream(client_headers: &HeaderMap) -> HeaderMap {
    end_to_end(
        client_headers,
        &[header::AUTHORIZATION, header::HOST, header::CONTENT_LENGTH],
    )
}

/// The upstream's response headers as they go back to the client.
pub fn for_client(upstream_headers: &HeaderMap) -> HeaderMap {
    end_to_end(upstream_headers, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

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
