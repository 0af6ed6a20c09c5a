//! The Kiln runtime: what executes modules.
//!
//! The reference interpreter and everything it shares with the backends
//! (tensors, values, the [`Executable`] trait) live in the `kiln-interp`
//! crate; they are re-exported here under their old paths
//! (`kiln_runtime::tensor`, `kiln_runtime::Interpreter`, ...).
//!
//! - [`tensor`]: typed host tensors and their conversion from IR constants.
//! - [`value`]: run-time values (tensors, sequences, optionals).
//! - [`f8`]: the float8 formats.
//! - [`executable`]: the [`Executable`] trait every backend's compiled
//!   module implements.
//! - [`interp`]: the reference interpreter, the oracle every pass and
//!   backend is checked against (and itself a backend).
//! - [`cpu`]: the CPU backend's run-time half: executable, steps, kernel
//!   library, Cranelift code generation.

pub mod cpu;
mod fusion_plan;
pub mod gpu;

pub use kiln_interp::{executable, f8, interp, panic_message, tensor, value};
pub use kiln_interp::{
    Data, Executable, InterpError, InterpExecutable, Interpreter, MemoryUse, Placement, StepInfo,
    StepTimes, Tensor, Value,
};
