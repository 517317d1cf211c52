//! The decision core: one request's facts and the active snapshot in, a [`Decision`] out.
//! Knows nothing of the door the request came through.

pub mod engine;
pub mod mutation;
pub mod outcome;
pub mod refusal;

pub use engine::{NoTrace, Recheck, Trace, TraceEvent, decide};
pub use mutation::HeaderMutation;
pub use outcome::{Allow, Decision, Deny, DenyKind, FailedOpen};
pub use refusal::{GrpcCode, Refusal};
