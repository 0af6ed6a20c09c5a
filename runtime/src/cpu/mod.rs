//! The CPU backend's run-time half: the kernel library ([`kernels`]: dense
//! matmul and convolution on the `gemm` crate, pooling), the Cranelift code
//! generator for fusion regions ([`jit`]), data movement ([`movement`]), reductions and broadcasts over any axes ([`reduce`]), and the executable that runs a
//! lowered module ([`exec`]).

pub mod exec;
pub mod jit;
pub mod kernels;
pub mod movement;
pub mod reduce;

pub use exec::{Executable, NativeKernel, Step, StepKind, StepTimes};
