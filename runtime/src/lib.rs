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

/// The message of a caught panic (`String` or `&str` payloads).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
