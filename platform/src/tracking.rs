//! Tokens in the links render writes into messages (open pixel, tracked clicks,
//! unsubscribe) and analytics answers. A token carries what the event needs (message,
//! account, recipient, campaign, and for a click the target URL) and an HMAC-SHA256 tag
//! over it, so a link cannot be forged or edited: the click endpoint redirects only to
//! a URL that was in the message (no open redirect), and unsubscribing needs a token
//! issued for that recipient.
//!
//! Format: `base64url(JSON claims) "." base64url(first 16 bytes of the tag)`.

use aws_lc_rs::{constant_time, hmac};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use sendmill_wire::{AccountId, MessageId};
use serde::{Deserialize, Serialize};

const TAG_LEN: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkKind {
    #[serde(rename = "o")]
    Open,
    #[serde(rename = "c")]
    Click,
    #[serde(rename = "u")]
    Unsubscribe,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "k")]
    pub kind: LinkKind,
    #[serde(rename = "m")]
    pub message_id: MessageId,
    #[serde(rename = "a")]
    pub account_id: AccountId,
    #[serde(rename = "r")]
    pub recipient: String,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    /// The campaign's A/B variant the message carried (its `variant` metadata), so that
    /// opens and clicks count for it.
    #[serde(rename = "v", default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// The link's position in the message, for clicks.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub link_index: Option<u16>,
    /// The target, for clicks.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token is for another kind of link")]
    WrongKind,
}

#[derive(Clone)]
pub struct LinkSigner {
    key: hmac::Key,
}

impl LinkSigner {
    pub fn new(secret: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    pub fn token(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims encode"));
        let tag = hmac::sign(&self.key, body.as_bytes());
        format!(
            "{body}.{}",
            URL_SAFE_NO_PAD.encode(&tag.as_ref()[..TAG_LEN])
        )
    }

    /// A token for a purpose other than message links (the audiences' public pages):
    /// the same format, but the tag is over `purpose`, a NUL and the body, so a token
    /// sealed for one purpose never opens for another or verifies as a link token.
    pub fn seal<T: Serialize>(&self, purpose: &str, claims: &T) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims encode"));
        let tag = self.purpose_tag(purpose, &body);
        format!(
            "{body}.{}",
            URL_SAFE_NO_PAD.encode(&tag.as_ref()[..TAG_LEN])
        )
    }

    /// The claims of a token [`LinkSigner::seal`] made for `purpose`.
    pub fn open<T: serde::de::DeserializeOwned>(
        &self,
        purpose: &str,
        token: &str,
    ) -> Result<T, TokenError> {
        let (body, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        let expected = self.purpose_tag(purpose, body);
        if tag.len() != TAG_LEN
            || constant_time::verify_slices_are_equal(&expected.as_ref()[..TAG_LEN], &tag).is_err()
        {
            return Err(TokenError::BadSignature);
        }
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
    }

    fn purpose_tag(&self, purpose: &str, body: &str) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(purpose.as_bytes());
        context.update(&[0]);
        context.update(body.as_bytes());
        context.sign()
    }

    /// The claims of a token this signer issued for a link of `kind`.
    pub fn verify(&self, token: &str, kind: LinkKind) -> Result<Claims, TokenError> {
        let (body, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Malformed)?;
        let expected = hmac::sign(&self.key, body.as_bytes());
        if tag.len() != TAG_LEN
            || constant_time::verify_slices_are_equal(&expected.as_ref()[..TAG_LEN], &tag).is_err()
        {
            return Err(TokenError::BadSignature);
        }
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.kind != kind {
            return Err(TokenError::WrongKind);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(kind: LinkKind) -> Claims {
        Claims {
            kind,
            message_id: MessageId::generate(),
            account_id: AccountId::generate(),
            recipient: "ada@ok.test".into(),
            campaign_id: None,
            variant: Some("B".into()),
            link_index: Some(3),
            url: Some("https://example.test/a?b=1&c=2".into()),
        }
    }

    #[test]
    fn a_token_verifies_for_its_kind_only() {
        let signer = LinkSigner::new("a-secret-of-at-least-thirty-two-bytes");
        let c = claims(LinkKind::Click);
        let token = signer.token(&c);
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
        assert_eq!(signer.verify(&token, LinkKind::Click), Ok(c));
        assert_eq!(
            signer.verify(&token, LinkKind::Open),
            Err(TokenError::WrongKind)
        );
    }

    #[test]
    fn sealed_tokens_open_for_their_purpose_only() {
        let signer = LinkSigner::new("a-secret-of-at-least-thirty-two-bytes");
        let sealed = signer.seal("preferences", &claims(LinkKind::Unsubscribe));
        assert_eq!(
            signer.open::<Claims>("preferences", &sealed),
            Ok(claims_of(&sealed))
        );
        assert_eq!(
            signer.open::<Claims>("confirm", &sealed),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            signer.verify(&sealed, LinkKind::Unsubscribe),
            Err(TokenError::BadSignature)
        );
        let link = signer.token(&claims(LinkKind::Unsubscribe));
        assert_eq!(
            signer.open::<Claims>("preferences", &link),
            Err(TokenError::BadSignature)
        );
    }

    fn claims_of(token: &str) -> Claims {
        let body = token.split_once('.').unwrap().0;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).unwrap()).unwrap()
    }

    #[test]
    fn tampered_or_foreign_tokens_are_rejected() {
        let signer = LinkSigner::new("a-secret-of-at-least-thirty-two-bytes");
        let token = signer.token(&claims(LinkKind::Click));
        let (body, tag) = token.split_once('.').unwrap();
        // Another target URL under the same tag.
        let mut forged = claims(LinkKind::Click);
        forged.url = Some("https://evil.test/".into());
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        assert_eq!(
            signer.verify(&format!("{forged_body}.{tag}"), LinkKind::Click),
            Err(TokenError::BadSignature)
        );
        let flipped = format!(
            "{body}.{}",
            tag.replace(&tag[..1], if &tag[..1] == "A" { "B" } else { "A" })
        );
        assert_eq!(
            signer.verify(&flipped, LinkKind::Click),
            Err(TokenError::BadSignature)
        );
        let other = LinkSigner::new("another-secret-of-thirty-two-bytes!!");
        assert_eq!(
            other.verify(&token, LinkKind::Click),
            Err(TokenError::BadSignature)
        );
        for junk in ["", ".", "abc", "a.b.c", "!!!.???"] {
            assert!(signer.verify(junk, LinkKind::Click).is_err(), "{junk}");
        }
    }
}
