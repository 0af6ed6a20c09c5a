//! Hand-written kernels the JIT-compiled code calls: dense matmul and convolution (the `gemm` crate), pooling.

mod matmul;

pub use matmul::{GemmPlan, MatMulPlan};
