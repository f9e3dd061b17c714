//! VERP return paths (variable envelope return path): each message's envelope sender
//! names the message, `b+<message id as 32 hex digits>@<return-path domain>`, so a bounce
//! that arrives later, by mail, can be matched to the message it is about. Render writes
//! them; whatever reads bounces decodes them.

use crate::MessageId;
use uuid::Uuid;

const PREFIX: &str = "b+";

/// The envelope sender for `message_id` on `domain`.
pub fn return_path(message_id: MessageId, domain: &str) -> String {
    format!("{PREFIX}{}@{domain}", message_id.0.simple())
}

/// The message a VERP address was made for, if it is one.
pub fn message_id_of(address: &str) -> Option<MessageId> {
    let (local, _) = address.rsplit_once('@')?;
    let hex = local.strip_prefix(PREFIX)?;
    if hex.len() != 32 {
        return None;
    }
    Uuid::try_parse(hex).ok().map(MessageId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_addresses() {
        let id = MessageId::generate();
        let address = return_path(id, "bounces.example.test");
        assert!(address.starts_with("b+") && address.ends_with("@bounces.example.test"));
        assert_eq!(message_id_of(&address), Some(id));
        assert_eq!(message_id_of("hello@example.test"), None);
        assert_eq!(message_id_of("b+1234@example.test"), None);
        assert_eq!(
            message_id_of("b+zz3b6e8f7a7c3e9d2a0a1b2c3d4e5f@x.test"),
            None
        );
    }
}
