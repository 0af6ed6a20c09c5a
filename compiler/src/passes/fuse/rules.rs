//! The fusion rules of pass `fuse`: which ops are fusible (their class) and
//! the table of grouping rules, one small function each. The machinery
//! that applies them and rewrites the module is in `mod.rs`.
//!
//! Every rule keeps one invariant of a group: only its root's results are
//! used outside it (every other member has all its users inside). With
//! that, a group never needs a value computed after its root, so fusing
//! cannot create a cycle, and nothing is recomputed: a value with users in
//! several groups is a group output.

use kiln_ir::{Module, Node, Type};

use super::Plan;

/// How the pass sees an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Pointwise (with broadcasting): unary math, binary arithmetic and
    /// comparisons, Where, Clip, activations, Cast, inference-mode
    /// BatchNormalization (a per-channel affine map).
    Elementwise,
    /// Reductions and Softmax / LogSoftmax / LayerNormalization: may absorb
    /// their elementwise producers, and end their group.
    Reduction,
    /// MatMul / Gemm / Conv / ConvTranspose: may take an elementwise
    /// epilogue (bias, activation, residual) on their output.
    Anchor,
    /// Anything else (not fused).
    Other,
}

/// The kind a group has (the `kind` attribute of its `kiln.Fusion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Elementwise,
    Reduction,
    Epilogue,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Elementwise => "elementwise",
            Kind::Reduction => "reduction",
            Kind::Epilogue => "epilogue",
        }
    }
}

const ELEMENTWISE: &[&str] = &[
    // unary math
    "Abs",
    "Acos",
    "Acosh",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "Ceil",
    "Cos",
    "Cosh",
    "Erf",
    "Exp",
    "Floor",
    "IsInf",
    "IsNaN",
    "Log",
    "Neg",
    "Not",
    "Reciprocal",
    "Round",
    "Sign",
    "Sin",
    "Sinh",
    "Sqrt",
    "Tan",
    "Tanh",
    // activations
    "Celu",
    "Elu",
    "Gelu",
    "HardSigmoid",
    "HardSwish",
    "LeakyRelu",
    "Mish",
    "PRelu",
    "Relu",
    "Selu",
    "Sigmoid",
    "Softplus",
    "Softsign",
    "ThresholdedRelu",
    // binary and variadic, broadcasting
    "Add",
    "And",
    "Div",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Max",
    "Mean",
    "Min",
    "Mod",
    "Mul",
    "Or",
    "Pow",
    "Sub",
    "Sum",
    "Xor",
    // others
    "Cast",
    "CastLike",
    "Clip",
    "Where",
    "BatchNormalization",
];

const REDUCTION: &[&str] = &[
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
];

const ANCHOR: &[&str] = &["MatMul", "Gemm", "Conv", "ConvTranspose"];

/// The class of a node, or why it is not fusible.
pub fn classify(m: &Module, n: &Node) -> Result<Class, String> {
    let op = n.op.as_str();
    let class = if ELEMENTWISE.contains(&op) {
        Class::Elementwise
    } else if REDUCTION.contains(&op) {
        Class::Reduction
    } else if ANCHOR.contains(&op) {
        Class::Anchor
    } else if op == "kiln.Fusion" {
        return Err("already a fusion".into());
    } else {
        return Err(format!(
            "{op} is not elementwise, a reduction or a matmul/conv"
        ));
    };
    let results = match class {
        Class::Reduction => !n.outputs.is_empty(),
        _ => n.outputs.len() == 1,
    };
    if !results {
        return Err(format!("{op} with {} results", n.outputs.len()));
    }
    if op == "BatchNormalization"
        && n.attr("training_mode")
            .and_then(|a| a.as_int())
            .unwrap_or(0)
            != 0
    {
        return Err("training-mode BatchNormalization".into());
    }
    if class == Class::Elementwise {
        // Integer scalars and vectors are shape arithmetic: keep them as
        // they are so shape values still propagate to Reshape & co.
        match m.ty(n.outputs[0]) {
            Type::Tensor(t) => {
                let int = t.elem.is_int();
                if int && t.rank().is_some_and(|r| r <= 1) {
                    return Err(format!(
                        "{op} on integer rank<=1 values is shape arithmetic"
                    ));
                }
            }
            _ => return Err(format!("{op} on a non-tensor value")),
        }
    }
    Ok(class)
}

