//! Keeps the upstream credential out of what the upstream says back: an upstream that
//! refuses a key tends to quote it (OpenAI's 401 says `Incorrect API key provided:
//! sk-proj-****…abcd`, showing its first and last characters). Before an upstream answer
//! reaches a user, every response header, and the body of every answer that is not a
//! success (read whole, at most [`ERROR_BODY_LIMIT`] bytes: error bodies are small), is
//! cleaned of the credential in full and of any masked form that reveals part of it; the
//! whole token is replaced with `[redacted]`.
//!
//! Owns only pure text functions and the one step that applies them to a response; it uses
//! the credential a request was sent with (`upstream::SentCredential`), never stores it.
//!
//! Uses: `crate::worker::server` and bytes, http_body_util, hyper, memchr.

use crate::worker::server::http::{full, Body};
use crate::worker::upstream::SentCredential;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderMap, HeaderValue};
use hyper::Response;

/// Most bytes of a non-success upstream body passed on; the rest is dropped.
pub(crate) const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// What replaces a token that reveals the credential.
const REDACTED: &[u8] = b"[redacted]";

/// Characters that mask part of a credential in an upstream message.
fn is_mask(b: u8) -> bool {
    matches!(b, b'*' | b'.' | b'x' | b'X' | b'#')
}

/// Characters a token of an API key or bearer token is made of (and masks).
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*' | b'.' | b'#') || b >= 0x80
}

/// The secret part of an `Authorization` value: what follows the scheme (`Bearer `), or the
/// whole value when it has none.
pub(crate) fn secret_of(authorization: &HeaderValue) -> &[u8] {
    let value = authorization.as_bytes();
    match value.iter().position(|&b| b == b' ') {
        Some(space) => value[space + 1..].trim_ascii(),
        None => value,
    }
}

/// Whether `part` occurs in `secret`. Checked at the few places where its first byte occurs
/// rather than with a `memmem` searcher: this runs for every token of every upstream header,
/// and building a searcher each time cost the strict route ~4k instructions per request
/// (bench/instructions.sh).
fn in_secret(secret: &[u8], part: &[u8]) -> bool {
    let Some(&first) = part.first() else {
        return true;
    };
    part.len() <= secret.len()
        && memchr::memchr_iter(first, &secret[..=secret.len() - part.len()])
            .any(|at| secret[at..].starts_with(part))
}

/// Whether `token` shows the secret or part of it: the secret in full, a long stretch of it
/// (12 characters or more), or a masked form (parts of the secret with mask characters
/// between them, `*` `.` `x` `#`) whose longest part has at least 4 characters.
fn reveals(token: &[u8], secret: &[u8]) -> bool {
    if token.len() >= secret.len() && memchr::memmem::find(token, secret).is_some() {
        return true;
    }
    let contains = |part: &[u8]| in_secret(secret, part);
    if token.len() >= 12 && contains(token) {
        return true;
    }
    // The parts between runs of mask characters. A masked form has at least one run of
    // `*` (or `...`) and every other part found in the secret.
    let has_mask_run = token
        .windows(3)
        .any(|w| w.iter().all(|&b| b == b'*' || b == b'.'))
        || token.contains(&b'*');
    if !has_mask_run {
        return false;
    }
    let mut longest = 0;
    let parts = token
        .split(|&b| b == b'*' || b == b'.')
        .filter(|part| !part.is_empty());
    for part in parts {
        // Masks like `xxxx` inside a part are mask characters too.
        let unmasked = part.iter().all(|&b| is_mask(b));
        if unmasked {
            continue;
        }
        if !contains(part) {
            return false;
        }
        longest = longest.max(part.len());
    }
    longest >= 4
}

/// How much of `text` — a body cut short at a limit — to keep so that it does not end in the
/// first characters of `secret`, which [`redact`] cannot recognise once cut (fewer than 12 of
/// them); all of it unless it does.
pub(crate) fn keep_before_cut_secret(text: &[u8], secret: &[u8]) -> usize {
    (1..secret.len().min(text.len() + 1))
        .rev()
        .find(|&k| text.ends_with(&secret[..k]))
        .map_or(text.len(), |k| text.len() - k)
}

/// `text` with every token that reveals `secret` replaced, or `None` when none does.
pub(crate) fn redact(text: &[u8], secret: &[u8]) -> Option<Vec<u8>> {
    if secret.len() < 8 {
        return None;
    }
    // The secret in full first, whatever characters surround it or it holds.
    let whole = (text.len() >= secret.len())
        .then(|| memchr::memmem::find(text, secret))
        .flatten()
        .map(|_| {
            let mut out = Vec::with_capacity(text.len());
            let mut rest = text;
            while let Some(at) = memchr::memmem::find(rest, secret) {
                out.extend_from_slice(&rest[..at]);
                out.extend_from_slice(REDACTED);
                rest = &rest[at + secret.len()..];
            }
            out.extend_from_slice(rest);
            out
        });
    let text = whole.as_deref().unwrap_or(text);
    match redact_tokens(text, secret) {
        Some(out) => Some(out),
        None => whole,
    }
}

