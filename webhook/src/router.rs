//! The axum [`Router`] that serves AdmissionReview requests, separate from any socket so
//! tests can drive it with `tower::ServiceExt::oneshot`.

use std::{
    marker::PhantomData,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, OnceLock},
    time::Instant,
};

use axum::body::Bytes;
use axum::{
    Router,
    body::Body,
    http::{HeaderMap, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::post,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use kube::core::{
    DynamicObject, Resource, Status,
    admission::{AdmissionResponse, Operation},
};
use prometheus_client::metrics::{counter::Counter, histogram::Histogram};
use serde::de::DeserializeOwned;

use crate::{
    AdmissionRequest, Error, WebhookMetrics,
    metrics::{LatencyLabels, RequestLabels},
    review::{Decoded, decode_review_as, encode_response},
};

/// Largest request body accepted by default: 8 MiB.
///
/// The API server accepts objects of up to 3 MiB (its request body limit), and an UPDATE
/// review carries both `object` and `oldObject` plus the envelope, so a legitimate review
/// stays under ~7 MiB. axum's 2 MB default would refuse large but valid objects (for
/// example a ConfigMap-sized annotation); 8 MiB leaves headroom and still refuses garbage.
pub const DEFAULT_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// What the domain implements: decide one admission request whose objects are `K`.
///
/// `K` is what the review's `object` and `oldObject` are decoded into, in the same pass as the
/// envelope: a typed object (`Pod`) for a handler that needs one, [`DynamicObject`] (the
/// default) for one that serves several kinds as JSON.
///
/// The call is synchronous on purpose: an admission decision should come from in-memory
/// state, never from an API call per request. It must have no side effects when
/// `request.dry_run` is true. The transport copies the request's `uid` into the response, so
/// a handler cannot answer for the wrong request.
pub trait AdmissionHandler<K: Resource = DynamicObject>: Send + Sync + 'static {
    fn review(&self, request: &AdmissionRequest<K>) -> AdmissionResponse;

    /// The review is a valid AdmissionReview but its `object` or `oldObject` is not a `K`;
    /// `request` carries neither object. `None` (the default) answers 400 with `error`.
    fn review_unreadable(
        &self,
        request: &AdmissionRequest<K>,
        error: &serde_json::Error,
    ) -> Option<AdmissionResponse> {
        let _ = (request, error);
        None
    }
}

impl<K, F> AdmissionHandler<K> for F
where
    K: Resource,
    F: Fn(&AdmissionRequest<K>) -> AdmissionResponse + Send + Sync + 'static,
{
    fn review(&self, request: &AdmissionRequest<K>) -> AdmissionResponse {
        self(request)
    }
}

/// What deciding one request gives: its operation label, its span (see [`admission_span`]),
/// and either the encoded response with its `allowed` flag or the error to answer with.
type Decision = (&'static str, tracing::Span, Result<(Vec<u8>, bool), Error>);

/// A handler with its object type, behind one object-safe interface for the router.
trait Decide: Send + Sync {
    /// The operation label, the request's span (see [`admission_span`]) and the outcome.
    fn decide(&self, route: &str, content_type: Option<&str>, bytes: &[u8]) -> Decision;
}

struct Typed<K, H> {
    handler: H,
    // `fn() -> K`: the route never holds a `K`, so it is Send and Sync whatever `K` is.
    object: PhantomData<fn() -> K>,
}

impl<K, H> Decide for Typed<K, H>
where
    K: Resource + DeserializeOwned + 'static,
    H: AdmissionHandler<K>,
{
    fn decide(&self, route: &str, content_type: Option<&str>, bytes: &[u8]) -> Decision {
        let (request, unreadable) = match decode_review_as::<K>(content_type, bytes) {
            Ok(Decoded::Request(request)) => (request, None),
            Ok(Decoded::UnreadableObject { request, error }) => (request, Some(error)),
            Err(err) => return ("unknown", admission_span::<K>(route, None), Err(err)),
        };
        let operation = operation_label(&request.operation);
        let span = admission_span(route, Some((&request, operation)));
        let _entered = span.enter();

        let outcome = catch_unwind(AssertUnwindSafe(|| match &unreadable {
            None => Ok(self.handler.review(&request)),
            Some(error) => self
                .handler
                .review_unreadable(&request, error)
                .ok_or_else(|| Error::NotAdmissionReview(serde::de::Error::custom(error))),
        }))
        .unwrap_or_else(|_| {
            Err(Error::HandlerPanicked {
                uid: request.uid.clone(),
            })
        })
        .and_then(|mut response| {
            response.uid.clone_from(&request.uid);
            let allowed = response.allowed;
            encode_response(&response).map(|body| (body, allowed))
        });
        drop(_entered);
        (operation, span, outcome)
    }
}

/// The span of one admission request: every event of the request carries it. Made once the
/// review is decoded, with every field at once, so the subscriber formats the fields once
/// (recorded one by one into a span made before, they were formatted once per field, the
/// JSON formatter re-reading what it had written each time). Before the review is decoded
/// (an unreadable body) it names the route only.
fn admission_span<K: Resource>(
    route: &str,
    request: Option<(&AdmissionRequest<K>, &'static str)>,
) -> tracing::Span {
    tracing::info_span!(
        "admission",
        route = %route,
        uid = request.map(|(r, _)| r.uid.as_str()),
        kind = request.map(|(r, _)| r.kind.kind.as_str()),
        namespace = request.map(|(r, _)| r.namespace.as_deref().unwrap_or("")),
        name = request.map(|(r, _)| r.name.as_str()),
        operation = request.map(|(_, operation)| operation),
        dry_run = request.map(|(r, _)| r.dry_run),
    )
}

struct Route {
    path: String,
    handler: Box<dyn Decide>,
    metrics: WebhookMetrics,
    body_limit: usize,
    series: Series,
}

/// The labels an operation can have, in [`Series`] order.
const OPERATIONS: [&str; 5] = ["CREATE", "UPDATE", "DELETE", "CONNECT", "unknown"];
/// The results a request can have, in [`Series`] order.
const RESULTS: [&str; 3] = ["allowed", "denied", "error"];

/// This route's metric series, looked up in their families once and then kept: a lookup
/// hashes and allocates the label set, which every request would otherwise pay twice. Created
/// on first use, so `/metrics` shows only the series that happened.
#[derive(Default)]
struct Series {
    latency: [OnceLock<Histogram>; OPERATIONS.len()],
    requests: [[OnceLock<Counter>; RESULTS.len()]; OPERATIONS.len()],
}

impl Route {
    fn record(&self, operation: &'static str, result: &'static str, seconds: f64) {
        let op = OPERATIONS
            .iter()
            .position(|o| *o == operation)
            .unwrap_or(OPERATIONS.len() - 1);
        let res = RESULTS
            .iter()
            .position(|r| *r == result)
            .unwrap_or(RESULTS.len() - 1);
        self.series.latency[op]
            .get_or_init(|| {
                let labels = LatencyLabels {
                    route: self.path.clone(),
                    operation: OPERATIONS[op].to_owned(),
                };
                self.metrics.latency.get_or_create(&labels).clone()
            })
            .observe(seconds);
        self.series.requests[op][res]
            .get_or_init(|| {
                let labels = RequestLabels {
                    route: self.path.clone(),
                    operation: OPERATIONS[op].to_owned(),
                    result: RESULTS[res],
                };
                self.metrics.requests.get_or_create(&labels).clone()
            })
            .inc();
    }
}

/// Builds the admission [`Router`]: one POST route per handler.
pub struct AdmissionRouter {
    routes: Vec<(String, Box<dyn Decide>)>,
    metrics: WebhookMetrics,
    body_limit: usize,
}

impl AdmissionRouter {
    pub fn new(metrics: WebhookMetrics) -> Self {
        Self {
            routes: Vec::new(),
            metrics,
            body_limit: DEFAULT_BODY_LIMIT,
        }
    }

    /// Serves `handler` at `path` (for example `/mutate-pods`); the reviews it gets have their
    /// objects decoded as `K`.
    pub fn handler<K, H>(mut self, path: impl Into<String>, handler: H) -> Self
    where
        K: Resource + DeserializeOwned + 'static,
        H: AdmissionHandler<K>,
    {
        let route = Typed {
            handler,
            object: PhantomData,
        };
        self.routes.push((path.into(), Box::new(route)));
        self
    }

    /// Overrides [`DEFAULT_BODY_LIMIT`].
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// # Panics
    /// If a path is registered twice or does not start with `/` (axum's rule): a programming
    /// error at start-up, never a reaction to a request.
    pub fn into_router(self) -> Router {
        let known: Arc<[String]> = self.routes.iter().map(|(path, _)| path.clone()).collect();
        let mut router = Router::new();
        for (path, handler) in self.routes {
            let route = Arc::new(Route {
                path: path.clone(),
                handler,
                metrics: self.metrics.clone(),
                body_limit: self.body_limit,
                series: Series::default(),
            });
            router = router.route(
                &path,
                post(move |headers: HeaderMap, body: Body| admit(route, headers, body)),
            );
        }
        router.fallback(move |uri: Uri| {
            let known = known.clone();
            async move {
                let err = Error::UnknownPath {
                    path: uri.path().to_owned(),
                };
                let mut message = err.to_string();
                message.push_str(&format!("; served paths: {}", known.join(", ")));
                error_response(err.status_code(), message)
            }
        })
    }
}

async fn admit(route: Arc<Route>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let (operation, span, outcome) = review(&route, &headers, body).await;
    let elapsed = started.elapsed();
    let _entered = span.enter();
    let result = match &outcome {
        Ok((_, allowed)) => {
            let result = if *allowed { "allowed" } else { "denied" };
            tracing::debug!(
                result,
                latency_us = elapsed.as_micros() as u64,
                "admission reviewed"
            );
            result
        }
        Err(err) => {
            tracing::warn!(error = %err, reason = err.metric_label(), "admission request failed");
            "error"
        }
    };
    route.record(operation, result, elapsed.as_secs_f64());
    match outcome {
        Ok((body, _)) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => error_response(err.status_code(), err.to_string()),
    }
}

/// Bodies above this size are decoded on the blocking pool: a multi-MiB review takes tens of
/// milliseconds to parse, which must not stall the small pod mutations sharing a worker.
const BLOCKING_DECODE_THRESHOLD: usize = 256 * 1024;

/// Returns the operation label, the request's span and either the encoded response with its
/// `allowed` flag or the error to answer with.
async fn review(route: &Arc<Route>, headers: &HeaderMap, body: Body) -> Decision {
    let bytes = match read_body(headers, body, route.body_limit).await {
        Ok(bytes) => bytes,
        Err(err) => {
            return (
                "unknown",
                admission_span::<DynamicObject>(&route.path, None),
                Err(err),
            );
        }
    };
    if bytes.len() <= BLOCKING_DECODE_THRESHOLD {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|value| String::from_utf8_lossy(value.as_bytes()));
        return route
            .handler
            .decide(&route.path, content_type.as_deref(), &bytes);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let blocking = route.clone();
    // The request's span is made on the blocking thread: under the caller's subscriber, which
    // may be a thread's own default rather than the global one.
    let dispatch = tracing::dispatcher::get_default(tracing::Dispatch::clone);
    tokio::task::spawn_blocking(move || {
        tracing::dispatcher::with_default(&dispatch, || {
            blocking
                .handler
                .decide(&blocking.path, content_type.as_deref(), &bytes)
        })
    })
    .await
    .unwrap_or_else(|_| {
        // `decide` catches the handler's panics; this is the runtime shutting down.
        let uid = "(unknown)".to_owned();
        let span = admission_span::<DynamicObject>(&route.path, None);
        ("unknown", span, Err(Error::HandlerPanicked { uid }))
    })
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Error::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Error::BodyTooLarge { limit })
        }
        Err(err) => Err(Error::ReadBody(err)),
    }
}

fn operation_label(operation: &Operation) -> &'static str {
    match operation {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// An error answer: the HTTP status says what class of failure it is, and the body is an
/// AdmissionReview whose status message names the problem, readable by people and programs.
fn error_response(status: StatusCode, message: String) -> Response {
    let mut response = AdmissionResponse::invalid(&message);
    response.result = Status::failure(&message, status.canonical_reason().unwrap_or("Error"))
        .with_code(status.as_u16());
    let body = encode_response(&response).unwrap_or_else(|_| message.into_bytes());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
