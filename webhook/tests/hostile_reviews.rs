//! Hostile AdmissionReviews (issue #8 part 3) sent to OUR handlers through the real router
//! (`inplace_upgrade::admission::router`: the pod mutation and the workload
//! validation over an in-memory cluster view): wrong kinds, missing fields, huge, deeply
//! nested, invalid UTF-8, duplicate keys, numbers where strings go, DELETE/CONNECT, dryRun
//! and malformed annotations. Each row pins the HTTP status, `allowed`, a fragment of the
//! message (or warning) and whether a patch comes back; any change of answer fails the table.

mod common;

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use base64::Engine as _;
use common::{fixture, pod_from_template, review};
use http_body_util::BodyExt;
use inplace_upgrade::{
    TARGETS_ANNOTATION,
    admission::{self, ClusterView, MUTATE_PODS_PATH, Settings, VALIDATE_WORKLOADS_PATH},
    policy::InPlaceUpgradePolicy,
    workload::{WorkloadKey, WorkloadView},
};
use inplace_upgrade_webhook::{DEFAULT_BODY_LIMIT, WebhookMetrics};
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Namespace};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower::ServiceExt;

const NS: &str = "dev";
const GOOD_RS: &str = "hello-rs";
const BROKEN_RS: &str = "broken-rs";
const PROXY_NEW: &str = "registry.istio.io/testing/proxyv2:1.99.0";
const MUTATE: &str = MUTATE_PODS_PATH;
const VALIDATE: &str = VALIDATE_WORKLOADS_PATH;

/// One Namespace, two standalone ReplicaSets (one asks for a new `istio-proxy`, one carries a
/// malformed annotation), one policy for the namespace, a live controller.
struct View {
    namespace: Arc<Namespace>,
    replica_sets: Vec<Arc<ReplicaSet>>,
    policies: Vec<InPlaceUpgradePolicy>,
}

impl ClusterView for View {
    fn synced(&self) -> bool {
        true
    }
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        (name == NS).then(|| self.namespace.clone())
    }
    fn replica_set(&self, namespace: &str, name: &str) -> Option<Arc<ReplicaSet>> {
        self.replica_sets
            .iter()
            .find(|rs| namespace == NS && rs.metadata.name.as_deref() == Some(name))
            .cloned()
    }
    fn workload(&self, key: &WorkloadKey) -> Option<WorkloadView> {
        self.workloads_in(&key.namespace)
            .into_iter()
            .find(|w| &w.key == key)
    }
    fn workloads_in(&self, namespace: &str) -> Vec<WorkloadView> {
        if namespace != NS {
            return Vec::new();
        }
        self.replica_sets
            .iter()
            .map(|rs| WorkloadView::from_replica_set(rs))
            .collect()
    }
    fn policies(&self) -> Vec<InPlaceUpgradePolicy> {
        self.policies.clone()
    }
    fn controller_alive(&self) -> bool {
        true
    }
}

fn replica_set(name: &str, annotation: &str, pod: &Value) -> Arc<ReplicaSet> {
    let labels = pod["metadata"]["labels"].clone();
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": NS, "uid": format!("uid-{name}"),
                         "annotations": {TARGETS_ANNOTATION: annotation}},
            "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": pod["spec"]}},
        }))
        .expect("a ReplicaSet"),
    )
}

/// The fixture's Istio-injected pod as the ReplicaSet `owner` would create it.
fn pod_of(owner: &str) -> Value {
    let mut pod = fixture("native-sidecar.yaml.injected", "Pod");
    let metadata = pod["metadata"].as_object_mut().expect("metadata");
    metadata.remove("name");
    metadata.insert("generateName".into(), json!(format!("{owner}-")));
    metadata.insert("namespace".into(), json!(NS));
    metadata.insert(
        "ownerReferences".into(),
        json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                "uid": format!("uid-{owner}"), "controller": true}]),
    );
    pod
}

