//! Key intake: reads the upstream API key once, from the systemd credential
//! `$CREDENTIALS_DIRECTORY/openai-api-key` or else from standard input, and keeps the finished
//! `Authorization` header value in one locked, never-dumped page for the life of the process.
//!
//! Input is read with raw `read(2)` calls (no buffered reader that could keep a copy) into a
//! 1024-byte stack buffer that already starts with `Bearer `, so a key may be at most 1017
//! bytes. Input ends at the first newline or at end of file; trailing CR/LF are trimmed; the key
//! must match `^[A-Za-z0-9_-]+$`. The stack buffer is zeroized whatever happens. No error message
//! ever contains the bytes that were read.
//!
//! With `--github-oidc`, standard input holds the GitHub OIDC request token instead; it is read
//! the same way into a buffer for up to 16 KiB (the reference proxy's limit; JWT characters
//! allowed) and kept in the same kind of pages ([`load_github_request_token`]).
//!
//! Uses: `crate::contract` and memchr, secrecy, zeroize.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

pub use crate::contract::{ApiKeyHeader, KeySource};

pub const HEADER_PREFIX: &[u8] = b"Bearer ";
pub const BUFFER_LEN: usize = 1024;
/// The longest key that fits the buffer after `Bearer `.
pub const MAX_KEY_LEN: usize = BUFFER_LEN - HEADER_PREFIX.len();
/// File name of the key inside `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "openai-api-key";
/// Credential content meaning "no key installed yet": the service starts and answers 503.
pub const UNSET_MARKER: &[u8] = b"unset";

