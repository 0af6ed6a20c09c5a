//! Model compression: post-training quantization ([`quantize`]) with
//! calibration and an accuracy loop that decides what stays in float.
//! The command line's `kiln quantize` is a thin layer over
//! [`quantize::quantize`]; the report is a typed struct that serializes
//! to the JSON it writes.
//!
//! - [`data`]: the calibration and eval input sets, running models on them.
//! - [`calibrate`]: streaming range observers and the range methods.
//! - [`metrics`]: output agreement (cosine, max-abs, SQNR, top-1) and
//!   tolerances.
//! - [`onnx_edit`]: edits of ONNX models (BatchNormalization folding, opset
//!   raising, dead nodes).
//! - [`qdq`]: which nodes quantize, and writing the QDQ model.
//! - [`quantize`]: the whole loop and its report.

pub mod calibrate;
pub mod data;
pub mod metrics;
pub mod onnx_edit;
pub mod qdq;
pub mod quantize;

pub use quantize::{quantize, QuantizeOptions, Quantized, Report};
