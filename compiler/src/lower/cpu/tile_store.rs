//! What the kernel library's tile store applies to a product as it stores
//! it, recognized at the start of a fusion body's epilogue: the
//! activation right after a value (Relu, constant Clip, SiLU, HardSwish,
//! Gelu),
//! shared by the `conv-epilogue` pass (`epilogue.rs`), and the fold of a
//! packed MatMul's or Gemm's column bias and activation into its plan,
//! made as the fusion is lowered.
//!
//! Why the matmul fold: a transformer layer's `Gelu(x·W + b)` otherwise
//! runs as a generated loop after the product, and generated loops are
//! 128-bit: on MiniLM (Zen 5) the 1536-wide layer with its bias and Gelu
//! took 1.0-1.13 ms against 0.84 ms for the same product without them.
//! In the tile store the bias starts each tile and the Gelu runs on the
//! accumulators, at the tile's vector width. The fold
//! is not a pass of its own (unlike the conv's): MatMul has no fused op
//! in the IR, and `kiln dump --backend-report` and `kiln profile` name
//! what the step took (`+ bias + Gelu`).

use kiln_ir::{Attr, Module, Node, Region, ValueId};
use kiln_runtime::cpu::kernels::FoldedStore;

use super::dense::Weights;

/// An activation the tile store applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum TileAct {
    Relu,
    /// `Clip` with constant bounds.
    Clip(f32, f32),
    /// `Mul(v, Sigmoid(v))`.
    Swish,
    /// `Gelu`, in its erf form or (`tanh`) its tanh form.
    Gelu {
        tanh: bool,
    },
    HardSwish,
}

/// Whether `n` reads `v`.
fn reads(n: &Node, v: ValueId) -> bool {
    n.inputs.iter().flatten().any(|&x| x == v)
}

/// The activation of `v` at the start of `tail`: `(activation, its result,
/// the nodes after it)`, when nothing after it reads `v` (or the sigmoid
/// of a SiLU), neither is a body output, and the result is not one either
/// if more nodes follow. `outer` maps a body input to the outer value.
pub(super) fn activation<'t>(
    m: &Module,
    body: &Region,
    tail: &'t [Node],
    v: ValueId,
    outer: &dyn Fn(ValueId) -> Option<ValueId>,
) -> Option<(TileAct, ValueId, &'t [Node])> {
    if let Some(found) = swish(tail, v, &body.outputs) {
        return Some(found);
    }
    let (act, rest) = tail.split_first()?;
    let private = act.input(0) == Some(v)
        && act.outputs.len() == 1
        && !body.outputs.contains(&v)
        && !rest.iter().any(|n| reads(n, v))
        && (rest.is_empty() || !body.outputs.contains(&act.outputs[0]));
    if !private {
        return None;
    }
    let found = match act.op.as_str() {
        "Relu" if act.inputs.len() == 1 => TileAct::Relu,
        "HardSwish" if act.inputs.len() == 1 => TileAct::HardSwish,
        "Clip" => {
            let (lo, hi) = clip_bounds(m, body, act, outer)?;
            TileAct::Clip(lo, hi)
        }
        "Gelu" if act.inputs.len() == 1 => match act.attrs.get("approximate") {
            None => TileAct::Gelu { tanh: false },
            Some(Attr::String(s)) if s == "none" => TileAct::Gelu { tanh: false },
            Some(Attr::String(s)) if s == "tanh" => TileAct::Gelu { tanh: true },
            _ => return None,
        },
        _ => return None,
    };
    Some((found, act.outputs[0], rest))
}

/// `Mul(v, Sigmoid(v))` (either operand order) at the start of `tail`,
/// as [`activation`] finds it.
fn swish<'t>(
    tail: &'t [Node],
    v: ValueId,
    outputs: &[ValueId],
) -> Option<(TileAct, ValueId, &'t [Node])> {
    let [sig, mul, rest @ ..] = tail else {
        return None;
    };
    let s = *sig.outputs.first()?;
    let ok = sig.op == "Sigmoid"
        && sig.inputs.len() == 1
        && sig.input(0) == Some(v)
        && sig.outputs.len() == 1
        && mul.op == "Mul"
        && mul.outputs.len() == 1
        && matches!(
            (mul.input(0), mul.input(1)),
            (Some(a), Some(b)) if (a, b) == (v, s) || (a, b) == (s, v)
        );
    let out = mul.outputs[0];
    let private = !outputs.contains(&v)
        && !outputs.contains(&s)
        && !rest.iter().any(|n| reads(n, v) || reads(n, s))
        && (rest.is_empty() || !outputs.contains(&out));
    (ok && private).then_some((TileAct::Swish, out, rest))
}

/// The constant behind `v`: a body constant, or an operand that is a
/// constant outside.
fn constant_of(
    m: &Module,
    body: &Region,
    v: ValueId,
    outer: &dyn Fn(ValueId) -> Option<ValueId>,
) -> Option<ValueId> {
    if body.constants.contains(&v) {
        m.constant(v).map(|_| v)
    } else {
        outer(v).filter(|&c| m.constant(c).is_some())
    }
}

