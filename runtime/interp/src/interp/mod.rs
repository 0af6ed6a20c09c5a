//! The reference interpreter: [`Interpreter`] executes a module node by
//! node with the kernels of [`kernels`], written for clarity and
//! exactness, not speed; [`InterpExecutable`] is the interpreter as a
//! backend.
//!
//! The modules form a chain: [`InterpError`] (`error.rs`) and [`Env`]
//! (`env.rs`) at the bottom; the kernels above them, seeing whatever runs
//! them as a [`kernels::KernelHost`]; the interpreter (`interpreter.rs`)
//! above the kernels; the executable (`executable.rs`) on top. This file
//! only declares them and re-exports their items under the paths the
//! other crates use (`kiln_interp::interp::Interpreter`, ...).

mod env;
pub(crate) mod error;
mod executable;
mod interpreter;
pub mod kernels;

pub use env::Env;
pub use error::InterpError;
pub use executable::InterpExecutable;
pub use interpreter::{Constants, Interpreter};
