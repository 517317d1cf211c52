//! The reverse-proxy door: accepts connections (TLS or plain), turns each request into
//! [`crate::request::RequestFacts`], asks the decision core, and forwards allowed requests to
//! their upstream.

mod connection;
pub mod forwarded;
mod frames;
pub mod hop_by_hop;
pub mod listener;
mod progress;
pub mod request_id;
pub mod service;
mod tracked;
