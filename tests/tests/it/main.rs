//! The integration test binary: one PostgreSQL server and one link step for every test.
//! Each test is bounded by a timeout ([`tenantgate_tests::within`]) so nothing can hang CI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod auth;
mod clients;
mod config_files;
mod demo;
mod harness;
mod jwt;
mod lifecycle;
mod malformed;
mod pool;
mod protocol;
mod restart;
mod tls;
mod transaction_pool;
