//! Reductions over any axes and broadcasting copies, for the shapes the
//! generated loops do not cover (a ReduceSum over a middle axis, an Expand
//! of an integer mask). Index arithmetic is incremental (an odometer), so
//! each element costs an add, not a division.

use super::movement::{odometer, strides};

/// How to combine elements of a reduction.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
}

/// Reduce `x` of `shape` over `axes` (sorted or not, no repeats); the
/// result has the kept dims in order (keepdims only changes its shape) and
/// is written over all of `out`.
pub fn reduce(x: &[f32], shape: &[usize], axes: &[usize], op: ReduceOp, out: &mut [f32]) {
    let kept: Vec<usize> = (0..shape.len())
        .map(|a| if axes.contains(&a) { 1 } else { shape[a] })
        .collect();
    let n_out: usize = kept.iter().product();
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    let init = match op {
        ReduceOp::Sum | ReduceOp::Mean => 0.0,
        ReduceOp::Max => f32::NEG_INFINITY,
        ReduceOp::Min => f32::INFINITY,
    };
    assert_eq!(out.len(), n_out, "reduce: output length");
    out.fill(init);
    // Output offset of each input element: kept axes stride, reduced 0.
    let ks = strides(&kept);
    let st: Vec<usize> = (0..shape.len())
        .map(|a| if axes.contains(&a) { 0 } else { ks[a] })
        .collect();
    let mut i = 0;
    odometer(shape, &st, |o| {
        let v = x[i];
        i += 1;
        let acc = &mut out[o];
        *acc = match op {
            ReduceOp::Sum | ReduceOp::Mean => *acc + v,
            // NaN wins, as in the interpreter.
            ReduceOp::Max if v.is_nan() || *acc < v => v,
            ReduceOp::Min if v.is_nan() || *acc > v => v,
            _ => *acc,
        };
    });
    if op == ReduceOp::Mean {
        // An empty reduction's mean is 0 · inf = NaN: numpy's 0/0.
        let inv = 1.0 / count as f32;
        out.iter_mut().for_each(|v| *v *= inv);
    }
}

crate::cpu::simd_fn! {
    /// Softmax (or log-softmax) of `x` viewed as `[outer, n, inner]` along
    /// its middle dim, written over all of `out`: the axis the generated
    /// loops do not cover (they take the last). Columns of `inner` are
    /// independent, so every pass runs along contiguous rows, vectorized,
    /// with the branch-free exp of [`super::approx`] (libm's was a call per
    /// element: YOLOv8's DFL softmax ran at 1.7 GB/s). As the interpreter:
    /// the shift is the column's largest value when that is finite, else 0
    /// (an Inf gives NaN and 0s, a NaN gives NaNs).
    pub fn softmax_axis(x: &[f32], outer: usize, n: usize, inner: usize, log: bool, out: &mut [f32]) {
        assert_eq!(x.len(), outer * n * inner, "softmax: operand length");
        assert_eq!(out.len(), x.len(), "softmax: result length");
        if x.is_empty() {
            return;
        }
        let (mut shift, mut sum) = (vec![0f32; inner], vec![0f32; inner]);
        for (xs, os) in x
            .chunks_exact(n * inner)
            .zip(out.chunks_exact_mut(n * inner))
        {
            shift.fill(f32::NEG_INFINITY);
            for row in xs.chunks_exact(inner) {
                for (m, &v) in shift.iter_mut().zip(row) {
                    *m = if v > *m { v } else { *m };
                }
            }
            for m in &mut shift {
                if !m.is_finite() {
                    *m = 0.0;
                }
            }
            sum.fill(0.0);
            for (row, orow) in xs.chunks_exact(inner).zip(os.chunks_exact_mut(inner)) {
                for ((o, s), (&v, &m)) in orow.iter_mut().zip(sum.iter_mut()).zip(row.iter().zip(&shift)) {
                    let e = super::approx::exp(v - m);
                    *o = e;
                    *s += e;
                }
            }
            if log {
                for s in &mut sum {
                    *s = s.ln();
                }
                for (row, orow) in xs.chunks_exact(inner).zip(os.chunks_exact_mut(inner)) {
                    for ((o, &v), (&m, &l)) in orow.iter_mut().zip(row).zip(shift.iter().zip(&sum)) {
                        *o = v - m - l;
                    }
                }
            } else {
                for orow in os.chunks_exact_mut(inner) {
                    for (o, &s) in orow.iter_mut().zip(&sum) {
                        *o /= s;
                    }
                }
            }
        }
    }
}

