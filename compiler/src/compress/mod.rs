//! Model compression: post-training quantization ([`quantize`]) with
//! calibration and an accuracy loop that decides what stays in float, and
//! pruning ([`prune`]) with a sweep that decides how far to go.
//! The command line's `kiln quantize` is a thin layer over
//! [`quantize::quantize`]; the report is a typed struct that serializes
//! to the JSON it writes.
//!
//! - [`data`]: the calibration and eval input sets, running models on them.
//! - [`images`]: image folders as input sets (decode, resize, normalize).
//! - [`calibrate`]: streaming range observers and the range methods.
//! - [`constants`]: the value of every input-independent tensor.
//! - [`metrics`]: output agreement (cosine, max-abs, SQNR, top-1) and
//!   tolerances.
//! - [`onnx_edit`]: edits of ONNX models (BatchNormalization folding, opset
//!   raising, dead nodes).
//! - [`qdq`]: which nodes quantize, and writing the QDQ model.
//! - [`dynamic`]: writing dynamic int8 (`DynamicQuantizeLinear` +
//!   `MatMulInteger`) for transformers.
//! - [`weight_only`]: writing weight-only int4 (blocked
//!   `DequantizeLinear`, or onnxruntime's `MatMulNBits`).
//! - [`quantize`]: the whole loop and its report.
//! - [`prune`]: unstructured, N:M and channel pruning with a sweep that
//!   keeps the sparsest level meeting a tolerance.

pub mod calibrate;
pub mod constants;
pub mod data;
pub mod dynamic;
pub mod images;
pub mod metrics;
pub mod onnx_edit;
pub mod prune;
pub mod qdq;
pub mod quantize;
pub mod weight_only;

pub use prune::{prune, PruneOptions, PruneReport, Pruned};
pub use quantize::{quantize, QuantizeOptions, Quantized, Report};
