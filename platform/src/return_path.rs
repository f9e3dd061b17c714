//! Signed return addresses: the VERP envelope sender every message goes out with
//! (`b+<message id>-<tag>@<return-path domain>`) and the `mailto:` List-Unsubscribe
//! address (`unsubscribe+<message id>-<tag>@<return-path domain>`). Mail that comes back
//! to one of them (a DSN, a mail client's unsubscribe) names its message; the tag makes
//! that claim checkable, so an address cannot be made up for another account's message:
//! render writes them, the inbound stage verifies them before it touches anything.
//!
//! - The message id is its 32 lower-case hex digits; the tag is the first 8 bytes (16 hex
//!   digits) of HMAC-SHA256 under the tracking secret over the kind, the id and the
//!   lower-cased domain, so an address is bound to the domain it was issued on too.
//! - The longest local part is `unsubscribe+` + 32 + `-` + 16 = 61 octets, inside RFC
//!   5321's 64. Lower-case hex survives MTAs that fold the case of local parts.
//! - Without a secret render writes the unsigned form of [`sendmill_wire::verp`], which
//!   the inbound stage does not trust.

use aws_lc_rs::{constant_time, hmac};
use sendmill_wire::MessageId;
use uuid::Uuid;

/// Hex digits of the tag (8 bytes: a forger's chance per try is 2⁻⁶⁴).
const TAG_HEX: usize = 16;

/// What a return address is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReturnKind {
    /// The envelope sender (RFC 5321 reverse-path): DSNs, auto-replies, some ARF reports.
    Bounce,
    /// The `mailto:` of `List-Unsubscribe` (RFC 2369).
    Unsubscribe,
}

impl ReturnKind {
    fn prefix(self) -> &'static str {
        match self {
            ReturnKind::Bounce => "b+",
            ReturnKind::Unsubscribe => "unsubscribe+",
        }
    }
}

/// A verified return address: its kind, message and domain (lower-cased).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReturnAddress {
    pub kind: ReturnKind,
    pub message_id: MessageId,
    pub domain: String,
}

/// Issues and verifies signed return addresses under the tracking secret.
#[derive(Clone)]
pub struct ReturnPaths {
    key: hmac::Key,
}

impl ReturnPaths {
    pub fn new(secret: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        }
    }

    fn tag(&self, kind: ReturnKind, hex: &str, domain: &str) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(kind.prefix().as_bytes());
        context.update(hex.as_bytes());
        context.update(b"@");
        context.update(domain.to_ascii_lowercase().as_bytes());
        context.sign()
    }

    /// The address of `kind` for `message_id` on `domain`.
    pub fn address(&self, kind: ReturnKind, message_id: MessageId, domain: &str) -> String {
        let hex = message_id.0.simple().to_string();
        let tag = self.tag(kind, &hex, domain);
        format!(
            "{}{hex}-{}@{domain}",
            kind.prefix(),
            hex::encode(&tag.as_ref()[..TAG_HEX / 2])
        )
    }

    /// The envelope sender of `message_id`'s message.
    pub fn bounce(&self, message_id: MessageId, domain: &str) -> String {
        self.address(ReturnKind::Bounce, message_id, domain)
    }

    /// The `mailto:` unsubscribe address of `message_id`'s message.
    pub fn unsubscribe(&self, message_id: MessageId, domain: &str) -> String {
        self.address(ReturnKind::Unsubscribe, message_id, domain)
    }

    /// What `address` was issued for, when it is one of ours and its tag is right; `None`
    /// for any other address (a forged or altered one, an unsigned VERP address, a
    /// mailbox such as `postmaster@`). Local part and domain compare case-insensitively.
    pub fn verify(&self, address: &str) -> Option<ReturnAddress> {
        let (local, domain) = address.rsplit_once('@')?;
        let local = local.to_ascii_lowercase();
        let domain = domain.to_ascii_lowercase();
        let (kind, rest) = [ReturnKind::Bounce, ReturnKind::Unsubscribe]
            .into_iter()
            .find_map(|kind| Some((kind, local.strip_prefix(kind.prefix())?)))?;
        let (hex, tag) = rest.split_once('-')?;
        if hex.len() != 32 || tag.len() != TAG_HEX {
            return None;
        }
        let id = Uuid::try_parse(hex).ok()?;
        let given = hex::decode(tag).ok()?;
        let expected = self.tag(kind, hex, &domain);
        constant_time::verify_slices_are_equal(&expected.as_ref()[..TAG_HEX / 2], &given).ok()?;
        Some(ReturnAddress {
            kind,
            message_id: MessageId(id),
            domain,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes";

    #[test]
    fn addresses_verify_for_their_kind_message_and_domain_only() {
        let paths = ReturnPaths::new(SECRET);
        let id = MessageId::generate();
        let bounce = paths.bounce(id, "bounces.a.test");
        let (local, _) = bounce.split_once('@').unwrap();
        assert_eq!(local.len(), 2 + 32 + 1 + 16);
        let verified = paths.verify(&bounce).unwrap();
        assert_eq!(verified.kind, ReturnKind::Bounce);
        assert_eq!(verified.message_id, id);
        assert_eq!(verified.domain, "bounces.a.test");
        // Case folded by a relay still verifies.
        assert_eq!(paths.verify(&bounce.to_uppercase()), Some(verified));

        let unsubscribe = paths.unsubscribe(id, "bounces.a.test");
        assert!(unsubscribe.split_once('@').unwrap().0.len() <= 64);
        assert_eq!(
            paths.verify(&unsubscribe).unwrap().kind,
            ReturnKind::Unsubscribe
        );

        // Moved to another domain, another kind, another message, another secret.
        let moved = bounce.replace("bounces.a.test", "bounces.b.test");
        assert_eq!(paths.verify(&moved), None);
        let (_, tag) = bounce.split_once('-').unwrap();
        assert_eq!(
            paths.verify(&format!("unsubscribe+{}-{tag}", id.0.simple())),
            None
        );
        let other = MessageId::generate();
        assert_eq!(paths.verify(&format!("b+{}-{tag}", other.0.simple())), None);
        assert_eq!(
            ReturnPaths::new("another-secret-of-thirty-two-bytes!!").verify(&bounce),
            None
        );
        // Unsigned and malformed addresses.
        assert_eq!(
            paths.verify(&sendmill_wire::verp::return_path(id, "bounces.a.test")),
            None
        );
        for junk in [
            "",
            "@",
            "b+@x",
            "b+-@x",
            "postmaster@bounces.a.test",
            "b+zz-zz@x",
        ] {
            assert_eq!(paths.verify(junk), None, "{junk}");
        }
    }
}
