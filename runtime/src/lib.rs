//! The Kiln runtime: what executes modules.
//!
//! - [`tensor`]: typed host tensors and their conversion from IR constants.
//! - [`value`]: run-time values (tensors, sequences, optionals).
//! - [`f8`]: the float8 formats.
//! - [`interp`]: the reference interpreter, the oracle every pass and
//!   backend is checked against.

pub mod cpu;
pub mod f8;
pub mod interp;
pub mod tensor;
pub mod value;

pub use interp::{InterpError, Interpreter};
pub use tensor::{Data, Tensor};
pub use value::Value;
