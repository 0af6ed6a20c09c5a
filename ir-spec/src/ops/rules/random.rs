//! Rules of the random generators that take their shape from attributes:
//! RandomNormal, RandomUniform, and Multinomial. (The `*Like` forms and
//! Bernoulli keep operand 0's shape: `elementwise`.)

use super::common::{bad_attr, dtype_attr, known_u64, shape_of, t, R};
use crate::ops::schema::InferCtx;
use crate::types::{Dim, ElemType};

pub(super) fn random(c: &InferCtx) -> R {
    let e = dtype_attr(c, "dtype")?.unwrap_or(ElemType::F32);
    let s = c
        .attr_ints("shape")
        .ok_or_else(|| bad_attr("shape", "required"))?;
    let dims = s
        .iter()
        .map(|&d| known_u64(d).ok_or_else(|| bad_attr("shape", "negative dim")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vec![t(e, dims)])
}

pub(super) fn multinomial(c: &InferCtx) -> R {
    let e = dtype_attr(c, "dtype")?.unwrap_or(ElemType::I32);
    let n = shape_of(c, 0)?
        .and_then(|s| s.first().cloned())
        .unwrap_or(Dim::Unknown);
    let ss = known_u64(c.attr_int("sample_size", 1)).unwrap_or(Dim::Unknown);
    Ok(vec![t(e, vec![n, ss])])
}
