//! `sendmill bench …`: measurements printed as figures, never asserted in tests.
//!
//! `bench render`: one core's worth of the renderer. For a ~15 KB HTML template with 15
//! variables (and a text part), how many messages per second are rendered, MIME-encoded
//! and DKIM-signed — with RSA-2048, and with RSA-2048 + Ed25519 dual signatures — next
//! to the raw signing rate of the same keys, the ceiling the renderer cannot pass.
//! Several alternating runs; medians reported.

use sendmill_render::{message, signing::SendingIdentity, templates::Templates};
use sendmill_store::{dkim, Ed25519DkimKey, SendingDomain};
use sendmill_wire::{
    AccountId, BatchId, EmailAddress, Lane, MessageContext, MessageId, RenderOptions, RequestedV1,
};
use serde::Serialize;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

#[derive(Debug, Serialize)]
pub struct RenderReport {
    pub html_bytes: usize,
    pub variables: usize,
    pub runs: usize,
    pub seconds_per_run: f64,
    /// Medians, per second, one thread.
    pub raw_rsa2048_signatures: f64,
    pub raw_ed25519_signatures: f64,
    pub rendered_rsa2048: f64,
    pub rendered_dual: f64,
    /// The parts of `rendered_rsa2048`: templates + MIME only, and signing a built
    /// message only (canonicalization, hashes, RSA).
    pub build_only: f64,
    pub seal_only: f64,
    /// rendered_rsa2048 / raw_rsa2048_signatures.
    pub rsa_ratio: f64,
}

pub fn render(runs: usize, seconds: f64) -> anyhow::Result<RenderReport> {
    let rsa = dkim::generate_rsa_2048().map_err(|_| anyhow::anyhow!("RSA key generation"))?;
    let ed = dkim::generate_ed25519().map_err(|_| anyhow::anyhow!("Ed25519 key generation"))?;
    let domain = |dual_sign| SendingDomain {
        id: uuid::Uuid::nil(),
        account_id: AccountId(uuid::Uuid::nil()),
        domain: "example.test".into(),
        dkim_selector: "s1".into(),
        dkim_private_key_pkcs8: rsa.private_pkcs8.clone(),
        dkim_public_key: rsa.public_spki_base64.clone(),
        ed25519: Some(Ed25519DkimKey {
            selector: "s1e".into(),
            private_pkcs8: ed.private_pkcs8.clone(),
            public_key: ed.public_base64.clone(),
        }),
        dual_sign,
        return_path_domain: "bounces.example.test".into(),
        verified_at: None,
        verification: None,
    };
    let rsa_only = SendingIdentity::new(&domain(false))?;
    let dual = SendingIdentity::new(&domain(true))?;
    let raw_rsa = sendmill_render::dkim::DkimSigner::rsa(
        "example.test",
        "s1",
        &rsa.private_pkcs8,
        &["from"],
    )?;
    let raw_ed = sendmill_render::dkim::DkimSigner::ed25519(
        "example.test",
        "s1e",
        &ed.private_pkcs8,
        &["from"],
    )?;
    // The smallest signable message: the cost is the key operation.
    let tiny = b"From: a@example.test\r\n\r\nx\r\n";

    let (html, text) = template();
    let templates = Templates::new();
    let period = Duration::from_secs_f64(seconds);
    let mut samples: [Vec<f64>; 6] = Default::default();
    let sample = request(&html, &text);
    let built = message::build(
        &templates,
        message::Decorations::NONE,
        &sample,
        OffsetDateTime::now_utc(),
    )?;
    // One message for a new recipient, rendered and signed as render does it.
    let render_and_seal = |identity: &SendingIdentity| -> anyhow::Result<()> {
        let request = request(&html, &text);
        let now = OffsetDateTime::now_utc();
        let unsigned = message::build(&templates, message::Decorations::NONE, &request, now)?;
        identity.seal(&unsigned, &request, now)?;
        Ok(())
    };
    for _ in 0..runs {
        samples[0].push(rate(period, || raw_rsa.sign(tiny, 0).map(drop))?);
        samples[1].push(rate(period, || raw_ed.sign(tiny, 0).map(drop))?);
        samples[2].push(rate(period, || render_and_seal(&rsa_only))?);
        samples[3].push(rate(period, || render_and_seal(&dual))?);
        samples[4].push(rate(period, || {
            let request = request(&html, &text);
            message::build(
                &templates,
                message::Decorations::NONE,
                &request,
                OffsetDateTime::now_utc(),
            )
            .map(drop)
        })?);
        samples[5].push(rate(period, || {
            rsa_only
                .seal(&built, &sample, OffsetDateTime::now_utc())
                .map(drop)
        })?);
    }
    let [raw_rsa, raw_ed, rendered_rsa, rendered_dual, build_only, seal_only] = samples.map(median);
    Ok(RenderReport {
        html_bytes: html.len(),
        variables: 15,
        runs,
        seconds_per_run: seconds,
        raw_rsa2048_signatures: raw_rsa,
        raw_ed25519_signatures: raw_ed,
        rendered_rsa2048: rendered_rsa,
        rendered_dual,
        build_only,
        seal_only,
        rsa_ratio: rendered_rsa / raw_rsa,
    })
}