/// What a rule decides for one node: merge group `from` into group `into`,
/// the merged group having `kind` (and, for epilogues, the anchor node).
pub struct Merge {
    pub from: usize,
    pub into: usize,
    pub kind: Kind,
    pub anchor: Option<usize>,
}

/// A grouping rule: looks at node `i` of the plan's region.
pub type RuleFn = fn(&Plan, usize) -> Vec<Merge>;

/// In which order a rule visits the nodes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Consumers before producers (a producer joins its consumers' group).
    Backward,
    /// Producers before consumers.
    Forward,
}

/// The rules, applied one after the other, each over the whole region.
pub const RULES: &[(&str, Order, RuleFn)] = &[
    (
        "elementwise producer joins its consumers",
        Order::Backward,
        elementwise_into_consumers,
    ),
    (
        "reduction absorbs its elementwise producers",
        Order::Forward,
        reduction_absorbs_producers,
    ),
    (
        "matmul/conv takes an elementwise epilogue",
        Order::Forward,
        epilogue,
    ),
];

/// (1) An elementwise node joins the group of its consumers when all of
/// them are elementwise and in one group, and its result is not a region
/// output: chains and DAGs (a value used twice inside, like `x * sigmoid(x)`)
/// become one group.
fn elementwise_into_consumers(p: &Plan, i: usize) -> Vec<Merge> {
    if p.class[i] != Ok(Class::Elementwise) {
        return vec![];
    }
    let v = p.nodes[i].outputs[0];
    let Some(g) = p.sole_user_group(v) else {
        return vec![];
    };
    if !p.is_elementwise_group(g) {
        return vec![];
    }
    vec![Merge {
        from: p.group_of[i],
        into: g,
        kind: Kind::Elementwise,
        anchor: None,
    }]
}

/// (2) A reduction (or Softmax, LogSoftmax, LayerNormalization) absorbs
/// each elementwise group whose root result it alone uses.
fn reduction_absorbs_producers(p: &Plan, i: usize) -> Vec<Merge> {
    if p.class[i] != Ok(Class::Reduction) {
        return vec![];
    }
    let mut out = vec![];
    let mut seen = vec![];
    for v in p.nodes[i].inputs.iter().flatten() {
        let Some(&d) = p.def.get(v) else { continue };
        let g = p.group_of[d];
        if seen.contains(&g) || g == p.group_of[i] {
            continue;
        }
        seen.push(g);
        if p.is_elementwise_group(g)
            && p.groups[g].root == d
            && p.sole_user_group(*v) == Some(p.group_of[i])
        {
            out.push(Merge {
                from: g,
                into: p.group_of[i],
                kind: Kind::Reduction,
                anchor: None,
            });
        }
    }
    out
}

/// (3) A MatMul/Gemm/Conv/ConvTranspose whose result has one user, in an
/// elementwise group, becomes that group's root op: bias Add, activation
/// and residual Add applied to its output in the same kernel.
fn epilogue(p: &Plan, i: usize) -> Vec<Merge> {
    if p.class[i] != Ok(Class::Anchor) {
        return vec![];
    }
    let v = p.nodes[i].outputs[0];
    if p.users_of(v).len() != 1 {
        return vec![];
    }
    let Some(g) = p.sole_user_group(v) else {
        return vec![];
    };
    if !p.is_elementwise_group(g) || p.groups[g].anchor.is_some() {
        return vec![];
    }
    vec![Merge {
        from: p.group_of[i],
        into: g,
        kind: Kind::Epilogue,
        anchor: Some(i),
    }]
}
