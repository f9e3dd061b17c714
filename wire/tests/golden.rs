//! Golden fixtures of every payload version, decoded forever: a change that breaks an old
//! record fails here.

use sendmill_wire::*;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Decoding, re-encoding and decoding again yields the same value.
fn round_trips<T: WirePayload + PartialEq + std::fmt::Debug>(value: &T) {
    let again: T = decode(&encode(value)).unwrap();
    assert_eq!(&again, value);
}

#[test]
fn requested_v1() {
    let r: RequestedV1 = decode(&fixture("requested.v1.json")).unwrap();
    assert_eq!(r.lane, Lane::Transactional);
    assert_eq!(r.to.email, "ada@ok.test");
    assert_eq!(r.from.name.as_deref(), Some("Example News"));
    assert_eq!(r.headers[0].name, "X-Campaign");
    assert_eq!(r.data["plan"]["tier"], "pro");
    assert_eq!(r.context.metadata["user_id"], "42");
    assert_eq!(r.accepted_at.unix_timestamp(), 1_795_348_800);
    round_trips(&r);
}

#[test]
fn requested_v1_submitted_over_smtp() {
    let r: RequestedV1 = decode(&fixture("requested.v1.submitted.json")).unwrap();
    assert_eq!(
        r.mime.as_deref(),
        Some(
            &b"From: App <app@example.test>\r\nTo: ada@ok.test\r\nSubject: hi\r\n\r\nHello\r\n"[..]
        )
    );
    assert!(r.html.is_none() && r.text.is_none());
    round_trips(&r);
    // Records of the API carry no `mime` at all.
    let api: RequestedV1 = decode(&fixture("requested.v1.json")).unwrap();
    assert!(api.mime.is_none());
    let (_, json) = api.previous_version().unwrap();
    assert!(!String::from_utf8(json).unwrap().contains("mime"));
}

/// The version 1 fixture's record with an attachment (binary bytes, an inline image),
/// the record the version 2 golden frame holds.
fn requested_with_attachments() -> RequestedV1 {
    let mut r: RequestedV1 = decode(&fixture("requested.v1.json")).unwrap();
    r.attachments = vec![
        Attachment {
            filename: "invoice.pdf".into(),
            content_type: "application/pdf".into(),
            content: b"%PDF-1.4\n\x00\xff\xfe binary".to_vec().into(),
            content_id: None,
        },
        Attachment {
            filename: "logo.png".into(),
            content_type: "image/png".into(),
            content: b"\x89PNG\r\n\x1a\n".to_vec().into(),
            content_id: Some("logo".into()),
        },
    ];
    r
}

#[test]
fn requested_v2_is_the_frame_this_build_writes_and_reads() {
    let golden = fixture("requested.v2.bin");
    let record = requested_with_attachments();
    assert_eq!(encode(&record), golden, "the writer's bytes changed");
    assert_eq!(&golden[..4], b"SMQ2");
    let r: RequestedV1 = decode(&golden).unwrap();
    assert_eq!(r, record);
    assert_eq!(r.html.as_deref(), Some("<p>Hi {{name}}</p>"));
    assert_eq!(r.attachments[1].content_id.as_deref(), Some("logo"));
    // The template and the attachments are in the frame as they are: no JSON escaping,
    // no base64.
    assert!(golden.ends_with(b"\x89PNG\r\n\x1a\n"));
    let html_at = golden
        .windows(18)
        .position(|w| w == b"<p>Hi {{name}}</p>")
        .expect("the template as it is");
    assert!(html_at > golden.len() / 2, "after the head, not inside it");
    round_trips(&r);
    // During a rolling upgrade it is written as version 1, which older releases read.
    let (schema, previous) = r.previous_version().unwrap();
    assert_eq!(schema, "sendmill.requested.v1");
    assert!(previous.starts_with(b"{"));
    assert_eq!(decode::<RequestedV1>(&previous).unwrap(), r);
    // The SMTP-submitted form: its message as the `mime` section, no text parts.
    let submitted: RequestedV1 = decode(&fixture("requested.v1.submitted.json")).unwrap();
    let frame = encode(&submitted);
    assert!(frame.starts_with(b"SMQ2"));
    assert_eq!(decode::<RequestedV1>(&frame).unwrap(), submitted);
}

#[test]
fn a_cut_or_broken_requested_frame_is_a_decode_error() {
    let golden = fixture("requested.v2.bin");
    // Every section has a length, so a frame cut anywhere is an error, never a panic.
    for cut in 4..golden.len() {
        let err = decode::<RequestedV1>(&golden[..cut]).unwrap_err();
        assert_eq!(err.schema, "sendmill.requested.v2", "cut at {cut}");
    }
    let mut longer = golden.clone();
    longer.push(0);
    assert!(decode::<RequestedV1>(&longer).is_err(), "a byte too many");
    let mut huge = golden.clone();
    huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decode::<RequestedV1>(&huge).unwrap_err().source,
        DecodeFailure::Frame(_)
    ));
    // A text section that is not UTF-8.
    let mut broken = golden.clone();
    let html_at = golden
        .windows(18)
        .position(|w| w == b"<p>Hi {{name}}</p>")
        .unwrap();
    broken[html_at] = 0xff;
    assert!(matches!(
        decode::<RequestedV1>(&broken).unwrap_err().source,
        DecodeFailure::Frame(_)
    ));
}

