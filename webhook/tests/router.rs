//! The admission router driven without a socket, on AdmissionReviews built from real
//! Istio-injected workloads.

mod common;

use std::sync::Arc;

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use base64::Engine as _;
use common::{Log, fixture, fixture_objects, pod_from_template, recording_handler, review};
use http_body_util::BodyExt;
use inplace_upgrade_webhook::{
    AdminRouter, AdmissionRouter, CertificateStore, DEFAULT_BODY_LIMIT, WebhookMetrics,
    certs::{self, SubjectAltNames},
};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

struct Harness {
    router: Router,
    admin: Router,
    log: Log,
    store: Arc<CertificateStore>,
}

fn harness() -> Harness {
    let mut registry = Registry::default();
    let metrics = WebhookMetrics::new(&mut registry);
    let (log, handler) = recording_handler();
    let router = AdmissionRouter::new(metrics.clone())
        .handler("/mutate-pods", handler)
        .handler(
            "/validate-workloads",
            |req: &inplace_upgrade_webhook::AdmissionRequest| {
                inplace_upgrade_webhook::AdmissionResponse::from(req)
            },
        )
        .into_router();
    let store = CertificateStore::new(metrics);
    let ready = store.clone();
    let admin = AdminRouter::new(Arc::new(registry), move || ready.is_loaded()).into_router();
    Harness {
        router,
        admin,
        log,
        store,
    }
}

