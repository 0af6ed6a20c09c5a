//! Rules of optionals, sequences and control flow: Optional,
//! OptionalGetElement/HasElement, the Sequence* ops, SplitToSequence,
//! ConcatFromSequence, and the ops with regions (If, Loop, Scan,
//! SequenceMap), whose region result types the caller infers first.
//! [`join_types`] is the type two alternatives (branches, loop-carried
//! values, sequence elements) both satisfy.

use super::common::{
    axis_of, bad_attr, dtype_attr, elem, err, k, shape_of, t, t_opt, ty, unknown_dims, unranked, R,
};
use crate::attr::Attr;
use crate::ops::dims::{join_dim, norm_axis};
use crate::ops::schema::{InferCtx, InferError};
use crate::types::{Dim, ElemType, TensorType, Type};

/// The type both of two alternatives satisfy.
pub(crate) fn join_types(a: &Type, b: &Type) -> Option<Type> {
    Some(match (a, b) {
        (Type::Tensor(x), Type::Tensor(y)) if x.elem == y.elem => {
            let shape = match (&x.shape, &y.shape) {
                (Some(p), Some(q)) if p.len() == q.len() => {
                    Some(p.iter().zip(q).map(|(a, b)| join_dim(a, b)).collect())
                }
                _ => None,
            };
            Type::Tensor(TensorType {
                elem: x.elem,
                shape,
                quant: if x.quant == y.quant {
                    x.quant.clone()
                } else {
                    None
                },
            })
        }
        (Type::Sequence(x), Type::Sequence(y)) => Type::Sequence(Box::new(join_types(x, y)?)),
        (Type::Optional(x), Type::Optional(y)) => Type::Optional(Box::new(join_types(x, y)?)),
        (Type::Map(k1, x), Type::Map(k2, y)) if k1 == k2 => {
            Type::Map(*k1, Box::new(join_types(x, y)?))
        }
        _ => return None,
    })
}

pub(super) fn optional(c: &InferCtx) -> R {
    let inner = match c.input(0) {
        Some(t) => t.clone(),
        None => match c.attr("type") {
            Some(Attr::Type(t)) => t.clone(),
            _ => return Err(err("Optional needs an operand or a `type` attribute")),
        },
    };
    Ok(vec![Type::Optional(Box::new(inner))])
}

pub(super) fn optional_get(c: &InferCtx) -> R {
    Ok(vec![match ty(c, 0)? {
        Type::Optional(t) => (**t).clone(),
        t => t.clone(),
    }])
}

pub(super) fn optional_has(_c: &InferCtx) -> R {
    Ok(vec![t(ElemType::Bool, vec![])])
}

fn seq_elem<'a>(c: &InferCtx<'a>, i: usize) -> Result<&'a Type, InferError> {
    match ty(c, i)? {
        Type::Sequence(t) => Ok(t),
        _ => Err(InferError::BadInput {
            index: i,
            msg: "expected a sequence".into(),
        }),
    }
}

pub(super) fn sequence_at(c: &InferCtx) -> R {
    Ok(vec![seq_elem(c, 0)?.clone()])
}

pub(super) fn sequence_construct(c: &InferCtx) -> R {
    let mut acc = ty(c, 0)?.clone();
    for i in 1..c.inputs.len() {
        acc = join_types(&acc, ty(c, i)?).ok_or_else(|| err("sequence elements differ in type"))?;
    }
    Ok(vec![Type::Sequence(Box::new(acc))])
}

pub(super) fn sequence_empty(c: &InferCtx) -> R {
    let e = dtype_attr(c, "dtype")?.unwrap_or(ElemType::F32);
    Ok(vec![Type::Sequence(Box::new(unranked(e)))])
}

pub(super) fn sequence_insert(c: &InferCtx) -> R {
    let s = seq_elem(c, 0)?;
    let j = join_types(s, ty(c, 1)?)
        .ok_or_else(|| err("inserted tensor's type differs from the sequence's"))?;
    Ok(vec![Type::Sequence(Box::new(j))])
}

pub(super) fn sequence_length(c: &InferCtx) -> R {
    seq_elem(c, 0)?;
    Ok(vec![t(ElemType::I64, vec![])])
}

pub(super) fn sequence_map(c: &InferCtx) -> R {
    let body = c
        .region("body")
        .ok_or_else(|| err("SequenceMap needs a body"))?;
    Ok(body
        .iter()
        .map(|t| Type::Sequence(Box::new(t.clone())))
        .collect())
}

