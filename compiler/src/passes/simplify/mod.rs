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
//! What rules see and propose ([`cx::Cx`], [`cx::Rewrite`], [`cx::Action`])
//! and their shared helpers live in [`cx`], which the rule files and this
//! engine both import: rules never import the engine.
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
//! Memory: a constant that only the pattern read leaves the region (and its
//! data is freed) as the rewrite is applied, and constants the rules make
//! share the data of equal ones ([`kiln_ir::ConstantPool`]): folding
//! BatchNormalization into every conv of a model would otherwise hold the
//! old and the new filters side by side until the pass ends.
//!
//! Nested regions (If/Loop/Scan bodies) are simplified too, innermost first.
//! A value defined in a region is only visible in that region and the
//! regions nested in it, so use counts are computed per region subtree.

mod chains;
pub(crate) mod cx;
mod fold;
mod identities;
mod patterns;

use std::collections::HashMap;

use kiln_ir::types::types_compatible;
use kiln_ir::{Module, Node, Region, ValueId};

use cx::{Action, Cx, Rewrite, Use};

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
    let mut pool = kiln_ir::ConstantPool::of_module(m);
    let mut body = std::mem::take(&mut m.body);
    let r = simplify_region(m, &mut body, &mut pool);
    m.body = body;
    r
}

fn simplify_region(
    m: &mut Module,
    r: &mut Region,
    pool: &mut kiln_ir::ConstantPool,
) -> Result<bool, String> {
    let mut changed = false;
    for n in &mut r.nodes {
        for sub in n.regions_mut() {
            changed |= simplify_region(m, sub, pool)?;
        }
    }
    let mut start = 0usize;
    // Every applied rewrite removes a node or replaces one by a cheaper
    // form; the cap only guards against a rule pair that undoes itself.
    let mut budget = 16 * r.nodes.len() + 64;
    while budget > 0 {
        let Some((j, plan, consts, dead)) = first_rewrite(m, r, start, pool) else {
            break;
        };
        let removed_before = apply(r, j, plan);
        r.constants.extend(consts);
        release(m, r, &dead);
        // Patterns are rooted at their last node, so a rewrite at `j` can
        // only enable matches rooted at `j` or later.
        start = j - removed_before;
        changed = true;
        budget -= 1;
    }
    Ok(changed)
}

/// Unlist the constants `dead` from `r` and free their data now rather
/// than after the pass: folding a BatchNormalization into a conv makes a
/// new filter, and the old one should not stay until every conv of the
/// model has been rewritten (ResNet-50's peak memory held both).
fn release(m: &mut Module, r: &mut Region, dead: &[ValueId]) {
    if dead.is_empty() {
        return;
    }
    r.constants.retain(|c| !dead.contains(c));
    for &c in dead {
        m.elide_constant(c);
    }
}

/// Constants of the region that the pattern's nodes read and nothing
/// reads once `plan` is applied (the root's replacement does not either).
fn dead_after(cx: &Cx, j: usize, plan: &Plan) -> Vec<ValueId> {
    let in_pattern = |i: usize| i == j || plan.remove.contains(&i);
    let still_read: Vec<ValueId> = match &plan.action {
        Action::Replace(v) => vec![*v],
        // A replacement with regions could read anything: keep all.
        Action::Node(n) if n.regions().next().is_some() => return vec![],
        Action::Node(n) => n.inputs.iter().flatten().copied().collect(),
    };
    let mut dead: Vec<ValueId> = vec![];
    for i in plan.remove.iter().copied().chain([j]) {
        for &v in cx.node(i).inputs.iter().flatten() {
            let only_pattern = cx
                .uses(v)
                .iter()
                .all(|u| matches!(u, Use::Node(k) if in_pattern(*k)));
            if cx.m.constant(v).is_some()
                && only_pattern
                && !still_read.contains(&v)
                && !dead.contains(&v)
                && cx.r.constants.contains(&v)
            {
                dead.push(v);
            }
        }
    }
    dead
}

/// A rewrite to apply: root index, checked plan, the constants it created
/// and those it leaves unused.
type Found = (usize, Plan, Vec<ValueId>, Vec<ValueId>);

/// The first applicable rewrite rooted at or after `start`.
fn first_rewrite(
    m: &mut Module,
    r: &Region,
    start: usize,
    pool: &mut kiln_ir::ConstantPool,
) -> Option<Found> {
    let (uses, def) = analyze(r);
    let mut cx = Cx {
        m,
        r,
        uses,
        def,
        new_consts: vec![],
        pool,
    };
    for j in start..r.nodes.len() {
        for (_, rule) in RULES {
            cx.new_consts.clear();
            let Some(rw) = rule(&mut cx, j) else { continue };
            if let Some(plan) = check(&cx, j, rw) {
                let dead = dead_after(&cx, j, &plan);
                return Some((j, plan, std::mem::take(&mut cx.new_consts), dead));
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
