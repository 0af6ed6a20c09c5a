//! Rules of the quantization ops: QuantizeLinear, DequantizeLinear and
//! DynamicQuantizeLinear. (The integer and QLinear forms of MatMul and Conv
//! share their float forms' shape rules, in `linalg` and `nn`.)

use super::common::{axis_of, bad_attr, dtype_attr, elem, t, t_opt, tensor, R};
use crate::ops::schema::{InferCtx, InferError};
use crate::types::{Dim, ElemType, TensorType, Type};

/// The scale (operand 1) and zero point (operand 2) fit the input as the
/// node's `axis` and `block_size` read them: each is one value, one per
/// index along `axis` (1-D), or one per block of indices along `axis`
/// (the input's rank), and the scale is a float. Checked where the
/// shapes are known, so a malformed model fails to import on every
/// backend rather than run on one that reads past its parameters (the
/// interpreter checks the same at run time).
fn params_fit(c: &InferCtx, x: &TensorType) -> Result<(), InferError> {
    let scale = tensor(c, 1)?;
    if !scale.elem.is_float() {
        return Err(InferError::BadInput {
            index: 1,
            msg: format!("a scale of {}", scale.elem),
        });
    }
    let known = |d: &Option<Vec<Dim>>| -> Option<Vec<u64>> {
        d.as_ref()?
            .iter()
            .map(|d| match d {
                Dim::Known(v) => Some(*v),
                _ => None,
            })
            .collect()
    };
    let Some(xs) = known(&x.shape) else {
        return Ok(());
    };
    let block = c.attr_int("block_size", 0);
    for (index, what) in [(1, "scale"), (2, "zero point")] {
        let Some(ps) = c
            .input(index)
            .and_then(Type::as_tensor)
            .and_then(|p| known(&p.shape))
        else {
            continue;
        };
        let n: u64 = ps.iter().product();
        if n == 1 {
            continue;
        }
        let bad = |msg: String| InferError::BadInput { index, msg };
        if xs.is_empty() {
            return Err(bad(format!("{what} of {n} values for a scalar input")));
        }
        let axis = axis_of(c, "axis", 1, xs.len())?;
        let fits = if block <= 0 {
            ps == [xs[axis]]
        } else {
            ps.len() == xs.len()
                && (0..xs.len()).all(|d| {
                    ps[d]
                        == if d == axis {
                            xs[d].div_ceil(block as u64)
                        } else {
                            xs[d]
                        }
                })
        };
        if !fits {
            let how = if block <= 0 {
                String::new()
            } else {
                format!(" in blocks of {block}")
            };
            return Err(bad(format!(
                "{what} of shape {ps:?} does not fit axis {axis}{how} of an input of shape {xs:?}"
            )));
        }
    }
    Ok(())
}

pub(super) fn quantize_linear(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
    params_fit(c, x)?;
    let e = match dtype_attr(c, "output_dtype")? {
        Some(e) => {
            if let Some(z) = c.input(2).and_then(Type::as_tensor) {
                if z.elem != e {
                    return Err(bad_attr(
                        "output_dtype",
                        format!("{e} but the zero point is {}", z.elem),
                    ));
                }
            }
            e
        }
        None => match c.input(2) {
            Some(_) => elem(c, 2)?,
            None => ElemType::U8,
        },
    };
    Ok(vec![t_opt(e, x.shape.clone())])
}

pub(super) fn dequantize_linear(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
    params_fit(c, x)?;
    Ok(vec![t_opt(elem(c, 1)?, x.shape.clone())])
}

pub(super) fn dynamic_quantize_linear(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
    Ok(vec![
        t_opt(ElemType::U8, x.shape.clone()),
        t(ElemType::F32, vec![]),
        t(ElemType::U8, vec![]),
    ])
}
