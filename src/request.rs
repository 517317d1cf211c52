//! Door-independent request facts and path canonicalisation.

pub mod facts;
pub mod grpc;
pub mod path;

pub use facts::RequestFacts;
