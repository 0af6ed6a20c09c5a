//! Reductions over any axes and broadcasting copies, for the shapes the
//! generated loops do not cover (a ReduceSum over a middle axis, an Expand
//! of an integer mask). Index arithmetic is incremental (an odometer), so
//! each element costs an add, not a division.

use super::movement::{odometer, strides};

/// How to combine elements of a reduction: the ONNX reductions of f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
    L1,
    L2,
    SumSquare,
    LogSum,
    LogSumExp,
}

impl ReduceOp {
    /// The reduction an ONNX op name spells.
    pub fn of_onnx(op: &str) -> Option<ReduceOp> {
        Some(match op {
            "ReduceSum" => ReduceOp::Sum,
            "ReduceMean" => ReduceOp::Mean,
            "ReduceMax" => ReduceOp::Max,
            "ReduceMin" => ReduceOp::Min,
            "ReduceProd" => ReduceOp::Prod,
            "ReduceL1" => ReduceOp::L1,
            "ReduceL2" => ReduceOp::L2,
            "ReduceSumSquare" => ReduceOp::SumSquare,
            "ReduceLogSum" => ReduceOp::LogSum,
            "ReduceLogSumExp" => ReduceOp::LogSumExp,
            _ => return None,
        })
    }
}

/// Reduce `x` of `shape` over `axes` (sorted or not, no repeats); the
/// result has the kept dims in order (keepdims only changes its shape) and
/// is written over all of `out`. As the interpreter (the empty set's
/// identities included): sums accumulate in f64, NaN wins Max and Min,
/// and LogSumExp is shifted by each output's largest finite element.
pub fn reduce(x: &[f32], shape: &[usize], axes: &[usize], op: ReduceOp, out: &mut [f32]) {
    let n_out: usize = (0..shape.len())
        .filter(|a| !axes.contains(a))
        .map(|a| shape[a])
        .product();
    assert_eq!(out.len(), n_out, "reduce: output length");
    match Block::of(shape, axes) {
        Some(block) if op != ReduceOp::LogSumExp => block.reduce(x, op, out),
        _ => reduce_any(x, shape, axes, op, out),
    }
}

/// [`reduce`] over any axes, element by element in `x`'s order.
fn reduce_any(x: &[f32], shape: &[usize], axes: &[usize], op: ReduceOp, out: &mut [f32]) {
    use ReduceOp as R;
    let kept: Vec<usize> = (0..shape.len())
        .map(|a| if axes.contains(&a) { 1 } else { shape[a] })
        .collect();
    let n_out: usize = kept.iter().product();
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    // Output offset of each input element: kept axes stride, reduced 0.
    let ks = strides(&kept);
    let st: Vec<usize> = (0..shape.len())
        .map(|a| if axes.contains(&a) { 0 } else { ks[a] })
        .collect();
    // One pass over x, element i into output slot o.
    let each = |f: &mut dyn FnMut(usize, f32)| {
        let mut i = 0;
        odometer(shape, &st, |o| {
            f(o, x[i]);
            i += 1;
        });
    };
    match op {
        R::Max | R::Min => {
            let max = op == R::Max;
            out.fill(if max {
                f32::NEG_INFINITY
            } else {
                f32::INFINITY
            });
            each(&mut |o, v| {
                let acc = &mut out[o];
                if v.is_nan() || (max && *acc < v) || (!max && *acc > v) {
                    *acc = v;
                }
            });
        }
        _ => {
            // LogSumExp's shift: the largest finite element, else 0.
            let mut shift = vec![0f64; if op == R::LogSumExp { n_out } else { 0 }];
            if op == R::LogSumExp {
                shift.fill(f64::NEG_INFINITY);
                each(&mut |o, v| {
                    if v.is_finite() && (v as f64) > shift[o] {
                        shift[o] = v as f64;
                    }
                });
                shift
                    .iter_mut()
                    .filter(|m| !m.is_finite())
                    .for_each(|m| *m = 0.0);
            }
            let mut acc = vec![if op == R::Prod { 1f64 } else { 0f64 }; n_out];
            each(&mut |o, v| {
                let v = v as f64;
                let a = &mut acc[o];
                match op {
                    R::Prod => *a *= v,
                    R::L1 => *a += v.abs(),
                    R::L2 | R::SumSquare => *a += v * v,
                    R::LogSumExp => *a += (v - shift[o]).exp(),
                    _ => *a += v,
                }
            });
            for (k, (o, a)) in out.iter_mut().zip(acc).enumerate() {
                let r = finish(op, a, count);
                *o = if op == R::LogSumExp { r + shift[k] } else { r } as f32;
            }
        }
    }
}

