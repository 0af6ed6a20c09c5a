//! Kernels: the neural-network ops of the default domain (convolution,
//! pooling, normalization, reductions, softmax, matrix products, losses,
//! detection). Shared here: float/integer conversion of operands, the
//! spatial attributes of conv/pool ops, and a blocked matrix product that
//! Conv, ConvTranspose, MatMul and Gemm use.

mod conv;
mod linalg;
mod loss;
mod norm;
mod pool;
mod reduce;
mod softmax;
mod vision;

use std::ops::{Add, AddAssign, Mul};

use kiln_ir::ElemType;

use super::{bail, Ctx, KResult, KernelFn};
use crate::tensor::{Data, Tensor};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    reduce::lookup(op)
        .or_else(|| softmax::lookup(op))
        .or_else(|| linalg::lookup(op))
        .or_else(|| conv::lookup(op))
        .or_else(|| pool::lookup(op))
        .or_else(|| norm::lookup(op))
        .or_else(|| loss::lookup(op))
        .or_else(|| vision::lookup(op))
}

/// A float type the blocked matrix product runs in.
pub(crate) trait Fl:
    Copy + Default + Add<Output = Self> + Mul<Output = Self> + AddAssign + 'static
{
}
impl Fl for f32 {}
impl Fl for f64 {}

/// `c += a * b` for row-major `a` (m x k), `b` (k x n), `c` (m x n):
/// cache-blocked over k and n, with a 4 x 8 register tile so the inner loop
/// runs over contiguous rows of `b`.
pub(crate) fn gemm<T: Fl>(m: usize, n: usize, k: usize, a: &[T], b: &[T], c: &mut [T]) {
    const MR: usize = 4;
    const NR: usize = 8;
    const KB: usize = 256;
    const NB: usize = 512;
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    for j0 in (0..n).step_by(NB) {
        let j1 = (j0 + NB).min(n);
        for k0 in (0..k).step_by(KB) {
            let k1 = (k0 + KB).min(k);
            let mut i = 0;
            while i < m {
                let mr = MR.min(m - i);
                let mut j = j0;
                while j < j1 {
                    let nr = NR.min(j1 - j);
                    if mr == MR && nr == NR {
                        let mut acc = [[T::default(); NR]; MR];
                        for (r, row) in acc.iter_mut().enumerate() {
                            row.copy_from_slice(&c[(i + r) * n + j..(i + r) * n + j + NR]);
                        }
                        let a0 = &a[i * k + k0..i * k + k1];
                        let a1 = &a[(i + 1) * k + k0..(i + 1) * k + k1];
                        let a2 = &a[(i + 2) * k + k0..(i + 2) * k + k1];
                        let a3 = &a[(i + 3) * k + k0..(i + 3) * k + k1];
                        for kk in 0..k1 - k0 {
                            let bo = (k0 + kk) * n + j;
                            let brow: &[T; NR] = b[bo..bo + NR].try_into().expect("tile");
                            let (x0, x1, x2, x3) = (a0[kk], a1[kk], a2[kk], a3[kk]);
                            for t in 0..NR {
                                let bv = brow[t];
                                acc[0][t] += x0 * bv;
                                acc[1][t] += x1 * bv;
                                acc[2][t] += x2 * bv;
                                acc[3][t] += x3 * bv;
                            }
                        }
                        for (r, row) in acc.iter().enumerate() {
                            c[(i + r) * n + j..(i + r) * n + j + NR].copy_from_slice(row);
                        }
                    } else {
                        for r in i..i + mr {
                            for kk in k0..k1 {
                                let av = a[r * k + kk];
                                let brow = &b[kk * n + j..kk * n + j + nr];
                                let crow = &mut c[r * n + j..r * n + j + nr];
                                for (cv, &bv) in crow.iter_mut().zip(brow) {
                                    *cv += av * bv;
                                }
                            }
                        }
                    }
                    j += nr;
                }
                i += mr;
            }
        }
    }
}

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
        let a = super::norm_axis(a, rank)?;
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out.sort_unstable();
    Ok(Some(out))
}

/// Product of sizes with overflow checking.
pub(crate) fn checked_numel(shape: &[usize]) -> KResult<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| format!("shape {shape:?} is too large").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_matches_naive() {
        for &(m, n, k) in &[(1, 1, 1), (5, 9, 3), (8, 16, 300), (7, 530, 13)] {
            let a: Vec<f64> = (0..m * k).map(|x| (x % 7) as f64 - 3.0).collect();
            let b: Vec<f64> = (0..k * n).map(|x| (x % 5) as f64 * 0.5).collect();
            let mut c = vec![1.0; m * n];
            gemm(m, n, k, &a, &b, &mut c);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = 1.0 + (0..k).map(|t| a[i * k + t] * b[t * n + j]).sum::<f64>();
                    assert_eq!(c[i * n + j], want);
                }
            }
        }
    }
}