/// Calls `work` for `period`; returns calls per second.
fn rate<E: Into<anyhow::Error>>(
    period: Duration,
    mut work: impl FnMut() -> Result<(), E>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < period {
        work().map_err(Into::into)?;
        count += 1;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// A ~15 KB newsletter-like HTML template with 15 variables, and its text part.
pub fn template() -> (String, String) {
    let mut html = String::from(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{{v1}}</title></head>\
         <body style=\"margin:0;padding:0;font-family:Helvetica,Arial,sans-serif\">\
         <table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\">\
         <tr><td><h1>Hello {{v2}}, here is your {{v3}} digest</h1></td></tr>",
    );
    let mut n = 0;
    while html.len() < 15_000 {
        let var = 4 + n % 12;
        html.push_str(&format!(
            "<tr><td style=\"padding:12px 24px;font-size:15px;line-height:22px;color:#333333\">\
             <p>Item {n}: {{{{v{var}}}}} — Lorem ipsum dolor sit amet, consectetur adipiscing elit, \
             sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim \
             veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip.</p>\
             <a href=\"https://example.test/items/{n}?utm_source=newsletter&amp;u={{{{v15}}}}\" \
             style=\"color:#0066cc\">Read more</a></td></tr>"
        ));
        n += 1;
    }
    html.push_str("<tr><td><p>You get this because you subscribed as {{v15}}.</p></td></tr></table></body></html>");
    let text = "Hello {{v2}}, here is your {{v3}} digest.\n\n{{v4}} {{v5}} {{v6}} {{v7}} {{v8}} \
                {{v9}} {{v10}} {{v11}} {{v12}} {{v13}} {{v14}}\n\nYou get this as {{v15}}.\n"
        .to_owned();
    (html, text)
}

fn request(html: &str, text: &str) -> RequestedV1 {
    let id = MessageId::generate();
    let mut data = serde_json::Map::new();
    for i in 1..=15 {
        data.insert(
            format!("v{i}"),
            format!("value {i} for {}", id.0.simple()).into(),
        );
    }
    RequestedV1 {
        message_id: id,
        account_id: AccountId(uuid::Uuid::nil()),
        batch_id: BatchId::generate(),
        lane: Lane::Bulk,
        accepted_at: OffsetDateTime::now_utc(),
        from: EmailAddress {
            email: "news@example.test".into(),
            name: Some("Example News".into()),
        },
        to: EmailAddress {
            email: format!("r{}@d1.test", id.0.simple()),
            name: None,
        },
        cc: Vec::new(),
        envelope_to: None,
        reply_to: None,
        subject: "{{v3}} digest for {{v2}}".into(),
        html: Some(html.to_owned()),
        text: Some(text.to_owned()),
        headers: vec![],
        data,
        context: MessageContext::default(),
        options: RenderOptions::default(),
        attachments: vec![],
    }
}
