//! Property tests: no input makes decoding panic, and every rejection is a client error.

mod common;

use std::sync::OnceLock;

use common::{fixture, review};
use inplace_upgrade_webhook::{Decoded, decode_review, decode_review_as};
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use serde_json::Value;

fn valid_review() -> Vec<u8> {
    static REVIEW: OnceLock<Vec<u8>> = OnceLock::new();
    REVIEW
        .get_or_init(|| {
            let pod = fixture("native-sidecar.yaml.injected", "Pod");
            serde_json::to_vec(&review("uid-fuzz", "CREATE", &pod, None, false)).expect("json")
        })
        .clone()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-zA-Z0-9/.:-]{0,12}".prop_map(Value::String),
        prop_oneof![
            Just("admission.k8s.io/v1"),
            Just("AdmissionReview"),
            Just("CREATE")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("apiVersion".to_owned()),
                    Just("kind".to_owned()),
                    Just("request".to_owned()),
                    Just("uid".to_owned()),
                    Just("object".to_owned()),
                    Just("operation".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..5
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Err(err) = decode_review(Some("application/json"), &bytes) {
            prop_assert!(err.status_code().is_client_error(), "{err}");
        }
    }

    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        let bytes = serde_json::to_vec(&value).expect("json");
        if let Err(err) = decode_review(Some("application/json"), &bytes) {
            prop_assert!(err.status_code().is_client_error(), "{err}");
        }
    }

    #[test]
    fn damaged_reviews_never_panic(cut in 0usize..4096, flips in prop::collection::vec((0usize..4096, any::<u8>()), 0..4)) {
        let mut bytes = valid_review();
        for (at, byte) in flips {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
        bytes.truncate(cut.min(bytes.len()));
        if let Err(err) = decode_review(Some("application/json"), &bytes) {
            prop_assert!(err.status_code().is_client_error(), "{err}");
        }
        typed_agrees(&bytes)?;
    }

    #[test]
    fn arbitrary_json_decodes_alike_typed(value in json_value()) {
        typed_agrees(&serde_json::to_vec(&value).expect("json"))?;
    }
}

/// The typed decode (objects straight into `Pod`) never panics, rejects only with client
/// errors, and accepts an envelope exactly when the untyped decode does or its only problem
/// is an object that is not a Pod.
fn typed_agrees(bytes: &[u8]) -> Result<(), TestCaseError> {
    let untyped = decode_review(Some("application/json"), bytes);
    match decode_review_as::<Pod>(Some("application/json"), bytes) {
        Err(err) => {
            prop_assert!(err.status_code().is_client_error(), "{err}");
            prop_assert!(untyped.is_err(), "typed refused what untyped took: {err}");
        }
        Ok(Decoded::Request(request)) => {
            if let Ok(untyped) = &untyped {
                prop_assert_eq!(&request.uid, &untyped.uid);
            }
        }
        Ok(Decoded::UnreadableObject { request, .. }) => {
            prop_assert!(request.object.is_none() && request.old_object.is_none());
        }
    }
    Ok(())
}

#[test]
fn the_undamaged_review_decodes() {
    let request = decode_review(Some("application/json"), &valid_review()).expect("valid");
    assert_eq!(request.uid, "uid-fuzz");
}
