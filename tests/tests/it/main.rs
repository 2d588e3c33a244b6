//! The integration test binary: one PostgreSQL server and one link step for every test.
//! Each test is bounded by a timeout ([`tenantgate_tests::within`]) so nothing can hang CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod audit;
mod auth;
mod cancel_races;
mod clients;
mod compose;
mod config_files;
mod demo;
mod fuzz_frames;
mod harness;
mod isolation;
mod jwt;
mod lifecycle;
mod malformed;
mod metrics;
mod pool;
mod pooling_semantics;
mod protocol;
mod reload;
mod restart;
mod server_reuse;
mod strategies;
mod tenant_identity;
mod tls;
mod transaction_pool;
mod unix_socket;
