//! The CPU backend's run-time half: the kernel library ([`kernels`]: dense
//! matmul and convolution on the `gemm` crate, pooling), the Cranelift code
//! generator for fusion regions ([`jit`]), data movement ([`movement`]), reductions and broadcasts over any axes ([`reduce`]), and the executable that runs a
//! lowered module ([`exec`]).

pub mod buffers;
pub mod exec;
pub mod jit;
pub mod kernels;
pub mod movement;
pub mod reduce;
pub mod resize;
pub mod rnn;
pub mod steps;
pub mod view;

pub use exec::{CpuExecutable, Layout, NativeKernel, NativeStep, Step, StepKind};

/// Work units per thread when a kernel splits its work: a few each, so
/// that rayon's work stealing evens out a thread that is slowed down (a
/// busy sibling core, a descheduled vCPU) instead of every step waiting
/// for its slowest of exactly `threads` equal parts.
pub(crate) const UNITS_PER_THREAD: usize = 4;
