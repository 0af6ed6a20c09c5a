//! The registry's vocabulary: what an op's schema says ([`OpSchema`],
//! [`AttrSpec`], [`ParamOption`], and [`RawSchema`], the generated part)
//! and what an inference rule sees and returns ([`InferCtx`],
//! [`InferError`], [`IntValues`]). The generated table, the rule files,
//! shape-value propagation and the registry itself all import from here.

use super::traits::OpTraits;
use crate::attr::{Attr, AttrKind, Attrs};
use crate::tensor::TensorData;
use crate::types::{SymExpr, Type};

/// The element values of a small integer tensor (rank <= 1), each a
/// polynomial over the module's symbols (`None`: that element is unknown).
/// Carries shape arithmetic like `Shape -> Gather -> Concat -> Reshape`.
pub type IntValues = Vec<Option<SymExpr>>;

/// Tensors with more elements than this are not tracked as [`IntValues`].
pub(crate) const MAX_VALUES: u64 = 64;

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
    pub(super) summary: &'static str,
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
    /// Bit i is set once the rule asked for operand i's values (its
    /// constant data or propagated shape values): the operands whose
    /// values, not only their shapes, decide the result types
    /// ([`crate::ops::value_operands`]).
    pub value_reads: std::cell::Cell<u64>,
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
    pub fn input(&self, i: usize) -> Option<&'a Type> {
        self.inputs.get(i).copied().flatten()
    }

    pub fn has_input(&self, i: usize) -> bool {
        self.input(i).is_some()
    }

    pub fn konst(&self, i: usize) -> Option<&'a TensorData> {
        self.value_reads
            .set(self.value_reads.get() | 1u64.checked_shl(i as u32).unwrap_or(0));
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
            if d.shape.len() <= 1 && d.numel() <= MAX_VALUES {
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
