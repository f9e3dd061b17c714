//! API keys: `sm_` followed by 43 characters of base64url (256 random bits). Only the
//! SHA-256 of a key is stored; the first 11 characters are kept as a visible prefix.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};

const PREFIX: &str = "sm_";
const ENCODED_LEN: usize = 43;

pub struct GeneratedKey {
    pub plaintext: String,
    pub prefix: String,
}

pub fn generate() -> GeneratedKey {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let plaintext = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(secret));
    let prefix = plaintext[..PREFIX.len() + 8].to_owned();
    GeneratedKey { plaintext, prefix }
}

pub fn hash(key: &str) -> [u8; 32] {
    hash_bytes(key.as_bytes())
}

/// SHA-256 of any bytes (request fingerprints for idempotency keys).
pub fn hash_bytes(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A cheap shape check that spares the database obviously wrong keys.
pub fn looks_like_key(key: &str) -> bool {
    key.len() == PREFIX.len() + ENCODED_LEN
        && key.starts_with(PREFIX)
        && key[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_expected_shape_and_differ() {
        let a = generate();
        let b = generate();
        assert!(looks_like_key(&a.plaintext), "{}", a.plaintext);
        assert_ne!(a.plaintext, b.plaintext);
        assert!(a.plaintext.starts_with(&a.prefix));
        assert_ne!(hash(&a.plaintext), hash(&b.plaintext));
    }

    #[test]
    fn malformed_keys_are_rejected_before_any_lookup() {
        assert!(!looks_like_key(""));
        assert!(!looks_like_key("sm_short"));
        let key = generate().plaintext;
        assert!(!looks_like_key(&key.replace("sm_", "xx_")));
        assert!(!looks_like_key(&format!("{}!", &key[..key.len() - 1])));
    }
}
