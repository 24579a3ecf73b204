//! Every integration and end-to-end test, in one test binary (one link of the workspace
//! instead of one per file). Each module starts real etcd processes on free loopback ports.

mod api_auth;
mod cluster;
mod collector_faults;
mod collector_invalid;
mod collector_protocol;
mod dashboard;
mod etcd_outages;
mod folding;
mod gateway_api;
mod gateway_cache;
mod gateway_limits;
mod gateway_live;
mod gateway_registry;
mod insight;
mod listener_tls;
mod live_config;
mod messages;
mod openapi;
mod pipeline;
mod readme;
mod readme_stop;
mod retention;
mod rules;
mod secure_etcd;
mod storage;
mod storage_full;
mod streamer_errors;
mod streamer_ingest;
mod streamer_inputs;
mod streamer_resilience;
mod watch;
