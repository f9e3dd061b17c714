//! DKIM keys for sending domains: RSA-2048 generated with aws-lc (fast, constant-time),
//! kept as PKCS#8, and the TXT record that publishes the public half.

use aws_lc_rs::{
    encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der},
    rand::SystemRandom,
    rsa::{KeyPair, KeySize},
    signature::{Ed25519KeyPair, KeyPair as _},
};
use base64::{engine::general_purpose::STANDARD, Engine};

pub struct GeneratedDkimKey {
    pub private_pkcs8: Vec<u8>,
    /// base64 of the DER SubjectPublicKeyInfo: the `p=` tag.
    pub public_spki_base64: String,
}

pub fn generate_rsa_2048() -> Result<GeneratedDkimKey, aws_lc_rs::error::Unspecified> {
    let pair = KeyPair::generate(KeySize::Rsa2048)?;
    let private: Pkcs8V1Der<'_> = pair.as_der()?;
    let public: PublicKeyX509Der<'_> = pair.public_key().as_der()?;
    Ok(GeneratedDkimKey {
        private_pkcs8: private.as_ref().to_vec(),
        public_spki_base64: STANDARD.encode(public.as_ref()),
    })
}

pub struct GeneratedEd25519Key {
    pub private_pkcs8: Vec<u8>,
    /// base64 of the raw 32-byte public key: the `p=` tag (RFC 8463).
    pub public_base64: String,
}

pub fn generate_ed25519() -> Result<GeneratedEd25519Key, aws_lc_rs::error::Unspecified> {
    let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())?;
    let pair = Ed25519KeyPair::from_pkcs8(document.as_ref())?;
    Ok(GeneratedEd25519Key {
        private_pkcs8: document.as_ref().to_vec(),
        public_base64: STANDARD.encode(pair.public_key().as_ref()),
    })
}

/// Whether TXT record `txt` (its strings joined) publishes the public key whose `p=` tag
/// is `p` (RFC 6376 §3.6.1: tags split on `;`, whitespace in values ignored).
pub fn publishes_key(txt: &str, p: &str) -> bool {
    let compact: String = txt.split_whitespace().collect();
    !p.is_empty()
        && compact
            .split(';')
            .any(|tag| tag.strip_prefix("p=") == Some(p))
}

/// `(name, value)` of the RSA key's TXT record at `selector._domainkey.domain`.
pub fn txt_record(domain: &str, selector: &str, public_spki_base64: &str) -> (String, String) {
    (
        format!("{selector}._domainkey.{domain}"),
        format!("v=DKIM1; k=rsa; p={public_spki_base64}"),
    )
}

/// `(name, value)` of an Ed25519 key's TXT record.
pub fn ed25519_txt_record(domain: &str, selector: &str, public_base64: &str) -> (String, String) {
    (
        format!("{selector}._domainkey.{domain}"),
        format!("v=DKIM1; k=ed25519; p={public_base64}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_2048_bit_key_and_its_record() {
        let key = generate_rsa_2048().unwrap();
        let parsed = aws_lc_rs::rsa::KeyPair::from_pkcs8(&key.private_pkcs8).unwrap();
        assert_eq!(parsed.public_modulus_len(), 256);
        let (name, value) = txt_record("example.test", "s1", &key.public_spki_base64);
        assert_eq!(name, "s1._domainkey.example.test");
        assert!(value.starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"), "{value}");
    }

    #[test]
    fn generates_an_ed25519_key_with_a_raw_public_key() {
        let key = generate_ed25519().unwrap();
        assert!(Ed25519KeyPair::from_pkcs8(&key.private_pkcs8).is_ok());
        assert_eq!(STANDARD.decode(&key.public_base64).unwrap().len(), 32);
    }
}
