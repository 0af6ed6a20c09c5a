//! What the nn family's files share: float and integer conversion of
//! operands and results, the spatial attributes of conv/pool ops, and
//! multi-index and axis arithmetic.

use kiln_ir::ElemType;

use crate::interp::kernels::ctx::{bail, Ctx, KResult};
use crate::interp::kernels::shape::norm_axis;
use crate::tensor::{Data, Tensor};
use crate::value::Value;

/// Is this a float element type the float kernels accept?
pub(crate) fn is_floaty(e: ElemType) -> bool {
    e.is_float()
}

/// A result tensor of element type `elem` from f64 values.
pub(crate) fn out_f64(elem: ElemType, shape: Vec<usize>, v: &[f64]) -> KResult<Value> {
    Ok(Value::tensor(Tensor::new(shape, Data::from_f64(elem, v))?))
}

/// A result tensor of element type `elem` from i64 values (wrapping).
pub(crate) fn out_i64(elem: ElemType, shape: Vec<usize>, v: &[i64]) -> KResult<Value> {
    Ok(Value::tensor(Tensor::new(shape, Data::from_i64(elem, v))?))
}

/// Float data as f32 (for the fast paths of f32/f16/bf16 inputs).
pub(crate) fn to_f32(d: &Data) -> Vec<f32> {
    match d {
        Data::F32(v) => v.clone(),
        Data::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
        Data::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
        other => other.to_f64().into_iter().map(|x| x as f32).collect(),
    }
}

/// f32 values to data of `elem` (f32 kept as is).
pub(crate) fn from_f32(elem: ElemType, v: Vec<f32>) -> Data {
    match elem {
        ElemType::F32 => Data::F32(v),
        ElemType::F16 => Data::F16(v.iter().map(|&x| half::f16::from_f32(x)).collect()),
        ElemType::BF16 => Data::BF16(v.iter().map(|&x| half::bf16::from_f32(x)).collect()),
        e => Data::from_f64(e, &v.iter().map(|&x| x as f64).collect::<Vec<_>>()),
    }
}

/// An ints attribute as non-negative sizes (error when negative), or the
/// default when absent.
pub(crate) fn attr_sizes(cx: &Ctx, name: &str, n: usize, default: usize) -> KResult<Vec<usize>> {
    match cx.attr_ints(name) {
        None => Ok(vec![default; n]),
        Some([]) => Ok(vec![default; n]),
        Some(v) => {
            if v.len() != n {
                bail!("attribute `{name}` has {} values, expected {n}", v.len());
            }
            v.iter()
                .map(|&x| {
                    usize::try_from(x)
                        .map_err(|_| format!("attribute `{name}` has negative value {x}").into())
                })
                .collect()
        }
    }
}

/// The element type of result `i` as declared, else `fallback`.
pub(crate) fn out_elem(cx: &Ctx, i: usize, fallback: ElemType) -> ElemType {
    cx.output_elem(i).unwrap_or(fallback)
}

/// Require a float operand.
pub(crate) fn need_float(t: &Tensor, what: &str) -> KResult<()> {
    if !is_floaty(t.elem()) {
        bail!("{what} must be a float tensor, got {}", t.elem());
    }
    Ok(())
}

/// Iterate a row-major multi-index over `shape`; returns false when done.
pub(crate) fn next_index(idx: &mut [usize], shape: &[usize]) -> bool {
    for d in (0..shape.len()).rev() {
        idx[d] += 1;
        if idx[d] < shape[d] {
            return true;
        }
        idx[d] = 0;
    }
    false
}

/// Axes from an optional i64 operand, normalized, deduplicated and sorted.
pub(crate) fn axes_operand(t: Option<&Tensor>, rank: usize) -> KResult<Option<Vec<usize>>> {
    let Some(t) = t else { return Ok(None) };
    let mut out = Vec::new();
    for a in t.to_i64() {
        let a = norm_axis(a, rank)?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out.sort_unstable();
    Ok(Some(out))
}

pub(crate) use crate::interp::kernels::shape::{buffer, check_buffer, checked_numel};
