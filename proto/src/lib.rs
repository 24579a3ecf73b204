//! Protobuf types shared by every binary. Generated from `proto/telemetry.proto` so that the
//! queue format is defined once, in a language-neutral file.
#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("telemetry.v1");
}

pub use v1::*;
