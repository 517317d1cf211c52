//! Authorization: which rule applies to a request and what it says.

pub mod assertion;
pub mod delegate;
pub mod denial;
pub mod edge;
pub mod expr;
pub mod identity;
pub mod require;
pub mod route;
pub mod spoofable;
