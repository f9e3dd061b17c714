//! Identifiers carried by every record. UUIDv7 ids sort by creation time, so Kafka keys,
//! ClickHouse sort keys and logs keep their natural order.

use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered (v7) id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// One recipient's copy of a message: the unit that is rendered, sent and tracked.
    MessageId
);
uuid_id!(
    /// A tenant.
    AccountId
);
uuid_id!(
    /// One event; the key ClickHouse deduplicates redelivered events on.
    EventId
);
uuid_id!(
    /// All messages created by one API request.
    BatchId
);

impl MessageId {
    /// The id of the `index`th message of `batch`: the batch's timestamp (so ids still
    /// sort by creation) and bits hashed from batch and index. A request replayed under
    /// the same batch (an idempotent retry after a crash) yields the same ids, so the
    /// dispatcher's barrier sends each message once however often it is queued.
    pub fn derive(batch: BatchId, index: u32) -> Self {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(batch.0.as_bytes());
        hasher.update(index.to_be_bytes());
        let digest = hasher.finalize();
        let mut bytes = *batch.0.as_bytes();
        bytes[6..].copy_from_slice(&digest[6..16]);
        bytes[6] = (bytes[6] & 0x0f) | 0x70; // version 7
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
        Self(Uuid::from_bytes(bytes))
    }

    /// The message of a campaign to one contact: `campaign`'s timestamp and bits hashed
    /// from campaign and contact. However often the campaign sender releases that
    /// contact (a crash between Kafka's acknowledgement and its cursor's commit), the id
    /// is the same, so the dispatcher's terminal barrier sends it once.
    pub fn for_contact(campaign: Uuid, contact: Uuid) -> Self {
        Self::hashed(campaign, contact.as_bytes())
    }

    /// A further id derived from this message for one purpose (`purpose`, e.g. the
    /// event id of the message's `accepted` event when a writer may repeat it).
    pub fn derived(self, purpose: &str) -> Uuid {
        Self::hashed(self.0, purpose.as_bytes()).0
    }

    fn hashed(base: Uuid, extra: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::new()
            .chain_update(base.as_bytes())
            .chain_update(extra)
            .finalize();
        let mut bytes = *base.as_bytes();
        bytes[6..].copy_from_slice(&digest[6..16]);
        bytes[6] = (bytes[6] & 0x0f) | 0x70; // version 7
        bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
        Self(Uuid::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_message_ids_are_stable_distinct_v7_and_keep_the_batch_time() {
        let batch = BatchId::generate();
        let a = MessageId::derive(batch, 0);
        assert_eq!(a, MessageId::derive(batch, 0));
        assert_ne!(a, MessageId::derive(batch, 1));
        assert_ne!(a, MessageId::derive(BatchId::generate(), 0));
        let (campaign, contact) = (Uuid::now_v7(), Uuid::now_v7());
        let m = MessageId::for_contact(campaign, contact);
        assert_eq!(m, MessageId::for_contact(campaign, contact));
        assert_ne!(m, MessageId::for_contact(campaign, Uuid::now_v7()));
        assert_eq!(m.0.get_version_num(), 7);
        assert_eq!(m.0.as_bytes()[..6], campaign.as_bytes()[..6]);
        assert_ne!(m.derived("accepted"), m.0);
        assert_eq!(m.derived("accepted"), m.derived("accepted"));
        assert_eq!(a.0.get_version_num(), 7);
        assert_eq!(a.0.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(a.0.as_bytes()[..6], batch.0.as_bytes()[..6]);
    }
}
