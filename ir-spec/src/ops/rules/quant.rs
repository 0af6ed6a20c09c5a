//! Rules of the quantization ops: QuantizeLinear, DequantizeLinear and
//! DynamicQuantizeLinear. (The integer and QLinear forms of MatMul and Conv
//! share their float forms' shape rules, in `linalg` and `nn`.)

use super::common::{bad_attr, dtype_attr, elem, t, t_opt, tensor, R};
use crate::ops::schema::InferCtx;
use crate::types::{ElemType, Type};

pub(super) fn quantize_linear(c: &InferCtx) -> R {
    let x = tensor(c, 0)?;
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
