//! SendGrid's Event Webhook format, for endpoints created with `format: "sendgrid"`, so
//! receivers written for SendGrid keep working: each request is a JSON array of events
//! named as SendGrid names them, signed as SendGrid signs them.
//!
//! In: Sendmill events ([`EventV1`]). Out: SendGrid events (a JSON object each) and the
//! `X-Twilio-Email-Event-Webhook-Signature` / `-Timestamp` headers.
//!
//! The mapping (SendGrid's event reference): `accepted` → `processed`; `dropped`,
//! `render_failed`, `failed` and `expired` → `dropped` (with `reason`); `delivered` →
//! `delivered`; `deferred` → `deferred`; `bounced` and `async_bounced` → `bounce`
//! (`type: "bounce"`, `status` the enhanced code); `opened` → `open` (`sg_machine_open`);
//! `clicked` → `click`; `unsubscribed` → `unsubscribe`; `complained` → `spamreport`.
//! `auto_replied` has no SendGrid counterpart and is not sent. Every event carries
//! `email`, `timestamp` (Unix seconds), `sg_event_id`, `sg_message_id` (the Sendmill
//! message id: SendGrid's `X-Message-Id` prefix is Sendmill's batch id, which the
//! message id derives from), `category` (the tags), each metadata entry at the top level
//! as SendGrid sends custom args, and `sendmill_event` (the Sendmill type).
//!
//! The signature (SendGrid's "Event Webhook Security"): ECDSA P-256 with SHA-256 over the
//! timestamp's decimal text followed by the body, DER-encoded and base64'd; receivers
//! verify it with the endpoint's public key (`sendgrid`'s `EventWebhook` helpers).

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING},
};
use base64::{engine::general_purpose::STANDARD, Engine};
use sendmill_wire::{EventType, EventV1};
use serde_json::{json, Map, Value};

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
/// The header carrying the timestamp the signature covers.
pub const TIMESTAMP_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// SendGrid's name for `event_type` (`None`: not sent to SendGrid-format endpoints).
pub fn event_name(event_type: EventType) -> Option<&'static str> {
    Some(match event_type {
        EventType::Accepted => "processed",
        EventType::Dropped | EventType::RenderFailed | EventType::Failed | EventType::Expired => {
            "dropped"
        }
        EventType::Delivered => "delivered",
        EventType::Deferred => "deferred",
        EventType::Bounced | EventType::AsyncBounced => "bounce",
        EventType::Opened => "open",
        EventType::Clicked => "click",
        EventType::Unsubscribed => "unsubscribe",
        EventType::Complained => "spamreport",
        EventType::AutoReplied => return None,
    })
}

/// `event` as SendGrid sends it; `None` for a type SendGrid has no name for.
pub fn event(event: &EventV1) -> Option<Value> {
    let name = event_name(event.event_type)?;
    let mut out = Map::new();
    // Custom args first, so SendGrid's own fields win a name clash.
    for (key, value) in &event.context.metadata {
        out.insert(key.clone(), Value::String(value.clone()));
    }
    let fields = json!({
        "email": event.recipient,
        "timestamp": event.occurred_at.unix_timestamp(),
        "event": name,
        "sg_event_id": event.event_id.0.to_string(),
        "sg_message_id": event.message_id.0.to_string(),
        "category": event.context.tags,
        "sendmill_event": event.event_type.as_str(),
    });
    out.extend(fields.as_object().expect("an object").clone());
    let mut set = |key: &str, value: Value| {
        out.insert(key.to_owned(), value);
    };
    if let Some(smtp) = &event.smtp {
        let response = match &smtp.enhanced {
            Some(enhanced) => format!("{} {} {}", smtp.code, enhanced, smtp.text),
            None => format!("{} {}", smtp.code, smtp.text),
        };
        set("response", Value::String(response.clone()));
        if name == "bounce" {
            set("reason", Value::String(response));
            set(
                "status",
                Value::String(
                    smtp.enhanced
                        .clone()
                        .unwrap_or_else(|| smtp.code.to_string()),
                ),
            );
        }
    }
    if name == "bounce" {
        set("type", Value::String("bounce".into()));
        if let Some(category) = event.bounce_category {
            set(
                "bounce_classification",
                Value::String(category.as_str().into()),
            );
        }
    }
    let bounce_reason = name == "bounce" && event.smtp.is_some();
    if let (Some(reason), false) = (&event.reason, bounce_reason) {
        set("reason", Value::String(reason.clone()));
    }
    if name == "deferred" {
        set("attempt", Value::String(event.attempt.to_string()));
    }
    if let Some(agent) = &event.user_agent {
        set("useragent", Value::String(agent.clone()));
    }
    if let Some(url) = &event.url {
        set("url", Value::String(url.clone()));
    }
    if name == "open" {
        set("sg_machine_open", Value::Bool(event.machine));
    }
    if let Some(pool) = &event.context.ip_pool {
        set("pool", json!({ "name": pool }));
    }
    Some(Value::Object(out))
}

