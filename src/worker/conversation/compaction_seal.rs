//! Sealing of bridge-mode compaction summaries: the `encrypted_content` of the `compaction`
//! items the bridge makes is the summary with an HMAC-SHA256 tag (`ring`), so that a later
//! request can only bring back a summary this proxy made, unaltered.
//!
//! Owns the per-install MAC key: 32 random bytes, kept in `<state directory>/compaction.key`
//! (mode 0600, created on first start) when a state directory is set, so blobs survive
//! restarts; otherwise generated at each worker start (blobs made before a restart are then
//! refused with a 400). The blob is readable, not secret: it only carries the caller's own
//! conversation summary; what it guarantees is integrity.
//!
//! Blob: base64 of `version (1) ‖ tag (32) ‖ summary (UTF-8)`; the tag covers a label, the
//! version and the summary. Uses `ring`, `base64` and std file I/O.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::hmac;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

const VERSION: u8 = 1;
const LABEL: &[u8] = b"codex-responses-api-proxy compaction summary\0";
const TAG_LEN: usize = 32;
const KEY_LEN: usize = 32;
/// The key file's name inside the state directory.
pub(crate) const KEY_FILE: &str = "compaction.key";

/// The sealing key and the operations on blobs.
pub(crate) struct CompactionSeal {
    key: hmac::Key,
}

impl CompactionSeal {
    /// A seal with the key in `state_dir` (created if missing), or a fresh random key when
    /// there is no state directory. A key file that cannot be used is an error.
    pub(crate) fn open(state_dir: Option<&Path>) -> Result<(CompactionSeal, &'static str), String> {
        match state_dir {
            Some(dir) => {
                let key = load_or_create_key(&dir.join(KEY_FILE))?;
                Ok((Self::with_key(&key), "kept in the state directory"))
            }
            None => Ok((Self::with_key(&random_key()?), "new at this start")),
        }
    }

    pub(crate) fn with_key(key: &[u8]) -> CompactionSeal {
        CompactionSeal {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The blob carrying `summary`.
    pub(crate) fn seal(&self, summary: &str) -> String {
        let tag = hmac::sign(&self.key, &signed_bytes(summary.as_bytes()));
        let mut blob = Vec::with_capacity(1 + TAG_LEN + summary.len());
        blob.push(VERSION);
        blob.extend_from_slice(tag.as_ref());
        blob.extend_from_slice(summary.as_bytes());
        STANDARD.encode(blob)
    }

    /// The summary in `blob`, if this key sealed it and it is unaltered.
    pub(crate) fn open_blob(&self, blob: &str) -> Option<String> {
        let bytes = STANDARD.decode(blob.trim()).ok()?;
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() < TAG_LEN {
            return None;
        }
        let (tag, summary) = rest.split_at(TAG_LEN);
        hmac::verify(&self.key, &signed_bytes(summary), tag).ok()?;
        String::from_utf8(summary.to_vec()).ok()
    }
}

fn signed_bytes(summary: &[u8]) -> Vec<u8> {
    let mut signed = Vec::with_capacity(LABEL.len() + 1 + summary.len());
    signed.extend_from_slice(LABEL);
    signed.push(VERSION);
    signed.extend_from_slice(summary);
    signed
}

fn random_key() -> Result<[u8; KEY_LEN], String> {
    use ring::rand::SecureRandom;
    let mut key = [0u8; KEY_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| "cannot get random bytes for the compaction key".to_string())?;
    Ok(key)
}

fn load_or_create_key(path: &Path) -> Result<[u8; KEY_LEN], String> {
    let shown = path.display();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            let key = random_key()?;
            file.write_all(&key)
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write the compaction key {shown}: {e}"))?;
            return Ok(key);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create the compaction key {shown}: {e}")),
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| format!("cannot open the compaction key {shown}: {e}"))?;
    let metadata = file
        .metadata()
        .map_err(|e| format!("cannot read the compaction key {shown}: {e}"))?;
    if metadata.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "the compaction key {shown} is readable by others (mode {:o}); remove it or make it 0600",
            metadata.permissions().mode() & 0o777
        ));
    }
    let mut key = [0u8; KEY_LEN];
    let mut extra = [0u8; 1];
    file.read_exact(&mut key)
        .map_err(|e| format!("the compaction key {shown} is not {KEY_LEN} bytes: {e}"))?;
    if file.read(&mut extra).map_err(|e| e.to_string())? != 0 {
        return Err(format!(
            "the compaction key {shown} is longer than {KEY_LEN} bytes"
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_summaries_open_and_altered_or_foreign_ones_do_not() {
        let seal = CompactionSeal::with_key(&[7; 32]);
        let blob = seal.seal("Goal: fix tests in src/main.rs");
        assert_eq!(
            seal.open_blob(&blob).as_deref(),
            Some("Goal: fix tests in src/main.rs")
        );
        assert_eq!(CompactionSeal::with_key(&[8; 32]).open_blob(&blob), None);
        let mut bytes = STANDARD.decode(&blob).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(seal.open_blob(&STANDARD.encode(&bytes)), None);
        bytes[last] ^= 1;
        bytes[0] = 2;
        assert_eq!(seal.open_blob(&STANDARD.encode(&bytes)), None);
        for foreign in ["", "gAAAAABpZ-not-ours", "AQ==", "not base64 at all!"] {
            assert_eq!(seal.open_blob(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn the_key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = CompactionSeal::open(Some(dir.path())).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (second, _) = CompactionSeal::open(Some(dir.path())).unwrap();
        assert_eq!(
            second.open_blob(&first.seal("kept")).as_deref(),
            Some("kept")
        );

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(CompactionSeal::open(Some(dir.path()))
            .err()
            .unwrap()
            .contains("readable by others"));
        std::fs::write(&path, b"short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(CompactionSeal::open(Some(dir.path())).is_err());

        let (a, _) = CompactionSeal::open(None).unwrap();
        let (b, _) = CompactionSeal::open(None).unwrap();
        assert_eq!(b.open_blob(&a.seal("x")), None);
    }
}
