//! Node attributes: the ONNX attribute kinds ([`AttrKind`]) and what one
//! can ask of an attribute value ([`Attr::kind`], `as_int`, ...).
//!
//! [`Attr`] and [`Attrs`] are defined in `module.rs`, beside
//! [`Node`](crate::Node) and [`Region`](crate::Region) (a graph attribute
//! holds regions, whose nodes hold attributes: one recursive structure),
//! and re-exported here, so this module sits above `module.rs`.

use std::sync::Arc;

use crate::module::Region;
use crate::tensor::TensorData;

pub use crate::module::{Attr, Attrs};

/// The kind of an attribute, for schemas and error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttrKind {
    Int,
    Float,
    String,
    Tensor,
    Graph,
    Type,
    Ints,
    Floats,
    Strings,
    Tensors,
    Graphs,
    Types,
}

impl AttrKind {
    pub fn name(self) -> &'static str {
        match self {
            AttrKind::Int => "int",
            AttrKind::Float => "float",
            AttrKind::String => "string",
            AttrKind::Tensor => "tensor",
            AttrKind::Graph => "graph",
            AttrKind::Type => "type",
            AttrKind::Ints => "ints",
            AttrKind::Floats => "floats",
            AttrKind::Strings => "strings",
            AttrKind::Tensors => "tensors",
            AttrKind::Graphs => "graphs",
            AttrKind::Types => "types",
        }
    }
}

impl std::fmt::Display for AttrKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Attr {
    pub fn kind(&self) -> AttrKind {
        match self {
            Attr::Int(_) => AttrKind::Int,
            Attr::Float(_) => AttrKind::Float,
            Attr::String(_) => AttrKind::String,
            Attr::Tensor(_) => AttrKind::Tensor,
            Attr::Graph(_) => AttrKind::Graph,
            Attr::Type(_) => AttrKind::Type,
            Attr::Ints(_) => AttrKind::Ints,
            Attr::Floats(_) => AttrKind::Floats,
            Attr::Strings(_) => AttrKind::Strings,
            Attr::Tensors(_) => AttrKind::Tensors,
            Attr::Graphs(_) => AttrKind::Graphs,
            Attr::Types(_) => AttrKind::Types,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Attr::Int(v) => Some(*v),
            _ => None,
        }
    }
    pub fn as_float(&self) -> Option<f32> {
        match self {
            Attr::Float(v) => Some(*v),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Attr::String(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_ints(&self) -> Option<&[i64]> {
        match self {
            Attr::Ints(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_floats(&self) -> Option<&[f32]> {
        match self {
            Attr::Floats(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_tensor(&self) -> Option<&Arc<TensorData>> {
        match self {
            Attr::Tensor(v) => Some(v),
            _ => None,
        }
    }
    pub fn as_graph(&self) -> Option<&Region> {
        match self {
            Attr::Graph(v) => Some(v),
            _ => None,
        }
    }
}
