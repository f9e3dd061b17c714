//! What an SMTP client hands over after DATA, as bytes: the submission checks
//! (`sendmill_ingest::submission::message::read`) and, for what they accept, render's
//! preparation of it (`sendmill_render::submitted::prepare`, tracking on). A hostile
//! client must not be able to panic ingest or render, and what is queued must keep the
//! promises the checks make: CRLF line ends only, no `X-Sendmill-*` or `Bcc` field
//! left, and the body after the header section exactly as it came (line ends aside).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendmill_ingest::submission::message::read;
use sendmill_render::{links::Links, message::Decorations, submitted::prepare};
use sendmill_wire::{
    AccountId, BatchId, EmailAddress, Lane, MessageId, RenderOptions, RequestedV1,
};
use std::sync::OnceLock;

fn links() -> &'static Links {
    static LINKS: OnceLock<Links> = OnceLock::new();
    LINKS.get_or_init(|| Links::new("a-fuzzing-secret-of-at-least-32-bytes", "https://t.test/"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(submitted) = read(data) else { return };
    let mime = &submitted.mime;
    assert!(mime.ends_with(b"\r\n"));
    for (i, &b) in mime.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && mime[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(mime.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    let header_end = memchr::memmem::find(mime, b"\r\n\r\n").map_or(mime.len(), |at| at + 2);
    for line in mime[..header_end].split(|&b| b == b'\n') {
        let lower = line.to_ascii_lowercase();
        assert!(!lower.starts_with(b"x-sendmill-"), "{:?}", String::from_utf8_lossy(line));
        assert!(!lower.starts_with(b"bcc:"), "{:?}", String::from_utf8_lossy(line));
    }
    let batch = BatchId::generate();
    let request = RequestedV1 {
        message_id: MessageId::derive(batch, 0),
        account_id: AccountId::generate(),
        batch_id: batch,
        lane: Lane::Transactional,
        accepted_at: time::OffsetDateTime::UNIX_EPOCH,
        from: submitted.from.clone(),
        to: EmailAddress { email: "to@ok.test".into(), name: None },
        to_list: vec![],
        cc: vec![],
        envelope_to: None,
        reply_to: None,
        subject: String::new(),
        html: None,
        text: None,
        headers: vec![],
        data: Default::default(),
        context: submitted.context.clone(),
        options: RenderOptions {
            strict: false,
            track_opens: true,
            track_clicks: true,
            list_unsubscribe: true,
        },
        attachments: vec![],
        mime: Some(bytes::Bytes::from(mime.clone())),
        shared: None,
    };
    let decorations = Decorations { links: Some(links()), return_path_domain: "bounces.b.test" };
    // Render may refuse what it cannot parse; it must not panic.
    let _ = prepare(mime, decorations, &request, time::OffsetDateTime::UNIX_EPOCH);
});
