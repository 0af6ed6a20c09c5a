//! Op traits: the facts about an op that passes and backends ask about —
//! is it pointwise, which operand may its result overwrite, is it random,
//! which operand is its weight — kept in ONE table, [`TABLE`], and attached
//! to every schema ([`super::OpSchema::traits`], [`super::traits`]).
//!
//! Passes read these facts instead of keeping their own op lists: fusion
//! (`compiler/src/passes/fuse/rules.rs`: pointwise, channelwise, reduction,
//! contraction), memory planning (`memory_plan.rs`: in-place operands,
//! random), constant folding (`constant_fold.rs`: random, weights,
//! data-dependent shapes, views) and CSE (random). Adding an op means one
//! line here next to its inference rule; `tests.rs` checks the table
//! against the registry and the inference rules (a pointwise op infers the
//! broadcast of its operands, an op ONNX calls element-wise is pointwise).
//!
//! The table states facts about the op, not what some backend can
//! generate: whether a fused kernel can be compiled is the backend's
//! business (it falls back to the interpreter when it cannot).
//!
//! Facts that depend on a node's attributes or operands (Dropout is random
//! only in training mode, a `kiln.Fusion` is pointwise only when its `kind`
//! is `elementwise`) are encoded as data here ([`Random::WhenOperandSet`])
//! or resolved per node by [`of_node`] and [`is_random`].

use std::ops::Range;

use crate::attr::Attr;
use crate::module::{Module, Node};

/// How each element of the result depends on the operands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pointwise {
    /// Not pointwise.
    #[default]
    No,
    /// Element i of the (only) result depends on element i of operand 0
    /// and nothing else of it; the other operands, if any, are parameters
    /// (Clip's bounds, CastLike's type witness). The result has operand 0's
    /// shape.
    Unary,
    /// Element i of the result depends on element i of every operand,
    /// broadcast numpy-style to the result's shape, and on nothing else
    /// (Add, Where, Sum, PRelu).
    Broadcast,
}

/// Whether an op's results are random draws (not a function of its
/// operands): such nodes are never constant-folded or merged by CSE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Random {
    #[default]
    Never,
    Always,
    /// Random when operand `k` is given and is not known to be all zeros
    /// (Dropout's `training_mode`: a non-constant flag counts as set).
    WhenOperandSet(usize),
}

/// Whether an op reads whole runs of its operand along axes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    #[default]
    No,
    /// Operand 0's values combined along `axes` into fewer (or size-1)
    /// dims, in operand 0's element type: the `Reduce*` ops. (ArgMax and
    /// ArgMin select an index instead; they are not this.)
    Reduce,
    /// The result has operand 0's shape, and element i depends on the run
    /// of operand 0 along the `axis` attribute's axis (LayerNormalization:
    /// that axis and the ones after it) plus per-position parameters:
    /// Softmax, LogSoftmax, LpNormalization, LayerNormalization.
    Normalize,
}

/// The facts about one op. `OpTraits::NONE` (the default) is right for an
/// op none of them applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpTraits {
    /// Pointwise with broadcasting; which operands a result may overwrite
    /// follows from it ([`OpTraits::in_place_operands`]).
    pub pointwise: Pointwise,
    /// A per-channel affine map of operand 0 when the `training_mode`
    /// attribute is 0 (BatchNormalization in inference mode): element i
    /// depends on element i of operand 0 and on the parameters of its
    /// channel (axis 1). Not pointwise in the broadcasting sense: the
    /// parameters have shape `[C]`, which does not broadcast numpy-style.
    pub channelwise: bool,
    /// Random draws: never folded or merged. See [`is_random`] for a node.
    pub random: Random,
    /// The result describes operand 0's shape and never reads its data
    /// (Shape, Size): known whenever that shape is static.
    pub shape_only: bool,
    /// The result is operand 0's data unchanged, under another shape
    /// (Identity and the reshapes): may share the operand's bytes.
    pub view: bool,
    /// The operands holding learned weights (the right-hand matrix, the
    /// filters, the recurrent matrices), usually constants a backend
    /// prepares once.
    pub weights: &'static [usize],
    /// A matrix product or convolution in the operands' element type: each
    /// result element is a sum of products over a contracted dim (MatMul,
    /// Gemm, Conv, ConvTranspose, DeformConv, and `kiln.DequantMatMul`,
    /// whose result has A's type). The integer and quantized forms, whose
    /// results change type, are not.
    pub contraction: bool,
    /// Each result element is an element of the data operands (operand
    /// 0; every operand of Concat), moved or chosen without arithmetic:
    /// the views, Transpose, Slice, Gather, Concat, Expand,
    /// DepthToSpace, SpaceToDepth, and MaxPool/GlobalMaxPool (a maximum
    /// picks one element, and commutes with any increasing map). On
    /// quantized values such an op keeps their scale and zero point.
    pub selects: bool,
    /// See [`Reduction`].
    pub reduction: Reduction,
    /// The result's shape can depend on operand values (NonZero, Unique,
    /// Compress, TopK's k) or string contents (StringSplit), so inference
    /// may not know it even when every operand is a constant.
    pub data_dependent_shape: bool,
}

