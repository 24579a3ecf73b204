//! The one check in front of every API route: which role a request needs, whether its bearer
//! token has it, and who the caller is (for the audit log).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::tokens::{Role, TokenRecord, Tokens};

/// `AUTH_MODE`: whether the API asks for tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Anyone who reaches the port may do anything (the local demo's default).
    None,
    /// Every route but `/health` and `/ready` needs `Authorization: Bearer TOKEN`.
    Token,
}

/// Who made a request: its token, or nobody under `AUTH_MODE=none`.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Arc<TokenRecord>>);

impl Caller {
    /// How the audit log names the caller.
    pub fn describe(&self) -> String {
        match &self.0 {
            Some(t) => format!("token {} ({}, {})", t.id, t.name, t.role.as_str()),
            None => "anonymous (AUTH_MODE=none)".to_string(),
        }
    }
}

/// The middleware's state: the mode, the tokens, and which role each request needs
/// (`None`: open to anyone, as `/health` and `/ready` are).
#[derive(Clone)]
pub struct Guard {
    mode: AuthMode,
    tokens: Tokens,
    needs: fn(&Method, &str) -> Option<Role>,
}

impl Guard {
    /// A guard over `tokens`, asking `needs` what each request requires.
    pub fn new(mode: AuthMode, tokens: Tokens, needs: fn(&Method, &str) -> Option<Role>) -> Self {
        Self {
            mode,
            tokens,
            needs,
        }
    }
}

/// The subprotocol prefix a browser's WebSocket carries its token in, since a browser cannot
/// set an `Authorization` header on one: `new WebSocket(url, ["telemetry.v1", "bearer." + token])`.
pub const WS_BEARER_PREFIX: &str = "bearer.";

/// The bearer token of a request: the `Authorization` header, or a WebSocket subprotocol.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim());
    }
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(WS_BEARER_PREFIX))
}

/// Checks the request's token against the role its route needs: 401 without a valid token,
/// 403 with one of the wrong role. Marks the request with its [`Caller`].
pub async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let need = (g.needs)(req.method(), req.uri().path());
    let token = bearer(req.headers()).and_then(|s| g.tokens.check(s));
    if g.mode == AuthMode::Token {
        if let Some(need) = need {
            let Some(t) = &token else {
                let why = match bearer(req.headers()) {
                    Some(_) => "the token is unknown or revoked",
                    None => "this endpoint needs Authorization: Bearer TOKEN",
                };
                metrics::counter!("auth_failures", "status" => "401").increment(1);
                return refuse(&req, StatusCode::UNAUTHORIZED, "UNAUTHORIZED", why.into());
            };
            if !t.role.allows(need) {
                metrics::counter!("auth_failures", "status" => "403").increment(1);
                let why = format!(
                    "a {} token may not do this; it needs {}",
                    t.role.as_str(),
                    need.as_str()
                );
                return refuse(&req, StatusCode::FORBIDDEN, "FORBIDDEN", why);
            }
        }
    }
    req.extensions_mut().insert(Caller(token));
    next.run(req).await
}

/// Whether a request is a gRPC call, which must be refused with a gRPC status: a gRPC client
/// reads an HTTP 401 or 429 as `Unavailable`, and would retry what it cannot fix.
pub(crate) fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The contract's error shape, or a gRPC status for a gRPC call.
fn refuse(req: &Request, status: StatusCode, code: &str, message: String) -> Response {
    if is_grpc(req) {
        let s = match status {
            StatusCode::UNAUTHORIZED => tonic::Status::unauthenticated(message),
            _ => tonic::Status::permission_denied(message),
        };
        return s.into_http::<axum::body::Body>().into_response();
    }
    let body = serde_json::json!({"success": false, "error": message, "code": code});
    let mut resp = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_header_or_a_websocket_subprotocol() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("telemetry.v1, bearer.xyz"),
        );
        assert_eq!(bearer(&h), Some("xyz"));
    }
}
