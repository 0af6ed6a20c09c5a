//! Pass `simplify`: a table of local rewrite rules applied until none
//! matches. Each rule looks at one node (the *root* of its pattern, the last
//! node of the pattern in program order) and the values feeding it, and
//! proposes either "the root's result is just this existing value" or "one
//! new node takes the root's place". Rules only read the module; this file
//! owns the machinery that checks and applies a proposal (Cranelift's ISLE
//! split: a table of small rewrites, one engine).
//!
//! Why: exporters leave algebraic no-ops, shape round trips, BatchNorms
//! after convolutions and decomposed activations/normalizations in graphs.
//! Removing or recognizing them shrinks the graph and hands later passes
//! (fusion, backends) single ops they have fast kernels for.
//!
//! The rule families (one file each):
//! - [`identities`]: `x+0`, `x*1`, Identity, inference Dropout, no-op
//!   Cast/Transpose/Expand and reshape-like ops that keep the shape.
//! - [`chains`]: Transpose∘Transpose, chains of reshape-like ops.
//! - [`fold`]: BatchNormalization into Conv/Gemm/MatMul, MatMul+bias → Gemm.
//! - [`patterns`]: GELU (erf and tanh forms), LayerNorm, Softmax, HardSwish
//!   as exporters decompose them.
//!
//! Safety rules the engine enforces for every rule:
//! - a pattern's interior results must be used only inside the pattern
//!   (nothing is duplicated; the interior nodes are removed);
//! - a region output (graph outputs included) is never replaced by another
//!   value, so graph interfaces keep their names;
//! - a new node's inferred result types must be compatible with the types
//!   the root's results had;
//! - new nodes take the root's position and use only values defined before
//!   the pattern, so definition-before-use holds.
//!
//! Nested regions (If/Loop/Scan bodies) are simplified too, innermost first.
//! A value defined in a region is only visible in that region and the
//! regions nested in it, so use counts are computed per region subtree.

mod chains;
mod fold;
mod identities;
mod patterns;

use std::collections::HashMap;
use std::sync::Arc;

use kiln_ir::types::types_compatible;
use kiln_ir::{Attr, ElemType, Module, Node, Region, TensorData, Type, ValueId};

/// A rewrite rule: given the root node's index, propose a rewrite.
pub(crate) type Rule = fn(&mut Cx, usize) -> Option<Rewrite>;

/// The rule table, tried in order at every node.
pub(crate) const RULES: &[(&str, Rule)] = &[
    // identities
    ("identity", identities::identity),
    ("dropout-inference", identities::dropout),
    ("arith-identity", identities::arith_identity),
    ("noop-cast", identities::noop_cast),
    ("noop-transpose", identities::noop_transpose),
    ("noop-shape-op", identities::noop_shape_op),
    // chains
    ("transpose-transpose", chains::transpose_transpose),
    ("reshape-chain", chains::reshape_chain),
    // folds
    ("matmul-add-to-gemm", fold::matmul_add_to_gemm),
    ("bn-into-conv", fold::bn_into_conv),
    ("bn-into-gemm", fold::bn_into_gemm),
    // recognized patterns
    ("gelu-erf", patterns::gelu_erf),
    ("gelu-tanh", patterns::gelu_tanh),
    ("hardswish", patterns::hardswish),
    ("layernorm", patterns::layer_norm),
    ("softmax", patterns::softmax),
];

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut body = std::mem::take(&mut m.body);
    let r = simplify_region(m, &mut body);
    m.body = body;
    r
}

/// What a rule proposes.
pub(crate) struct Rewrite {
    /// Nodes of the matched pattern (indices in the region), root included.
    /// Every one but the root must have results used only inside the
    /// pattern; they are removed.
    pub pattern: Vec<usize>,
    pub action: Action,
}

pub(crate) enum Action {
    /// The root's first result equals this existing value (defined before
    /// the pattern). The root is removed; its other results must be unused.
    Replace(ValueId),
    /// This node replaces the root; its results are (a prefix of) the
    /// root's results, so users need no rewiring.
    Node(Node),
}

/// A use of a value defined in the current region.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Use {
    /// Operand of the region's node at this index.
    Node(usize),
    /// Used inside a region nested in the node at this index.
    Nested(usize),
    /// A region output (of this region or a nested one).
    Output,
}

