//! The evidence catch-up protocol's decoders (`agora_host::sync`): a peer's question and a
//! peer's answer, then each framed record as the asking host would read it.
#![no_main]

use agora_host::sync::Version;
use agora_registry::{ReceiptMessage, SignedFeedback, SignedManifest, SignedValidation};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    for version in [Version::V1, Version::V2] {
        if let Some((_, limit)) = agora_host::sync::parse_ask(version, bytes) {
            assert_eq!(bytes.len(), version.ask_len());
            let _ = limit;
        }
        if let Ok((_, frames)) = agora_host::sync::parse_answer(version, bytes) {
            let framed: usize = frames.iter().map(|(_, record)| 5 + record.len()).sum();
            let cursor = version.ask_len() - 8;
            assert_eq!(cursor + framed, bytes.len(), "every byte belongs to a frame");
            for (kind, record) in frames {
                match kind {
                    1 => drop(SignedManifest::from_bytes(&record)),
                    2 => drop(ReceiptMessage::parse(&record).and_then(|m| m.verify())),
                    3 => drop(SignedFeedback::from_bytes(&record)),
                    4 => drop(SignedValidation::from_bytes(&record)),
                    _ => {}
                }
            }
        }
    }
});
