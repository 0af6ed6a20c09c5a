//! Run-time values: tensors, sequences and optionals, cheap to clone.

use std::sync::Arc;

use crate::tensor::Tensor;

/// A value flowing between kernels. Tensors are shared behind `Arc`, so
/// passing a value to a kernel or a region never copies its data.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Tensor(Arc<Tensor>),
    Sequence(Vec<Value>),
    /// An optional: `None` when empty.
    Optional(Option<Box<Value>>),
}

impl Value {
    pub fn tensor(t: Tensor) -> Value {
        Value::Tensor(Arc::new(t))
    }

    pub fn as_tensor(&self) -> Option<&Tensor> {
        match self {
            Value::Tensor(t) => Some(t),
            _ => None,
        }
    }

    /// Bytes of this value that nothing else holds: a tensor whose `Arc`
    /// has other owners (an operand passed through by Identity, Reshape,
    /// a sequence op) was not allocated by the step that returned it.
    /// Strings count a byte per element.
    pub fn fresh_bytes(&self) -> u64 {
        match self {
            Value::Tensor(t) if Arc::strong_count(t) == 1 => {
                let n = t.len() as u64;
                t.elem().storage_bytes(n).unwrap_or(n)
            }
            Value::Tensor(_) | Value::Optional(None) => 0,
            Value::Sequence(v) => v.iter().map(Value::fresh_bytes).sum(),
            Value::Optional(Some(v)) => v.fresh_bytes(),
        }
    }

    /// What kind of value this is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Value::Tensor(t) => format!("{}{:?}", t.elem(), t.shape),
            Value::Sequence(v) => format!("sequence of {}", v.len()),
            Value::Optional(None) => "empty optional".into(),
            Value::Optional(Some(v)) => format!("optional {}", v.describe()),
        }
    }
}

impl From<Tensor> for Value {
    fn from(t: Tensor) -> Value {
        Value::tensor(t)
    }
}
