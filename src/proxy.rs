//! The reverse-proxy door: turns each request into [`crate::request::RequestFacts`], asks the
//! decision core, and forwards allowed requests to their upstream. Connections are accepted and
//! served by [`crate::server`], as for every door.

mod cors;
pub mod forwarded;
pub mod service;
mod tunnel;
pub(crate) mod upgrade;
mod watched;
mod wsframe;
