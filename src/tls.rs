//! TLS with rustls only: server configs with SNI certificate selection, upstream client configs.

pub mod certs;
pub mod server;
pub mod x509;
