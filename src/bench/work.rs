//! `sendmill bench work`: a fixed amount of one part of the per-message work, with no
//! clock, no network and fixed inputs (only RSA blinding draws random numbers), so that
//! `valgrind --tool=callgrind` can count its instructions (`deploy/local/callgrind.sh`).
//! Seconds on these shared 2-core machines move by ±20 % between runs; instruction
//! counts of the same binary move by well under 1 %, so a change's effect on one part is
//! visible without medians of many runs.
//!
//! Instructions per message are `(I(n) − I(0)) / n`: the same command run with `n`
//! messages and with none, so set-up (loading the fixed test keys, compiling the
//! template) cancels out. The key is the fixed RSA-2048 key of the golden messages
//! (`render/tests/keys`), not a generated one: prime generation takes a different
//! number of instructions every time.
//!
//! The parts, per message (what each stage does for one recipient besides I/O):
//! - `rsa`: one raw RSA-2048 PKCS#1 v1.5 SHA-256 signature of a tiny message: the floor.
//! - `build`: Handlebars over the ~15 KB template, 15 variables, MIME and
//!   quoted-printable encoding (render).
//! - `seal`: DKIM for a built message: canonicalization, body and header hashes, RSA
//!   (render).
//! - `render`: `build` + `seal`, what render does per `requested` record.
//! - `requested-codec`: one `requested` record encoded (ingest) and decoded (render).
//! - `ready-codec`: one `ready` record encoded (render) and decoded (dispatcher).
//! - `plan`: a 100-recipient `POST /v1/messages` body parsed and planned into records,
//!   per recipient (ingest, without Redis and Kafka).

use super::{request, send_body, template};
use sendmill_render::{message, signing::SendingIdentity, templates::Templates};
use sendmill_store::{
    AccountLimits, AccountSettings, Ed25519DkimKey, Principal, Scope, SendingDomain,
};
use sendmill_wire::{AccountId, BatchId, ReadyV1, RequestedV1};
use std::hint::black_box;
use time::OffsetDateTime;

/// One part of the per-message work (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Rsa,
    Build,
    Seal,
    Render,
    RequestedCodec,
    ReadyCodec,
    Plan,
}

/// The fixed test keys of the golden messages.
const RSA_PKCS8: &[u8] = include_bytes!("../../render/tests/keys/rsa.pk8.der");
const RSA_PUBLIC: &str = include_str!("../../render/tests/keys/rsa.pub.b64");

/// Recipients per request of the `plan` part.
const PLAN_RECIPIENTS: usize = 100;

/// Does `part` for `messages` messages. Returns the bytes produced, so that nothing is
/// optimized away and a run can be checked for having done the work.
///
/// Errors: a template, signing or codec failure (none with the fixed inputs).
pub fn work(part: Part, messages: usize) -> anyhow::Result<u64> {
    let identity = SendingIdentity::new(&SendingDomain {
        id: uuid::Uuid::nil(),
        account_id: AccountId(uuid::Uuid::nil()),
        domain: "example.test".into(),
        dkim_selector: "s1".into(),
        dkim_private_key_pkcs8: RSA_PKCS8.to_vec(),
        dkim_public_key: RSA_PUBLIC.trim().to_owned(),
        ed25519: None::<Ed25519DkimKey>,
        dual_sign: false,
        next_dkim: None,
        return_path_domain: "bounces.example.test".into(),
        verified_at: None,
        verification: None,
    })?;
    let raw_rsa =
        sendmill_render::dkim::DkimSigner::rsa("example.test", "s1", RSA_PKCS8, &["from"])?;
    let (html, text) = template();
    let templates = Templates::new();
    let at = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let sample = request(&html, &text);
    // Also compiles the templates, outside the counted loop.
    let built = message::build(&templates, message::Decorations::NONE, &sample, at)?;
    let ready = identity.seal(&built, &sample, at, None)?;
    let body = send_body("example.test", &html, &text, PLAN_RECIPIENTS, 0, 10);
    let principal = Principal {
        account_id: AccountId(uuid::Uuid::nil()),
        key_id: uuid::Uuid::nil(),
        key_prefix: "sm_bench".into(),
        scopes: vec![Scope::Send],
        settings: AccountSettings {
            track_opens: true,
            track_clicks: true,
        },
        operator: false,
        limits: AccountLimits::default(),
    };
    let config = sendmill_ingest::Config::default();

    let mut bytes = 0u64;
    let mut n = 0usize;
    while n < messages {
        bytes += match part {
            Part::Rsa => raw_rsa.sign(b"From: a@example.test\r\n\r\nx\r\n", 0)?.len() as u64,
            Part::Build => {
                message::build(&templates, message::Decorations::NONE, &sample, at)?.len() as u64
            }
            Part::Seal => identity.seal(&built, &sample, at, None)?.message.len() as u64,
            Part::Render => {
                let unsigned = message::build(&templates, message::Decorations::NONE, &sample, at)?;
                identity.seal(&unsigned, &sample, at, None)?.message.len() as u64
            }
            Part::RequestedCodec => {
                let encoded = sendmill_wire::encode(black_box(&sample));
                let decoded: RequestedV1 = sendmill_wire::decode(&encoded)?;
                (encoded.len() + black_box(decoded).subject.len()) as u64
            }
            Part::ReadyCodec => {
                let encoded = sendmill_wire::encode(black_box(&ready));
                let decoded: ReadyV1 = sendmill_wire::decode(&encoded)?;
                (encoded.len() + black_box(decoded).message.len()) as u64
            }
            Part::Plan => {
                let request = sendmill_ingest::request::SendRequest::parse(body.as_bytes())
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let records = sendmill_ingest::send::plan(
                    &principal,
                    request,
                    &config,
                    at,
                    BatchId(uuid::Uuid::nil()),
                )
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let records = records.records();
                if records.len() != PLAN_RECIPIENTS {
                    anyhow::bail!(
                        "a request planned {} records, not {PLAN_RECIPIENTS}",
                        records.len()
                    );
                }
                let encoded: usize = records
                    .into_iter()
                    .map(|r| sendmill_wire::encode(r).len())
                    .sum();
                // One request is PLAN_RECIPIENTS messages.
                n += PLAN_RECIPIENTS - 1;
                encoded as u64
            }
        };
        n += 1;
    }
    Ok(bytes)
}
