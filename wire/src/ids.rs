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
