//! The Kiln compiler: importers (ONNX, text IR), passes, lowering, and the
//! one compile entry point. The `kiln` binary (`src/bin/kiln/`) is its
//! command line.
//!
//! - [`onnx`]: ONNX protobuf to IR, with op-version canonicalization.
//! - [`load`]: read any model format from disk, verified.
//! - [`infer`]: type inference while importing.
//! - [`dump`]: JSON and Graphviz forms of a module.
//! - [`testdata`]: `.pb`/`.npy` values on disk.
//! - [`conformance`]: running ONNX backend-test folders.
//! - [`passes`]: the optimizer and the targets' lowering passes.
//! - [`compress`]: `kiln quantize`'s post-training quantization.
//! - [`compile`]: module + [`Target`] + shapes → an executable; the only
//!   place a backend is chosen.
//! - [`lower`]: specialization and the CPU backend's lowering table.

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod check;
pub mod compile;
pub mod compress;
pub mod conformance;
pub mod dump;
pub mod infer;
pub mod load;
pub mod lower;
pub mod onnx;
pub mod passes;
pub mod testdata;

pub use compile::{compile, Target};
pub use load::{load_model, LoadError};
