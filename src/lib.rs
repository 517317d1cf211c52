//! Portcullis: an edge authentication and authorization gateway.
//!
//! One decision core, several doors. Each door turns its wire format into the same
//! [`request::RequestFacts`], asks [`decision::decide`], and turns the [`decision::Decision`]
//! back into its wire format, so a request gets the same answer whichever door it takes.
//!
//! ```text
//!  client ──TLS──▶ proxy door (server::listener → proxy::service)
//!                     │ 1. load the snapshot once (arc-swap); the request keeps it; the
//!                     │    trace context (a new span id; the client's trace if valid)
//!                     │ 2. refuse h2c upgrades; note a WebSocket upgrade (HTTP/1.1
//!                     │    Upgrade, HTTP/2 extended CONNECT); strip hop-by-hop headers
//!                     │ 3. RequestFacts: canonical path (ambiguous → 400), host, client ip;
//!                     │    a CORS preflight for a rule with `cors` is answered here
//!                     │ 4. decision::decide: match a rule (authz::route) → authenticate with
//!                     │    the rule's authenticators (authn: credential → cache → verify →
//!                     │    principal) → requirements, `when` (CEL) → the rule's rate limit
//!                     │    (ratelimit) → the rule's delegate (authz::delegate) →
//!                     │    Allow { rule, upstream, principal, identity } /
//!                     │    Deny { kind, the rule's denial shape }
//!                     │ 5. deny: Deny::refusal — status, WWW-Authenticate or Location,
//!                     │    Retry-After, a short JSON body
//!                     │ 6. allow: strip the credential if asked; X-Forwarded-*, x-real-ip,
//!                     │    request id, traceparent; canonical path + raw query to the
//!                     │    upstream over its pool; 502 / 504 on failure. An upgrade the
//!                     │    rule relays: its own connection, then proxy::tunnel (idle,
//!                     │    lifetime, credential expiry, re-checks, drain)
//!                     ▼
//!                  CORS headers; access log (request and trace ids) + metrics; OTLP span
//! ```
//!
//! Config flows files → [`config::load`] → [`config::raw`] → [`config::compile`] →
//! [`snapshot::Snapshot`]; [`config::reload`] swaps a new snapshot in only once it compiled in
//! full. Module dependencies point one way: doors (`proxy`, `admin`, `cli`) → `decision` →
//! `authn` / `authz` / `ratelimit` → `snapshot`.

pub mod admin;
pub mod app;
pub mod authn;
pub mod authz;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod decision;
pub mod door;
pub mod echo;
pub mod errors;
pub mod extauthz;
pub mod forward_auth;
pub mod proxy;
pub mod ratelimit;
pub mod request;
pub mod secret;
pub mod server;
pub mod snapshot;
pub mod telemetry;
pub mod tls;
pub mod upstream;

#[cfg(test)]
mod testing;
