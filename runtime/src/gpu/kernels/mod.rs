//! The WGSL kernel generators, one file per family: fusion regions
//! (`fusion.rs`, from the shared fusion plan), the tiled GEMM behind
//! matmul, Gemm and convolution, and pooling (`dense.rs`, which uses
//! `fusion.rs` for epilogues), data movement (`movement.rs`), and
//! reductions over any axes, softmax over any axis, ArgMax/ArgMin
//! (`reduce.rs`), and elementwise regions of mixed types: masks,
//! comparisons, `Where`, logic, integer arithmetic (`typed.rs`), and the
//! quantized path: (de)quantization and integer products on
//! `dot4I8Packed` (`quant.rs`).

pub mod dense;
pub mod fusion;
pub mod movement;
pub mod quant;
pub mod recurrent;
pub mod reduce;
pub mod typed;