#[derive(Debug, PartialEq, Eq)]
pub enum KeyError {
    NoInput,
    Empty,
    InvalidUtf8,
    InvalidCharacters,
    TooLong,
    Read(io::ErrorKind),
    Credential { path: PathBuf, kind: io::ErrorKind },
    Lock(io::ErrorKind),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HOW: &str = "pipe the key on standard input, e.g. `printenv OPENAI_API_KEY | env -u OPENAI_API_KEY codex-responses-api-proxy`, or install it as the systemd credential openai-api-key";
        match self {
            KeyError::NoInput => write!(f, "no API key was given: {HOW}"),
            KeyError::Empty => write!(f, "the API key is empty: {HOW}"),
            KeyError::InvalidUtf8 => write!(
                f,
                "the API key is not valid UTF-8; it may only contain A-Z, a-z, 0-9, '_' and '-'"
            ),
            KeyError::InvalidCharacters => write!(
                f,
                "the API key contains characters other than A-Z, a-z, 0-9, '_' and '-' (a stray quote or space?)"
            ),
            KeyError::TooLong => write!(
                f,
                "the API key is longer than {MAX_KEY_LEN} bytes; only the key itself belongs on the first line"
            ),
            KeyError::Read(kind) => write!(f, "could not read the API key from standard input: {kind}"),
            KeyError::Credential { path, kind } => write!(
                f,
                "could not read the API key credential {}: {kind}; check LoadCredential= in the unit",
                path.display()
            ),
            KeyError::Lock(kind) => write!(
                f,
                "could not lock the API key in memory ({kind}); raise the memlock limit (LimitMEMLOCK=)"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

/// Reads the key from the credential directory when the credential exists, else from stdin.
pub fn load(credentials_directory: Option<&Path>) -> Result<KeySource, KeyError> {
    if let Some(dir) = credentials_directory {
        let path = dir.join(CREDENTIAL_NAME);
        if path.exists() {
            let mut file = File::open(&path).map_err(|e| KeyError::Credential {
                path: path.clone(),
                kind: e.kind(),
            })?;
            return read_key(&mut file, true).map_err(|e| match e {
                KeyError::Read(kind) => KeyError::Credential { path, kind },
                other => other,
            });
        }
    }
    // SAFETY: fd 0 stays open; ManuallyDrop keeps us from closing it.
    let mut stdin = ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
    read_key(&mut *stdin, false)
}

/// Reads one key line from `source` with raw reads and stores it as a locked header.
/// `allow_unset` accepts the `unset` marker (credentials only).
pub fn read_key(source: &mut impl Read, allow_unset: bool) -> Result<KeySource, KeyError> {
    let mut buffer = [0u8; BUFFER_LEN];
    let result = read_key_into(source, &mut buffer, allow_unset);
    buffer.zeroize();
    result
}

fn read_key_into(
    source: &mut impl Read,
    buffer: &mut [u8; BUFFER_LEN],
    allow_unset: bool,
) -> Result<KeySource, KeyError> {
    buffer[..HEADER_PREFIX.len()].copy_from_slice(HEADER_PREFIX);
    let end = read_first_line(source, buffer)?;
    let mut key = &buffer[HEADER_PREFIX.len()..end];
    while let [rest @ .., b'\r' | b'\n'] = key {
        key = rest;
    }
    if allow_unset && key == UNSET_MARKER {
        return Ok(KeySource::NotConfigured);
    }
    validate(key)?;
    let header_len = HEADER_PREFIX.len() + key.len();
    ApiKeyHeader::store(&buffer[..header_len])
        .map(KeySource::Key)
        .map_err(|e| KeyError::Lock(e.kind()))
}

/// Fills `buffer` after the prefix up to the first newline or EOF; returns the end offset.
fn read_first_line(source: &mut impl Read, buffer: &mut [u8]) -> Result<usize, KeyError> {
    let mut len = HEADER_PREFIX.len();
    let mut read_any = false;
    loop {
        if len == buffer.len() {
            // The buffer is full: the key fits only if the line ends right here (carriage
            // returns may precede the newline, nothing else may).
            return if line_ends_next(source)? {
                Ok(len)
            } else {
                Err(KeyError::TooLong)
            };
        }
        let n = read_retrying(source, &mut buffer[len..])?;
        if n == 0 {
            return if read_any {
                Ok(len)
            } else {
                Err(KeyError::NoInput)
            };
        }
        read_any = true;
        if let Some(newline) = memchr::memchr(b'\n', &buffer[len..len + n]) {
            return Ok(len + newline);
        }
        len += n;
    }
}

/// Reads on, byte by byte, while only carriage returns come; true at a newline or EOF.
fn line_ends_next(source: &mut impl Read) -> Result<bool, KeyError> {
    let mut next = [0u8; 1];
    let ends = loop {
        if read_retrying(source, &mut next)? == 0 {
            break true;
        }
        match next[0] {
            b'\n' => break true,
            b'\r' => continue,
            _ => break false,
        }
    };
    next.zeroize();
    Ok(ends)
}

fn read_retrying(source: &mut impl Read, into: &mut [u8]) -> Result<usize, KeyError> {
    loop {
        match source.read(into) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(KeyError::Read(e.kind())),
        }
    }
}

fn validate(key: &[u8]) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if std::str::from_utf8(key).is_err() {
        return Err(KeyError::InvalidUtf8);
    }
    if !key
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
    {
        return Err(KeyError::InvalidCharacters);
    }
    Ok(())
}

/// The longest GitHub OIDC request token accepted: 16 KiB, as the reference proxy accepts.
pub const MAX_REQUEST_TOKEN_LEN: usize = 16 * 1024;
/// Size of the stack buffer for the GitHub OIDC request token (`Bearer ` and the token).
pub const REQUEST_TOKEN_BUFFER_LEN: usize = HEADER_PREFIX.len() + MAX_REQUEST_TOKEN_LEN;

/// Why the GitHub OIDC request token (`--github-oidc`) could not be read. Never shows its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestTokenError(KeyError);

impl fmt::Display for RequestTokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HOW: &str = "with --github-oidc, pipe the GitHub OIDC request token on standard input, e.g. `printenv ACTIONS_ID_TOKEN_REQUEST_TOKEN | codex-responses-api-proxy --github-oidc ...`";
        match &self.0 {
            KeyError::NoInput => write!(f, "no GitHub OIDC request token was given: {HOW}"),
            KeyError::Empty => write!(f, "the GitHub OIDC request token is empty: {HOW}"),
            KeyError::InvalidUtf8 | KeyError::InvalidCharacters => write!(
                f,
                "the GitHub OIDC request token contains characters a token cannot have (a stray quote or space?)"
            ),
            KeyError::TooLong => write!(
                f,
                "the GitHub OIDC request token is longer than {MAX_REQUEST_TOKEN_LEN} bytes"
            ),
            KeyError::Read(kind) => write!(
                f,
                "could not read the GitHub OIDC request token from standard input: {kind}"
            ),
            KeyError::Lock(kind) => write!(
                f,
                "could not lock the GitHub OIDC request token in memory ({kind}); raise the memlock limit (LimitMEMLOCK=)"
            ),
            KeyError::Credential { .. } => write!(f, "could not read the GitHub OIDC request token"),
        }
    }
}

impl std::error::Error for RequestTokenError {}

