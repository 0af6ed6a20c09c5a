//! Shape arithmetic the kernel families share: axes normalized to a rank,
//! and numpy broadcasting of shapes and element indices.

use super::ctx::{bail, KResult};

/// An `axis` attribute or operand value normalized to `0..rank`.
pub fn norm_axis(axis: i64, rank: usize) -> KResult<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) && !(r == 0 && a == 0) {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    Ok(a as usize)
}

/// The element count of `shape`, overflow and the current limits checked
/// (at one byte per element: callers that know the element type of what
/// they allocate use [`crate::limits::alloc`]).
pub fn checked_numel(shape: &[usize]) -> KResult<usize> {
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("shape {shape:?} is too large"))?;
    crate::limits::alloc(
        || format!("a result of shape {shape:?}"),
        kiln_ir::ElemType::U8,
        shape,
    )?;
    Ok(n)
}

/// The element count of a buffer of `dims` elements of `T` (a result or
/// the f64 scratch many kernels compute in), its bytes checked against the
/// current limits before anything is allocated.
pub fn check_buffer<T>(what: &str, dims: &[usize]) -> KResult<usize> {
    let elem = match std::mem::size_of::<T>() {
        8 => kiln_ir::ElemType::F64,
        4 => kiln_ir::ElemType::F32,
        2 => kiln_ir::ElemType::F16,
        _ => kiln_ir::ElemType::U8,
    };
    Ok(crate::limits::alloc(
        || format!("{what} of shape {dims:?}"),
        elem,
        dims,
    )?)
}

/// A zeroed buffer of `dims` elements, checked as [`check_buffer`].
pub fn buffer<T: Clone + Default>(what: &str, dims: &[usize]) -> KResult<Vec<T>> {
    let n = check_buffer::<T>(what, dims)?;
    Ok(vec![T::default(); n])
}

/// Numpy broadcasting of two shapes (the result's size checked against the
/// current limits: broadcasting [n, 1] with [1, n] asks for n^2).
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> KResult<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let x = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let y = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (x, y) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => bail!("shapes {a:?} and {b:?} do not broadcast"),
        };
    }
    checked_numel(&out)?;
    Ok(out)
}

/// For each element of `out_shape` (row-major), the index of the element
/// of a tensor of `in_shape` broadcast to it.
pub fn broadcast_indices(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let n: usize = out_shape.iter().product();
    let off = out_shape.len() - in_shape.len();
    let in_strides = crate::tensor::strides(in_shape);
    let mut idx = vec![0usize; out_shape.len()];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut lin = 0;
        for (k, &s) in in_strides.iter().enumerate() {
            if in_shape[k] != 1 {
                lin += idx[k + off] * s;
            }
        }
        out.push(lin);
        for d in (0..out_shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(broadcast_shape(&[2, 3], &[3]).ok(), Some(vec![2, 3]));
        assert_eq!(
            broadcast_shape(&[2, 1, 4], &[3, 1]).ok(),
            Some(vec![2, 3, 4])
        );
        assert_eq!(broadcast_shape(&[], &[5]).ok(), Some(vec![5]));
        assert_eq!(broadcast_shape(&[0, 1], &[1, 3]).ok(), Some(vec![0, 3]));
        assert!(broadcast_shape(&[2, 3], &[4]).is_err());
        // [3,1] into [2,3,2]: rows repeat along the last axis and the batch.
        assert_eq!(
            broadcast_indices(&[3, 1], &[2, 3, 2]),
            vec![0, 0, 1, 1, 2, 2, 0, 0, 1, 1, 2, 2]
        );
        assert_eq!(broadcast_indices(&[], &[3]), vec![0, 0, 0]);
        assert_eq!(broadcast_indices(&[2], &[2, 2]), vec![0, 1, 0, 1]);
    }

    #[test]
    fn axes_normalize_or_fail() {
        assert_eq!(norm_axis(-1, 3).ok(), Some(2));
        assert_eq!(norm_axis(0, 0).ok(), Some(0));
        assert!(norm_axis(3, 3).is_err());
        assert!(norm_axis(-4, 3).is_err());
    }
}
