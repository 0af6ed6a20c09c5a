//! Axes and multi-indices as the movement kernels and the resampling ones
//! (`resample.rs`) take them: axes normalized for a rank of at least 1
//! and checked distinct, and a row-major walk over a shape's indices.

use crate::interp::kernels::ctx::{bail, KResult};
use crate::tensor::numel;

/// Calls `f` with each multi-index of `shape` in row-major order.
pub(super) fn map_indices<T>(
    shape: &[usize],
    mut f: impl FnMut(&[usize]) -> KResult<T>,
) -> KResult<Vec<T>> {
    let n = numel(shape);
    let mut idx = vec![0usize; shape.len()];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(f(&idx)?);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}

/// An axis of a tensor of rank `rank` (>= 1: every op here indexes a dim
/// by it), negative counting from the end.
pub(super) fn norm_axis(axis: i64, rank: usize) -> KResult<usize> {
    if rank == 0 {
        bail!("axis {axis} given for a scalar (rank 0) input");
    }
    crate::interp::kernels::shape::norm_axis(axis, rank)
}

/// Axes of an operand or attribute, normalized and checked distinct.
pub(super) fn norm_axes(axes: &[i64], rank: usize) -> KResult<Vec<usize>> {
    let mut out = Vec::with_capacity(axes.len());
    for &a in axes {
        let n = norm_axis(a, rank)?;
        if out.contains(&n) {
            bail!("axis {a} is repeated");
        }
        out.push(n);
    }
    Ok(out)
}
