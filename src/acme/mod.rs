//! The RFC 8555 wire layer: pure types, problem documents, JWS and EAB checks.
//! No I/O and no async lives here.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555>

pub mod eab;
pub mod jws;
pub mod problem;
pub mod types;

pub use problem::{Problem, ProblemType};
pub use types::Identifier;