fn router() -> Router {
    let pod = pod_of(GOOD_RS);
    let view = View {
        namespace: Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": NS, "labels": {"kubernetes.io/metadata.name": NS}}
            }))
            .expect("a Namespace"),
        ),
        replica_sets: vec![
            replica_set(GOOD_RS, &format!("istio-proxy={PROXY_NEW}"), &pod),
            replica_set(BROKEN_RS, "istio-proxy=,=", &pod),
        ],
        policies: vec![
            serde_json::from_value(json!({
                "apiVersion": "inplace-upgrade.io/v1alpha1", "kind": "InPlaceUpgradePolicy",
                "metadata": {"name": "mesh"},
                "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}},
            }))
            .expect("a policy"),
        ],
    };
    let settings = Settings {
        controller_namespace: "inplace-upgrade-system".into(),
    };
    admission::router(
        Arc::new(view),
        settings,
        WebhookMetrics::new(&mut Registry::default()),
    )
}

/// The Deployment of a fixture in namespace `dev`, with `annotation` as its target (if any).
fn deployment(annotation: Option<&str>) -> Value {
    let mut deployment = fixture("hello-multi.yaml.injected", "Deployment");
    deployment["metadata"]["namespace"] = json!(NS);
    if let Some(annotation) = annotation {
        deployment["metadata"]["annotations"] = json!({TARGETS_ANNOTATION: annotation});
    }
    deployment
}

/// A review of `operation` without `object` (DELETE, or a broken UPDATE), `old` as oldObject.
fn without_object(uid: &str, operation: &str, old: &Value) -> Vec<u8> {
    let mut review = review(uid, operation, old, Some(old), false);
    review["request"]["object"] = Value::Null;
    bytes(&review)
}

fn bytes(review: &Value) -> Vec<u8> {
    serde_json::to_vec(review).expect("json")
}

/// A review body with `from` (which must occur exactly once) replaced by `to`: for what
/// `serde_json::Value` cannot hold (duplicate keys, invalid UTF-8, raw nesting).
fn splice(body: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    let at: Vec<usize> = body
        .windows(from.len())
        .enumerate()
        .filter(|(_, w)| *w == from)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        at.len(),
        1,
        "{:?} must occur once",
        String::from_utf8_lossy(from)
    );
    let mut out = body[..at[0]].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&body[at[0] + from.len()..]);
    out
}

/// `depth` nested arrays.
fn nested(depth: usize) -> Vec<u8> {
    let mut out = vec![b'['; depth];
    out.extend(std::iter::repeat_n(b']', depth));
    out
}

/// A pod of ~7.9 MiB: 10,000 containers beside the fixture's, each with a long image name.
fn huge_pod() -> Value {
    let mut pod = pod_of(GOOD_RS);
    let containers = pod["spec"]["containers"]
        .as_array_mut()
        .expect("containers");
    let padding = "p".repeat(760);
    for i in 0..10_000 {
        containers
            .push(json!({"name": format!("c{i}"), "image": format!("example.com/{padding}:{i}")}));
    }
    pod
}

#[derive(Debug)]
struct Expected {
    status: StatusCode,
    /// `response.allowed`.
    allowed: bool,
    /// In the status message (denials, errors) or in the warnings (allowed answers); empty
    /// means: no message and no warning at all.
    says: &'static str,
    patched: Patched,
}

/// What the answer's JSON patch does.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Patched {
    No,
    /// Only adds our readiness gate.
    Gate,
    /// Sets a container image (and maybe adds the gate).
    Image,
}
use Patched::{Gate, Image, No};

fn patched(response: &Value) -> Patched {
    let Some(patch) = response["patch"].as_str() else {
        return No;
    };
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("the patch is base64");
    let patch: Vec<Value> = serde_json::from_slice(&patch).expect("the patch is a JSON patch");
    if patch
        .iter()
        .any(|op| op["path"].as_str().is_some_and(|p| p.ends_with("/image")))
    {
        Image
    } else {
        Gate
    }
}

const fn answer(
    status: StatusCode,
    allowed: bool,
    says: &'static str,
    patched: Patched,
) -> Expected {
    Expected {
        status,
        allowed,
        says,
        patched,
    }
}

const OK_PATCHED: Expected = answer(StatusCode::OK, true, "", Image);
const OK_UNCHANGED: Expected = answer(StatusCode::OK, true, "", No);

struct Row {
    what: &'static str,
    path: &'static str,
    body: Vec<u8>,
    expected: Expected,
}