async fn post(
    router: &Router,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(Method::POST).uri(path);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::from(body)).expect("request"))
        .await
        .expect("router is infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|err| {
        panic!(
            "response is not JSON ({err}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

async fn post_review(router: &Router, path: &str, review: &Value) -> (StatusCode, Value) {
    post(
        router,
        path,
        Some("application/json"),
        serde_json::to_vec(review).expect("json"),
    )
    .await
}

async fn get(router: &Router, path: &str) -> (StatusCode, String) {
    let response = router
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("router is infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn decoded_patch(response: &Value) -> Value {
    assert_eq!(response["response"]["patchType"], "JSONPatch", "{response}");
    let encoded = response["response"]["patch"]
        .as_str()
        .expect("patch is a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("patch is base64");
    serde_json::from_slice(&bytes).expect("patch is JSON")
}

#[tokio::test]
async fn istio_native_sidecar_pod_create_reaches_handler_and_gets_patch() {
    let h = harness();
    let mut pod = fixture("native-sidecar.yaml.injected", "Pod");
    pod["metadata"]["namespace"] = json!("dev");
    let (status, body) = post_review(
        &h.router,
        "/mutate-pods",
        &review("uid-native-1", "CREATE", &pod, None, false),
    )
    .await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    assert_eq!(body["response"]["uid"], "uid-native-1");
    assert_eq!(body["response"]["allowed"], true);
    let patch = decoded_patch(&body);
    assert_eq!(patch[0]["path"], "/metadata/annotations/reviewed-by-test");
    assert_eq!(patch[0]["value"], "uid-native-1");

    let log = h.log.lock().expect("log");
    let seen = &log[0];
    assert_eq!(seen.uid, "uid-native-1");
    assert_eq!(seen.kind, "Pod");
    assert_eq!(seen.namespace.as_deref(), Some("dev"));
    assert_eq!(seen.name, "hello");
    assert_eq!(seen.operation, "Create");
    assert!(!seen.dry_run);
    // Istio's native sidecar and the fixture's second native sidecar arrive intact.
    assert_eq!(seen.containers, vec!["hello"]);
    assert_eq!(
        seen.init_containers,
        vec!["istio-init", "istio-proxy", "other-sidecar"]
    );
}

#[tokio::test]
async fn istio_regular_sidecar_pod_create_reaches_handler() {
    let h = harness();
    let pod = fixture("native-sidecar-opt-out.yaml.injected", "Pod");
    let (status, body) = post_review(
        &h.router,
        "/mutate-pods",
        &review("uid-regular", "CREATE", &pod, None, false),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["response"]["uid"], "uid-regular");
    let log = h.log.lock().expect("log");
    assert!(
        log[0].containers.contains(&"istio-proxy".to_owned()),
        "{:?}",
        log[0]
    );
    assert_eq!(log[0].init_containers, vec!["istio-init"]);
}

#[tokio::test]
async fn every_fixture_object_and_its_pods_reach_the_handler() {
    let h = harness();
    let objects = fixture_objects();
    let mut expected = Vec::new();
    for (index, (file, object)) in objects.iter().enumerate() {
        let kind = object["kind"].as_str().expect("kind").to_owned();
        let mut reviews = vec![(
            review(
                &format!("{file}-{index}"),
                "UPDATE",
                object,
                Some(object),
                false,
            ),
            kind.clone(),
        )];
        if object["spec"]["template"].is_object() {
            let pod = pod_from_template(object, "team-a");
            reviews.push((
                review(&format!("{file}-{index}-pod"), "CREATE", &pod, None, false),
                "Pod".into(),
            ));
        }
        for (review, kind) in reviews {
            let (status, body) = post_review(&h.router, "/mutate-pods", &review).await;
            assert_eq!(status, StatusCode::OK, "{file} {kind}: {body}");
            assert_eq!(
                body["response"]["uid"], review["request"]["uid"],
                "{file} {kind}"
            );
            expected.push((
                review["request"]["uid"].as_str().expect("uid").to_owned(),
                kind,
            ));
        }
    }
    let log = h.log.lock().expect("log");
    let seen: Vec<(String, String)> = log
        .iter()
        .map(|s| (s.uid.clone(), s.kind.clone()))
        .collect();
    assert_eq!(seen, expected);
    for kind in ["Deployment", "StatefulSet", "DaemonSet", "Pod", "Service"] {
        assert!(
            seen.iter().any(|(_, k)| k == kind),
            "no {kind} among the fixtures"
        );
    }
    // Pods built from templates keep the sidecar layout of their workload.
    assert!(
        log.iter()
            .filter(|s| s.kind == "Pod")
            .all(|s| !s.containers.is_empty())
    );
}

#[tokio::test]
async fn dry_run_reaches_the_handler() {
    let h = harness();
    let pod = pod_from_template(&fixture("frontend.yaml.injected", "Deployment"), "dev");
    let (status, body) = post_review(
        &h.router,
        "/mutate-pods",
        &review("uid-dry", "CREATE", &pod, None, true),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["response"]["warnings"][0], "dry run: nothing recorded");
    assert!(h.log.lock().expect("log")[0].dry_run);
}

#[tokio::test]
async fn denial_carries_the_handlers_message() {
    let h = harness();
    let mut pod = fixture("native-sidecar.yaml.injected", "Pod");
    pod["metadata"]["name"] = json!("deny-me");
    let (status, body) = post_review(
        &h.router,
        "/mutate-pods",
        &review("uid-deny", "CREATE", &pod, None, false),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a denial is a successful review: {body}"
    );
    assert_eq!(body["response"]["allowed"], false);
    assert_eq!(body["response"]["uid"], "uid-deny");
    assert_eq!(
        body["response"]["status"]["message"],
        "deny-me is not allowed"
    );
    assert!(body["response"].get("patch").is_none());
}

type MalformedCase = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    StatusCode,
    &'static str,
);

#[tokio::test]
async fn malformed_reviews_get_a_client_error_naming_the_problem() {
    let h = harness();
    let valid = serde_json::to_vec(&review(
        "uid-m",
        "CREATE",
        &fixture("native-sidecar.yaml.injected", "Pod"),
        None,
        false,
    ))
    .expect("json");
    // (what, Content-Type, body, expected status, text the message must contain)
    let cases: Vec<MalformedCase> = vec![
        ("no content type", None, valid.clone(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "Content-Type"),
        ("wrong content type", Some("application/yaml"), valid.clone(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "application/yaml"),
        ("invalid JSON", Some("application/json"), b"{\"apiVersion\": ".to_vec(), StatusCode::BAD_REQUEST, "not valid JSON"),
        ("not UTF-8", Some("application/json"), vec![0xff, 0xfe, 0x00], StatusCode::BAD_REQUEST, "not valid JSON"),
        ("empty body", Some("application/json"), Vec::new(), StatusCode::BAD_REQUEST, "not valid JSON"),
        ("a JSON array", Some("application/json"), b"[]".to_vec(), StatusCode::BAD_REQUEST, "not an AdmissionReview"),
        ("a Pod instead of a review", Some("application/json"), serde_json::to_vec(&fixture("native-sidecar.yaml.injected", "Pod")).expect("json"), StatusCode::BAD_REQUEST, "kind \"Pod\""),
        ("v1beta1 review", Some("application/json"), serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": null})).expect("json"), StatusCode::BAD_REQUEST, "admissionReviewVersions"),
        ("no request", Some("application/json"), br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(), StatusCode::BAD_REQUEST, "no request"),
        ("request of the wrong shape", Some("application/json"), br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","operation":"EXPLODE"}}"#.to_vec(), StatusCode::BAD_REQUEST, "not an AdmissionReview"),
    ];
    for (what, content_type, body, expected_status, expected_text) in cases {
        let (status, answer) = post(&h.router, "/mutate-pods", content_type, body).await;
        assert_eq!(status, expected_status, "{what}: {answer}");
        let message = answer["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            message.contains(expected_text),
            "{what}: {message:?} should mention {expected_text:?}"
        );
        assert_eq!(answer["response"]["allowed"], false, "{what}");
        assert_eq!(
            answer["response"]["status"]["code"],
            expected_status.as_u16(),
            "{what}"
        );
    }
    assert!(
        h.log.lock().expect("log").is_empty(),
        "no malformed review may reach the handler"
    );
}

fn huge_pod(annotation_bytes: usize) -> Value {
    let mut pod = fixture("native-sidecar.yaml.injected", "Pod");
    pod["metadata"]["annotations"]["example.com/huge"] = json!("x".repeat(annotation_bytes));
    pod
}

#[tokio::test]
async fn a_review_of_six_and_a_half_mebibytes_is_accepted() {
    let h = harness();
    // An UPDATE with old and new objects of ~3.25 MiB each: what the API server can send.
    let pod = huge_pod(3_250 * 1024);
    let body =
        serde_json::to_vec(&review("uid-big", "UPDATE", &pod, Some(&pod), false)).expect("json");
    assert!(
        body.len() > 6_500 * 1024 && body.len() < DEFAULT_BODY_LIMIT,
        "{}",
        body.len()
    );
    let (status, answer) = post(&h.router, "/mutate-pods", Some("application/json"), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["response"]["uid"], "uid-big");
    assert!(h.log.lock().expect("log")[0].object_bytes > 3_250 * 1024);
}

#[tokio::test]
async fn a_body_over_eight_mebibytes_is_refused_with_413() {
    let h = harness();
    let pod = huge_pod(8_300 * 1024);
    let body =
        serde_json::to_vec(&review("uid-too-big", "CREATE", &pod, None, false)).expect("json");
    assert!(body.len() > DEFAULT_BODY_LIMIT);

    // Declared length: refused before reading.
    let request = Request::post("/mutate-pods")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.clone()))
        .expect("request");
    let response = h.router.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // No declared length (chunked): refused while reading.
    let (status, answer) = post(&h.router, "/mutate-pods", Some("application/json"), body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("8388608-byte limit"), "{message}");
    assert!(h.log.lock().expect("log").is_empty());
}

#[tokio::test]
async fn a_panicking_handler_is_a_500_not_a_dropped_connection() {
    let h = harness();
    let mut pod = fixture("native-sidecar.yaml.injected", "Pod");
    pod["metadata"]["name"] = json!("panic");
    let (status, body) = post_review(
        &h.router,
        "/mutate-pods",
        &review("uid-panic", "CREATE", &pod, None, false),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("uid-panic"),
        "{body}"
    );
    // The router keeps serving.
    pod["metadata"]["name"] = json!("after-panic");
    let (status, _) = post_review(
        &h.router,
        "/mutate-pods",
        &review("uid-after", "CREATE", &pod, None, false),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn several_routes_and_unknown_paths() {
    let h = harness();
    let deployment = fixture("hello-multi.yaml.injected", "Deployment");
    let (status, body) = post_review(
        &h.router,
        "/validate-workloads",
        &review("uid-v", "UPDATE", &deployment, Some(&deployment), false),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["response"].get("patch").is_none());
    assert!(
        h.log.lock().expect("log").is_empty(),
        "went to the other handler"
    );

    let (status, body) = post_review(
        &h.router,
        "/mutate-nothing",
        &review("uid-x", "UPDATE", &deployment, None, false),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let message = body["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("/mutate-nothing")
            && message.contains("/mutate-pods, /validate-workloads"),
        "{message}"
    );

    let response = h
        .router
        .clone()
        .oneshot(
            Request::get("/mutate-pods")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn metrics_count_requests_and_observe_latency() {
    let h = harness();
    let (_, before) = get(&h.admin, "/metrics").await;
    assert!(
        !before.contains("webhook_admission_duration_seconds_count{"),
        "{before}"
    );

    let pod = fixture("native-sidecar.yaml.injected", "Pod");
    post_review(
        &h.router,
        "/mutate-pods",
        &review("uid-metrics", "CREATE", &pod, None, false),
    )
    .await;
    post(
        &h.router,
        "/mutate-pods",
        Some("application/json"),
        b"{".to_vec(),
    )
    .await;

    let (status, text) = get(&h.admin, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("# TYPE webhook_admission_duration_seconds histogram"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"webhook_admission_duration_seconds_count{route="/mutate-pods",operation="CREATE"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"webhook_admission_duration_seconds_bucket{le="0.001",route="/mutate-pods",operation="CREATE"}"#), "{text}");
    assert!(text.contains(r#"webhook_admission_requests_total{route="/mutate-pods",operation="CREATE",result="allowed"} 1"#), "{text}");
    assert!(text.contains(r#"webhook_admission_requests_total{route="/mutate-pods",operation="unknown",result="error"} 1"#), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

#[tokio::test]
async fn readyz_follows_the_certificate_and_healthz_is_always_up() {
    let h = harness();
    assert_eq!(get(&h.admin, "/healthz").await.0, StatusCode::OK);
    assert_eq!(
        get(&h.admin, "/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let ca = certs::generate_ca("test CA", std::time::Duration::from_secs(3600)).expect("ca");
    let serving = certs::generate_serving_certificate(
        &ca,
        "webhook",
        &SubjectAltNames::for_service("webhook", "ns"),
        std::time::Duration::from_secs(600),
    )
    .expect("serving");
    h.store
        .load_pem(serving.cert_pem.as_bytes(), serving.key_pem.as_bytes())
        .expect("loads");
    assert_eq!(get(&h.admin, "/readyz").await.0, StatusCode::OK);
    let (_, text) = get(&h.admin, "/metrics").await;
    let not_after = certs::inspect_pem(&serving.cert_pem)
        .expect("inspect")
        .not_after;
    let seconds = not_after
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after epoch")
        .as_secs();
    assert!(
        text.contains(&format!("webhook_certificate_not_after_seconds {seconds}")),
        "{text}"
    );
    assert!(
        text.contains(r#"webhook_certificate_reloads_total{result="success"} 1"#),
        "{text}"
    );
}