/// `x` of `in_shape` broadcast to `out_shape` (numpy rules; `in_shape`
/// right-aligned, its dims 1 or equal), written over all of `out`.
pub fn broadcast<T: Copy>(x: &[T], in_shape: &[usize], out_shape: &[usize], out: &mut [T]) {
    let r = out_shape.len();
    let pad = r - in_shape.len();
    let is = strides(in_shape);
    let st: Vec<usize> = (0..r)
        .map(|a| {
            if a < pad || in_shape[a - pad] == 1 {
                0
            } else {
                is[a - pad]
            }
        })
        .collect();
    assert_eq!(
        out.len(),
        out_shape.iter().product::<usize>(),
        "broadcast: output length"
    );
    // Merge neighbouring axes that are both broadcast or contiguous
    // together, so the innermost run is as long as it can be: a whole
    // channel block filled with one value, a whole row copied.
    let mut dims: Vec<(usize, usize)> = vec![];
    for (&e, &s) in out_shape.iter().zip(&st) {
        match dims.last_mut() {
            Some(last) if (last.1 == 0 && s == 0) || (s != 0 && last.1 == s * e) => {
                last.0 *= e;
                last.1 = s;
            }
            _ => dims.push((e, s)),
        }
    }
    let Some(&(inner, inner_stride)) = dims.last() else {
        out[0] = x[0];
        return;
    };
    if inner == 0 {
        return;
    }
    let (outer, outer_st): (Vec<usize>, Vec<usize>) =
        dims[..dims.len() - 1].iter().copied().unzip();
    let mut rows = out.chunks_exact_mut(inner);
    odometer(&outer, &outer_st, |o| {
        let Some(dst) = rows.next() else { return };
        if inner_stride == 0 {
            dst.fill(x[o]);
        } else {
            dst.copy_from_slice(&x[o..o + inner]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::ReduceOp;

    fn reduce(x: &[f32], shape: &[usize], axes: &[usize], op: ReduceOp) -> Vec<f32> {
        let n = (0..shape.len())
            .filter(|a| !axes.contains(a))
            .map(|a| shape[a])
            .product();
        let mut out = vec![f32::NAN; n];
        super::reduce(x, shape, axes, op, &mut out);
        out
    }

    fn broadcast(x: &[i32], in_shape: &[usize], out_shape: &[usize]) -> Vec<i32> {
        let mut out = vec![-1; out_shape.iter().product()];
        super::broadcast(x, in_shape, out_shape, &mut out);
        out
    }

    #[test]
    fn reduce_middle_axis() {
        // [2, 3, 2]: sum over axis 1.
        let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(
            reduce(&x, &[2, 3, 2], &[1], ReduceOp::Sum),
            vec![6.0, 9.0, 24.0, 27.0]
        );
        assert_eq!(
            reduce(&x, &[2, 3, 2], &[0, 2], ReduceOp::Max),
            vec![7.0, 9.0, 11.0]
        );
        assert_eq!(
            reduce(&x, &[2, 3, 2], &[0, 1, 2], ReduceOp::Mean),
            vec![5.5]
        );
        assert!(reduce(&[1.0, f32::NAN], &[2], &[0], ReduceOp::Min)[0].is_nan());
    }

    #[test]
    fn broadcast_rows_columns_and_scalars() {
        assert_eq!(broadcast(&[1, 2], &[2, 1], &[2, 3]), vec![1, 1, 1, 2, 2, 2]);
        assert_eq!(broadcast(&[1, 2, 3], &[3], &[2, 3]), vec![1, 2, 3, 1, 2, 3]);
        assert_eq!(broadcast(&[7], &[], &[2, 2]), vec![7; 4]);
    }
}
