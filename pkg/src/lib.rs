//! The shared library of the GPU telemetry pipeline.
//!
//! Everything that two binaries must agree on lives here: where keys go in etcd ([`keys`]),
//! what a record is and how its identity is computed ([`record`]), how the DCGM CSV is read
//! ([`dcgm_csv`]), how work is queued ([`queue`]), claimed ([`claim`]) and committed
//! ([`store`]), and the plumbing every binary shares (config, logging, admin endpoints,
//! shutdown).

#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod backoff;
pub mod cluster;
pub mod config;
pub mod entries;
pub mod etcd;
pub mod http;
pub mod keys;
pub mod lease;
pub mod logging;
pub mod queue;
pub mod ratelimit;
pub mod record;
pub mod rules;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod storage;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod trace;
pub mod validate;
pub mod watch;

pub use telemetry_proto as proto;
