//! AdmissionReview decoding (the webhook transport's `decode_review`): no panic on any body
//! and content type; only a JSON content type is accepted; a decoded review answers with a
//! response that encodes to a JSON AdmissionReview carrying the same uid.
//!
//! Input: the first byte picks the content type, the rest is the body.
#![no_main]

use inplace_upgrade_webhook::{AdmissionResponse, decode_review, encode_response};
use libfuzzer_sys::fuzz_target;

const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("application/json; charset=utf-8"),
    Some("APPLICATION/JSON"),
    Some("application/yaml"),
    Some("text/plain"),
    None,
];

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(*selector) % CONTENT_TYPES.len()];
    let decoded = decode_review(content_type, body);
    let json_type = content_type.is_some_and(|c| {
        c.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .eq_ignore_ascii_case("application/json")
    });
    if !json_type {
        assert!(decoded.is_err(), "accepted content type {content_type:?}");
        return;
    }
    match decoded {
        Ok(request) => {
            assert_eq!(request.types.kind, "AdmissionReview");
            assert_eq!(request.types.api_version, "admission.k8s.io/v1");
            let response = AdmissionResponse::from(&request);
            let bytes = encode_response(&response).expect("a response always encodes");
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).expect("an encoded response is JSON");
            assert_eq!(
                value["response"]["uid"].as_str(),
                Some(request.uid.as_str())
            );
            assert_eq!(value["kind"], "AdmissionReview");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
