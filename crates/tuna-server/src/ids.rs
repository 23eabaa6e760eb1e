//! Object ids in OpenAI's style (`file-…`, `ftjob-…`), API keys and their hashes, and clocks.

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

pub const FILE: &str = "file-";
pub const JOB: &str = "ftjob-";
pub const EVENT: &str = "ftevent-";
pub const CHECKPOINT: &str = "ftckpt_";
pub const USER: &str = "user-";
pub const CHAT: &str = "chatcmpl-";
/// API keys start with this, so they are recognisable in logs and secret scanners.
pub const KEY_PREFIX: &str = "sk-tuna-";

/// `prefix` + 24 random alphanumerics (ThreadRng is a CSPRNG seeded from the OS).
pub fn new_id(prefix: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 24);
    s.push_str(prefix);
    s.extend(
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(24)
            .map(char::from),
    );
    s
}

/// A fresh API key: 40 random alphanumerics (~238 bits).
pub fn new_api_key() -> String {
    let mut s = String::from(KEY_PREFIX);
    s.extend(
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(40)
            .map(char::from),
    );
    s
}

/// What the store keeps of a key. Keys are long random strings, so a fast hash is enough
/// (no dictionary to guard against, unlike passwords).
pub fn hash_key(key: &str) -> String {
    to_hex(&Sha256::digest(key.as_bytes()))
}

/// Lowercase hex of a digest.
pub fn to_hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first characters of a key, kept to tell keys apart.
pub fn key_prefix(key: &str) -> String {
    key.chars().take(KEY_PREFIX.len() + 4).collect()
}

/// Unix time in whole seconds.
pub fn now() -> i64 {
    now_f64() as i64
}

/// Unix time in seconds, fractional.
pub fn now_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_and_unique() {
        let a = new_id(JOB);
        let b = new_id(JOB);
        assert!(a.starts_with("ftjob-") && a.len() == 30);
        assert_ne!(a, b);
    }

    #[test]
    fn key_hash_is_sha256_hex() {
        // echo -n abc | sha256sum
        assert_eq!(
            hash_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let k = new_api_key();
        assert!(k.starts_with(KEY_PREFIX) && k.len() == KEY_PREFIX.len() + 40);
        assert_eq!(key_prefix(&k).len(), KEY_PREFIX.len() + 4);
    }
}
