//! Hand-written kernels the JIT-compiled code calls: dense matmul and convolution (the `gemm` crate), pooling.
//!
//! Each op is a plan built once from static shapes (validating them and
//! choosing a strategy) and run many times; plans are immutable, `Send` and
//! `Sync`, and may run from several threads at once. `threads` tells a run
//! how many workers of the current rayon pool it may use.

mod conv;
mod matmul;
mod pool;

pub use conv::{ConvAttrs, ConvPlan};
pub use matmul::{GemmPlan, MatMulPlan};
pub use pool::{PoolAttrs, PoolKind, PoolPlan};
