//! Rules of the elementwise ops: result type = operand 0's (unary math,
//! activations, and the other ops whose result mirrors their first
//! operand), numpy-broadcast arithmetic, comparisons and logic, IsInf/IsNaN,
//! Where, Cast/CastLike, the ops that keep operand 0's shape under a
//! `dtype` attribute (EyeLike, RandomUniformLike, RandomNormalLike,
//! Bernoulli), and Dropout.

use super::common::{bad_attr, dtype_attr, elem, err, fill, shape_of, t_opt, tensor, ty, R};
use crate::ops::dims::broadcast_shapes;
use crate::ops::schema::{InferCtx, InferError};
use crate::types::{Dim, ElemType, Type};

pub(super) fn same_as_input0(c: &InferCtx) -> R {
    let t0 = ty(c, 0)?.clone();
    Ok(vec![t0; c.num_outputs.max(1)])
}

fn broadcast_inputs(c: &InferCtx) -> Result<Option<Vec<Dim>>, InferError> {
    let mut shapes = vec![];
    for i in 0..c.inputs.len() {
        match shape_of(c, i)? {
            Some(s) => shapes.push(s),
            None => return Ok(None),
        }
    }
    broadcast_shapes(&shapes).map(Some).map_err(err)
}

pub(super) fn broadcast_same(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    Ok(vec![t_opt(e, broadcast_inputs(c)?)])
}

pub(super) fn broadcast_bool(c: &InferCtx) -> R {
    elem(c, 0)?;
    Ok(vec![t_opt(ElemType::Bool, broadcast_inputs(c)?)])
}

pub(super) fn unary_bool(c: &InferCtx) -> R {
    Ok(vec![t_opt(
        ElemType::Bool,
        shape_of(c, 0)?.map(|s| s.to_vec()),
    )])
}

pub(super) fn where_(c: &InferCtx) -> R {
    let e = elem(c, 1)?;
    Ok(vec![t_opt(e, broadcast_inputs(c)?)])
}

pub(super) fn cast(c: &InferCtx) -> R {
    let to = dtype_attr(c, "to")?.ok_or_else(|| bad_attr("to", "required"))?;
    Ok(vec![t_opt(to, shape_of(c, 0)?.map(|s| s.to_vec()))])
}

pub(super) fn cast_like(c: &InferCtx) -> R {
    Ok(vec![t_opt(
        elem(c, 1)?,
        shape_of(c, 0)?.map(|s| s.to_vec()),
    )])
}

pub(super) fn like_with_dtype(c: &InferCtx) -> R {
    let e = match dtype_attr(c, "dtype")? {
        Some(e) => e,
        None => elem(c, 0)?,
    };
    Ok(vec![t_opt(e, shape_of(c, 0)?.map(|s| s.to_vec()))])
}

pub(super) fn dropout(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
    Ok(fill(
        vec![
            Type::Tensor(x.clone()),
            t_opt(ElemType::Bool, x.shape.clone()),
        ],
        c.num_outputs,
    ))
}