impl OpTraits {
    /// No trait applies.
    pub const NONE: OpTraits = OpTraits {
        pointwise: Pointwise::No,
        channelwise: false,
        random: Random::Never,
        shape_only: false,
        view: false,
        weights: &[],
        contraction: false,
        selects: false,
        reduction: Reduction::No,
        data_dependent_shape: false,
    };

    pub fn is_pointwise(&self) -> bool {
        self.pointwise != Pointwise::No
    }

    /// The operand positions whose buffers a result may take over (when
    /// the operand has the result's size and this node is its last use):
    /// operand 0 of a unary pointwise op or of a view (its bytes are the
    /// result's), any operand of a broadcasting one, none otherwise.
    /// Element i is read before element i is written and by nobody else,
    /// so writing in place is safe.
    pub fn in_place_operands(&self, num_operands: usize) -> Range<usize> {
        if self.view {
            return 0..num_operands.min(1);
        }
        match self.pointwise {
            Pointwise::No => 0..0,
            Pointwise::Unary => 0..num_operands.min(1),
            Pointwise::Broadcast => 0..num_operands,
        }
    }
}

impl Default for OpTraits {
    fn default() -> OpTraits {
        OpTraits::NONE
    }
}

const UNARY: OpTraits = OpTraits {
    pointwise: Pointwise::Unary,
    ..OpTraits::NONE
};
const BROADCAST: OpTraits = OpTraits {
    pointwise: Pointwise::Broadcast,
    ..OpTraits::NONE
};
const RANDOM: OpTraits = OpTraits {
    random: Random::Always,
    ..OpTraits::NONE
};
const VIEW: OpTraits = OpTraits {
    view: true,
    selects: true,
    ..OpTraits::NONE
};
const SELECT: OpTraits = OpTraits {
    selects: true,
    ..OpTraits::NONE
};
const SHAPE_ONLY: OpTraits = OpTraits {
    shape_only: true,
    ..OpTraits::NONE
};
const REDUCE: OpTraits = OpTraits {
    reduction: Reduction::Reduce,
    ..OpTraits::NONE
};
const NORMALIZE: OpTraits = OpTraits {
    reduction: Reduction::Normalize,
    ..OpTraits::NONE
};
const DATA_DEPENDENT: OpTraits = OpTraits {
    data_dependent_shape: true,
    ..OpTraits::NONE
};
/// A float matrix product or convolution whose operand 1 is the weight.
const CONTRACTION: OpTraits = OpTraits {
    contraction: true,
    weights: &[1],
    ..OpTraits::NONE
};
const fn weights(w: &'static [usize]) -> OpTraits {
    OpTraits {
        weights: w,
        ..OpTraits::NONE
    }
}

