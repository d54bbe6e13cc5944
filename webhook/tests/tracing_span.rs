//! The per-request tracing span. A binary of its own: a thread-local subscriber is only
//! reliable when no other test evaluates the same callsites concurrently.

mod common;

use axum::{
    body::Body,
    http::{Request, header},
};
use common::{fixture, recording_handler, review};
use inplace_upgrade_webhook::{AdmissionRouter, WebhookMetrics};
use serde_json::{Value, json};
use tower::ServiceExt;

async fn post(router: &axum::Router, body: Vec<u8>) {
    let request = Request::post("/mutate-pods")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("request");
    router
        .clone()
        .oneshot(request)
        .await
        .expect("router is infallible");
}

fn body(review: &Value) -> Vec<u8> {
    serde_json::to_vec(review).expect("json")
}

mod span_capture {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    use tracing::{
        Subscriber,
        field::{Field, Visit},
        span::{Attributes, Id, Record},
    };
    use tracing_subscriber::{Layer, layer::Context, registry::LookupSpan};

    /// Fields recorded on spans named `admission`, by span id.
    #[derive(Clone, Default)]
    pub struct Capture(pub Arc<Mutex<HashMap<u64, HashMap<String, String>>>>);

    struct Fields<'a>(&'a mut HashMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
            if attrs.metadata().name() == "admission" {
                let mut spans = self.0.lock().expect("capture lock");
                attrs.record(&mut Fields(spans.entry(id.into_u64()).or_default()));
            }
        }
        fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
            let mut spans = self.0.lock().expect("capture lock");
            if let Some(fields) = spans.get_mut(&id.into_u64()) {
                values.record(&mut Fields(fields));
            }
        }
    }
}

#[tokio::test]
async fn each_request_gets_a_span_with_its_identity() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let capture = span_capture::Capture::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(capture.clone()));
    let (_, handler) = recording_handler();
    let router = AdmissionRouter::new(WebhookMetrics::unregistered())
        .handler("/mutate-pods", handler)
        .into_router();
    let mut pod = fixture("native-sidecar.yaml.injected", "Pod");
    pod["metadata"]["namespace"] = json!("dev");
    post(
        &router,
        body(&review("uid-span", "CREATE", &pod, None, true)),
    )
    .await;
    post(&router, b"{".to_vec()).await;
    // Large enough to be decoded on the blocking pool: the span must follow it there.
    let mut large = fixture("native-sidecar.yaml.injected", "Pod");
    large["metadata"]["annotations"]["example.com/huge"] = json!("x".repeat(400 * 1024));
    post(
        &router,
        body(&review("uid-span-large", "CREATE", &large, None, false)),
    )
    .await;

    let spans = capture.0.lock().expect("capture lock");
    let mut spans: Vec<_> = spans.values().cloned().collect();
    spans.sort_by_key(|fields| fields.get("uid").cloned());
    assert_eq!(spans.len(), 3, "{spans:?}");
    let large = &spans[2];
    assert_eq!(
        large.get("uid").map(String::as_str),
        Some("uid-span-large"),
        "{large:?}"
    );
    assert_eq!(
        large.get("operation").map(String::as_str),
        Some("CREATE"),
        "{large:?}"
    );
    let malformed = &spans[0];
    assert_eq!(
        malformed.get("route").map(String::as_str),
        Some("/mutate-pods")
    );
    assert!(!malformed.contains_key("uid"), "{malformed:?}");
    let reviewed = &spans[1];
    for (field, value) in [
        ("route", "/mutate-pods"),
        ("uid", "uid-span"),
        ("kind", "Pod"),
        ("namespace", "dev"),
        ("name", "hello"),
        ("operation", "CREATE"),
        ("dry_run", "true"),
    ] {
        assert_eq!(
            reviewed.get(field).map(String::as_str),
            Some(value),
            "{field}: {reviewed:?}"
        );
    }
}