/// What rules see: the module (values, types, constants), the region being
/// simplified, use lists and producers.
pub(crate) struct Cx<'a> {
    pub m: &'a mut Module,
    pub r: &'a Region,
    pub uses: HashMap<ValueId, Vec<Use>>,
    pub def: HashMap<ValueId, usize>,
    /// Constants a rule created (listed in the region if the rewrite is applied).
    pub new_consts: Vec<ValueId>,
}

impl Cx<'_> {
    pub fn node(&self, i: usize) -> &Node {
        &self.r.nodes[i]
    }

    /// The index of the node defining `v` in this region, if its op is `op`.
    pub fn producer(&self, v: ValueId, op: &str) -> Option<usize> {
        let &i = self.def.get(&v)?;
        (self.r.nodes[i].op == op).then_some(i)
    }

    /// Producer index of `v` whatever its op.
    pub fn producer_any(&self, v: ValueId) -> Option<usize> {
        self.def.get(&v).copied()
    }

    pub fn uses(&self, v: ValueId) -> &[Use] {
        self.uses.get(&v).map(|u| u.as_slice()).unwrap_or(&[])
    }

    pub fn unused(&self, v: ValueId) -> bool {
        self.uses(v).is_empty()
    }

    /// Is `v` used exactly once, by an operand of node `by`?
    pub fn single_use_by(&self, v: ValueId, by: usize) -> bool {
        self.uses(v) == [Use::Node(by)]
    }

    pub fn tensor_ty(&self, v: ValueId) -> Option<&kiln_ir::TensorType> {
        self.m.ty(v).as_tensor()
    }

    pub fn elem(&self, v: ValueId) -> Option<ElemType> {
        self.tensor_ty(v).map(|t| t.elem)
    }

    pub fn rank(&self, v: ValueId) -> Option<usize> {
        self.tensor_ty(v)?.rank()
    }

    /// Values of a numeric constant.
    pub fn const_f64(&self, v: ValueId) -> Option<Vec<f64>> {
        self.m.constant(v)?.to_f64_vec()
    }

    pub fn const_i64(&self, v: ValueId) -> Option<Vec<i64>> {
        self.m.constant(v)?.to_i64_vec()
    }

    /// The value of a constant whose elements are all equal (a splat).
    pub fn splat(&self, v: ValueId) -> Option<f64> {
        let vals = self.const_f64(v)?;
        let first = *vals.first()?;
        vals.iter()
            .all(|&x| x == first || (x.is_nan() && first.is_nan()))
            .then_some(first)
    }

    /// A one-element constant's value (a scalar however it is shaped).
    pub fn scalar(&self, v: ValueId) -> Option<f64> {
        let d = self.m.constant(v)?;
        if d.numel() != 1 {
            return None;
        }
        self.const_f64(v)?.first().copied()
    }

    /// Add a constant; it is listed in the region if the rewrite applies.
    pub fn new_const(&mut self, hint: &str, data: TensorData) -> ValueId {
        let id = self.m.add_constant_unique(hint, Arc::new(data));
        self.new_consts.push(id);
        id
    }

    pub fn name(&self, v: ValueId) -> &str {
        self.m.name(v)
    }
}

/// Is `a` close to `b` (relative tolerance, for constants exporters print).
pub(crate) fn approx(a: f64, b: f64, rtol: f64) -> bool {
    (a - b).abs() <= rtol * b.abs().max(1e-30)
}

/// A new node like `like` (keeping its source name) with other op/operands.
pub(crate) fn node_from(
    like: &Node,
    op: &str,
    inputs: Vec<Option<ValueId>>,
    outputs: Vec<ValueId>,
) -> Node {
    let mut n = Node::new(op, inputs, outputs);
    n.name = like.name.clone();
    n
}

pub(crate) fn attr_int(n: &Node, name: &str, default: i64) -> i64 {
    n.attr(name).and_then(Attr::as_int).unwrap_or(default)
}

pub(crate) fn attr_float(n: &Node, name: &str, default: f32) -> f32 {
    n.attr(name).and_then(Attr::as_float).unwrap_or(default)
}