/// Every op with a trait, sorted by name; ops not here have
/// [`OpTraits::NONE`].
pub(super) static TABLE: &[(&str, OpTraits)] = &[
    ("Abs", UNARY),
    ("Acos", UNARY),
    ("Acosh", UNARY),
    ("Add", BROADCAST),
    ("And", BROADCAST),
    ("Asin", UNARY),
    ("Asinh", UNARY),
    ("Atan", UNARY),
    ("Atanh", UNARY),
    (
        "BatchNormalization",
        OpTraits {
            channelwise: true,
            ..OpTraits::NONE
        },
    ),
    ("Bernoulli", RANDOM),
    ("BitShift", BROADCAST),
    ("BitwiseAnd", BROADCAST),
    ("BitwiseNot", UNARY),
    ("BitwiseOr", BROADCAST),
    ("BitwiseXor", BROADCAST),
    ("Cast", UNARY),
    ("CastLike", UNARY),
    ("Ceil", UNARY),
    ("Celu", UNARY),
    ("Clip", UNARY),
    ("Compress", DATA_DEPENDENT),
    ("Concat", SELECT),
    ("Conv", CONTRACTION),
    ("ConvInteger", weights(&[1])),
    ("ConvTranspose", CONTRACTION),
    ("Cos", UNARY),
    ("Cosh", UNARY),
    ("DeformConv", CONTRACTION),
    ("DepthToSpace", SELECT),
    ("Div", BROADCAST),
    (
        "Dropout",
        OpTraits {
            random: Random::WhenOperandSet(2),
            ..OpTraits::NONE
        },
    ),
    ("Elu", UNARY),
    ("Equal", BROADCAST),
    ("Erf", UNARY),
    ("Exp", UNARY),
    ("Expand", SELECT),
    ("Flatten", VIEW),
    ("Floor", UNARY),
    ("GRU", weights(&[1, 2])),
    ("Gather", SELECT),
    ("Gelu", UNARY),
    ("Gemm", CONTRACTION),
    ("GlobalMaxPool", SELECT),
    ("Greater", BROADCAST),
    ("GreaterOrEqual", BROADCAST),
    ("HardSigmoid", UNARY),
    ("HardSwish", UNARY),
    (
        "Identity",
        OpTraits {
            view: true,
            selects: true,
            ..UNARY
        },
    ),
    ("IsInf", UNARY),
    ("IsNaN", UNARY),
    ("LSTM", weights(&[1, 2])),
    ("LayerNormalization", NORMALIZE),
    ("LeakyRelu", UNARY),
    ("Less", BROADCAST),
    ("LessOrEqual", BROADCAST),
    ("Log", UNARY),
    ("LogSoftmax", NORMALIZE),
    ("LpNormalization", NORMALIZE),
    ("MatMul", CONTRACTION),
    ("MatMulInteger", weights(&[1])),
    ("Max", BROADCAST),
    ("MaxPool", SELECT),
    ("Mean", BROADCAST),
    ("Min", BROADCAST),
    ("Mish", UNARY),
    ("Mod", BROADCAST),
    ("Mul", BROADCAST),
    ("Multinomial", RANDOM),
    ("Neg", UNARY),
    ("NonZero", DATA_DEPENDENT),
    ("Not", UNARY),
    ("Or", BROADCAST),
    ("PRelu", BROADCAST),
    ("Pow", BROADCAST),
    ("QLinearConv", weights(&[3])),
    ("QLinearMatMul", weights(&[3])),
    ("RNN", weights(&[1, 2])),
    ("RandomNormal", RANDOM),
    ("RandomNormalLike", RANDOM),
    ("RandomUniform", RANDOM),
    ("RandomUniformLike", RANDOM),
    ("Reciprocal", UNARY),
    ("ReduceL1", REDUCE),
    ("ReduceL2", REDUCE),
    ("ReduceLogSum", REDUCE),
    ("ReduceLogSumExp", REDUCE),
    ("ReduceMax", REDUCE),
    ("ReduceMean", REDUCE),
    ("ReduceMin", REDUCE),
    ("ReduceProd", REDUCE),
    ("ReduceSum", REDUCE),
    ("ReduceSumSquare", REDUCE),
    ("RegexFullMatch", UNARY),
    ("Relu", UNARY),
    ("Reshape", VIEW),
    ("Round", UNARY),
    ("Selu", UNARY),
    ("Shape", SHAPE_ONLY),
    ("Shrink", UNARY),
    ("Sigmoid", UNARY),
    ("Sign", UNARY),
    ("Sin", UNARY),
    ("Sinh", UNARY),
    ("Size", SHAPE_ONLY),
    ("Slice", SELECT),
    ("Softmax", NORMALIZE),
    ("Softplus", UNARY),
    ("Softsign", UNARY),
    ("SpaceToDepth", SELECT),
    ("Sqrt", UNARY),
    ("Squeeze", VIEW),
    ("StringConcat", BROADCAST),
    ("StringSplit", DATA_DEPENDENT),
    ("Sub", BROADCAST),
    ("Sum", BROADCAST),
    ("Swish", UNARY),
    ("Tan", UNARY),
    ("Tanh", UNARY),
    ("ThresholdedRelu", UNARY),
    ("TopK", DATA_DEPENDENT),
    ("Transpose", SELECT),
    ("Unique", DATA_DEPENDENT),
    ("Unsqueeze", VIEW),
    ("Where", BROADCAST),
    ("Xor", BROADCAST),
    ("ai.onnx.ml.Binarizer", UNARY),
    ("kiln.DequantLSTM", weights(&[1, 2])),
    ("kiln.DequantMatMul", CONTRACTION),
    ("kiln.FusedConv", CONTRACTION),
];

