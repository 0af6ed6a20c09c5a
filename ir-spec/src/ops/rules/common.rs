//! Helpers shared by every rule family: operand and attribute access
//! (`ty`, `tensor`, `elem`, `shape_of`, `axis_of`, `dtype_attr`,
//! `const_scalar`), result-type constructors (`t`, `t_opt`, `unranked`,
//! `fill`), error constructors, ONNX data-type codes ([`elem_from_onnx`]),
//! and the readers of shape operands and axis lists that several families
//! use (`shape_operand`, `shape_len`, `norm_axes`).

use crate::attr::Attr;
use crate::ops::dims::norm_axis;
use crate::ops::schema::{InferCtx, InferError};
use crate::types::{Dim, ElemType, TensorType, Type};

pub(super) type R = Result<Vec<Type>, InferError>;

/// ONNX `TensorProto.DataType` code to element type.
pub fn elem_from_onnx(code: i64) -> Option<ElemType> {
    Some(match code {
        1 => ElemType::F32,
        2 => ElemType::U8,
        3 => ElemType::I8,
        4 => ElemType::U16,
        5 => ElemType::I16,
        6 => ElemType::I32,
        7 => ElemType::I64,
        8 => ElemType::String,
        9 => ElemType::Bool,
        10 => ElemType::F16,
        11 => ElemType::F64,
        12 => ElemType::U32,
        13 => ElemType::U64,
        14 => ElemType::C64,
        15 => ElemType::C128,
        16 => ElemType::BF16,
        17 => ElemType::F8E4M3FN,
        18 => ElemType::F8E4M3FNUZ,
        19 => ElemType::F8E5M2,
        20 => ElemType::F8E5M2FNUZ,
        21 => ElemType::U4,
        22 => ElemType::I4,
        _ => return None,
    })
}

pub(super) fn err(msg: impl Into<String>) -> InferError {
    InferError::Invalid(msg.into())
}

pub(super) fn bad_attr(name: &str, msg: impl Into<String>) -> InferError {
    InferError::BadAttr {
        name: name.into(),
        msg: msg.into(),
    }
}

pub(super) fn ty<'a>(c: &InferCtx<'a>, i: usize) -> Result<&'a Type, InferError> {
    c.input(i).ok_or(InferError::MissingInput {
        index: i,
        what: "operand",
    })
}

pub(super) fn tensor<'a>(c: &InferCtx<'a>, i: usize) -> Result<&'a TensorType, InferError> {
    match ty(c, i)? {
        Type::Tensor(t) => Ok(t),
        _ => Err(InferError::BadInput {
            index: i,
            msg: "expected a tensor".into(),
        }),
    }
}

pub(super) fn elem(c: &InferCtx, i: usize) -> Result<ElemType, InferError> {
    Ok(tensor(c, i)?.elem)
}

pub(super) fn shape_of<'a>(c: &InferCtx<'a>, i: usize) -> Result<Option<&'a [Dim]>, InferError> {
    Ok(tensor(c, i)?.shape.as_deref())
}

pub(super) fn t(e: ElemType, shape: Vec<Dim>) -> Type {
    Type::tensor(e, shape)
}

pub(super) fn t_opt(e: ElemType, shape: Option<Vec<Dim>>) -> Type {
    Type::Tensor(TensorType {
        elem: e,
        shape,
        quant: None,
    })
}

pub(super) fn unranked(e: ElemType) -> Type {
    Type::Tensor(TensorType::unranked(e))
}

pub(super) fn unknown_dims(n: usize) -> Vec<Dim> {
    vec![Dim::Unknown; n]
}

pub(super) fn k(n: u64) -> Dim {
    Dim::Known(n)
}

pub(super) fn axis_of(
    c: &InferCtx,
    name: &str,
    default: i64,
    rank: usize,
) -> Result<usize, InferError> {
    let a = c.attr_int(name, default);
    norm_axis(a, rank)
        .ok_or_else(|| bad_attr(name, format!("axis {a} out of range for rank {rank}")))
}

pub(super) fn dtype_attr(c: &InferCtx, name: &str) -> Result<Option<ElemType>, InferError> {
    match c.attr(name).and_then(Attr::as_int) {
        None => Ok(None),
        Some(code) => elem_from_onnx(code)
            .map(Some)
            .ok_or_else(|| bad_attr(name, format!("unknown data type {code}"))),
    }
}

/// Keeps the rule's result count equal to the node's: extra optional
/// results get types from `more`.
pub(super) fn fill(mut v: Vec<Type>, n: usize) -> Vec<Type> {
    v.truncate(n.max(1));
    v
}

/// The scalar value of a constant integer operand.
pub(super) fn const_scalar(c: &InferCtx, i: usize) -> Option<i64> {
    let v = c.const_ints(i)?;
    (v.len() == 1).then(|| v[0])
}

pub(super) fn known_u64(v: i64) -> Option<Dim> {
    u64::try_from(v).ok().map(Dim::Known)
}

/// Dims from a 1-D shape operand whose values are known (constant or
/// propagated); otherwise the rank from the operand's static length.
pub(super) fn shape_operand(c: &InferCtx, i: usize) -> Result<Option<Vec<Dim>>, InferError> {
    if let Some(v) = c.int_values(i) {
        return v
            .into_iter()
            .map(|d| match d {
                None => Ok(Dim::Unknown),
                Some(e) => match e.as_const() {
                    Some(n) if n < 0 => Err(InferError::BadInput {
                        index: i,
                        msg: format!("negative dim {n}"),
                    }),
                    _ => Ok(Dim::from_expr(e)),
                },
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some);
    }
    Ok(shape_len(c, i).map(unknown_dims))
}

/// Ranks above this are treated as unknown (a shape operand claiming more
/// dims is malformed, and must not make us allocate).
const MAX_RANK: u64 = 1024;

/// The static length of a 1-D operand.
pub(super) fn shape_len(c: &InferCtx, i: usize) -> Option<usize> {
    let s = c.input(i)?.as_tensor()?.shape.as_ref()?;
    match s.as_slice() {
        [Dim::Known(n)] if *n <= MAX_RANK => usize::try_from(*n).ok(),
        [] => Some(1),
        _ => None,
    }
}

pub(super) fn norm_axes(axes: &[i64], rank: usize, what: &str) -> Result<Vec<usize>, InferError> {
    let mut out = vec![];
    for &a in axes {
        let n = norm_axis(a, rank)
            .ok_or_else(|| err(format!("{what} axis {a} out of range for rank {rank}")))?;
        if out.contains(&n) {
            return Err(err(format!("{what} axis {a} repeated")));
        }
        out.push(n);
    }
    Ok(out)
}
