//! Signed records as they arrive from the network (gossip, catch-up, `POST /v1/receipts` and
//! `/v1/feedback`, invocations): every decoder must refuse bad bytes with an error, never panic,
//! and a record that verifies must keep exactly the bytes it was signed as.
#![no_main]

use agora_registry::{
    ReceiptMessage, SignedFeedback, SignedManifest, SignedReceipt, SignedRequest,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(manifest) = SignedManifest::from_bytes(bytes) {
        assert_eq!(manifest.as_bytes(), bytes);
        let _ = manifest.body().component.hash;
    }
    if let Ok(receipt) = SignedReceipt::from_bytes(bytes) {
        assert_eq!(receipt.as_bytes(), bytes);
    }
    if let Ok(request) = SignedRequest::from_bytes(bytes) {
        assert_eq!(request.as_bytes(), bytes);
    }
    if let Ok(feedback) = SignedFeedback::from_bytes(bytes) {
        assert_eq!(feedback.as_bytes(), bytes);
    }
    if let Ok(message) = ReceiptMessage::parse(bytes) {
        if let Ok((receipt, request)) = message.verify() {
            let again = ReceiptMessage::encode(&receipt, request.as_ref());
            let reparsed = ReceiptMessage::parse(&again).expect("an encoded message parses");
            assert_eq!(reparsed.receipt, receipt.as_bytes());
        }
    }
});
