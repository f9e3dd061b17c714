//! Bytes off a topic, as the binary frames' decoders see them: a `requested` record
//! (version 1 JSON, the v2 frame with its sections, the v3 head-only frame), a `ready`
//! record, and a blob of shared parts. A damaged or hostile record must be a decode
//! error (the record goes to the DLQ), never a panic or an allocation its length cannot
//! back; and whatever decodes must encode and decode back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sendmill_wire::{decode, encode, ReadyV1, RequestedV1, SharedParts};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(record) = decode::<RequestedV1>(bytes) {
        let again: RequestedV1 = decode(&encode(&record)).expect("what decoded re-encodes");
        assert_eq!(again, record);
    }
    if let Ok(record) = decode::<ReadyV1>(bytes) {
        let again: ReadyV1 = decode(&encode(&record)).expect("what decoded re-encodes");
        assert_eq!(again, record);
    }
    if let Ok(parts) = SharedParts::read(bytes) {
        let again = SharedParts::read(&parts.to_bytes()).expect("what decoded re-encodes");
        assert_eq!(again, parts);
    }
});
