//! Rules of the reductions: ReduceL1 ... ReduceSumSquare (axes as an
//! operand, or the older attribute form) and ArgMax/ArgMin.

use super::common::{axis_of, elem, k, norm_axes, shape_of, t, t_opt, unknown_dims, unranked, R};
use crate::ops::schema::InferCtx;
use crate::types::{Dim, ElemType};

fn reduce_shape(s: &[Dim], axes: &[usize], keep: bool) -> Vec<Dim> {
    s.iter()
        .enumerate()
        .filter_map(|(i, d)| {
            if axes.contains(&i) {
                keep.then(|| k(1))
            } else {
                Some(d.clone())
            }
        })
        .collect()
}

pub(super) fn arg_reduce(c: &InferCtx) -> R {
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(ElemType::I64)]);
    };
    let a = axis_of(c, "axis", 0, s.len())?;
    Ok(vec![t(
        ElemType::I64,
        reduce_shape(s, &[a], c.attr_int("keepdims", 1) != 0),
    )])
}

pub(super) fn reduce(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let keep = c.attr_int("keepdims", 1) != 0;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len();
    let axes: Vec<usize> = if c.has_input(1) {
        match c.const_ints(1) {
            Some(a) if a.is_empty() => {
                if c.attr_int("noop_with_empty_axes", 0) != 0 {
                    return Ok(vec![t(e, s.to_vec())]);
                }
                (0..r).collect()
            }
            Some(a) => norm_axes(&a, r, "reduce")?,
            None => return Ok(vec![t_opt(e, keep.then(|| unknown_dims(r)))]),
        }
    } else if let Some(a) = c.attr_ints("axes") {
        // Older forms keep axes as an attribute; accept it.
        norm_axes(a, r, "reduce")?
    } else if c.attr_int("noop_with_empty_axes", 0) != 0 {
        return Ok(vec![t(e, s.to_vec())]);
    } else {
        (0..r).collect()
    };
    Ok(vec![t(e, reduce_shape(s, &axes, keep))])
}
