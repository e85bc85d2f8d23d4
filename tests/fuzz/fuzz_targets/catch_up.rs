//! The evidence catch-up protocol's decoders (`agora_host::sync`): a peer's question and a
//! peer's answer, then each framed record as the asking host would read it.
#![no_main]

use agora_registry::{ReceiptMessage, SignedFeedback, SignedManifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Some((_, limit)) = agora_host::sync::parse_ask(bytes) {
        assert_eq!(bytes.len(), 32);
        let _ = limit;
    }
    if let Ok((_, frames)) = agora_host::sync::parse_answer(bytes) {
        let framed: usize = frames.iter().map(|(_, record)| 5 + record.len()).sum();
        assert_eq!(24 + framed, bytes.len(), "every byte belongs to a frame");
        for (kind, record) in frames {
            match kind {
                1 => drop(SignedManifest::from_bytes(&record)),
                2 => drop(ReceiptMessage::parse(&record).and_then(|m| m.verify())),
                3 => drop(SignedFeedback::from_bytes(&record)),
                _ => {}
            }
        }
    }
});
