//! AdmissionReview v1 on the wire: decoding with typed errors, and response encoding.

use std::{borrow::Cow, collections::HashMap};

use base64::Engine as _;
use kube::core::{
    ApiResource, DynamicObject, DynamicResourceScope, ObjectMeta, Resource, Status, TypeMeta,
    admission::{self, AdmissionResponse},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{AdmissionRequest, Error, Result};

const API_VERSION: &str = admission::META_API_VERSION_V1;
const KIND: &str = admission::META_KIND;

/// The envelope as received. Type fields are optional here so that a missing or wrong
/// `apiVersion`/`kind` is reported as such instead of as a generic shape error.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", bound = "K: DeserializeOwned")]
struct IncomingReview<K: Resource> {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    request: Option<admission::AdmissionRequest<K>>,
}

/// A decoded review whose `object` and `oldObject` were read as `K`, or could not be.
#[derive(Debug)]
pub enum Decoded<K: Resource> {
    /// The review and its objects.
    Request(AdmissionRequest<K>),
    /// The envelope is a valid AdmissionReview, but `object` or `oldObject` is not a `K`: the
    /// request comes without either object, and `error` says what did not fit.
    UnreadableObject {
        request: AdmissionRequest<K>,
        error: serde_json::Error,
    },
}

/// Decodes an AdmissionReview v1 body, with the objects left as untyped JSON.
///
/// `content_type` is the request's `Content-Type` header, if any. Every failure is a typed
/// [`Error`] whose message names the problem; nothing here panics on any input.
pub fn decode_review(content_type: Option<&str>, body: &[u8]) -> Result<AdmissionRequest> {
    match decode_review_as::<DynamicObject>(content_type, body)? {
        Decoded::Request(request) => Ok(request),
        Decoded::UnreadableObject { error, .. } => Err(Error::NotAdmissionReview(error)),
    }
}

/// Decodes an AdmissionReview v1 body in one pass, its `object` and `oldObject` straight into
/// `K` (for example a `Pod`): no intermediate JSON tree, no second conversion.
///
/// Only when that fails is the body read a second time, without the objects, to tell a
/// malformed envelope (an [`Error`]) from objects that are not a `K`
/// ([`Decoded::UnreadableObject`]), which the handler may still answer.
pub fn decode_review_as<K>(content_type: Option<&str>, body: &[u8]) -> Result<Decoded<K>>
where
    K: Resource + DeserializeOwned,
{
    check_content_type(content_type)?;
    // serde accepts a JSON array for a struct, so `[]` would otherwise decode as an empty
    // review; an AdmissionReview is always an object.
    let first = body.iter().find(|byte| !byte.is_ascii_whitespace());
    if first.is_some_and(|byte| *byte != b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(err) => Error::InvalidJson(err),
                Ok(_) => Error::NotAdmissionReview(serde::de::Error::custom(
                    "expected a JSON object with apiVersion, kind and request",
                )),
            },
        );
    }
    let error = match serde_json::from_slice::<IncomingReview<K>>(body) {
        Ok(review) => return envelope(review).map(Decoded::Request),
        Err(err) if err.classify() == serde_json::error::Category::Data => err,
        Err(err) => return Err(Error::InvalidJson(err)),
    };
    // A shape error: in the envelope (not an AdmissionReview) or only in the objects.
    let review =
        serde_json::from_slice::<IncomingReview<AnyObject>>(body).map_err(|err| {
            match err.classify() {
                serde_json::error::Category::Data => Error::NotAdmissionReview(err),
                _ => Error::InvalidJson(err),
            }
        })?;
    let request = envelope(review)?;
    Ok(Decoded::UnreadableObject {
        request: without_objects(request),
        error,
    })
}

fn envelope<K: Resource>(review: IncomingReview<K>) -> Result<AdmissionRequest<K>> {
    let api_version = review.api_version.unwrap_or_default();
    let kind = review.kind.unwrap_or_default();
    if api_version != API_VERSION || kind != KIND {
        return Err(Error::WrongReviewType { api_version, kind });
    }
    let mut request = review.request.ok_or(Error::MissingRequest)?;
    request.types = TypeMeta { api_version, kind };
    Ok(request)
}

