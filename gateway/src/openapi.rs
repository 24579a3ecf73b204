//! The OpenAPI 3 document, generated from the handlers' annotations, and a docs page.

use axum::response::Html;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "GPU telemetry gateway",
        description = "Stored GPU telemetry over REST, and a live WebSocket stream."
    ),
    paths(
        crate::api::gpus::list_gpus,
        crate::api::gpus::list_hosts,
        crate::api::gpus::host_gpus,
        crate::api::telemetry::gpu_telemetry,
        crate::api::invalid::list_invalid,
        crate::ws::ws_handler,
    ),
    components(schemas(
        telemetry::registry::GpuInfo,
        telemetry::registry::TelemetryEntry,
        telemetry::registry::InvalidEntry,
        crate::api::gpus::HostInfo
    ))
)]
pub struct ApiDoc;

pub async fn spec() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

/// A docs page that renders /openapi.json in the browser (Redoc, loaded by the browser).
pub async fn docs() -> Html<&'static str> {
    Html(
        r#"<!doctype html><html><head><title>GPU telemetry API</title><meta charset="utf-8"/></head>
<body><redoc spec-url="/openapi.json"></redoc>
<noscript>The machine-readable spec is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<script src="https://cdn.redoc.ly/redoc/latest/bundles/redoc.standalone.js"></script></body></html>"#,
    )
}
