//! The one integration-test binary: real gateway, real sockets on 127.0.0.1, real TLS.

#![expect(
    unreachable_pub,
    reason = "a test binary exports nothing; `pub` is crate-wide here"
)]
#![allow(
    clippy::allow_attributes,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    reason = "test helpers outside #[test] functions may fail loudly, and read whole (small) bodies"
)]

mod abuse;
mod assertion;
mod check;
mod conformance;
mod credentials;
mod delegate;
mod doors;
mod edge;
mod examples;
mod grpc;
mod identity;
mod jwt;
mod memory;
mod paths;
mod peers;
mod policy;
mod proxy;
mod ratelimit;
mod redis;
mod reload;
mod shutdown;
mod smuggling;
mod support;
mod tls;
mod upstreams;