fn rows() -> Vec<Row> {
    let pod = pod_of(GOOD_RS);
    let create = |object: &Value| bytes(&review("uid-h", "CREATE", object, None, false));
    let valid_pod = create(&pod);
    let mut service = fixture("frontend.yaml.injected", "Service");
    service["metadata"]["namespace"] = json!(NS);
    let with_request = |edit: &dyn Fn(&mut Value)| {
        let mut review = review("uid-h", "CREATE", &pod, None, false);
        edit(&mut review);
        bytes(&review)
    };
    let pod_with = |edit: &dyn Fn(&mut Value)| {
        let mut pod = pod.clone();
        edit(&mut pod);
        create(&pod)
    };
    let old = deployment(None);
    let update =
        |new: &Value, dry_run: bool| bytes(&review("uid-v", "UPDATE", new, Some(&old), dry_run));
    let good_deployment = deployment(Some(&format!("istio-proxy={PROXY_NEW}")));
    // The pod with its istio-proxy image replaced by a marker, to splice duplicate keys in.
    let marked_pod = pod_with(&|p| {
        if let Some(proxy) = p["spec"]["initContainers"]
            .as_array_mut()
            .and_then(|list| list.iter_mut().find(|c| c["name"] == "istio-proxy"))
        {
            proxy["image"] = json!("MARK");
        }
    });
    let proxy_image = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|list| list.iter().find(|c| c["name"] == "istio-proxy"))
        .and_then(|c| c["image"].as_str())
        .expect("the fixture pod has an istio-proxy sidecar")
        .to_owned();
    let image_field = format!("\"image\":\"{proxy_image}\"");
    let bad_request = StatusCode::BAD_REQUEST;
    let too_large = StatusCode::PAYLOAD_TOO_LARGE;
    vec![
        // The baseline each hostile row departs from.
        Row {
            what: "valid Istio pod CREATE",
            path: MUTATE,
            body: valid_pod.clone(),
            expected: OK_PATCHED,
        },
        Row {
            what: "valid Deployment UPDATE",
            path: VALIDATE,
            body: update(&good_deployment, false),
            expected: answer(StatusCode::OK, true, "", No),
        },
        // Wrong kinds.
        Row {
            what: "a Service sent to the pod endpoint",
            path: MUTATE,
            body: create(&service),
            expected: OK_UNCHANGED,
        },
        Row {
            what: "a Service sent to the workload endpoint",
            path: VALIDATE,
            body: create(&service),
            expected: OK_UNCHANGED,
        },
        Row {
            what: "a bare Pod, not a review",
            path: MUTATE,
            body: bytes(&pod),
            expected: answer(bad_request, false, "got apiVersion \"v1\" kind \"Pod\"", No),
        },
        Row {
            what: "review apiVersion v1beta1",
            path: MUTATE,
            body: with_request(&|r| r["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            expected: answer(bad_request, false, "admissionReviewVersions: [v1]", No),
        },
        Row {
            what: "review kind AdmissionResponse",
            path: VALIDATE,
            body: with_request(&|r| r["kind"] = json!("AdmissionResponse")),
            expected: answer(bad_request, false, "kind \"AdmissionResponse\"", No),
        },
        // Missing fields.
        Row {
            what: "no request",
            path: MUTATE,
            body: with_request(&|r| {
                r.as_object_mut().map(|r| r.remove("request"));
            }),
            expected: answer(bad_request, false, "no request field", No),
        },
        Row {
            what: "no uid",
            path: MUTATE,
            body: with_request(&|r| {
                r["request"].as_object_mut().map(|r| r.remove("uid"));
            }),
            expected: answer(bad_request, false, "missing field `uid`", No),
        },
        Row {
            what: "no operation",
            path: VALIDATE,
            body: with_request(&|r| {
                r["request"].as_object_mut().map(|r| r.remove("operation"));
            }),
            expected: answer(bad_request, false, "missing field `operation`", No),
        },
        Row {
            what: "pod CREATE without object",
            path: MUTATE,
            body: with_request(&|r| {
                r["request"].as_object_mut().map(|r| r.remove("object"));
            }),
            expected: answer(StatusCode::OK, true, "pod CREATE without an object", No),
        },
        Row {
            what: "pod CREATE with object null",
            path: MUTATE,
            body: with_request(&|r| r["request"]["object"] = Value::Null),
            expected: answer(StatusCode::OK, true, "pod CREATE without an object", No),
        },
        Row {
            what: "pod without spec",
            path: MUTATE,
            body: pod_with(&|p| {
                p.as_object_mut().map(|p| p.remove("spec"));
            }),
            expected: answer(StatusCode::OK, true, "the pod has no spec; not mutated", No),
        },
        Row {
            what: "pod without containers",
            path: MUTATE,
            body: pod_with(&|p| {
                if let Some(s) = p["spec"].as_object_mut() {
                    s.remove("containers");
                    s.remove("initContainers");
                }
            }),
            expected: answer(StatusCode::OK, true, "", Gate),
        },
        Row {
            what: "Deployment UPDATE without object",
            path: VALIDATE,
            body: without_object("uid-v", "UPDATE", &old),
            expected: OK_UNCHANGED,
        },
        // Huge.
        Row {
            what: "body over the 8 MiB limit",
            path: MUTATE,
            body: pod_with(&|p| {
                p["metadata"]["annotations"]["example.com/huge"] =
                    json!("x".repeat(DEFAULT_BODY_LIMIT))
            }),
            expected: answer(too_large, false, "larger than the 8388608-byte limit", No),
        },
        Row {
            what: "7.9 MiB pod with 10k containers",
            path: MUTATE,
            body: create(&huge_pod()),
            expected: OK_PATCHED,
        },
        // Deeply nested.
        Row {
            what: "10k-deep arrays as an annotation value",
            path: MUTATE,
            body: splice(
                pod_with(&|p| p["metadata"]["annotations"]["example.com/deep"] = json!("DEEP")),
                b"\"DEEP\"",
                &nested(10_000),
            ),
            expected: answer(
                StatusCode::OK,
                true,
                "cannot read the pod: invalid type: sequence, expected a string",
                No,
            ),
        },
        Row {
            what: "10k-deep arrays in an unknown metadata field: skipped",
            path: MUTATE,
            body: splice(
                pod_with(&|p| p["metadata"]["example.com/deep"] = json!("DEEP")),
                b"\"DEEP\"",
                &nested(10_000),
            ),
            expected: OK_PATCHED,
        },
        Row {
            what: "10k-deep arrays in the review's options",
            path: MUTATE,
            body: with_request(&|r| r["request"]["options"] = json!("DEEP"))
                .pipe(|b| splice(b, b"\"DEEP\"", &nested(10_000))),
            expected: answer(bad_request, false, "recursion limit exceeded", No),
        },
        Row {
            what: "10k-deep arrays in a Deployment's spec: skipped unread",
            path: VALIDATE,
            body: splice(
                update(
                    &{
                        let mut d = good_deployment.clone();
                        d["spec"]["deep"] = json!("DEEP");
                        d
                    },
                    false,
                ),
                b"\"DEEP\"",
                &nested(10_000),
            ),
            expected: OK_UNCHANGED,
        },
        // Invalid UTF-8.
        Row {
            what: "invalid UTF-8 in the pod",
            path: MUTATE,
            body: splice(
                valid_pod.clone(),
                b"\"generateName\":\"",
                b"\"generateName\":\"\xff\xfe",
            ),
            expected: answer(bad_request, false, "not valid JSON", No),
        },
        Row {
            what: "invalid UTF-8 in the annotation",
            path: VALIDATE,
            body: splice(
                update(&good_deployment, false),
                b"istio-proxy=",
                b"istio-proxy=\xc3\x28",
            ),
            expected: answer(bad_request, false, "not valid JSON", No),
        },
        // Duplicate keys.
        Row {
            what: "\"image\" twice: the last one wins",
            path: MUTATE,
            body: splice(
                marked_pod.clone(),
                b"\"image\":\"MARK\"",
                format!("\"image\":\"example.com/first:1\",{image_field}").as_bytes(),
            ),
            expected: OK_PATCHED,
        },
        Row {
            what: "\"image\" twice, target image last: nothing to set",
            path: MUTATE,
            body: splice(
                marked_pod.clone(),
                b"\"image\":\"MARK\"",
                format!("{image_field},\"image\":\"{PROXY_NEW}\"").as_bytes(),
            ),
            expected: answer(StatusCode::OK, true, "", Gate),
        },
        Row {
            what: "\"uid\" twice",
            path: MUTATE,
            body: splice(
                valid_pod.clone(),
                b"\"uid\":\"uid-h\"",
                b"\"uid\":\"uid-h\",\"uid\":\"uid-x\"",
            ),
            expected: answer(bad_request, false, "duplicate field `uid`", No),
        },
        Row {
            what: "annotation key twice in a Deployment",
            path: VALIDATE,
            body: splice(
                update(&good_deployment, false),
                format!("\"{TARGETS_ANNOTATION}\":").as_bytes(),
                format!("\"{TARGETS_ANNOTATION}\":\"istio-proxy=,=\",\"{TARGETS_ANNOTATION}\":")
                    .as_bytes(),
            ),
            expected: answer(StatusCode::OK, true, "", No),
        },
        // Numbers where strings go.
        Row {
            what: "a number as the uid",
            path: MUTATE,
            body: with_request(&|r| r["request"]["uid"] = json!(5)),
            expected: answer(
                bad_request,
                false,
                "invalid type: integer `5`, expected a string",
                No,
            ),
        },
        Row {
            what: "a number as a container image",
            path: MUTATE,
            body: pod_with(&|p| p["spec"]["containers"][0]["image"] = json!(5)),
            expected: answer(
                StatusCode::OK,
                true,
                "cannot read the pod: invalid type: integer `5`, expected a string",
                No,
            ),
        },
        Row {
            what: "a number as the annotation value",
            path: VALIDATE,
            body: update(
                &{
                    let mut d = good_deployment.clone();
                    d["metadata"]["annotations"][TARGETS_ANNOTATION] = json!(5);
                    d
                },
                false,
            ),
            expected: answer(
                bad_request,
                false,
                "invalid type: integer `5`, expected a string",
                No,
            ),
        },
        Row {
            what: "a string as dryRun",
            path: MUTATE,
            body: with_request(&|r| r["request"]["dryRun"] = json!("true")),
            expected: answer(bad_request, false, "expected a boolean", No),
        },
        // Operations that are not ours.
        Row {
            what: "pod DELETE",
            path: MUTATE,
            body: without_object("uid-d", "DELETE", &pod),
            expected: OK_UNCHANGED,
        },
        Row {
            what: "pod CONNECT (exec)",
            path: MUTATE,
            body: with_request(&|r| {
                r["request"]["operation"] = json!("CONNECT");
                r["request"]["kind"]["kind"] = json!("PodExecOptions");
                r["request"]["object"] = json!({"kind": "PodExecOptions", "apiVersion": "v1", "command": ["sh"], "container": "app"});
            }),
            expected: OK_UNCHANGED,
        },
        Row {
            what: "an unknown operation",
            path: MUTATE,
            body: with_request(&|r| r["request"]["operation"] = json!("PATCH")),
            expected: answer(bad_request, false, "unknown variant `PATCH`", No),
        },
        Row {
            what: "Deployment DELETE",
            path: VALIDATE,
            body: without_object("uid-d", "DELETE", &good_deployment),
            expected: OK_UNCHANGED,
        },
        // dryRun: the same answer as the real request (the handlers only read the view).
        Row {
            what: "dryRun pod CREATE",
            path: MUTATE,
            body: bytes(&review("uid-h", "CREATE", &pod, None, true)),
            expected: OK_PATCHED,
        },
        Row {
            what: "dryRun Deployment UPDATE, malformed annotation",
            path: VALIDATE,
            body: update(&deployment(Some("istio-proxy=,=")), true),
            expected: answer(StatusCode::OK, false, "is invalid", No),
        },
        // Malformed annotations.
        Row {
            what: "pod of a ReplicaSet with a malformed annotation",
            path: MUTATE,
            body: create(&pod_of(BROKEN_RS)),
            expected: answer(
                StatusCode::OK,
                true,
                "the inplace-upgrade annotation of",
                Gate,
            ),
        },
        Row {
            what: "pod carrying a malformed annotation itself",
            path: MUTATE,
            body: pod_with(&|p| {
                p["metadata"]["annotations"][TARGETS_ANNOTATION] = json!("istio-proxy=,=")
            }),
            expected: OK_PATCHED,
        },
        Row {
            what: "Deployment UPDATE, malformed annotation",
            path: VALIDATE,
            body: update(&deployment(Some("istio-proxy=,=")), false),
            expected: answer(StatusCode::OK, false, "is invalid", No),
        },
    ]
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

async fn post(router: &Router, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
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

#[tokio::test]
async fn hostile_admission_reviews_get_the_pinned_answers() {
    let router = router();
    let rows = rows();
    let mut failures = Vec::new();
    for row in &rows {
        let started = Instant::now();
        let (status, answer) = post(&router, row.path, row.body.clone()).await;
        let elapsed = started.elapsed();
        let response = &answer["response"];
        let message = response["status"]["message"].as_str().unwrap_or_default();
        let warnings: Vec<&str> = response["warnings"]
            .as_array()
            .map(|w| w.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let said = format!("{message}{}", warnings.join("\n"));
        let patched = patched(response);
        let e = &row.expected;
        let says_ok = if e.says.is_empty() {
            said.is_empty()
        } else {
            said.contains(e.says)
        };
        if status != e.status
            || response["allowed"] != e.allowed
            || !says_ok
            || patched != e.patched
        {
            failures.push(format!(
                "{} ({} bytes to {}): got {status} allowed={} patched={patched:?} said {said:?}; expected {e:?}",
                row.what,
                row.body.len(),
                row.path,
                response["allowed"],
            ));
        }
        // An answer is for its request (where the body parses as a `Value` at all).
        if let Some(uid) = uid_of(&row.body).filter(|_| status == StatusCode::OK) {
            assert_eq!(response["uid"], json!(uid), "{}", row.what);
        }
        println!(
            "{:<55} {:>9} bytes -> {} allowed={} patched={patched:?} in {:.1} ms",
            row.what,
            row.body.len(),
            status.as_u16(),
            response["allowed"],
            elapsed.as_secs_f64() * 1e3
        );
    }
    println!("{} hostile AdmissionReviews answered", rows.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The uid the row's review carries, unless the body is too deep for a `Value`.
fn uid_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["request"]["uid"].as_str().map(str::to_owned))
}

/// A dryRun review gets byte-for-byte the answer of the same review without dryRun: nothing
/// in the handlers depends on it, and they cannot write (the view is read-only).
#[tokio::test]
async fn dry_run_answers_equal_the_real_ones() {
    let router = router();
    let pod = pod_of(GOOD_RS);
    let old = deployment(None);
    let new = deployment(Some(&format!("istio-proxy={PROXY_NEW}")));
    let broken = deployment(Some("istio-proxy=,="));
    let cases = [
        (MUTATE, "CREATE", pod.clone(), None),
        (MUTATE, "CREATE", pod_of(BROKEN_RS), None),
        (VALIDATE, "UPDATE", new, Some(old.clone())),
        (VALIDATE, "UPDATE", broken, Some(old)),
    ];
    for (path, operation, object, old) in cases {
        let real = post(
            &router,
            path,
            bytes(&review("u", operation, &object, old.as_ref(), false)),
        )
        .await;
        let dry = post(
            &router,
            path,
            bytes(&review("u", operation, &object, old.as_ref(), true)),
        )
        .await;
        assert_eq!(real, dry, "{path} {operation}");
    }
    // The patch itself, decoded, sets the new image: the rows above compare real answers.
    let (_, answer) = post(
        &router,
        MUTATE,
        bytes(&review("u", "CREATE", &pod, None, true)),
    )
    .await;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(answer["response"]["patch"].as_str().expect("a patch"))
        .expect("base64");
    assert!(String::from_utf8_lossy(&patch).contains(PROXY_NEW));
}

/// The template pods of every fixture workload, sent as pods of our ReplicaSet: none is
/// refused or unreadable (a sanity check that the typed decode reads real Istio pods).
#[tokio::test]
async fn every_fixture_pod_is_read() {
    let router = router();
    for (file, object) in common::fixture_objects() {
        if object["spec"]["template"].is_null() {
            continue;
        }
        let mut pod = pod_from_template(&object, NS);
        pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": GOOD_RS, "uid": format!("uid-{GOOD_RS}"), "controller": true}]);
        let (status, answer) = post(
            &router,
            MUTATE,
            bytes(&review("u", "CREATE", &pod, None, false)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{file}");
        let warnings = answer["response"]["warnings"].to_string();
        assert!(!warnings.contains("cannot read"), "{file}: {warnings}");
    }
}