/// Build a float constant of element type `elem` (f32/f64/f16/bf16).
pub(crate) fn float_data(elem: ElemType, shape: Vec<u64>, v: &[f64]) -> Option<TensorData> {
    if elem == ElemType::F32 {
        let bytes = kiln_ir::tensor::build_bytes(v.len() * 4, |b| {
            for (o, &x) in b.chunks_exact_mut(4).zip(v) {
                o.copy_from_slice(&(x as f32).to_le_bytes());
            }
        });
        return TensorData::from_bytes(elem, shape, bytes).ok();
    }
    let bytes: Vec<u8> = match elem {
        ElemType::F64 => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        ElemType::F16 => v
            .iter()
            .flat_map(|&x| half::f16::from_f64(x).to_le_bytes())
            .collect(),
        ElemType::BF16 => v
            .iter()
            .flat_map(|&x| half::bf16::from_f64(x).to_le_bytes())
            .collect(),
        _ => return None,
    };
    TensorData::from_bytes(elem, shape, bytes).ok()
}

fn simplify_region(m: &mut Module, r: &mut Region) -> Result<bool, String> {
    let mut changed = false;
    for n in &mut r.nodes {
        for sub in n.regions_mut() {
            changed |= simplify_region(m, sub)?;
        }
    }
    let mut start = 0usize;
    // Every applied rewrite removes a node or replaces one by a cheaper
    // form; the cap only guards against a rule pair that undoes itself.
    let mut budget = 16 * r.nodes.len() + 64;
    while budget > 0 {
        let Some((j, plan, consts)) = first_rewrite(m, r, start) else {
            break;
        };
        let removed_before = apply(r, j, plan);
        r.constants.extend(consts);
        // Patterns are rooted at their last node, so a rewrite at `j` can
        // only enable matches rooted at `j` or later.
        start = j - removed_before;
        changed = true;
        budget -= 1;
    }
    Ok(changed)
}

/// The first applicable rewrite rooted at or after `start`: root index,
/// checked plan and the constants it created.
fn first_rewrite(m: &mut Module, r: &Region, start: usize) -> Option<(usize, Plan, Vec<ValueId>)> {
    let (uses, def) = analyze(r);
    let mut cx = Cx {
        m,
        r,
        uses,
        def,
        new_consts: vec![],
    };
    for j in start..r.nodes.len() {
        for (_, rule) in RULES {
            cx.new_consts.clear();
            let Some(rw) = rule(&mut cx, j) else { continue };
            if let Some(plan) = check(&cx, j, rw) {
                return Some((j, plan, std::mem::take(&mut cx.new_consts)));
            }
        }
    }
    None
}

/// Use lists of values defined in `r` (uses can only be in `r`'s subtree)
/// and the producer of every node result.
fn analyze(r: &Region) -> (HashMap<ValueId, Vec<Use>>, HashMap<ValueId, usize>) {
    let mut uses: HashMap<ValueId, Vec<Use>> = HashMap::new();
    let mut def = HashMap::new();
    fn nested(r: &Region, at: usize, uses: &mut HashMap<ValueId, Vec<Use>>) {
        for n in &r.nodes {
            for v in n.inputs.iter().flatten() {
                uses.entry(*v).or_default().push(Use::Nested(at));
            }
            for (_, sub) in n.regions() {
                nested(sub, at, uses);
            }
        }
        for v in &r.outputs {
            uses.entry(*v).or_default().push(Use::Output);
        }
    }
    for (i, n) in r.nodes.iter().enumerate() {
        for v in n.inputs.iter().flatten() {
            uses.entry(*v).or_default().push(Use::Node(i));
        }
        for (_, sub) in n.regions() {
            nested(sub, i, &mut uses);
        }
        for &o in &n.outputs {
            def.insert(o, i);
        }
    }
    for v in &r.outputs {
        uses.entry(*v).or_default().push(Use::Output);
    }
    (uses, def)
}

/// A checked rewrite.
struct Plan {
    remove: Vec<usize>,
    action: Action,
}