/// Why a request could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("the endpoint's ECDSA key is not a base64 PKCS#8 P-256 key")]
pub struct BadKey;

/// The signature of `body` sent at `timestamp` with the base64 PKCS#8 `private_key`:
/// base64 of the DER ECDSA signature over `timestamp` (decimal) ‖ `body`.
pub fn sign(private_key: &str, timestamp: i64, body: &[u8]) -> Result<String, BadKey> {
    let pkcs8 = STANDARD.decode(private_key).map_err(|_| BadKey)?;
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8).map_err(|_| BadKey)?;
    let mut message = timestamp.to_string().into_bytes();
    message.extend_from_slice(body);
    let signature = pair
        .sign(&SystemRandom::new(), &message)
        .map_err(|_| BadKey)?;
    Ok(STANDARD.encode(signature.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
    use sendmill_wire::{AccountId, MessageContext, MessageId, SmtpReply};

    #[test]
    fn bounces_carry_sendgrid_fields_and_custom_args() {
        let context = MessageContext {
            tags: vec!["welcome".into()],
            metadata: [("order", "42"), ("event", "not the event")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Default::default()
        };
        let mut bounced = EventV1::new(
            EventType::Bounced,
            "dispatcher",
            MessageId(uuid::Uuid::now_v7()),
            AccountId(uuid::Uuid::now_v7()),
            "ada@ok.test",
            &context,
        );
        bounced.smtp = Some(SmtpReply {
            code: 550,
            enhanced: Some("5.1.1".into()),
            text: "no such user".into(),
        });
        let value = event(&bounced).unwrap();
        assert_eq!(
            value["event"], "bounce",
            "SendGrid's field wins a clash: {value}"
        );
        assert_eq!(value["type"], "bounce");
        assert_eq!(value["status"], "5.1.1");
        assert_eq!(value["reason"], "550 5.1.1 no such user");
        assert_eq!(value["order"], "42");
        assert_eq!(value["category"], json!(["welcome"]));
        assert_eq!(value["email"], "ada@ok.test");
        let auto = EventV1::new(
            EventType::AutoReplied,
            "inbound",
            bounced.message_id,
            bounced.account_id,
            "ada@ok.test",
            &context,
        );
        assert!(event(&auto).is_none());
    }

    #[test]
    fn signatures_verify_with_the_public_key_and_cover_the_timestamp() {
        let private = {
            let doc =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &SystemRandom::new())
                    .unwrap();
            STANDARD.encode(doc.as_ref())
        };
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &STANDARD.decode(&private).unwrap(),
        )
        .unwrap();
        use aws_lc_rs::signature::KeyPair;
        let public =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, pair.public_key().as_ref().to_vec());
        let signature = STANDARD
            .decode(sign(&private, 1_700_000_000, b"[]").unwrap())
            .unwrap();
        assert!(public.verify(b"1700000000[]", &signature).is_ok());
        assert!(public.verify(b"1700000001[]", &signature).is_err());
        assert!(sign("not a key", 1, b"").is_err());
    }
}
