//! What the verifier (and module-wide inference, which reports through
//! the same errors) says and where: [`Location`], [`Rule`],
//! [`VerifyError`], and the helpers both walk regions with. Below both:
//! `ops::infer` uses it without using the verifier, which uses `ops`.

use std::fmt;
use std::sync::Arc;

use crate::attr::AttrKind;
use crate::module::{Node, Region};
use crate::ops::schema::InferError;
use crate::tensor::TensorData;
use crate::types::Type;

/// Where an error is: the region path (`main`, `main/3:Loop "l".body`),
/// and the node within it when the error is about a node.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Location {
    pub region: String,
    pub node_index: Option<usize>,
    /// The node as [`Node::describe`] gives it (`Conv "conv1"`).
    pub node: Option<String>,
    /// The node's op.
    pub op: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.region)?;
        if let Some(i) = self.node_index {
            write!(f, " node #{i}")?;
        }
        if let Some(n) = &self.node {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

/// The rule a module breaks.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rule {
    #[error("unknown op")]
    UnknownOp,
    #[error("has {got} operands, the op takes {}", range(*.min, *.max))]
    InputCount { got: usize, min: usize, max: usize },
    #[error("has {got} results, the op gives {}", range(*.min, *.max))]
    OutputCount { got: usize, min: usize, max: usize },
    #[error("required operand {index} is omitted")]
    MissingOperand { index: usize },
    #[error("unknown attribute `{name}`")]
    UnknownAttr { name: String },
    #[error("attribute `{name}` must be {expected}, got {got}")]
    AttrKind {
        name: String,
        expected: AttrKind,
        got: AttrKind,
    },
    #[error("required attribute `{name}` is missing")]
    MissingAttr { name: String },
    #[error("{what} refers to value id {id}, not in the module")]
    BadValueId { what: String, id: u32 },
    #[error("operand {index} (%{value}) is used where it is not defined (before its definition, or in another region)")]
    UseBeforeDef { index: usize, value: String },
    #[error("value %{value} is defined more than once")]
    Redefined { value: String },
    #[error("region output {index} (%{value}) is not defined in the region or an enclosing one")]
    RegionOutputUndefined { index: usize, value: String },
    #[error("constant %{value}: {msg}")]
    ConstantData { value: String, msg: String },
    #[error("result {index} (%{value}) is declared {declared} but inferred {inferred}")]
    ResultType {
        index: usize,
        value: String,
        declared: String,
        inferred: String,
    },
    #[error("inference failed: {0}")]
    Infer(InferError),
    #[error("inference gave {got} results for {expected}")]
    InferArity { got: usize, expected: usize },
    #[error("region signature: {0}")]
    RegionSignature(String),
    #[error("quantization of %{value}: {msg}")]
    QuantParams { value: String, msg: String },
}

fn range(min: usize, max: usize) -> String {
    if max == usize::MAX {
        format!("at least {min}")
    } else if min == max {
        format!("{min}")
    } else {
        format!("{min} to {max}")
    }
}

/// A verification (or module inference) error: where, and which rule.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{location}: {rule}")]
pub struct VerifyError {
    pub location: Location,
    pub rule: Rule,
}

/// Print a type for messages: `f32[N,3,?]`, `f32[*]` (unranked),
/// `seq<...>`, `opt<...>`, `map<k,...>`.
pub fn type_str(t: &Type) -> String {
    crate::text::print_type(t)
}

/// Data of a `Constant` node's result, so later nodes can use it as a
/// constant operand.
pub(crate) fn constant_node_data(node: &Node) -> Option<Arc<TensorData>> {
    if node.op != "Constant" {
        return None;
    }
    constant_node_data_attrs(&node.attrs)
}

/// The data a `Constant` node with these attributes produces.
pub fn constant_node_data_attrs(attrs: &crate::attr::Attrs) -> Option<Arc<TensorData>> {
    use crate::attr::Attr;
    attrs.iter().find_map(|(k, a)| match (k.as_str(), a) {
        ("value", Attr::Tensor(d)) => Some(d.clone()),
        ("value_int", Attr::Int(v)) => TensorData::from_i64(vec![], &[*v]).ok().map(Arc::new),
        ("value_ints", Attr::Ints(v)) => TensorData::from_i64(vec![v.len() as u64], v)
            .ok()
            .map(Arc::new),
        ("value_float", Attr::Float(v)) => TensorData::from_f32(vec![], &[*v]).ok().map(Arc::new),
        ("value_floats", Attr::Floats(v)) => TensorData::from_f32(vec![v.len() as u64], v)
            .ok()
            .map(Arc::new),
        _ => None,
    })
}

/// Path of a nested region: `main/3:Loop "l".body`.
pub(crate) fn region_path(
    parent: &str,
    idx: usize,
    node: &Node,
    attr: &str,
    nth: Option<usize>,
) -> String {
    match nth {
        Some(j) => format!("{parent}/{idx}:{}.{attr}[{j}]", node.describe()),
        None => format!("{parent}/{idx}:{}.{attr}", node.describe()),
    }
}

/// The nested regions of a node with their path suffix info.
pub(crate) fn node_regions(node: &Node) -> Vec<(&str, Option<usize>, &Region)> {
    use crate::attr::Attr;
    let mut out = vec![];
    for (k, a) in &node.attrs {
        match a {
            Attr::Graph(r) => out.push((k.as_str(), None, r)),
            Attr::Graphs(rs) => {
                out.extend(rs.iter().enumerate().map(|(j, r)| (k.as_str(), Some(j), r)))
            }
            _ => {}
        }
    }
    out
}
