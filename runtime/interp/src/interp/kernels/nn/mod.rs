//! Kernels: the neural-network ops of the default domain (convolution,
//! pooling, normalization, reductions, softmax, attention, matrix products, losses,
//! detection). Each file has its own table; this one asks them in turn.
//! What they share is below them: float/integer conversion of operands and
//! the spatial attributes of conv/pool ops in `common.rs`, and a blocked
//! matrix product that Conv, ConvTranspose, MatMul and Gemm use in
//! `gemm.rs`.

mod attention;
mod common;
mod conv;
mod gemm;
mod linalg;
mod loss;
mod norm;
mod pool;
pub mod reduce;
pub mod softmax;
pub mod vision;

use super::ctx::KernelFn;

pub fn lookup(op: &str) -> Option<KernelFn> {
    reduce::lookup(op)
        .or_else(|| attention::lookup(op))
        .or_else(|| softmax::lookup(op))
        .or_else(|| linalg::lookup(op))
        .or_else(|| conv::lookup(op))
        .or_else(|| pool::lookup(op))
        .or_else(|| norm::lookup(op))
        .or_else(|| loss::lookup(op))
        .or_else(|| vision::lookup(op))
}