/// Reads the GitHub OIDC request token (`--github-oidc`) from standard input, the way the key
/// is read: raw reads into a stack buffer that starts with `Bearer `, the first line only, then
/// locked, never-dumped, read-only pages; the stack buffer is zeroized.
pub fn load_github_request_token() -> Result<ApiKeyHeader, RequestTokenError> {
    // SAFETY: fd 0 stays open; ManuallyDrop keeps us from closing it.
    let mut stdin = ManuallyDrop::new(unsafe { File::from_raw_fd(0) });
    read_request_token(&mut *stdin)
}

/// [`load_github_request_token`] from any reader.
pub fn read_request_token(source: &mut impl Read) -> Result<ApiKeyHeader, RequestTokenError> {
    let mut buffer = [0u8; REQUEST_TOKEN_BUFFER_LEN];
    let result = read_request_token_into(source, &mut buffer);
    buffer.zeroize();
    result.map_err(RequestTokenError)
}

fn read_request_token_into(
    source: &mut impl Read,
    buffer: &mut [u8; REQUEST_TOKEN_BUFFER_LEN],
) -> Result<ApiKeyHeader, KeyError> {
    buffer[..HEADER_PREFIX.len()].copy_from_slice(HEADER_PREFIX);
    let end = read_first_line(source, buffer)?;
    let mut token = &buffer[HEADER_PREFIX.len()..end];
    while let [rest @ .., b'\r' | b'\n'] = token {
        token = rest;
    }
    if token.is_empty() {
        return Err(KeyError::Empty);
    }
    // GitHub's request tokens are JWTs: base64url segments joined by dots (the standard
    // base64 alphabet is accepted too).
    if !token.iter().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+' | b'/' | b'=' | b'~')
    }) {
        return Err(KeyError::InvalidCharacters);
    }
    let header_len = HEADER_PREFIX.len() + token.len();
    ApiKeyHeader::store(&buffer[..header_len]).map_err(|e| KeyError::Lock(e.kind()))
}

/// Reads a secondary secret (the wrapper's client access key, a Codex `auth.json`): the systemd
/// credential `name` when it exists, else `file`. Read as root, before the worker exists.
/// Trailing newlines are trimmed. Errors name the file, never its content.
pub fn read_secret(
    credentials_directory: Option<&Path>,
    name: &str,
    file: Option<&Path>,
) -> Result<Option<secrecy::SecretString>, String> {
    let credential = credentials_directory
        .map(|dir| dir.join(name))
        .filter(|path| path.exists());
    let Some(path) = credential.as_deref().or(file) else {
        return Ok(None);
    };
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {} ({name}): {e}", path.display()))?;
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text.trim_end_matches(['\r', '\n']).to_owned(),
        Err(_) => {
            bytes.zeroize();
            return Err(format!("{} ({name}) is not valid UTF-8", path.display()));
        }
    };
    bytes.zeroize();
    if text.is_empty() {
        return Err(format!("{} ({name}) is empty", path.display()));
    }
    Ok(Some(secrecy::SecretString::from(text)))
}

