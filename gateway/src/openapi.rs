//! The OpenAPI 3 document, generated from the handlers' annotations (rendered at `/docs` by
//! [`crate::ui`]).

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

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
        crate::api::fleet::latest,
        crate::api::fleet::summary,
        crate::api::cluster::cluster,
        crate::api::alerts::alerts,
        crate::api::messages::message,
        crate::api::config::list_config,
        crate::api::config::set_config,
        crate::ws::ws_handler,
    ),
    components(schemas(
        telemetry::entries::GpuInfo,
        telemetry::entries::TelemetryEntry,
        crate::api::aggregate::AggregatePoint,
        crate::api::fleet::LatestValue,
        crate::api::fleet::MetricSummary,
        crate::api::fleet::HostStats,
        crate::api::fleet::Stats,
        telemetry::entries::InvalidEntry,
        crate::api::gpus::HostInfo,
        crate::api::config::SettingEntry,
        telemetry::cluster::view::ClusterView,
        telemetry::rules::Alert,
        telemetry::rules::alert::State,
        crate::api::messages::MessageView,
        crate::api::messages::Stage,
        telemetry::cluster::view::MemberView,
        telemetry::cluster::view::QueueView,
        telemetry::cluster::view::PartitionView,
        telemetry::cluster::view::ConfigView,
        crate::api::config::SetBody,
        crate::error::ErrorBody,
    )),
    modifiers(&EveryRouteCanAnswer)
)]
pub struct ApiDoc;

/// The statuses that the gateway's layers give on any API route, whatever the handler: the
/// per-client rate limit, the query-size limit, etcd unreachable, and the request timeout.
struct EveryRouteCanAnswer;

impl Modify for EveryRouteCanAnswer {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let error = |what: &str| -> RefOr<Response> {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    utoipa::openapi::ContentBuilder::new()
                        .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .into()
        };
        let common = [
            ("400", "a query parameter is repeated or not UTF-8"),
            ("414", "query string too long (MAX_REQUEST_BYTES)"),
            ("429", "rate limited; see Retry-After"),
            ("503", "etcd or the gateway is not ready; see Retry-After"),
            ("504", "the request took longer than REQUEST_TIMEOUT"),
            (
                "401",
                "AUTH_MODE=token: no token, or an unknown or revoked one",
            ),
            ("403", "AUTH_MODE=token: the token's role may not do this"),
        ];
        // A token is optional (`AUTH_MODE=none`, the default) or required (`token`), so the
        // document offers both: no requirement, or a bearer token.
        api.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        api.security = Some(vec![
            SecurityRequirement::default(),
            SecurityRequirement::new("bearer", Vec::<String>::new()),
        ]);
        for item in api.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                for (status, what) in common {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(what));
                }
            }
        }
    }
}

pub async fn spec() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