#[test]
fn ready_v1() {
    let r: ReadyV1 = decode(&fixture("ready.v1.json")).unwrap();
    assert_eq!(r.lane, Lane::Bulk);
    assert_eq!(r.attempts, 2);
    assert_eq!(r.message, b"From: news@example.test\r\n\r\nHi\r\n");
    assert_eq!(r.recipient_domain(), "ok.test");
    round_trips(&r);
}

#[test]
fn ready_v2_is_the_frame_this_build_writes_and_reads() {
    // The golden frame: the version 1 fixture's record as version 2 writes it.
    let golden = fixture("ready.v2.bin");
    let v1: ReadyV1 = decode(&fixture("ready.v1.json")).unwrap();
    assert_eq!(encode(&v1), golden, "the writer's bytes changed");
    assert_eq!(&golden[..4], b"SMR2");
    let r: ReadyV1 = decode(&golden).unwrap();
    assert_eq!(r, v1);
    assert_eq!(r.message, b"From: news@example.test\r\n\r\nHi\r\n");
    assert_eq!(r.recipient, "Ada@OK.test");
    assert_eq!(r.context.tags, ["welcome"]);
    // The message is in the frame as it is, not base64.
    assert!(golden.ends_with(&r.message));
    round_trips(&r);
    // During a rolling upgrade it is written as version 1, which older releases read.
    let (schema, previous) = r.previous_version().unwrap();
    assert_eq!(schema, "sendmill.ready.v1");
    assert!(previous.starts_with(b"{"));
    assert_eq!(decode::<ReadyV1>(&previous).unwrap(), r);
}

#[test]
fn a_cut_or_broken_ready_frame_is_a_decode_error() {
    let golden = fixture("ready.v2.bin");
    // Cut anywhere before the message ends the head: an error, never a panic. (Cut
    // inside the message, a frame still decodes: Kafka delivers records whole, so the
    // frame needs no length of its own for the message.)
    let head_end = golden.len() - b"From: news@example.test\r\n\r\nHi\r\n".len();
    for cut in 4..head_end {
        let err = decode::<ReadyV1>(&golden[..cut]).unwrap_err();
        assert_eq!(err.schema, "sendmill.ready.v2", "cut at {cut}");
    }
    let mut huge = golden.clone();
    huge[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decode::<ReadyV1>(&huge).unwrap_err().source,
        DecodeFailure::Frame(_)
    ));
}

#[test]
fn retry_v1() {
    let r: RetryV1 = decode(&fixture("retry.v1.json")).unwrap();
    assert_eq!(r.ready.attempts, 1);
    assert_eq!(r.last_reply.as_ref().unwrap().code, 451);
    assert!(r.due_at > r.ready.accepted_at);
    round_trips(&r);
}

#[test]
fn event_v1() {
    let e: EventV1 = decode(&fixture("event.v1.json")).unwrap();
    assert_eq!(e.event_type, EventType::Bounced);
    assert!(e.event_type.is_terminal());
    assert_eq!(e.bounce_category, Some(BounceCategory::BadMailbox));
    assert_eq!(e.smtp.as_ref().unwrap().enhanced.as_deref(), Some("5.1.1"));
    assert_eq!(e.recipient_domain(), "bounce.test");
    round_trips(&e);
}

#[test]
fn dead_letter_v1() {
    let d: DeadLetterV1 = decode(&fixture("dlq.v1.json")).unwrap();
    assert_eq!(d.payload, b"not json");
    assert_eq!(d.offset, 1207);
    round_trips(&d);
}

#[test]
fn unknown_fields_from_newer_producers_are_ignored() {
    let mut value: serde_json::Value = serde_json::from_slice(&fixture("event.v1.json")).unwrap();
    value["added_in_a_later_release"] = serde_json::json!({"x": 1});
    let e: EventV1 = decode(&serde_json::to_vec(&value).unwrap()).unwrap();
    assert_eq!(e.event_type, EventType::Bounced);
}

#[test]
fn garbage_is_a_decode_error_naming_the_schema() {
    let err = decode::<ReadyV1>(b"{\"message_id\": 1}").unwrap_err();
    assert_eq!(err.schema, "sendmill.ready.v2");
}

#[test]
fn every_event_type_has_a_distinct_wire_name() {
    for t in EventType::ALL {
        let json = serde_json::to_value(t).unwrap();
        assert_eq!(json, t.as_str());
    }
}

