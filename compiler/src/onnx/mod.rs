//! ONNX import: protobuf (prost, generated code checked in) to Kiln IR.
//!
//! - [`proto`]: generated message types (see `compiler/proto/regen.sh`).
//! - [`tensor`]: TensorProto/TypeProto/SequenceProto to IR types and data.
//! - [`import`]: graphs, scopes, functions, subgraphs.
//! - [`mapped`]: the model file mapped into memory, tensor bytes copied
//!   out of it once.
//! - [`canon`]: rewriting older op versions into the canonical IR op forms.
//! - [`contrib`]: onnxruntime's `com.microsoft` quantized ops spelled out
//!   in standard ops.

pub mod canon;
pub mod contrib;
pub mod import;
pub mod mapped;
pub mod proto;
pub mod tensor;

pub use import::{import_model_bytes, import_model_file, ImportError};