/// The result of an accumulator `a` over `count` elements (LogSumExp's
/// caller adds its shift).
fn finish(op: ReduceOp, a: f64, count: usize) -> f64 {
    match op {
        // An empty reduction's mean is 0/0 = NaN, as numpy's.
        ReduceOp::Mean => a / count as f64,
        ReduceOp::L2 => a.sqrt(),
        ReduceOp::LogSum | ReduceOp::LogSumExp => a.ln(),
        _ => a,
    }
}

/// A reduction over one block of adjacent axes: `x` is `[outer, n,
/// inner]` (`outer` = the output's length / `inner`) reduced over `n`.
/// Each output accumulates its `n` elements in the odometer's order (row
/// by row), so the f64 sums are the same, but along contiguous rows of
/// `inner` instead of a closure call per element (a mean pooling over
/// MiniLM's 128 tokens took 0.3 ms, 4x onnxruntime).
struct Block {
    n: usize,
    inner: usize,
}

impl Block {
    /// The block `axes` form, if they are adjacent (in any order).
    fn of(shape: &[usize], axes: &[usize]) -> Option<Block> {
        let lo = *axes.iter().min()?;
        let hi = lo + axes.len();
        if hi > shape.len() || !(lo..hi).all(|a| axes.contains(&a)) {
            return None;
        }
        Some(Block {
            n: shape[lo..hi].iter().product(),
            inner: shape[hi..].iter().product(),
        })
    }

