//! Identity rules: nodes whose result is one of their operands, unchanged.
//! Each proposes `Action::Replace`; the engine refuses when the result is a
//! region output (interfaces keep their names).

use super::cx::{broadcasts_into, same_shape, Action, Cx, Rewrite};
use kiln_ir::Attr;

fn replace(root: usize, with: kiln_ir::ValueId) -> Option<Rewrite> {
    Some(Rewrite {
        pattern: vec![root],
        action: Action::Replace(with),
    })
}

/// `Identity(x)` → `x`.
pub(super) fn identity(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let n = cx.node(i);
    if n.op != "Identity" {
        return None;
    }
    replace(i, n.input(0)?)
}

/// `Dropout(x)` in inference mode (no `training_mode`, or a constant false)
/// with its mask unused → `x`.
pub(super) fn dropout(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let n = cx.node(i);
    if n.op != "Dropout" {
        return None;
    }
    if let Some(t) = n.input(2) {
        if cx.const_i64(t)?.iter().any(|&v| v != 0) {
            return None;
        }
    }
    replace(i, n.input(0)?)
}

/// `x+0`, `0+x`, `x-0`, `x*1`, `1*x`, `x/1` with a splat constant that does
/// not broadcast `x` to a larger shape.
pub(super) fn arith_identity(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let n = cx.node(i);
    let (a, b) = (n.input(0)?, n.input(1)?);
    let (neutral, commutes) = match n.op.as_str() {
        "Add" => (0.0, true),
        "Sub" => (0.0, false),
        "Mul" => (1.0, true),
        "Div" => (1.0, false),
        _ => return None,
    };
    let is_neutral = |c| cx.splat(c) == Some(neutral);
    if is_neutral(b) && broadcasts_into(cx, b, a) {
        return replace(i, a);
    }
    if commutes && is_neutral(a) && broadcasts_into(cx, a, b) {
        return replace(i, b);
    }
    None
}

/// `Cast(x, to=T)` where `x` already has element type `T` → `x`.
pub(super) fn noop_cast(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let n = cx.node(i);
    if n.op != "Cast" {
        return None;
    }
    let x = n.input(0)?;
    let to = n.attr("to").and_then(Attr::as_int)?;
    let elem = cx.elem(x)?;
    let out = cx.elem(*n.outputs.first()?)?;
    // The result type records the target; equal types mean nothing to do.
    (elem == out && kiln_ir::ops::elem_from_onnx(to) == Some(elem)).then(|| replace(i, x))?
}

/// `Transpose(x)` with the identity permutation → `x`.
pub(super) fn noop_transpose(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let n = cx.node(i);
    if n.op != "Transpose" {
        return None;
    }
    let x = n.input(0)?;
    let identity = match n.attr("perm").and_then(Attr::as_ints) {
        Some(p) => p.iter().enumerate().all(|(k, &v)| v == k as i64),
        None => cx.rank(x)? <= 1,
    };
    identity.then(|| replace(i, x))?
}

/// Reshape, Flatten, Squeeze, Unsqueeze and Expand whose result has exactly
/// the operand's shape → the operand (they never reorder elements).
pub(super) fn noop_shape_op(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let n = cx.node(i);
    if !matches!(
        n.op.as_str(),
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Expand"
    ) {
        return None;
    }
    let x = n.input(0)?;
    let y = *n.outputs.first()?;
    same_shape(cx.m.ty(x), cx.m.ty(y)).then(|| replace(i, x))?
}
