//! Kiln's reference interpreter: the oracle every pass and backend is
//! checked against, and itself a backend.
//!
//! Its own crate so that what needs only the interpreter (constant
//! folding, memory planning, `kiln check`) does not pull in the native
//! backends' dependencies (Cranelift, gemm, rayon). `kiln-runtime`
//! re-exports every module and item here, so `kiln_runtime::Interpreter`
//! and `kiln_runtime::tensor::...` keep working.
//!
//! - [`tensor`]: typed host tensors and their conversion from IR constants.
//! - [`value`]: run-time values (tensors, sequences, optionals).
//! - [`f8`]: the float8 formats.
//! - [`executable`]: the [`Executable`] trait every backend's compiled
//!   module implements.
//! - [`interp`]: the interpreter, its kernels, and [`InterpExecutable`]
//!   (the interpreter as a backend).
//! - [`limits`]: the resource limits of the run in progress, which kernels
//!   check before they allocate.

pub mod executable;
pub mod f8;
pub mod interp;
pub mod limits;
pub mod tensor;
pub mod value;

pub use executable::{Executable, MemoryUse, Placement, StepInfo, StepTimes};
pub use interp::{InterpError, InterpExecutable, Interpreter};
pub use tensor::{Data, Tensor};
pub use value::Value;

/// The message of a caught panic (`String` or `&str` payloads).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