/// The bounds of a `Clip` whose min and max are constant scalars (body
/// constants, or operands that are constants outside), an omitted bound
/// infinite; `None` when either is not, or they are NaN or crossed (the
/// tile store's clamp is `min(hi, max(lo, v))`, which is Clip's only for
/// `lo <= hi`).
fn clip_bounds(
    m: &Module,
    body: &Region,
    clip: &Node,
    outer: &dyn Fn(ValueId) -> Option<ValueId>,
) -> Option<(f32, f32)> {
    let bound = |i: usize, none: f32| -> Option<f32> {
        let Some(v) = clip.input(i) else {
            return Some(none);
        };
        let c = m.constant(constant_of(m, body, v, outer)?)?;
        match c.to_f64_vec()?.as_slice() {
            [] => Some(none),
            [x] => Some(*x as f32),
            _ => None,
        }
    };
    if clip.inputs.len() > 3 {
        return None;
    }
    let (lo, hi) = (bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?);
    (lo <= hi).then_some((lo, hi))
}

/// What [`fold_product`] folded.
pub(super) struct Folded<'t> {
    /// The value the plan's result now stands for.
    pub value: ValueId,
    /// The epilogue nodes left.
    pub rest: &'t [Node],
    /// The body operand of the bias, which the plan now holds.
    pub bias_operand: Option<usize>,
    /// For the step's description (` + bias + Gelu`).
    pub what: String,
}

/// Folds `Add(v, b)` (either order; `b` a constant of one float per
/// column of the product `v`: shape `[n]` or `[1, ..., 1, n]`) and then
/// an activation at the start of `tail` into `store`, the tile store of
/// the packed product whose result `v` has shape `out_shape`, as far as
/// the store takes them. `None` when nothing folds. When nothing is left
/// after the fold, the folded value must be the body's only output.
#[allow(clippy::too_many_arguments)]
pub(super) fn fold_product<'t>(
    m: &Module,
    body: &Region,
    store: &mut FoldedStore,
    out_shape: &[usize],
    tail: &'t [Node],
    v: ValueId,
    outer: &dyn Fn(ValueId) -> Option<ValueId>,
    weights: &mut Weights,
) -> Option<Folded<'t>> {
    let mut cand = store.clone();
    let mut value = v;
    let mut rest = tail;
    let mut bias_operand = None;
    let mut what = String::new();
    if let Some((add, after)) = rest.split_first() {
        let b = match (add.input(0), add.input(1)) {
            (Some(a), Some(b)) if a == value && b != value => Some(b),
            (Some(a), Some(b)) if b == value && a != value => Some(a),
            _ => None,
        };
        let private = add.op == "Add"
            && add.inputs.len() == 2
            && add.outputs.len() == 1
            && !body.outputs.contains(&value)
            && !after.iter().any(|n| reads(n, value))
            && (after.is_empty() || !body.outputs.contains(&add.outputs[0]));
        let n = out_shape.last().copied();
        let bias = b.filter(|_| private).and_then(|b| {
            let c = constant_of(m, body, b, outer)?;
            let shape = m.static_shape(c).ok()?;
            let (last, lead) = shape.split_last()?;
            let per_column = Some(*last) == n && lead.iter().all(|&d| d == 1);
            // Broadcasting must not grow the result.
            let same = m.static_shape(add.outputs[0]).ok()?.as_slice() == out_shape;
            (per_column && same && shape.len() <= out_shape.len()).then_some((b, c))
        });
        if let Some((b, c)) = bias {
            if cand.fuse_bias(weights.get(m, c)?) {
                value = add.outputs[0];
                rest = after;
                bias_operand = body.inputs.iter().position(|&x| x == b);
                what.push_str(" + bias");
            }
        }
    }
    if let Some((act, out, after)) = activation(m, body, rest, value, outer) {
        let (taken, name) = match act {
            TileAct::Relu => (cand.fuse_clamp(0.0, f32::INFINITY), "Relu"),
            TileAct::Clip(lo, hi) => (cand.fuse_clamp(lo, hi), "Clip"),
            TileAct::Swish => (cand.fuse_swish(), "Swish"),
            TileAct::HardSwish => (cand.fuse_hardswish(), "HardSwish"),
            TileAct::Gelu { tanh } => (
                cand.fuse_gelu(tanh),
                if tanh { "Gelu(tanh)" } else { "Gelu" },
            ),
        };
        if taken {
            value = out;
            rest = after;
            what.push_str(" + ");
            what.push_str(name);
        }
    }
    if value == v || (rest.is_empty() && body.outputs != [value]) {
        return None;
    }
    *store = cand;
    Some(Folded {
        value,
        rest,
        bias_operand,
        what,
    })
}
