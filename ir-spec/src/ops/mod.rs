//! The op registry: every op Kiln's IR accepts (the ONNX ops at their newest
//! version in onnx 1.17), with arity, attribute schema, a one-line summary
//! and a shape/type inference rule.
//!
//! The static part of the table is generated ([`schemas.rs`], by
//! `gen_schemas.py`); inference rules are hand-written in `rules/`, one
//! module per op family, and linked by op name (`rules/mod.rs`) when the
//! registry is first used. Module-wide inference ([`infer_module`]) lives
//! in `infer.rs`. The facts passes and backends ask about an op (pointwise,
//! in-place operands, random, weights, ...) are one table in `traits.rs`
//! ([`OpTraits`]); the conv/pool window arithmetic (`auto_pad`, dilations,
//! `ceil_mode`) is `geometry.rs`.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::attr::{Attr, AttrKind, Attrs};
use crate::tensor::TensorData;
use crate::types::{SymExpr, Type};

/// The element values of a small integer tensor (rank <= 1), each a
/// polynomial over the module's symbols (`None`: that element is unknown).
/// Carries shape arithmetic like `Shape -> Gather -> Concat -> Reshape`.
pub type IntValues = Vec<Option<SymExpr>>;

mod dims;
pub mod geometry;
mod infer;
pub mod kiln;
mod rules;
#[rustfmt::skip]
mod schemas;
pub mod traits;
mod values;

pub(crate) use dims::norm_axis as norm_axis_pub;
pub use dims::{broadcast_dims, broadcast_shapes};
pub use infer::{
    infer_module, infer_module_with, infer_node, refine, DeclaredTypes, ModuleInferError,
};
pub(crate) use infer::{node_ctx, Known};
pub use rules::elem_from_onnx;
pub use schemas::CATALOG;
pub use traits::{OpTraits, Pointwise, Random, Reduction};

/// One attribute an op accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttrSpec {
    pub name: &'static str,
    pub kind: AttrKind,
    pub required: bool,
}

/// Whether an ONNX formal parameter must be given, may be omitted, or
/// takes any number of operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamOption {
    Single,
    Optional,
    Variadic,
}

/// The generated part of a schema.
#[derive(Debug)]
pub(crate) struct RawSchema {
    pub name: &'static str,
    pub domain: &'static str,
    pub since_version: i64,
    pub deprecated: bool,
    pub min_inputs: usize,
    pub max_inputs: usize,
    pub min_outputs: usize,
    pub max_outputs: usize,
    pub input_names: &'static [&'static str],
    pub input_options: &'static [ParamOption],
    pub output_names: &'static [&'static str],
    pub attrs: &'static [AttrSpec],
    pub summary: &'static str,
}

/// An inference rule: the result types of one node from its operand types,
/// constant operands and attributes.
pub type InferFn = fn(&InferCtx) -> Result<Vec<Type>, InferError>;

/// The schema of one op.
#[derive(Debug)]
pub struct OpSchema {
    /// Canonical op name: `Conv`, `ai.onnx.ml.LabelEncoder`.
    pub name: &'static str,
    /// ONNX domain (`""` for the default domain).
    pub domain: &'static str,
    /// The ONNX version whose form the IR op has.
    pub since_version: i64,
    /// ONNX marks the op deprecated (e.g. `Upsample`, `Scatter`).
    pub deprecated: bool,
    pub min_inputs: usize,
    /// `usize::MAX` for variadic ops.
    pub max_inputs: usize,
    pub min_outputs: usize,
    /// `usize::MAX` for variadic ops.
    pub max_outputs: usize,
    /// ONNX formal parameter names (the last one may be variadic).
    pub input_names: &'static [&'static str],
    /// Per formal parameter: required, optional or variadic.
    pub input_options: &'static [ParamOption],
    pub output_names: &'static [&'static str],
    pub attrs: &'static [AttrSpec],
    /// The inference rule (the conservative fallback when `has_rule` is false).
    pub infer: InferFn,
    /// Whether `infer` is a hand-written rule for this op.
    pub has_rule: bool,
    /// What passes and backends may assume about the op (`traits.rs`).
    pub traits: OpTraits,
    summary: &'static str,
}

impl OpSchema {
    /// One-line summary: the first sentence of the ONNX documentation.
    pub fn summary(&self) -> &str {
        self.summary
    }

    /// May operand `i` be omitted? (Optional formal parameters only.)
    pub fn input_optional(&self, i: usize) -> bool {
        let p = self.input_options.get(i).or(self.input_options.last());
        matches!(p, Some(ParamOption::Optional))
    }

    pub fn attr(&self, name: &str) -> Option<&'static AttrSpec> {
        self.attrs.iter().find(|a| a.name == name)
    }
}

struct Registry {
    schemas: Vec<OpSchema>,
    by_name: HashMap<&'static str, usize>,
}

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let schemas: Vec<OpSchema> = schemas::SCHEMAS
            .iter()
            .chain(kiln::KILN_SCHEMAS)
            .map(|r| {
                let rule = rules::rule_for(r.name);
                OpSchema {
                    name: r.name,
                    domain: r.domain,
                    since_version: r.since_version,
                    deprecated: r.deprecated,
                    min_inputs: r.min_inputs,
                    max_inputs: r.max_inputs,
                    min_outputs: r.min_outputs,
                    max_outputs: r.max_outputs,
                    input_names: r.input_names,
                    input_options: r.input_options,
                    output_names: r.output_names,
                    attrs: r.attrs,
                    infer: rule.unwrap_or(rules::fallback),
                    has_rule: rule.is_some(),
                    traits: traits::table_entry(r.name),
                    summary: r.summary,
                }
            })
            .collect();
        let by_name = schemas
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name, i))
            .collect();
        Registry { schemas, by_name }
    })
}

