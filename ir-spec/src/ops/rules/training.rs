//! Rules of the `ai.onnx.preview.training` optimizers: Adagrad, Adam and
//! Momentum, whose results repeat the types of some operand groups.

use super::common::{err, ty, R};
use crate::ops::schema::InferCtx;

fn optimizer(c: &InferCtx, groups_in: usize, outs: &[usize]) -> R {
    let rest = c.inputs.len().saturating_sub(2);
    if !rest.is_multiple_of(groups_in) {
        return Err(err(format!("expected 2 + {groups_in}*n operands")));
    }
    let n = rest / groups_in;
    let mut v = vec![];
    for &g in outs {
        for i in 0..n {
            v.push(ty(c, 2 + g * n + i)?.clone());
        }
    }
    Ok(v)
}

pub(super) fn adagrad(c: &InferCtx) -> R {
    // X, G, H -> X_new, H_new
    optimizer(c, 3, &[0, 2])
}

pub(super) fn adam(c: &InferCtx) -> R {
    // X, G, V, H -> X_new, V_new, H_new
    optimizer(c, 4, &[0, 2, 3])
}

pub(super) fn momentum(c: &InferCtx) -> R {
    // X, G, V -> X_new, V_new
    optimizer(c, 3, &[0, 2])
}