/// The engine's safety checks (see the module doc).
fn check(cx: &Cx, j: usize, rw: Rewrite) -> Option<Plan> {
    let root = cx.node(j);
    let mut remove: Vec<usize> = rw.pattern.iter().copied().filter(|&i| i != j).collect();
    remove.sort_unstable();
    remove.dedup();
    if remove.iter().any(|&i| i >= j) {
        return None;
    }
    let in_pattern = |u: &Use| matches!(u, Use::Node(i) if *i == j || remove.contains(i));
    for &i in &remove {
        if cx.node(i).regions().next().is_some() {
            return None;
        }
        for &o in &cx.node(i).outputs {
            if !cx.uses(o).iter().all(in_pattern) {
                return None;
            }
        }
    }
    let interior = |v: ValueId| remove.iter().any(|&i| cx.node(i).outputs.contains(&v));
    match &rw.action {
        Action::Replace(new) => {
            let old = *root.outputs.first()?;
            if interior(*new) || *new == old {
                return None;
            }
            if cx.uses(old).contains(&Use::Output) {
                return None;
            }
            if root.outputs[1..].iter().any(|&o| !cx.unused(o)) {
                return None;
            }
            if !types_compatible(cx.m.ty(old), cx.m.ty(*new))
                && !types_compatible(cx.m.ty(*new), cx.m.ty(old))
            {
                return None;
            }
        }
        Action::Node(n) => {
            if n.inputs.iter().flatten().any(|&v| interior(v)) {
                return None;
            }
            if n.outputs.len() > root.outputs.len()
                || n.outputs[..] != root.outputs[..n.outputs.len()]
            {
                return None;
            }
            if root.outputs[n.outputs.len()..]
                .iter()
                .any(|&o| !cx.unused(o))
            {
                return None;
            }
            let inferred = kiln_ir::ops::infer_node(cx.m, n).ok()?;
            for (o, t) in n.outputs.iter().zip(&inferred) {
                if !types_compatible(cx.m.ty(*o), t) {
                    return None;
                }
            }
        }
    }
    Some(Plan {
        remove,
        action: rw.action,
    })
}

/// Apply a checked rewrite rooted at `j`; returns how many nodes before
/// `j` were removed.
fn apply(r: &mut Region, j: usize, plan: Plan) -> usize {
    match plan.action {
        Action::Replace(new) => {
            let old = r.nodes[j].outputs[0];
            for n in &mut r.nodes[j + 1..] {
                replace_in_node(n, old, new);
            }
            r.nodes.remove(j);
        }
        Action::Node(n) => r.nodes[j] = n,
    }
    for &i in plan.remove.iter().rev() {
        r.nodes.remove(i);
    }
    plan.remove.len()
}

fn replace_in_node(n: &mut Node, old: ValueId, new: ValueId) {
    for v in n.inputs.iter_mut().flatten() {
        if *v == old {
            *v = new;
        }
    }
    for sub in n.regions_mut() {
        for m in &mut sub.nodes {
            replace_in_node(m, old, new);
        }
        for v in &mut sub.outputs {
            if *v == old {
                *v = new;
            }
        }
    }
}

/// Both tensor types with the same element type and the same shape, every
/// dim known or symbolic (symbolic dims compare algebraically).
pub(crate) fn same_shape(a: &Type, b: &Type) -> bool {
    match (a.as_tensor(), b.as_tensor()) {
        (Some(x), Some(y)) => {
            x.elem == y.elem
                && match (&x.shape, &y.shape) {
                    (Some(p), Some(q)) => {
                        p.len() == q.len()
                            && p.iter()
                                .zip(q)
                                .all(|(d, e)| d == e && *d != kiln_ir::Dim::Unknown)
                    }
                    _ => false,
                }
        }
        _ => false,
    }
}

/// Does broadcasting the constant `c` against `x` leave `x`'s shape (and
/// element type) unchanged? (`c`'s dims, right-aligned, are 1 or equal a
/// known dim of `x`.)
pub(crate) fn broadcasts_into(cx: &Cx, c: ValueId, x: ValueId) -> bool {
    let (Some(ct), Some(xt)) = (cx.tensor_ty(c), cx.tensor_ty(x)) else {
        return false;
    };
    if ct.elem != xt.elem {
        return false;
    }
    let (Some(cs), Some(xs)) = (ct.static_shape(), xt.shape.as_ref()) else {
        return false;
    };
    if cs.len() > xs.len() {
        return false;
    }
    cs.iter()
        .rev()
        .zip(xs.iter().rev())
        .all(|(&c, x)| c == 1 || x.as_known() == Some(c))
}
