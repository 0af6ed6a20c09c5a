//! Host tensors: a value passed into or out of an executable.

use std::sync::Arc;

use kiln_ir::{ElemType, Payload, TensorData};

/// A host tensor. It shares [`TensorData`]'s representation so a constant
/// of the IR and a run-time value convert without copying.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor(pub Arc<TensorData>);

impl Tensor {
    pub fn elem(&self) -> ElemType {
        self.0.elem
    }

    pub fn shape(&self) -> &[u64] {
        &self.0.shape
    }

    /// Whether the values are present (an elided constant has none).
    pub fn has_data(&self) -> bool {
        !matches!(self.0.payload, Payload::Elided)
    }
}

impl From<Arc<TensorData>> for Tensor {
    fn from(d: Arc<TensorData>) -> Tensor {
        Tensor(d)
    }
}