/// The table's entry for `op` (binary search: the table is sorted). The
/// registry attaches it to `op`'s schema, so it is also
/// [`super::traits`]`(op)`; this module reads the table directly, below
/// the registry.
pub(super) fn table_entry(op: &str) -> OpTraits {
    TABLE
        .binary_search_by(|(name, _)| (*name).cmp(op))
        .map(|i| TABLE[i].1)
        .unwrap_or(OpTraits::NONE)
}

/// The `kind` of a `kiln.Fusion` that makes it pointwise.
const FUSION_ELEMENTWISE: &str = "elementwise";

/// The traits of a node: its op's, refined by what its attributes say. A
/// `kiln.Fusion` whose `kind` is `elementwise` is pointwise with
/// broadcasting (its body is pointwise ops only).
pub fn of_node(node: &Node) -> OpTraits {
    if node.op == "kiln.Fusion" {
        return match node.attr("kind") {
            Some(Attr::String(k)) if k == FUSION_ELEMENTWISE => BROADCAST,
            _ => OpTraits::NONE,
        };
    }
    table_entry(&node.op)
}

/// Whether `node`'s results are random draws: its op is random, or random
/// unless an operand says otherwise and that operand is not a constant of
/// zeros (`Dropout` with `training_mode` absent or constant false is not).
pub fn is_random(m: &Module, node: &Node) -> bool {
    match table_entry(&node.op).random {
        Random::Never => false,
        Random::Always => true,
        Random::WhenOperandSet(k) => match node.input(k) {
            None => false,
            Some(v) => match m.constant(v).and_then(|d| d.to_i64_vec()) {
                Some(vals) => vals.iter().any(|&x| x != 0),
                None => true,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attr::{Attr, Attrs};
    use crate::ops::{all, lookup, InferCtx};
    use crate::types::{Dim, ElemType, Type};

    fn shape(t: &Type) -> Option<Vec<Dim>> {
        t.as_tensor()?.shape.clone()
    }

    fn known(v: &[u64]) -> Vec<Dim> {
        v.iter().map(|&d| Dim::Known(d)).collect()
    }

    /// The element type a probe of `op` feeds it.
    fn probe_elem(op: &str) -> ElemType {
        match op {
            "And" | "Or" | "Xor" | "Not" => ElemType::Bool,
            "BitShift" => ElemType::U32,
            "BitwiseAnd" | "BitwiseOr" | "BitwiseXor" | "BitwiseNot" => ElemType::I32,
            "StringConcat" | "RegexFullMatch" => ElemType::String,
            _ => ElemType::F32,
        }
    }

    fn probe_attrs(op: &str) -> Attrs {
        let mut a = Attrs::default();
        match op {
            "Cast" => a.insert("to".into(), Attr::Int(10)),
            "BitShift" => a.insert("direction".into(), Attr::String("LEFT".into())),
            _ => None,
        };
        a
    }

    #[test]
    fn table_is_sorted_and_names_registered_ops() {
        for pair in TABLE.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        for (op, t) in TABLE {
            let s = lookup(op).unwrap_or_else(|| panic!("{op} is not in the registry"));
            assert_eq!(s.traits, *t, "{op}: the schema carries the table's traits");
            assert_eq!(crate::ops::traits(op), *t);
            assert_ne!(*t, OpTraits::NONE, "{op}: an entry without a trait");
            for &w in t.weights {
                assert!(w < s.max_inputs, "{op}: weight operand {w} out of range");
            }
            if let Random::WhenOperandSet(k) = t.random {
                assert!(s.input_optional(k), "{op}: operand {k} is not optional");
            }
        }
        assert_eq!(crate::ops::traits("NoSuchOp"), OpTraits::NONE);
    }

    #[test]
    fn ops_onnx_calls_element_wise_are_pointwise() {
        for s in all() {
            let doc = s.summary().to_ascii_lowercase();
            if doc.contains("element-wise") || doc.contains("elementwise") {
                assert!(s.traits.is_pointwise(), "{} is element-wise", s.name);
            }
        }
    }

    /// A pointwise op infers the broadcast of its operands' shapes: a unary
    /// one (parameters given as scalars) keeps operand 0's shape, a
    /// broadcasting one gives `[2,1,4] x [3,1] (x [4]) -> [2,3,4]`.
    #[test]
    fn pointwise_ops_infer_the_broadcast_of_their_operands() {
        for (op, t) in TABLE.iter().filter(|(_, t)| t.is_pointwise()) {
            let s = lookup(op).unwrap();
            assert!(s.has_rule, "{op} has no inference rule");
            let e = probe_elem(op);
            let attrs = probe_attrs(op);
            let operands: Vec<Type> = match t.pointwise {
                Pointwise::Unary => {
                    let mut v = vec![Type::tensor(e, known(&[2, 3, 4]))];
                    for _ in 1..s.min_inputs {
                        v.push(Type::tensor(ElemType::F16, vec![]));
                    }
                    v
                }
                _ => {
                    // PRelu's slope broadcasts to X only.
                    let first = if *op == "PRelu" { [2, 3, 4] } else { [2, 1, 4] };
                    let mut v = vec![
                        Type::tensor(e, known(&first)),
                        Type::tensor(e, known(&[3, 1])),
                    ];
                    if *op == "Where" {
                        v[0] = Type::tensor(ElemType::Bool, known(&first));
                    }
                    if s.max_inputs > 2 {
                        v.push(Type::tensor(e, known(&[4])));
                    }
                    v
                }
            };
            let ctx = InferCtx::new(op, operands.iter().map(Some).collect(), &attrs);
            let got = ctx.infer().unwrap_or_else(|e| panic!("{op}: {e}"));
            assert_eq!(got.len(), 1, "{op}: one result");
            assert_eq!(shape(&got[0]), Some(known(&[2, 3, 4])), "{op}");
        }
    }

    /// The converse, for binary ops: an op that broadcasts two operands
    /// like a pointwise op is marked pointwise (or is known not to be).
    #[test]
    fn binary_ops_that_broadcast_are_pointwise() {
        let attrs = Attrs::default();
        let a = Type::tensor(ElemType::F32, known(&[2, 1, 4]));
        let b = Type::tensor(ElemType::F32, known(&[3, 1]));
        for s in all() {
            if s.traits.is_pointwise() || s.min_inputs > 2 || s.max_inputs < 2 {
                continue;
            }
            let ctx = InferCtx::new(s.name, vec![Some(&a), Some(&b)], &attrs);
            if let Ok(got) = ctx.infer() {
                assert!(
                    got.first().and_then(shape) != Some(known(&[2, 3, 4])),
                    "{} broadcasts its operands but is not marked pointwise",
                    s.name
                );
            }
        }
    }

    #[test]
    fn in_place_operands_follow_pointwise() {
        let t = |op: &str| crate::ops::traits(op);
        assert_eq!(t("Relu").in_place_operands(1), 0..1);
        assert_eq!(t("Clip").in_place_operands(3), 0..1);
        assert_eq!(t("Add").in_place_operands(2), 0..2);
        assert_eq!(t("Sum").in_place_operands(4), 0..4);
        assert_eq!(t("Softmax").in_place_operands(1), 0..0);
        assert_eq!(t("Reshape").in_place_operands(2), 0..1);
        assert_eq!(t("BatchNormalization").in_place_operands(5), 0..0);
        // Shrink, BitShift and the Bitwise ops are pointwise.
        for op in ["Shrink", "BitShift", "BitwiseAnd", "BitwiseNot", "Identity"] {
            assert!(t(op).is_pointwise(), "{op}");
        }
    }

    #[test]
    fn random_nodes() {
        let m = crate::parse_module(
            r#"module @r opset(ai.onnx = 22) {
  input %x: f32[2]
  input %flag: bool[]
  const %ratio: f32[] = dense[0.5]
  const %on: bool[] = dense[true]
  const %off: bool[] = dense[false]
  %a, %am = Dropout(%x) : f32[2], bool[2]
  %b, %bm = Dropout(%x, %ratio, %off) : f32[2], bool[2]
  %c, %cm = Dropout(%x, %ratio, %on) : f32[2], bool[2]
  %d, %dm = Dropout(%x, %ratio, %flag) : f32[2], bool[2]
  %e = RandomUniformLike(%x) : f32[2]
  %f = Relu(%x) : f32[2]
  return %a, %b, %c, %d, %e, %f
}"#,
        )
        .expect("parse");
        let got: Vec<bool> = m.body.nodes.iter().map(|n| is_random(&m, n)).collect();
        assert_eq!(got, [false, false, true, true, true, false]);
    }

    #[test]
    fn elementwise_fusions_are_pointwise() {
        let mut n = crate::module::Node::new("kiln.Fusion", vec![], vec![]);
        assert_eq!(of_node(&n), OpTraits::NONE);
        n.attrs
            .insert("kind".into(), Attr::String("elementwise".into()));
        assert_eq!(of_node(&n).pointwise, Pointwise::Broadcast);
        n.attrs
            .insert("kind".into(), Attr::String("reduction".into()));
        assert!(!of_node(&n).is_pointwise());
    }
}
