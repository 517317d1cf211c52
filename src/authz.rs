//! Authorization: which rule applies to a request and what it says.

pub mod require;
pub mod route;