pub(super) fn split_to_sequence(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![Type::Sequence(Box::new(unranked(e)))]);
    };
    let a = axis_of(c, "axis", 0, s.len())?;
    let mut o = s.to_vec();
    if c.has_input(1) {
        // Every element's size along the axis, where all are equal: a
        // scalar split that divides the axis, or equal split sizes.
        let whole = match o[a] {
            Dim::Known(d) => Some(d),
            _ => None,
        };
        let sizes = c
            .konst(1)
            .and_then(|d| d.to_i64_vec().map(|v| (d.shape.is_empty(), v)));
        o[a] = match sizes {
            Some((true, v)) => match (v.first(), whole) {
                (Some(&s), Some(d)) if s > 0 && d % s as u64 == 0 => k(s as u64),
                _ => Dim::Unknown,
            },
            Some((false, v)) if !v.is_empty() && v.iter().all(|&x| x == v[0] && x >= 0) => {
                k(v[0] as u64)
            }
            _ => Dim::Unknown,
        };
    } else if c.attr_int("keepdims", 1) != 0 {
        o[a] = k(1);
    } else {
        o.remove(a);
    }
    Ok(vec![Type::Sequence(Box::new(t(e, o)))])
}

pub(super) fn concat_from_sequence(c: &InferCtx) -> R {
    let inner = seq_elem(c, 0)?;
    let tt = inner
        .as_tensor()
        .ok_or_else(|| err("sequence of non-tensors"))?;
    let r = tt
        .rank()
        .map(|r| r + usize::from(c.attr_int("new_axis", 0) != 0));
    Ok(vec![t_opt(tt.elem, r.map(unknown_dims))])
}

pub(super) fn if_(c: &InferCtx) -> R {
    let (Some(th), Some(el)) = (c.region("then_branch"), c.region("else_branch")) else {
        return Err(err("If needs then_branch and else_branch"));
    };
    if th.len() != el.len() {
        return Err(err(format!(
            "branches have {} and {} results",
            th.len(),
            el.len()
        )));
    }
    th.iter()
        .zip(el)
        .enumerate()
        .map(|(i, (a, b))| {
            join_types(a, b).ok_or_else(|| err(format!("branch result {i} types differ")))
        })
        .collect()
}

/// Insert a leading (or `axis`) dim into a per-iteration type.
fn stacked(t: &Type, axis: i64, n: Dim) -> Result<Type, InferError> {
    let tt = t
        .as_tensor()
        .ok_or_else(|| err("scan output must be a tensor"))?;
    Ok(t_opt(
        tt.elem,
        match &tt.shape {
            Some(s) => {
                let a = norm_axis(axis, s.len() + 1)
                    .ok_or_else(|| err("scan output axis out of range"))?;
                let mut o = s.clone();
                o.insert(a, n);
                Some(o)
            }
            None => None,
        },
    ))
}

pub(super) fn loop_(c: &InferCtx) -> R {
    let body = c.region("body").ok_or_else(|| err("Loop needs a body"))?;
    let n = c.inputs.len().saturating_sub(2);
    if body.len() < 1 + n {
        return Err(err("Loop body has too few results"));
    }
    let mut out = vec![];
    for i in 0..n {
        let bt = &body[1 + i];
        out.push(match c.input(2 + i) {
            // An optional may enter the loop and its payload come back
            // (ONNX's test_loop16_seq_none): the result is the body's type.
            Some(init) => join_types(init, bt)
                .or_else(|| match init {
                    Type::Optional(x) => join_types(x, bt),
                    _ => None,
                })
                .ok_or_else(|| err(format!("loop-carried value {i} changes type")))?,
            None => bt.clone(),
        });
    }
    for bt in &body[1 + n..] {
        out.push(stacked(bt, 0, Dim::Unknown)?);
    }
    Ok(out)
}

pub(super) fn scan(c: &InferCtx) -> R {
    let body = c.region("body").ok_or_else(|| err("Scan needs a body"))?;
    let m = usize::try_from(c.attr_int("num_scan_inputs", 0))
        .map_err(|_| bad_attr("num_scan_inputs", "negative"))?;
    let n = c
        .inputs
        .len()
        .checked_sub(m)
        .ok_or_else(|| bad_attr("num_scan_inputs", "more than the operands"))?;
    if body.len() < n {
        return Err(err("Scan body has too few results"));
    }
    // Sequence length: the first scan input's dim along its scan axis.
    let in_axes = c.attr_ints("scan_input_axes");
    let seq = if m > 0 {
        let ax = in_axes.and_then(|a| a.first().copied()).unwrap_or(0);
        shape_of(c, n)?
            .and_then(|s| norm_axis(ax, s.len()).map(|a| s[a].clone()))
            .unwrap_or(Dim::Unknown)
    } else {
        Dim::Unknown
    };
    let mut out = vec![];
    for (i, bt) in body.iter().enumerate().take(n) {
        out.push(
            join_types(ty(c, i)?, bt).ok_or_else(|| err(format!("scan state {i} changes type")))?,
        );
    }
    let out_axes = c.attr_ints("scan_output_axes");
    for (j, bt) in body[n..].iter().enumerate() {
        let ax = out_axes.and_then(|a| a.get(j).copied()).unwrap_or(0);
        out.push(stacked(bt, ax, seq.clone())?);
    }
    Ok(out)
}