/// The upstream TLS files, read as root before the worker exists (the worker user may not be
/// able to read them): the CA bundle of `--upstream-ca-file`, and the client certificate and
/// key (the credentials `upstream-client-cert` / `upstream-client-key` win over the flags).
/// The key is read like the other secrets; errors name files, never content.
pub(crate) fn read_upstream_tls(
    credentials_directory: Option<&Path>,
    cli: &crate::cli::Cli,
) -> Result<crate::contract::UpstreamTlsFiles, String> {
    use secrecy::ExposeSecret;
    let ca_pem = match &cli.upstream_ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read --upstream-ca-file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let client_cert_pem = read_secret(
        credentials_directory,
        "upstream-client-cert",
        cli.upstream_client_cert.as_deref(),
    )?
    .map(|pem| pem.expose_secret().as_bytes().to_vec());
    let client_key_pem = read_secret(
        credentials_directory,
        "upstream-client-key",
        cli.upstream_client_key.as_deref(),
    )?
    .map(|pem| secrecy::SecretSlice::from(pem.expose_secret().as_bytes().to_vec()));
    Ok(crate::contract::UpstreamTlsFiles {
        ca_pem,
        client_cert_pem,
        client_key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its data in fixed-size pieces, like a pipe with short reads,
    /// and can fail with EINTR first.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        piece: usize,
        interrupt_first: bool,
    }

    impl Pieces {
        fn new(data: &[u8], piece: usize) -> Self {
            Pieces {
                data: data.to_vec(),
                at: 0,
                piece,
                interrupt_first: false,
            }
        }
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.interrupt_first {
                self.interrupt_first = false;
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = self.piece.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn key_of(input: &[u8], piece: usize) -> Result<Vec<u8>, KeyError> {
        match read_key(&mut Pieces::new(input, piece), false)? {
            KeySource::Key(header) => Ok(header.bytes().to_vec()),
            KeySource::NotConfigured => panic!("unset only allowed for credentials"),
        }
    }

    fn header(key: &[u8]) -> Vec<u8> {
        [HEADER_PREFIX, key].concat()
    }

    #[test]
    fn plain_key_with_and_without_newline_in_any_piece_size() {
        for piece in [1, 2, 3, 7, 1024] {
            assert_eq!(
                key_of(b"sk-abc_DEF-123\n", piece).unwrap(),
                header(b"sk-abc_DEF-123")
            );
            assert_eq!(
                key_of(b"sk-abc_DEF-123", piece).unwrap(),
                header(b"sk-abc_DEF-123")
            );
            assert_eq!(key_of(b"sk-abc\r\n", piece).unwrap(), header(b"sk-abc"));
            assert_eq!(key_of(b"sk-abc\r", piece).unwrap(), header(b"sk-abc"));
        }
    }

    #[test]
    fn only_the_first_line_counts() {
        assert_eq!(
            key_of(b"first\nsecond line with spaces\n", 5).unwrap(),
            header(b"first")
        );
    }

    #[test]
    fn interrupted_reads_are_retried() {
        let mut src = Pieces::new(b"k1\n", 1);
        src.interrupt_first = true;
        assert!(matches!(read_key(&mut src, false), Ok(KeySource::Key(_))));
    }

    #[test]
    fn length_boundaries() {
        let key = |n: usize| vec![b'a'; n];
        assert_eq!(key_of(&key(1016), 100).unwrap(), header(&key(1016)));
        assert_eq!(
            key_of(&[key(1016), b"\n".to_vec()].concat(), 100).unwrap(),
            header(&key(1016))
        );
        assert_eq!(key_of(&key(1017), 100).unwrap(), header(&key(1017)));
        assert_eq!(
            key_of(&[key(1017), b"\n".to_vec()].concat(), 1).unwrap(),
            header(&key(1017))
        );
        assert_eq!(
            key_of(&[key(1017), b"\r\n".to_vec()].concat(), 64).unwrap(),
            header(&key(1017))
        );
        assert_eq!(key_of(&key(1018), 100), Err(KeyError::TooLong));
        // A carriage return that does not end the line is part of it (found by fuzzing).
        assert_eq!(
            key_of(&[key(1017), b"\rx".to_vec()].concat(), 64),
            Err(KeyError::TooLong)
        );
        assert_eq!(
            key_of(&[key(1017), b"\r\r\n".to_vec()].concat(), 7).unwrap(),
            header(&key(1017))
        );
        assert_eq!(
            key_of(&[key(1015), b"\rx".to_vec()].concat(), 64),
            Err(KeyError::InvalidCharacters)
        );
        assert_eq!(
            key_of(&[key(1018), b"\n".to_vec()].concat(), 1),
            Err(KeyError::TooLong)
        );
        assert_eq!(key_of(&key(5000), 4096), Err(KeyError::TooLong));
    }

    #[test]
    fn empty_and_missing_input() {
        assert_eq!(key_of(b"", 10), Err(KeyError::NoInput));
        assert_eq!(key_of(b"\n", 10), Err(KeyError::Empty));
        assert_eq!(key_of(b"\r\n", 10), Err(KeyError::Empty));
        assert_eq!(key_of(b"\nsk-on-second-line\n", 10), Err(KeyError::Empty));
    }

    #[test]
    fn bad_bytes() {
        for bad in [
            &b"sk abc"[..],
            b"sk\tabc",
            b"\"sk\"",
            b"sk.abc",
            b"sk=",
            b"sk\0a",
            b" sk",
        ] {
            assert_eq!(key_of(bad, 3), Err(KeyError::InvalidCharacters), "{bad:?}");
        }
        assert_eq!(key_of(b"sk-\xff\xfe", 3), Err(KeyError::InvalidUtf8));
        assert_eq!(
            key_of("sk-é".as_bytes(), 3),
            Err(KeyError::InvalidCharacters)
        );
    }

    #[test]
    fn read_errors_are_reported_by_kind() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::PermissionDenied.into())
            }
        }
        assert_eq!(
            read_key(&mut Broken, false).unwrap_err(),
            KeyError::Read(io::ErrorKind::PermissionDenied)
        );
    }

    #[test]
    fn errors_and_debug_never_show_the_key() {
        let secret = b"sk-SECRETVALUE with space";
        let err = key_of(secret, 4).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("SECRETVALUE"));
        let KeySource::Key(h) = read_key(&mut Pieces::new(b"sk-SECRETVALUE", 3), false).unwrap()
        else {
            panic!()
        };
        assert!(!format!("{h:?}").contains("SECRETVALUE"));
    }

    #[test]
    fn github_request_tokens_are_read_like_keys() {
        let jwt = b"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvIn0.c2lnbmF0dXJl-_x";
        for piece in [1, 5, 4096] {
            let mut input = jwt.to_vec();
            input.extend_from_slice(b"\r\nsecond line\n");
            let header = read_request_token(&mut Pieces::new(&input, piece)).unwrap();
            assert_eq!(header.bytes(), header_of_token(jwt));
        }
        let long = vec![b'a'; MAX_REQUEST_TOKEN_LEN];
        assert_eq!(
            read_request_token(&mut Pieces::new(&long, 512))
                .unwrap()
                .bytes(),
            header_of_token(&long)
        );
        let too_long = vec![b'a'; MAX_REQUEST_TOKEN_LEN + 1];
        assert_eq!(
            read_request_token(&mut Pieces::new(&too_long, 512)).unwrap_err(),
            RequestTokenError(KeyError::TooLong)
        );
        assert_eq!(
            read_request_token(&mut Pieces::new(b"", 1)).unwrap_err(),
            RequestTokenError(KeyError::NoInput)
        );
        let bad = read_request_token(&mut Pieces::new(b"ey.SECRETPART with space", 3)).unwrap_err();
        assert_eq!(bad, RequestTokenError(KeyError::InvalidCharacters));
        assert!(!format!("{bad} {bad:?}").contains("SECRETPART"));
    }

    fn header_of_token(token: &[u8]) -> Vec<u8> {
        [HEADER_PREFIX, token].concat()
    }

    #[test]
    fn unset_marker_only_for_credentials() {
        assert!(matches!(
            read_key(&mut Pieces::new(b"unset\n", 2), true),
            Ok(KeySource::NotConfigured)
        ));
        assert!(matches!(
            read_key(&mut Pieces::new(b"unset", 2), false),
            Ok(KeySource::Key(_))
        ));
    }

    #[test]
    fn credential_wins_over_stdin_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CREDENTIAL_NAME), b"sk-from-cred\n").unwrap();
        let KeySource::Key(h) = load(Some(dir.path())).unwrap() else {
            panic!()
        };
        assert_eq!(h.bytes(), b"Bearer sk-from-cred");
        std::fs::write(dir.path().join(CREDENTIAL_NAME), b"bad key").unwrap();
        assert_eq!(
            load(Some(dir.path())).unwrap_err(),
            KeyError::InvalidCharacters
        );
    }

    #[test]
    fn a_16_kib_request_token_spans_pages_all_locked_and_read_only() {
        let token = vec![b'a'; MAX_REQUEST_TOKEN_LEN];
        let header = read_request_token(&mut Pieces::new(&token, 1000)).unwrap();
        assert_eq!(header.bytes(), header_of_token(&token));
        header.lock_in_memory().unwrap();
        // The mapping (as /proc/self/smaps shows it) that holds the whole header.
        let (first, last) = (
            header.bytes().as_ptr() as usize,
            header.bytes().as_ptr() as usize + header.bytes().len(),
        );
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut found = None;
        let mut current: Option<(bool, Vec<&str>)> = None;
        for line in smaps.lines() {
            let range = line
                .split_whitespace()
                .next()
                .and_then(|r| r.split_once('-'));
            let range = range.and_then(|(a, b)| {
                Some((
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                ))
            });
            if let Some((start, end)) = range {
                if let Some((true, block)) = current.take() {
                    found = Some(block);
                }
                current = Some((start <= first && last <= end, vec![line]));
            } else if let Some((_, block)) = &mut current {
                block.push(line);
            }
        }
        if let Some((true, block)) = current {
            found = Some(block);
        }
        let block = found.expect("the header's mapping");
        assert!(
            block[0]
                .split_whitespace()
                .nth(1)
                .unwrap()
                .starts_with("r--"),
            "{block:?}"
        );
        let kb = |field: &str| -> u64 {
            block
                .iter()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        assert!(kb("Size:") * 1024 >= (last - first) as u64, "{block:?}");
        assert_eq!(kb("Locked:"), kb("Size:"), "{block:?}");
        // SAFETY: nothing reads this header afterwards.
        unsafe { header.discard() };
    }

    #[test]
    fn stored_header_is_locked_and_read_only() {
        let KeySource::Key(h) = read_key(&mut Pieces::new(b"sk-lock", 3), false).unwrap() else {
            panic!()
        };
        h.lock_in_memory().unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let locked_kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmLck:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(locked_kb > 0);
    }
}