/// Every field but the objects, moved into a request of another object type.
fn without_objects<K: Resource>(r: AdmissionRequest<AnyObject>) -> AdmissionRequest<K> {
    AdmissionRequest {
        types: r.types,
        uid: r.uid,
        kind: r.kind,
        resource: r.resource,
        sub_resource: r.sub_resource,
        request_kind: r.request_kind,
        request_resource: r.request_resource,
        request_sub_resource: r.request_sub_resource,
        name: r.name,
        namespace: r.namespace,
        operation: r.operation,
        user_info: r.user_info,
        object: None,
        old_object: None,
        dry_run: r.dry_run,
        options: r.options,
    }
}

/// Any JSON value, skipped unread: the object type of the second, envelope-only pass.
#[derive(Debug, Default)]
struct AnyObject {
    metadata: ObjectMeta,
}

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(AnyObject::default())
    }
}

impl Resource for AnyObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }
    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }
    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }
    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn check_content_type(content_type: Option<&str>) -> Result<()> {
    let Some(content_type) = content_type else {
        return Err(Error::UnsupportedContentType {
            content_type: String::new(),
        });
    };
    // Parameters such as `charset=utf-8` are fine; the media type itself must be JSON.
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(Error::UnsupportedContentType {
            content_type: content_type.to_owned(),
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutgoingReview<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: OutgoingResponse<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OutgoingResponse<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    audit_annotations: &'a HashMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warnings: Option<&'a Vec<String>>,
}

/// Encodes a response as an AdmissionReview v1 body.
///
/// The patch goes out base64-encoded, as the API's `[]byte` field is documented; kube-core's
/// own serializer writes it as an array of numbers, which the API server happens to accept
/// but no other client or reader expects.
pub fn encode_response(response: &AdmissionResponse) -> Result<Vec<u8>> {
    let status_is_empty = response.result.message.is_empty()
        && response.result.reason.is_empty()
        && response.result.code == 0;
    let review = OutgoingReview {
        api_version: API_VERSION,
        kind: KIND,
        response: OutgoingResponse {
            uid: &response.uid,
            allowed: response.allowed,
            status: (!(response.allowed && status_is_empty)).then_some(&response.result),
            patch: response
                .patch
                .as_ref()
                .map(|patch| base64::engine::general_purpose::STANDARD.encode(patch)),
            patch_type: response.patch.as_ref().map(|_| "JSONPatch"),
            audit_annotations: &response.audit_annotations,
            warnings: response.warnings.as_ref().filter(|w| !w.is_empty()),
        },
    };
    serde_json::to_vec(&review).map_err(Error::EncodeResponse)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview",
        "request":{"uid":"u-1","kind":{"group":"","version":"v1","kind":"Pod"},
        "resource":{"group":"","version":"v1","resource":"pods"},"namespace":"dev",
        "operation":"CREATE","userInfo":{},"object":{"apiVersion":"v1","kind":"Pod",
        "metadata":{"name":"p"}},"dryRun":true}}"#;

    #[test]
    fn decodes_a_minimal_review() {
        let req = decode_review(Some("application/json; charset=utf-8"), MINIMAL.as_bytes())
            .expect("valid review");
        assert_eq!(req.uid, "u-1");
        assert_eq!(req.kind.kind, "Pod");
        assert_eq!(req.namespace.as_deref(), Some("dev"));
        assert!(req.dry_run);
        assert_eq!(req.types.api_version, API_VERSION);
    }

    #[test]
    fn classifies_each_malformation() {
        let json = Some("application/json");
        let cases: Vec<(Option<&str>, &str, &str)> = vec![
            (None, MINIMAL, "unsupported_content_type"),
            (Some("text/plain"), MINIMAL, "unsupported_content_type"),
            (
                Some("application/jsonx"),
                MINIMAL,
                "unsupported_content_type",
            ),
            (json, "{not json", "invalid_json"),
            (json, "", "invalid_json"),
            (json, "[1,2]", "not_admission_review"),
            (json, " []", "not_admission_review"),
            (json, "null", "not_admission_review"),
            (json, "[1,", "invalid_json"),
            (
                json,
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":5}}"#,
                "not_admission_review",
            ),
            (
                json,
                r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#,
                "wrong_review_type",
            ),
            (
                json,
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"Pod"}"#,
                "wrong_review_type",
            ),
            (json, r#"{"request":null}"#, "wrong_review_type"),
            (
                json,
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
                "missing_request",
            ),
        ];
        for (content_type, body, expected) in cases {
            let err = decode_review(content_type, body.as_bytes()).expect_err(body);
            assert_eq!(err.metric_label(), expected, "body {body:?}: {err}");
            assert!(err.status_code().is_client_error(), "{err}");
        }
    }

    #[test]
    fn decodes_objects_straight_into_the_handlers_type() {
        use k8s_openapi::api::core::v1::Pod;
        let json = Some("application/json");
        let typed = |body: &str| decode_review_as::<Pod>(json, body.as_bytes());
        match typed(MINIMAL) {
            Ok(Decoded::Request(request)) => {
                let pod = request.object.expect("the pod");
                assert_eq!(pod.metadata.name.as_deref(), Some("p"));
                assert_eq!(request.types.kind, KIND);
            }
            other => panic!("expected a typed request, got {other:?}"),
        }
        // The object is not a Pod: the request comes without it, with the error.
        let bad_pod = MINIMAL.replace(r#""metadata":{"name":"p"}"#, r#""spec":{"containers":7}"#);
        match typed(&bad_pod) {
            Ok(Decoded::UnreadableObject { request, error }) => {
                assert_eq!(request.uid, "u-1");
                assert!(request.object.is_none() && request.dry_run);
                assert!(
                    error.to_string().contains("invalid type: integer `7`"),
                    "{error}"
                );
            }
            other => panic!("expected an unreadable object, got {other:?}"),
        }
        // The envelope still decides first: wrong type, malformed request, broken JSON.
        let cases = [
            (
                bad_pod.replace("admission.k8s.io/v1", "v1"),
                "wrong_review_type",
            ),
            (
                bad_pod.replace(r#""uid":"u-1""#, r#""uid":1"#),
                "not_admission_review",
            ),
            (format!("{}}}", bad_pod.trim_end()), "invalid_json"),
            (
                bad_pod.replace(r#""request":"#, r#""other":"#),
                "missing_request",
            ),
        ];
        for (body, expected) in cases {
            let err = typed(&body).expect_err(&body);
            assert_eq!(err.metric_label(), expected, "{body}: {err}");
        }
        // The untyped decode refuses an object that is not even an object's shape.
        let err = decode_review(
            json,
            bad_pod
                .replace(r#""spec":{"containers":7}"#, r#""metadata":3"#)
                .as_bytes(),
        )
        .expect_err("metadata must be an object");
        assert_eq!(err.metric_label(), "not_admission_review");
    }

    #[test]
    fn encodes_patch_as_base64_and_omits_empty_status() {
        let req = decode_review(Some("application/json"), MINIMAL.as_bytes()).expect("valid");
        let patch: json_patch::Patch =
            serde_json::from_str(r#"[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]"#)
                .expect("patch");
        let response = AdmissionResponse::from(&req)
            .with_patch(patch)
            .expect("serializable");
        let body: serde_json::Value =
            serde_json::from_slice(&encode_response(&response).expect("encodes")).expect("json");
        assert_eq!(body["apiVersion"], API_VERSION);
        assert_eq!(body["kind"], KIND);
        assert_eq!(body["response"]["uid"], "u-1");
        assert_eq!(body["response"]["allowed"], true);
        assert_eq!(body["response"]["patchType"], "JSONPatch");
        assert!(body["response"].get("status").is_none());
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(body["response"]["patch"].as_str().expect("string"))
            .expect("base64");
        let decoded: serde_json::Value = serde_json::from_slice(&decoded).expect("patch json");
        assert_eq!(decoded[0]["op"], "add");
    }

    #[test]
    fn encodes_denial_with_message_and_warnings() {
        let req = decode_review(Some("application/json"), MINIMAL.as_bytes()).expect("valid");
        let mut response = AdmissionResponse::from(&req).deny("no, because");
        response.warnings = Some(vec!["careful".into()]);
        let body: serde_json::Value =
            serde_json::from_slice(&encode_response(&response).expect("encodes")).expect("json");
        assert_eq!(body["response"]["allowed"], false);
        assert_eq!(body["response"]["status"]["message"], "no, because");
        assert_eq!(body["response"]["warnings"][0], "careful");
        assert!(body["response"].get("patch").is_none());
    }
}