/// The version 2 golden record split as ingest splits a request's copies: its large parts
/// in a blob record (written at partition 3, offset 42), the record pointing to it.
fn requested_with_shared_parts() -> (RequestedV1, SharedParts, Vec<u8>) {
    let mut record = requested_with_attachments();
    let parts = SharedParts::take_from(&mut record);
    let blob = parts.to_bytes();
    record.shared = Some(SharedParts::reference(&blob, 3, 42));
    (record, parts, blob)
}

#[test]
fn requested_v3_and_its_blob_are_the_frames_this_build_writes_and_reads() {
    let (record, parts, blob) = requested_with_shared_parts();
    let golden = fixture("requested.v3.bin");
    assert_eq!(encode(&record), golden, "the writer's bytes changed");
    assert_eq!(
        fixture("blob.v1.bin"),
        blob,
        "the blob writer's bytes changed"
    );
    assert_eq!(&golden[..4], b"SMQ3");
    assert_eq!(record.schema(), "sendmill.requested.v3");
    // The record is the head alone: neither the template nor an attachment is in it.
    assert!(!golden.windows(18).any(|w| w == b"<p>Hi {{name}}</p>"));
    assert!(blob.ends_with(b"\x89PNG\r\n\x1a\n"));
    let mut read: RequestedV1 = decode(&golden).unwrap();
    assert_eq!(read, record);
    assert!(read.html.is_none() && read.text.is_none());
    assert!(read.attachments.iter().all(|a| a.content.is_empty()));
    assert_eq!(
        read.attachments.len(),
        2,
        "their names and types stay in the record"
    );
    let reference = read.shared.clone().unwrap();
    assert_eq!((reference.partition, reference.offset), (3, 42));
    assert_eq!(reference.len, blob.len() as u64);
    // Filled from its blob, it is the record a version 2 frame carries whole.
    let from_blob = SharedParts::from_bytes(&blob, &reference).unwrap();
    assert_eq!(from_blob, parts);
    from_blob.fill(&mut read).unwrap();
    assert_eq!(read, requested_with_attachments());
    // A release writing version 1 during an upgrade cannot write this record as JSON: an
    // older render would ignore `shared` and send the message empty.
    assert!(record.previous_version().is_none());
}

#[test]
fn a_blob_that_is_not_the_referenced_one_is_refused() {
    let (record, _, blob) = requested_with_shared_parts();
    let reference = record.shared.clone().unwrap();
    for cut in 0..blob.len() {
        assert!(
            SharedParts::from_bytes(&blob[..cut], &reference).is_err(),
            "cut at {cut}"
        );
    }
    let mut changed = blob.clone();
    *changed.last_mut().unwrap() ^= 1;
    assert!(
        SharedParts::from_bytes(&changed, &reference).is_err(),
        "another byte"
    );
    // The frame itself, whatever the hash says: cut anywhere, a count below three
    // sections, a huge count, a byte after the last section.
    assert!(SharedParts::read(&blob).is_ok());
    for cut in 0..blob.len() {
        assert!(
            SharedParts::read(&blob[..cut]).is_err(),
            "frame cut at {cut}"
        );
    }
    for count in [0u32, 2, u32::MAX] {
        let mut broken = blob.clone();
        broken[4..8].copy_from_slice(&count.to_be_bytes());
        assert!(SharedParts::read(&broken).is_err(), "count {count}");
    }
    let mut longer = blob.clone();
    longer.push(0);
    assert!(SharedParts::read(&longer).is_err(), "a byte too many");
    // A record listing another number of attachments than its blob holds is not filled.
    let mut other = record.clone();
    other.attachments.pop();
    let parts = SharedParts::from_bytes(&blob, &reference).unwrap();
    assert!(parts.fill(&mut other).is_err());
    // A version 3 frame cut anywhere, or without `shared`, is a decode error.
    let golden = fixture("requested.v3.bin");
    for cut in 4..golden.len() {
        assert!(
            decode::<RequestedV1>(&golden[..cut]).is_err(),
            "cut at {cut}"
        );
    }
    // `shared` is only ever written in a version 3 frame, whose head carries no parts:
    // anything else would not encode back to itself.
    let json_with_ref = serde_json::to_vec(&record).unwrap();
    assert!(
        decode::<RequestedV1>(&json_with_ref).is_err(),
        "JSON with `shared`"
    );
    let mut carrying = record.clone();
    carrying.html = Some("<p>smuggled</p>".into());
    let head = serde_json::to_vec(&carrying).unwrap();
    let mut frame = b"SMQ3".to_vec();
    frame.extend_from_slice(&(head.len() as u32).to_be_bytes());
    frame.extend_from_slice(&head);
    assert!(
        decode::<RequestedV1>(&frame).is_err(),
        "a v3 head with parts"
    );
    let mut no_ref = record.clone();
    no_ref.shared = None;
    let mut frame = b"SMQ3".to_vec();
    let head = serde_json::to_vec(&no_ref).unwrap();
    frame.extend_from_slice(&(head.len() as u32).to_be_bytes());
    frame.extend_from_slice(&head);
    assert!(decode::<RequestedV1>(&frame).is_err());
}
