//! Chain rules: two data-movement ops in a row become one (or none).

use super::cx::{attr_int, node_from, same_shape, Action, Cx, Rewrite, Use};
use kiln_ir::{Attr, TensorData};

/// `Transpose(Transpose(x, p1), p2)` → `Transpose(x, q)` with
/// `q[i] = p1[p2[i]]`; → `x` when `q` is the identity. Composing keeps the
/// inner transpose for its other users (nothing is duplicated).
pub(super) fn transpose_transpose(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let n = cx.node(i);
    if n.op != "Transpose" {
        return None;
    }
    let y = n.input(0)?;
    let p = cx.producer(y, "Transpose")?;
    let inner = cx.node(p);
    let x = inner.input(0)?;
    let rank = cx.rank(x)?;
    let perm = |node: &kiln_ir::Node| -> Option<Vec<usize>> {
        let v: Vec<usize> = match node.attr("perm").and_then(Attr::as_ints) {
            Some(p) => p
                .iter()
                .map(|&a| usize::try_from(a).ok())
                .collect::<Option<_>>()?,
            None => (0..rank).rev().collect(),
        };
        (v.len() == rank && v.iter().all(|&a| a < rank)).then_some(v)
    };
    let (p1, p2) = (perm(inner)?, perm(n)?);
    let q: Vec<usize> = p2.iter().map(|&k| p1[k]).collect();
    // The inner transpose dies when this was its only use.
    let pattern = if cx.single_use_by(y, i) {
        vec![p, i]
    } else {
        vec![i]
    };
    if q.iter().enumerate().all(|(k, &v)| k == v) {
        return Some(Rewrite {
            pattern,
            action: Action::Replace(x),
        });
    }
    let mut t = node_from(n, "Transpose", vec![Some(x)], n.outputs.clone());
    t.attrs.insert(
        "perm".into(),
        Attr::Ints(q.iter().map(|&v| v as i64).collect()),
    );
    Some(Rewrite {
        pattern,
        action: Action::Node(t),
    })
}

fn reshape_like(op: &str) -> bool {
    matches!(op, "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze")
}

/// Reshape-like ops (Reshape, Flatten, Squeeze, Unsqueeze) keep row-major
/// element order, so a chain of them is one reshape of the first operand:
/// - back to the operand's own shape → the operand;
/// - otherwise, when the intermediate has no other use, one `Reshape` of
///   the operand to the final shape: a constant shape when the result's
///   shape is static, or the outer Reshape's own constant shape when that
///   has no 0 entries (a 0 would copy a dim of the bypassed intermediate).
pub(super) fn reshape_chain(cx: &mut Cx, i: usize) -> Option<Rewrite> {
    let n = cx.node(i);
    if !reshape_like(&n.op) {
        return None;
    }
    let y = n.input(0)?;
    let p = cx.producer_any(y)?;
    let inner = cx.node(p);
    if !reshape_like(&inner.op) {
        return None;
    }
    let x = inner.input(0)?;
    let out = *n.outputs.first()?;
    if same_shape(cx.m.ty(x), cx.m.ty(out)) && !cx.uses(out).contains(&Use::Output) {
        let pattern = if cx.single_use_by(y, i) {
            vec![p, i]
        } else {
            vec![i]
        };
        return Some(Rewrite {
            pattern,
            action: Action::Replace(x),
        });
    }
    if !cx.single_use_by(y, i) {
        return None;
    }
    let out_ty = cx.tensor_ty(out)?;
    let shape_operand = if let Some(s) = out_ty.static_shape() {
        let dims: Vec<i64> = s
            .iter()
            .map(|&d| i64::try_from(d).ok())
            .collect::<Option<_>>()?;
        let hint = format!("{}_shape", cx.name(out));
        let data = TensorData::from_i64(vec![dims.len() as u64], &dims).ok()?;
        let allowzero = dims.contains(&0);
        (cx.new_const(&hint, data), allowzero)
    } else if n.op == "Reshape" {
        let s = n.input(1)?;
        let dims = cx.const_i64(s)?;
        let allowzero = attr_int(n, "allowzero", 0) != 0;
        if dims.contains(&0) && !allowzero {
            return None;
        }
        (s, allowzero)
    } else {
        return None;
    };
    let n = cx.node(i);
    let mut r = node_from(
        n,
        "Reshape",
        vec![Some(x), Some(shape_operand.0)],
        n.outputs.clone(),
    );
    r.attrs
        .insert("allowzero".into(), Attr::Int(shape_operand.1 as i64));
    Some(Rewrite {
        pattern: vec![p, i],
        action: Action::Node(r),
    })
}