/// `text` with every token that reveals part of `secret` replaced, or `None` when none does.
fn redact_tokens(text: &[u8], secret: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut start = 0;
    while start < text.len() {
        if !is_token_char(text[start]) {
            start += 1;
            continue;
        }
        let end = text[start..]
            .iter()
            .position(|&b| !is_token_char(b))
            .map_or(text.len(), |n| start + n);
        // A sentence's full stop is not part of the token.
        let mut token_end = end;
        while token_end > start && text[token_end - 1] == b'.' {
            token_end -= 1;
        }
        if reveals(&text[start..token_end], secret) {
            let out = out.get_or_insert_with(|| Vec::with_capacity(text.len()));
            out.extend_from_slice(&text[copied..start]);
            out.extend_from_slice(REDACTED);
            copied = token_end;
        }
        start = end;
    }
    out.map(|mut out| {
        out.extend_from_slice(&text[copied..]);
        out
    })
}

/// Cleans every header value of `headers` of `secret`.
pub(crate) fn redact_headers(headers: &mut HeaderMap, secret: &[u8]) {
    for value in headers.values_mut() {
        if let Some(clean) = redact(value.as_bytes(), secret) {
            if let Ok(clean) = HeaderValue::from_bytes(&clean) {
                *value = clean;
            }
        }
    }
}

/// An upstream answer as it may reach the client: when it is not a success, its headers
/// cleaned and its body read (at most [`ERROR_BODY_LIMIT`] bytes, within the body's own idle
/// limit) and cleaned too. Successes stream through untouched.
pub(crate) async fn upstream_answer(response: Response<Body>) -> Response<Body> {
    // A success streams through untouched, headers included: scanning every header of every
    // answer cost the strict route ~2.4k instructions per request (bench/instructions.sh),
    // and it is an error answer that quotes the credential back.
    if response.status().is_success() || response.status().is_informational() {
        return response;
    }
    let Some(SentCredential(credential)) = response.extensions().get::<SentCredential>().cloned()
    else {
        return response;
    };
    let secret = secret_of(&credential);
    let (mut parts, body) = response.into_parts();
    redact_headers(&mut parts.headers, secret);
    let (mut bytes, cut) = read_bounded(body).await;
    if cut {
        bytes.truncate(keep_before_cut_secret(&bytes, secret));
    }
    let bytes = match redact(&bytes, secret) {
        Some(clean) => Bytes::from(clean),
        None => bytes,
    };
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    Response::from_parts(parts, full(bytes))
}

/// At most [`ERROR_BODY_LIMIT`] bytes of `body`, and whether it was cut there; a failure
/// ends it where it is.
async fn read_bounded(mut body: Body) -> (Bytes, bool) {
    let mut gathered = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            let room = ERROR_BODY_LIMIT - gathered.len();
            gathered.extend_from_slice(&data[..data.len().min(room)]);
            if data.len() > room {
                return (Bytes::from(gathered), true);
            }
        }
    }
    (Bytes::from(gathered), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"sk-proj-AbCdEfGh0123456789ijklMNOPqrstWXYZabcd";

    #[test]
    fn a_cut_body_keeps_nothing_of_the_secrets_start() {
        assert_eq!(keep_before_cut_secret(b"key: sk-proj-Ab", KEY), 5);
        assert_eq!(keep_before_cut_secret(b"key: s", KEY), 5);
        assert_eq!(keep_before_cut_secret(b"key: x", KEY), 6);
        assert_eq!(keep_before_cut_secret(b"", KEY), 0);
    }

    fn clean(text: &str) -> String {
        String::from_utf8(redact(text.as_bytes(), KEY).unwrap_or_else(|| text.into())).unwrap()
    }

    #[test]
    fn the_key_and_its_masked_forms_are_redacted_whole() {
        let key = std::str::from_utf8(KEY).unwrap();
        assert_eq!(clean(&format!("bad key {key}.")), "bad key [redacted].");
        assert_eq!(
            clean("Incorrect API key provided: sk-proj-********************abcd. You can find"),
            "Incorrect API key provided: [redacted]. You can find"
        );
        assert_eq!(clean("key ...abcd given"), "key [redacted] given");
        assert_eq!(clean("key sk-proj-...abcd"), "key [redacted]");
        assert_eq!(clean("\"sk-p****abcd\""), "\"[redacted]\"");
        assert_eq!(clean("x=0123456789ijkl;"), "x=[redacted];");
        assert_eq!(clean(&format!("Bearer {key}")), "Bearer [redacted]");
    }

    #[test]
    fn the_substring_check_agrees_with_memmem() {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        for start in 0..KEY.len() {
            for end in start..=KEY.len() {
                parts.push(KEY[start..end].to_vec());
            }
        }
        parts.extend([
            b"zzzz".to_vec(),
            b"sk-proj-Ab-".to_vec(),
            KEY.repeat(2),
            b"d".to_vec(),
        ]);
        for part in &parts {
            assert_eq!(
                in_secret(KEY, part),
                memchr::memmem::find(KEY, part).is_some(),
                "{:?}",
                String::from_utf8_lossy(part)
            );
        }
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for text in [
            "Incorrect API key provided. See https://platform.openai.com/account/api-keys.",
            "e.g. 1.2.3 and ***** and i.e.",
            "rate limit: 10000 tokens per min",
            "sk-other-********************zzzz",
        ] {
            assert!(redact(text.as_bytes(), KEY).is_none(), "{text}");
        }
        assert!(redact(b"abc", b"short").is_none());
    }

    #[test]
    fn the_secret_is_what_follows_the_scheme() {
        let value = HeaderValue::from_static("Bearer sk-abc123");
        assert_eq!(secret_of(&value), b"sk-abc123");
        assert_eq!(secret_of(&HeaderValue::from_static("raw")), b"raw");
    }
}