    fn reduce(&self, x: &[f32], op: ReduceOp, out: &mut [f32]) {
        use ReduceOp as R;
        let Block { n, inner } = *self;
        if inner == 0 {
            return;
        }
        let rows = |o: usize| (0..n).map(move |r| &x[(o * n + r) * inner..][..inner]);
        if matches!(op, R::Max | R::Min) {
            let max = op == R::Max;
            for (o, dst) in out.chunks_exact_mut(inner).enumerate() {
                dst.fill(if max {
                    f32::NEG_INFINITY
                } else {
                    f32::INFINITY
                });
                for row in rows(o) {
                    for (a, &v) in dst.iter_mut().zip(row) {
                        if v.is_nan() || (max && *a < v) || (!max && *a > v) {
                            *a = v;
                        }
                    }
                }
            }
            return;
        }
        let mut acc = vec![0f64; inner];
        for (o, dst) in out.chunks_exact_mut(inner).enumerate() {
            acc.fill(if op == R::Prod { 1.0 } else { 0.0 });
            for row in rows(o) {
                let pairs = acc.iter_mut().zip(row);
                match op {
                    R::Prod => pairs.for_each(|(a, &v)| *a *= v as f64),
                    R::L1 => pairs.for_each(|(a, &v)| *a += (v as f64).abs()),
                    R::L2 | R::SumSquare => pairs.for_each(|(a, &v)| *a += v as f64 * v as f64),
                    _ => pairs.for_each(|(a, &v)| *a += v as f64),
                }
            }
            for (d, &a) in dst.iter_mut().zip(&acc) {
                *d = finish(op, a, n) as f32;
            }
        }
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

crate::cpu::simd_fn! {
    /// The rest of a softmax (or log-softmax) row once its values are in
    /// `row` and `shift` is known (the row max when finite, else 0):
    /// `exp(v - shift)` summed, then scaled by the inverse sum (or `v -
    /// shift - ln sum`), in place. The generated softmax loops call it
    /// once per row: they are 128 bits wide, and this exp runs at the
    /// CPU's full vector width (a 196-wide row went 1.4 → 0.5 ms for 3,136
    /// rows on Zen 3; onnxruntime 0.34).
    pub fn softmax_row(row: &mut [f32], shift: f32, log: bool) {
        // Sums in f64 lanes and a division, not a reciprocal's product:
        // they took the mean error against the exact softmax from 0.51 to
        // 0.31 ulp (rows of 91; the generated loops' is 0.45), and
        // SSDLite's near-tied class scores decide which boxes it keeps
        // (`jit::tests::softmax_error_in_ulps`).
        const W: usize = 8;
        let mut acc = [0f64; W];
        let mut chunks = row.chunks_exact_mut(W);
        for c in &mut chunks {
            for (v, a) in c.iter_mut().zip(&mut acc) {
                let e = super::approx::exp(*v - shift);
                if !log {
                    *v = e;
                }
                *a += e as f64;
            }
        }
        let mut sum = 0.0f64;
        for v in chunks.into_remainder() {
            let e = super::approx::exp(*v - shift);
            if !log {
                *v = e;
            }
            sum += e as f64;
        }
        let sum = (sum + acc.iter().sum::<f64>()) as f32;
        if log {
            let l = sum.ln();
            for v in row.iter_mut() {
                *v = *v - shift - l;
            }
        } else {
            for v in row.iter_mut() {
                *v /= sum;
            }
        }
    }
}

/// [`softmax_row`] as generated code calls it: `n` values at `row`,
/// `log` 0 or 1.
///
/// # Safety
/// `row` points at `n` writable f32s that nothing else touches during
/// the call.
pub(crate) unsafe extern "C" fn softmax_row_host(row: *mut f32, n: usize, shift: f32, log: u32) {
    // SAFETY: the caller's contract.
    let row = unsafe { std::slice::from_raw_parts_mut(row, n) };
    softmax_row(row, shift, log != 0);
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
    fn adjacent_axes_sum_as_the_odometer_does() {
        // Rows of a block reduction add in the odometer's order: the same
        // f64 sums, so the same floats, for every op and block position.
        let x: Vec<f32> = (0..2 * 5 * 3 * 7)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.173)
            .collect();
        let shape = [2, 5, 3, 7];
        use ReduceOp as R;
        for op in [
            R::Sum,
            R::Mean,
            R::Max,
            R::Min,
            R::Prod,
            R::L1,
            R::L2,
            R::SumSquare,
        ] {
            for axes in [
                &[0][..],
                &[1],
                &[3],
                &[1, 2],
                &[2, 1],
                &[0, 1, 2, 3],
                &[2, 3],
            ] {
                let block = reduce(&x, &shape, axes, op);
                let n = block.len();
                let mut any = vec![0.0; n];
                super::reduce_any(&x, &shape, axes, op, &mut any);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&block), bits(&any), "{op:?} {axes:?}");
            }
        }
        let logs: Vec<f32> = x.iter().map(|v| v.abs() + 0.5).collect();
        let mut any = vec![0.0; 14];
        super::reduce_any(&logs, &shape, &[1, 2], R::LogSum, &mut any);
        assert_eq!(reduce(&logs, &shape, &[1, 2], R::LogSum), any);
    }

    #[test]
    fn products_norms_and_logs() {
        // [2, 3]: rows [1, -2, 3] and [0.5, 4, -1], over axis 1 and 0.
        let x = [1.0, -2.0, 3.0, 0.5, 4.0, -1.0];
        let r = |axes: &[usize], op| reduce(&x, &[2, 3], axes, op);
        assert_eq!(r(&[1], ReduceOp::Prod), vec![-6.0, -2.0]);
        assert_eq!(r(&[1], ReduceOp::L1), vec![6.0, 5.5]);
        assert_eq!(r(&[1], ReduceOp::SumSquare), vec![14.0, 17.25]);
        assert_eq!(
            r(&[0], ReduceOp::L2),
            vec![1.25f32.sqrt(), 20f32.sqrt(), 10f32.sqrt()]
        );
        assert_eq!(r(&[0, 1], ReduceOp::LogSum), vec![5.5f32.ln()]);
        let lse = |v: &[f64]| v.iter().map(|a| a.exp()).sum::<f64>().ln() as f32;
        assert_eq!(
            r(&[1], ReduceOp::LogSumExp),
            vec![lse(&[1.0, -2.0, 3.0]), lse(&[0.5, 4.0, -1.0])]
        );
        // The shift keeps LogSumExp finite where plain exps overflow, and
        // an infinite element gives inf.
        assert_eq!(
            reduce(&[1000.0, 1000.0], &[2], &[0], ReduceOp::LogSumExp),
            vec![1000.0 + 2f32.ln()]
        );
        assert_eq!(
            reduce(&[1.0, f32::INFINITY], &[2], &[0], ReduceOp::LogSumExp),
            vec![f32::INFINITY]
        );
        // The empty set's identities.
        assert_eq!(reduce(&[], &[0, 2], &[0], ReduceOp::Prod), vec![1.0, 1.0]);
        assert_eq!(
            reduce(&[], &[0, 2], &[0], ReduceOp::LogSumExp),
            vec![f32::NEG_INFINITY; 2]
        );
    }

    #[test]
    fn broadcast_rows_columns_and_scalars() {
        assert_eq!(broadcast(&[1, 2], &[2, 1], &[2, 3]), vec![1, 1, 1, 2, 2, 2]);
        assert_eq!(broadcast(&[1, 2, 3], &[3], &[2, 3]), vec![1, 2, 3, 1, 2, 3]);
        assert_eq!(broadcast(&[7], &[], &[2, 2]), vec![7; 4]);
    }
}