/// The schema of an op by canonical name.
pub fn lookup(op: &str) -> Option<&'static OpSchema> {
    let r = registry();
    r.by_name.get(op).map(|&i| &r.schemas[i])
}

/// The traits of an op by canonical name ([`OpTraits::NONE`] for an op the
/// registry does not know).
pub fn traits(op: &str) -> OpTraits {
    lookup(op).map_or(OpTraits::NONE, |s| s.traits)
}

/// Every op of the registry, sorted by name.
pub fn all() -> impl Iterator<Item = &'static OpSchema> {
    registry().schemas.iter()
}

/// Everything an inference rule may look at.
#[derive(Debug)]
pub struct InferCtx<'a> {
    /// Canonical op name.
    pub op: &'a str,
    /// Node description for messages (`Conv "conv1"`).
    pub node: String,
    /// Operand types; `None` for an omitted optional operand.
    pub inputs: Vec<Option<&'a Type>>,
    /// Constant data of constant operands.
    pub consts: Vec<Option<&'a TensorData>>,
    /// Values of small integer operands computed from shapes (see
    /// [`IntValues`]); constants need not be repeated here.
    pub values: Vec<Option<IntValues>>,
    pub attrs: &'a Attrs,
    /// The number of results the node has.
    pub num_outputs: usize,
    /// The types already declared on the results (the fallback keeps them).
    pub declared: Vec<Option<&'a Type>>,
    /// For ops with regions: (attribute name, output types of that region),
    /// in attribute order; the caller infers regions first.
    pub regions: Vec<(&'a str, Vec<Type>)>,
}

/// Why a rule could not infer a node's result types.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    #[error("operand {index} ({what}) is required")]
    MissingInput { index: usize, what: &'static str },
    #[error("operand {index}: {msg}")]
    BadInput { index: usize, msg: String },
    #[error("attribute `{name}`: {msg}")]
    BadAttr { name: String, msg: String },
    #[error("{0}")]
    Invalid(String),
}

impl<'a> InferCtx<'a> {
    /// Build a context without regions or declared types (tests, passes).
    pub fn new(op: &'a str, inputs: Vec<Option<&'a Type>>, attrs: &'a Attrs) -> InferCtx<'a> {
        let n = inputs.len();
        InferCtx {
            op,
            node: op.to_string(),
            inputs,
            consts: vec![None; n],
            values: vec![None; n],
            attrs,
            num_outputs: lookup(op).map(|s| s.min_outputs.max(1)).unwrap_or(1),
            declared: vec![],
            regions: vec![],
        }
    }

    /// Run the registered rule.
    pub fn infer(&self) -> Result<Vec<Type>, InferError> {
        match lookup(self.op) {
            Some(s) => (s.infer)(self),
            None => Err(InferError::Invalid(format!("unknown op `{}`", self.op))),
        }
    }

    pub fn input(&self, i: usize) -> Option<&'a Type> {
        self.inputs.get(i).copied().flatten()
    }

    pub fn has_input(&self, i: usize) -> bool {
        self.input(i).is_some()
    }

    pub fn konst(&self, i: usize) -> Option<&'a TensorData> {
        self.consts.get(i).copied().flatten()
    }

    /// Integer values of an operand known at compile time: its constant
    /// data, or values propagated from static shapes (a `Slice` whose end
    /// is `Shape(x)[1]` with `x`'s dims known).
    pub fn const_ints(&self, i: usize) -> Option<Vec<i64>> {
        if let Some(d) = self.konst(i) {
            return d.to_i64_vec();
        }
        self.values
            .get(i)?
            .as_ref()?
            .iter()
            .map(|e| e.as_ref()?.as_const())
            .collect()
    }

    /// Element values of a small integer operand: from its constant data,
    /// or from shape-value propagation.
    pub fn int_values(&self, i: usize) -> Option<IntValues> {
        if let Some(d) = self.konst(i) {
            if d.shape.len() <= 1 && d.numel() <= values::MAX_VALUES {
                return Some(
                    d.to_i64_vec()?
                        .into_iter()
                        .map(|v| Some(SymExpr::constant(v)))
                        .collect(),
                );
            }
            return None;
        }
        self.values.get(i).cloned().flatten()
    }

    pub fn const_floats(&self, i: usize) -> Option<Vec<f64>> {
        self.konst(i)?.to_f64_vec()
    }

    pub fn attr(&self, name: &str) -> Option<&'a Attr> {
        self.attrs.get(name)
    }

    pub fn attr_int(&self, name: &str, default: i64) -> i64 {
        self.attr(name).and_then(Attr::as_int).unwrap_or(default)
    }

    pub fn attr_float(&self, name: &str, default: f32) -> f32 {
        self.attr(name).and_then(Attr::as_float).unwrap_or(default)
    }

    pub fn attr_str(&self, name: &str) -> Option<&'a str> {
        self.attr(name).and_then(Attr::as_str)
    }

    pub fn attr_ints(&self, name: &str) -> Option<&'a [i64]> {
        self.attr(name).and_then(Attr::as_ints)
    }

    /// Output types of the region held in attribute `name`.
    pub fn region(&self, name: &str) -> Option<&[Type]> {
        self.regions
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.as_slice())
    }
}

#[cfg(test)]
pub(crate) mod tests;
