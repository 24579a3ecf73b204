//! The dashboard and the API reference, served from the binary itself.
//!
//! Every asset is compiled in (`include_bytes!`), so the pages work on an air-gapped cluster and
//! the gateway's version and its page can never disagree. A table of a dozen files is simpler
//! than a dependency such as `rust-embed`, whose value is walking a directory at build time.
//! The page is plain ES modules and one vendored chart library (uPlot, see
//! `gateway/ui/vendor/uplot/`), so there is no build step.
//!
//! The shell is public even under `AUTH_MODE=token`: it holds code, not telemetry, and a browser
//! cannot send a bearer token when it navigates. The page asks for a token when the API answers
//! 401. A Content-Security-Policy tells the browser that nothing may load from anywhere else.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sha2::{Digest, Sha256};
use telemetry::record::hex_of;
use utoipa_swagger_ui::{Config, SwaggerUi};

use crate::error::status_error;

/// One embedded file.
struct Asset {
    path: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $mime:expr) => {
        Asset {
            path: $path,
            mime: $mime,
            body: include_bytes!(concat!("../ui/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("colors.js", JS),
    asset!("fleet.js", JS),
    asset!("gpu.js", JS),
    asset!("pipeline.js", JS),
    asset!("alerts.js", JS),
    asset!("vendor/uplot/uPlot.iife.min.js", JS),
    asset!("vendor/uplot/uPlot.min.css", CSS),
    asset!("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
];

/// Scripts and styles from the gateway only; API calls and the WebSocket to the gateway only.
/// uPlot sets element styles from script, hence `'unsafe-inline'` for styles (not scripts).
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `/`, `/ui/*` and `/docs` (Swagger UI over `/openapi.json`).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|h: HeaderMap| async move { serve("index.html", &h) }),
        )
        .route(
            "/ui/{*path}",
            get(|Path(p): Path<String>, h: HeaderMap| async move { serve(&p, &h) }),
        )
        .merge(SwaggerUi::new("/docs").config(Config::new(["/openapi.json"])))
}

/// Whether a path is part of the public shell (no telemetry behind it).
pub fn is_public(path: &str) -> bool {
    path == "/"
        || path.starts_with("/ui/")
        || path == "/docs"
        || path.starts_with("/docs/")
        || path == "/openapi.json"
}

/// A content hash per asset, so a reload revalidates with one 304 instead of a download.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &hex_of(&Sha256::digest(a.body).into())[..16]))
            .collect()
    })
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        return status_error(StatusCode::NOT_FOUND, "NOT_FOUND", "no such dashboard file");
    };
    let (asset, etag) = (&ASSETS[i], &etags()[i]);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let common = [
        (header::ETAG, HeaderValue::from_str(etag).expect("hex")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime))],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, etag: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(e) = etag {
            req = req.header(header::IF_NONE_MATCH, e);
        }
        router::<()>()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn serves_every_asset_with_its_type_and_revalidates() {
        for a in ASSETS {
            let resp = get(&format!("/ui/{}", a.path), None).await;
            assert_eq!(resp.status(), StatusCode::OK, "{}", a.path);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], a.mime);
            let etag = resp.headers()[header::ETAG].to_str().unwrap().to_owned();
            let again = get(&format!("/ui/{}", a.path), Some(&etag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{}", a.path);
        }
        let index = get("/", None).await;
        assert_eq!(index.status(), StatusCode::OK);
        assert!(index.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'"));
    }

    #[tokio::test]
    async fn unknown_files_are_404_and_paths_do_not_escape() {
        for p in [
            "/ui/nope.js",
            "/ui/../Cargo.toml",
            "/ui/vendor/../../src/ui.rs",
        ] {
            assert_eq!(get(p, None).await.status(), StatusCode::NOT_FOUND, "{p}");
        }
    }

    #[test]
    fn every_script_links_only_to_the_gateway() {
        for a in ASSETS.iter().filter(|a| !a.path.starts_with("vendor/")) {
            let text = std::str::from_utf8(a.body).unwrap();
            for scheme in ["http://", "https://", "//cdn"] {
                assert!(!text.contains(scheme), "{} refers to {scheme}", a.path);
            }
        }
    }
}
