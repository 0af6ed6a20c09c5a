//! Node attributes: the ONNX attribute kinds, with subgraphs as nested regions.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::module::Region;
use crate::tensor::TensorData;
use crate::types::Type;

/// An attribute value. Graph-valued attributes (If's branches, Loop's and
/// Scan's bodies) hold nested [`Region`]s that may use values of the
/// enclosing regions.
#[derive(Clone, Debug, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    String(String),
    Tensor(Arc<TensorData>),
    Graph(Region),
    Type(Type),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Strings(Vec<String>),
    Tensors(Vec<Arc<TensorData>>),
    Graphs(Vec<Region>),
    Types(Vec<Type>),
}

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

/// Attributes of a node, sorted by name so printing is canonical.
pub type Attrs = BTreeMap<String, Attr>;
