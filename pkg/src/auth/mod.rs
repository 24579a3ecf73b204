//! API authentication shared by the gateway and the streamer's ingest listener
//! (docs/security.md): bearer tokens with a role, stored in etcd only as their SHA-256, kept
//! current in every process by a watch, and checked by one axum middleware.

mod guard;
pub(crate) use guard::is_grpc;
mod tokens;

pub use guard::{bearer, guard, AuthMode, Caller, Guard, WS_BEARER_PREFIX};
pub use tokens::{create, hash, list, revoke, Role, TokenRecord, Tokens};
