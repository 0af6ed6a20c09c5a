//! Data-movement kernels of the CPU backend: Transpose, Gather along the
//! first axis (embedding lookups), Slice. Generic over the element type;
//! each copies the largest contiguous runs it can (memcpy) instead of
//! computing an index per element.

use super::kernels::transpose_any;

/// `x` of `shape` with its axes permuted (`out.shape[i] = shape[perm[i]]`),
/// written over all of `out` (as long as `x`).
pub fn transpose<T: Copy>(x: &[T], shape: &[usize], perm: &[usize], out: &mut [T]) {
    let r = shape.len();
    debug_assert_eq!(perm.len(), r);
    let n: usize = shape.iter().product();
    assert_eq!(out.len(), n, "transpose: output length");
    if n == 0 {
        return;
    }
    let in_strides = strides(shape);
    // Trailing output axes that are also the trailing input axes, in order,
    // form one contiguous run copied at once.
    let mut inner = r;
    while inner > 0 && perm[inner - 1] == inner - 1 {
        inner -= 1;
    }
    let run: usize = shape[inner..].iter().product();
    if run == 1 && r >= 2 {
        return transpose_tiled(x, shape, perm, &in_strides, out);
    }
    let outer_dims: Vec<usize> = perm[..inner].iter().map(|&p| shape[p]).collect();
    let outer_strides: Vec<usize> = perm[..inner].iter().map(|&p| in_strides[p]).collect();
    let mut at = 0;
    odometer(&outer_dims, &outer_strides, |src| {
        out[at..at + run].copy_from_slice(&x[src..src + run]);
        at += run;
    });
}

/// [`transpose`] when the input's last axis moves (no contiguous run
/// survives): a batch of 2-D transposes between the output axis `a` that
/// holds the input's last axis and the output's last axis `b`, done in
/// square tiles so that both the reads along `a` and the writes along `b`
/// stay within a few cache lines (an element-by-element odometer was 0.3
/// ms for a 128 x 384 attention-head transpose).
fn transpose_tiled<T: Copy>(
    x: &[T],
    shape: &[usize],
    perm: &[usize],
    in_st: &[usize],
    out: &mut [T],
) {
    const TILE: usize = 16;
    let r = shape.len();
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let out_st = strides(&out_shape);
    let a = perm
        .iter()
        .position(|&p| p == r - 1)
        .expect("perm is a permutation");
    let b = r - 1;
    let (na, nb) = (out_shape[a], out_shape[b]);
    let (oa, sb) = (out_st[a], in_st[perm[b]]);
    // The other output axes, as an odometer over (input, output) offsets.
    let rest: Vec<usize> = (0..r).filter(|&i| i != a && i != b).collect();
    let dims: Vec<usize> = rest.iter().map(|&i| out_shape[i]).collect();
    let st_in: Vec<usize> = rest.iter().map(|&i| in_st[perm[i]]).collect();
    let st_out: Vec<usize> = rest.iter().map(|&i| out_st[i]).collect();
    let mut pairs = vec![];
    odometer(&dims, &st_in, |src| pairs.push(src));
    let mut dsts = vec![];
    odometer(&dims, &st_out, |dst| dsts.push(dst));
    // 4-byte elements (f32, i32, u32) move as f32 bit patterns through
    // the kernel library's 8x8 register blocks, in 32x32 tiles (8 KiB, in
    // L1, whole lines written): element by element, segformer's
    // [C, HW] <-> [HW, C] transposes ran at 3.5-5 GB/s.
    let four = std::mem::size_of::<T>() == 4 && std::mem::align_of::<T>() == 4;
    const BLOCK: usize = 32;
    for (&src0, &dst0) in pairs.iter().zip(&dsts) {
        if four {
            // SAFETY: T is a 4-byte, 4-aligned Copy type, so its memory
            // viewed as f32 is aligned and holds the same bits; the kernel
            // only moves them (loads, shuffles, stores: no arithmetic to
            // change a NaN's bits), so what lands in `out` are T's own
            // bit patterns. `src0..` and `dst0..` lie inside `x` and
            // `out`.
            let (xs, os) = unsafe {
                (
                    std::slice::from_raw_parts(x.as_ptr().add(src0).cast::<f32>(), x.len() - src0),
                    std::slice::from_raw_parts_mut(
                        out.as_mut_ptr().add(dst0).cast::<f32>(),
                        out.len() - dst0,
                    ),
                )
            };
            for a0 in (0..na).step_by(BLOCK) {
                for b0 in (0..nb).step_by(BLOCK) {
                    let (ca, cb) = ((na - a0).min(BLOCK), (nb - b0).min(BLOCK));
                    // Source rows are b (stride sb), columns a; the output
                    // the other way round (stride oa).
                    transpose_any(&xs[b0 * sb + a0..], sb, cb, ca, &mut os[a0 * oa + b0..], oa);
                }
            }
            continue;
        }
        for a0 in (0..na).step_by(TILE) {
            for b0 in (0..nb).step_by(TILE) {
                for ia in a0..(a0 + TILE).min(na) {
                    let row = &mut out[dst0 + ia * oa + b0..][..(nb - b0).min(TILE)];
                    for (k, v) in row.iter_mut().enumerate() {
                        *v = x[src0 + ia + (b0 + k) * sb];
                    }
                }
            }
        }
    }
}

/// Row-major strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Visit every index of `shape` in row-major order, passing the offset
/// into a tensor with strides `st` (0 on broadcast axes): an odometer, so
/// each step costs an add, not a division.
pub(crate) fn odometer(shape: &[usize], st: &[usize], mut f: impl FnMut(usize)) {
    if shape.contains(&0) {
        return;
    }
    let r = shape.len();
    let mut idx = vec![0usize; r];
    let mut off = 0usize;
    loop {
        f(off);
        let mut a = r;
        loop {
            if a == 0 {
                return;
            }
            a -= 1;
            idx[a] += 1;
            off += st[a];
            if idx[a] < shape[a] {
                break;
            }
            off -= st[a] * shape[a];
            idx[a] = 0;
        }
    }
}

/// How ScatterElements combines an update with the element it lands on
/// (its `reduction` attribute).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    Replace,
    Add,
    Mul,
    Max,
    Min,
}

impl Combine {
    /// From the attribute's spelling.
    pub fn parse(s: &str) -> Option<Combine> {
        Some(match s {
            "none" => Combine::Replace,
            "add" => Combine::Add,
            "mul" => Combine::Mul,
            "max" => Combine::Max,
            "min" => Combine::Min,
            _ => return None,
        })
    }

    /// `old` combined with `new`, as the interpreter combines them (max
    /// and min ignore a NaN, as `f64::max` does).
    pub fn apply(self, old: f32, new: f32) -> f32 {
        match self {
            Combine::Replace => new,
            Combine::Add => old + new,
            Combine::Mul => old * new,
            Combine::Max => old.max(new),
            Combine::Min => old.min(new),
        }
    }
}

/// ScatterElements: `out` is `data` (of `shape`) with each update
/// `updates[p]` (`updates` has the shape `ishape` of `indices`) combined
/// into the element at position p with its `axis` coordinate replaced by
/// `indices[p]` (negative counts from the end), in order.
#[allow(clippy::too_many_arguments)]
pub fn scatter_elements<T: Copy>(
    data: &[T],
    shape: &[usize],
    indices: &[i64],
    ishape: &[usize],
    updates: &[T],
    axis: usize,
    combine: impl Fn(T, T) -> T,
    out: &mut [T],
) -> Result<(), String> {
    out.copy_from_slice(data);
    if updates.len() != indices.len() {
        return Err("ScatterElements: indices and updates differ in shape".into());
    }
    along_axis(shape, indices, ishape, axis, |k, o| {
        out[o] = combine(out[o], updates[k])
    })
    .map_err(|e| format!("ScatterElements: {e}"))
}

/// The element addressing of ScatterElements and GatherElements: for
/// each position k of `indices` (of `ishape`, the data's rank, no larger
/// than `shape` off the axis), `f(k, offset)` with `offset` the data
/// element at k's coordinates with its `axis` coordinate replaced by
/// `indices[k]` (negative counts from the end). An index out of range is
/// skipped and reported.
fn along_axis(
    shape: &[usize],
    indices: &[i64],
    ishape: &[usize],
    axis: usize,
    mut f: impl FnMut(usize, usize),
) -> Result<(), String> {
    if indices.len() != ishape.iter().product::<usize>() || ishape.len() != shape.len() {
        return Err("indices of another shape".into());
    }
    if ishape
        .iter()
        .zip(shape)
        .enumerate()
        .any(|(a, (&i, &d))| a != axis && i > d)
    {
        return Err("indices larger than the data".into());
    }
    let st = strides(shape);
    let mut walk = st.clone();
    walk[axis] = 0;
    let extent = shape[axis] as i64;
    let mut k = 0;
    let mut bad = None;
    odometer(ishape, &walk, |base| {
        let i = indices[k];
        let j = if i < 0 { i + extent } else { i };
        if (0..extent).contains(&j) {
            f(k, base + j as usize * st[axis]);
        } else {
            bad.get_or_insert(i);
        }
        k += 1;
    });
    match bad {
        Some(i) => Err(format!("index {i} is out of range for an axis of {extent}")),
        None => Ok(()),
    }
}

/// Rows of `table` (`rows` rows of `row_len` elements, with `outer`
/// independent tables before them, i.e. Gather on axis `k` with
/// `outer = prod(shape[..k])`) picked by `indices` (negative counts from
/// the end), written over all of `out` (`outer * indices * row_len`).
pub fn gather<T: Copy>(
    table: &[T],
    outer: usize,
    rows: usize,
    row_len: usize,
    indices: &[i64],
    out: &mut [T],
) -> Result<(), String> {
    if out.len() != outer * indices.len() * row_len {
        return Err("gather: output length".into());
    }
    // Checked up front: with no outer table (a zero-size dim before the
    // axis) an out-of-range index is still an error, as the interpreter's.
    if let Some(i) = indices
        .iter()
        .find(|&&i| !(-(rows as i64)..rows as i64).contains(&i))
    {
        return Err(format!(
            "index {i} is out of range for an axis of size {rows}"
        ));
    }
    let mut at = 0;
    for o in 0..outer {
        let base = o * rows * row_len;
        for &i in indices {
            let j = if i < 0 { i + rows as i64 } else { i };
            let s = base + j as usize * row_len;
            out[at..at + row_len].copy_from_slice(&table[s..s + row_len]);
            at += row_len;
        }
    }
    Ok(())
}

/// A strided window of `x` (`shape`): result index `i` along axis `d`
/// reads input index `first[d] + i * step[d]`, for `out_shape`, written
/// over all of `out`. Trailing axes taken whole merge with the last
/// sliced axis when its step is 1, so a channel split of NCHW data is one
/// memcpy per batch item, not one per row.
///
/// `first`/`step` must keep every read inside `x` (the planner derives
/// them from ONNX's clamping rule; a step only matters for axes of two or
/// more results, where `|step| < shape[d]`).
pub fn slice<T: Copy>(
    x: &[T],
    shape: &[usize],
    first: &[usize],
    step: &[isize],
    out_shape: &[usize],
    out: &mut [T],
) {
    let n: usize = out_shape.iter().product();
    assert_eq!(out.len(), n, "slice: output length");
    if n == 0 {
        return;
    }
    let st = strides(shape);
    // Trailing axes taken whole, and the axis before them if its step is
    // 1: one contiguous run per remaining index.
    let mut cut = shape.len();
    while cut > 0
        && first[cut - 1] == 0
        && step[cut - 1] == 1
        && out_shape[cut - 1] == shape[cut - 1]
    {
        cut -= 1;
    }
    let mut run: usize = shape[cut..].iter().product();
    let mut outer = cut;
    if cut > 0 && step[cut - 1] == 1 {
        run *= out_shape[cut - 1];
        outer = cut - 1;
    }
    let base: usize = (0..shape.len()).map(|d| first[d] * st[d]).sum();
    let sst: Vec<isize> = (0..outer).map(|d| step[d] * st[d] as isize).collect();
    let mut idx = vec![0usize; outer];
    let mut src = base as isize;
    for chunk in out.chunks_exact_mut(run) {
        chunk.copy_from_slice(&x[src as usize..][..run]);
        for d in (0..outer).rev() {
            idx[d] += 1;
            src += sst[d];
            if idx[d] < out_shape[d] {
                break;
            }
            src -= sst[d] * out_shape[d] as isize;
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Slice by the definition, one element at a time.
    fn slice_ref(
        x: &[i32],
        shape: &[usize],
        first: &[usize],
        step: &[isize],
        out_shape: &[usize],
    ) -> Vec<i32> {
        let st = strides(shape);
        let n: usize = out_shape.iter().product();
        (0..n)
            .map(|o| {
                let (mut rem, mut src) = (o, 0isize);
                for d in (0..shape.len()).rev() {
                    let i = rem % out_shape[d];
                    rem /= out_shape[d];
                    src += (first[d] as isize + i as isize * step[d]) * st[d] as isize;
                }
                x[src as usize]
            })
            .collect()
    }

    #[test]
    fn slice_matches_the_definition() {
        let shape = [2, 5, 3, 4];
        let x: Vec<i32> = (0..120).collect();
        // (first, step, out_shape): channel split, reversed and strided
        // axes, a middle axis, a scalar-like single element.
        let cases: &[([usize; 4], [isize; 4], [usize; 4])] = &[
            ([0, 2, 0, 0], [1, 1, 1, 1], [2, 3, 3, 4]),
            ([1, 0, 0, 0], [1, 1, 1, 1], [1, 5, 3, 4]),
            ([0, 4, 2, 3], [1, -2, -1, -1], [2, 3, 3, 4]),
            ([0, 0, 1, 1], [1, 1, 1, 2], [2, 5, 2, 2]),
            ([1, 3, 2, 0], [1, 1, 1, 1], [1, 1, 1, 4]),
            ([0, 0, 0, 3], [1, 1, 1, -1], [2, 5, 3, 1]),
            ([0, 1, 0, 0], [1, 3, 1, 1], [2, 2, 3, 4]),
        ];
        for (first, step, out_shape) in cases {
            let n: usize = out_shape.iter().product();
            let mut out = vec![-1; n];
            slice(&x, &shape, first, step, out_shape, &mut out);
            assert_eq!(
                out,
                slice_ref(&x, &shape, first, step, out_shape),
                "{first:?} {step:?}"
            );
        }
        let mut empty: Vec<i32> = vec![];
        slice(&x, &shape, &[0; 4], &[1; 4], &[2, 0, 3, 4], &mut empty);
    }

    /// The definition, one index at a time.
    fn transpose_ref(x: &[i32], shape: &[usize], perm: &[usize]) -> Vec<i32> {
        let r = shape.len();
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        let n: usize = shape.iter().product();
        let mut out = vec![0; n];
        for (o, slot) in out.iter_mut().enumerate() {
            let mut rem = o;
            let mut oi = vec![0; r];
            for a in (0..r).rev() {
                oi[a] = rem % out_shape[a];
                rem /= out_shape[a];
            }
            let mut src = 0;
            let mut ii = vec![0; r];
            for a in 0..r {
                ii[perm[a]] = oi[a];
            }
            for a in 0..r {
                src = src * shape[a] + ii[a];
            }
            *slot = x[src];
        }
        out
    }

    #[test]
    fn transpose_matches_the_definition() {
        let cases: &[(&[usize], &[usize])] = &[
            (&[2, 3], &[1, 0]),
            (&[1, 5, 3, 4], &[0, 2, 1, 3]),
            (&[2, 3, 4], &[2, 0, 1]),
            (&[2, 3, 4], &[0, 1, 2]),
            (&[3, 1, 2, 5], &[3, 2, 1, 0]),
            (&[4], &[0]),
            (&[2, 0, 3], &[1, 0, 2]),
            // Last axis moved: the tiled path, tiles with and without
            // tails.
            (&[1, 37, 3, 20], &[0, 2, 3, 1]),
            (&[5, 17], &[1, 0]),
            (&[2, 3, 4, 5], &[3, 1, 0, 2]),
            // 4-byte elements through 8x8 register blocks in 32x32
            // tiles: whole tiles, tails of blocks and of tiles.
            (&[2, 70, 45], &[0, 2, 1]),
            (&[64, 40], &[1, 0]),
            (&[3, 9, 2, 33], &[3, 1, 2, 0]),
        ];
        for (shape, perm) in cases {
            let n: usize = shape.iter().product();
            let x: Vec<i32> = (0..n as i32).collect();
            let mut got = vec![-1; n];
            transpose(&x, shape, perm, &mut got);
            let want = transpose_ref(&x, shape, perm);
            assert_eq!(got, want, "{shape:?} {perm:?}");
            // f32 bit patterns (NaNs with payloads among them) move
            // unchanged; other widths take the element loop.
            let xf: Vec<f32> = x
                .iter()
                .map(|&v| f32::from_bits(0x7fc0_0000 | v as u32))
                .collect();
            let mut gotf = vec![0.0f32; n];
            transpose(&xf, shape, perm, &mut gotf);
            let bits: Vec<i32> = gotf
                .iter()
                .map(|v| (v.to_bits() & 0x3f_ffff) as i32)
                .collect();
            assert_eq!(bits, want, "f32 {shape:?} {perm:?}");
            let x8: Vec<i64> = x.iter().map(|&v| v as i64 * 3).collect();
            let mut got8 = vec![0i64; n];
            transpose(&x8, shape, perm, &mut got8);
            assert!(
                got8.iter().zip(&want).all(|(&g, &w)| g == w as i64 * 3),
                "i64 {shape:?}"
            );
        }
    }

    #[test]
    fn gather_picks_rows_and_rejects_bad_indices() {
        fn gather(
            t: &[i32],
            outer: usize,
            rows: usize,
            row_len: usize,
            idx: &[i64],
        ) -> Result<Vec<i32>, String> {
            let mut out = vec![-1; outer * idx.len() * row_len];
            super::gather(t, outer, rows, row_len, idx, &mut out).map(|()| out)
        }
        let t: Vec<i32> = (0..12).collect(); // [3, 4]
        assert_eq!(
            gather(&t, 1, 3, 4, &[2, -3]).unwrap_or_default(),
            vec![8, 9, 10, 11, 0, 1, 2, 3]
        );
        // Axis 1 of [2, 3, 2]: outer 2, rows 3, row_len 2.
        let u: Vec<i32> = (0..12).collect();
        assert_eq!(
            gather(&u, 2, 3, 2, &[1]).unwrap_or_default(),
            vec![2, 3, 8, 9]
        );
        assert!(gather(&t, 1, 3, 4, &[3]).is_err());
    }
}

/// A fill value given as f64, in an element type the movement kernels take
/// (exact for every value of f32, i32, u8, i8 and bool, and for i64 up to 2^53:
/// the planner checks).
pub trait FromF64: Copy {
    fn from_f64(v: f64) -> Self;
}

macro_rules! from_f64 {
    ($($t:ty),*) => {$(
        impl FromF64 for $t {
            fn from_f64(v: f64) -> $t {
                v as $t
            }
        }
    )*};
}
from_f64!(f32, i64, i32, u8, i8);

impl FromF64 for bool {
    /// A nonzero fill is true, as a cast of it would be.
    fn from_f64(v: f64) -> bool {
        v != 0.0
    }
}

/// Pad (and crop, with negative pads): element `o` of the result along axis
/// `d` reads `x` at `src[d][o]`, or is `fill` where that is `None`. The
/// tables say what each mode means (the compiler builds them with
/// `kiln_ir::ops::geometry::pad_source`); this copies whole runs of the
/// last axis where consecutive results read consecutive elements.
pub fn pad<T: Copy>(x: &[T], shape: &[usize], src: &[Vec<Option<usize>>], fill: T, out: &mut [T]) {
    let r = shape.len();
    let out_shape: Vec<usize> = src.iter().map(Vec::len).collect();
    let n: usize = out_shape.iter().product();
    assert_eq!(out.len(), n, "pad: output length");
    if n == 0 {
        return;
    }
    if r == 0 {
        out[0] = x[0];
        return;
    }
    let st = strides(shape);
    // The last axis as runs: (first result, first source or None, length).
    let last = &src[r - 1];
    let mut runs: Vec<(usize, Option<usize>, usize)> = vec![];
    for (o, &s) in last.iter().enumerate() {
        match (runs.last_mut(), s) {
            (Some((o0, Some(s0), len)), Some(s)) if *s0 + *len == s && *o0 + *len == o => *len += 1,
            (Some((o0, None, len)), None) if *o0 + *len == o => *len += 1,
            _ => runs.push((o, s, 1)),
        }
    }
    let row = last.len();
    let mut idx = vec![0usize; r - 1];
    for chunk in out.chunks_exact_mut(row) {
        // The row's source offset, or None when an outer axis is fill.
        let base = (0..r - 1).try_fold(0usize, |acc, d| src[d][idx[d]].map(|s| acc + s * st[d]));
        match base {
            None => chunk.fill(fill),
            Some(base) => {
                for &(o, s, len) in &runs {
                    match s {
                        Some(s) => chunk[o..o + len].copy_from_slice(&x[base + s..][..len]),
                        None => chunk[o..o + len].fill(fill),
                    }
                }
            }
        }
        for d in (0..r - 1).rev() {
            idx[d] += 1;
            if idx[d] < out_shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

/// TopK along the middle axis of `x` viewed as `[outer, n, inner]`: the
/// `k` greatest (or least) elements of each lane and their indices, as
/// `[outer, k, inner]`, in order, ties to the lower index (ONNX's
/// order, the interpreter's: `cmp` is the element order). A lane is
/// gathered once, partitioned around its k-th element (linear time), and
/// only the first k sorted, instead of sorting all n.
#[allow(clippy::too_many_arguments)]
pub fn top_k<T: Copy>(
    x: &[T],
    (outer, n, inner): (usize, usize, usize),
    k: usize,
    largest: bool,
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering,
    values: &mut [T],
    indices: &mut [i64],
) {
    assert!(k <= n && x.len() >= outer * n * inner, "TopK: shapes");
    assert!(values.len() >= outer * k * inner && indices.len() >= outer * k * inner);
    if k == 0 {
        return;
    }
    // A total order: the element order (reversed for the largest), then
    // the index, so an unstable partition and sort give the stable answer.
    let before = |a: &(T, usize), b: &(T, usize)| {
        let c = cmp(&a.0, &b.0);
        if largest { c.reverse() } else { c }.then(a.1.cmp(&b.1))
    };
    let mut lane: Vec<(T, usize)> = Vec::with_capacity(n);
    for o in 0..outer {
        for i in 0..inner {
            lane.clear();
            lane.extend((0..n).map(|j| (x[(o * n + j) * inner + i], j)));
            if k < n {
                lane.select_nth_unstable_by(k - 1, before);
            }
            lane[..k].sort_unstable_by(before);
            for (j, &(v, p)) in lane[..k].iter().enumerate() {
                values[(o * k + j) * inner + i] = v;
                indices[(o * k + j) * inner + i] = p as i64;
            }
        }
    }
}

#[cfg(test)]
mod top_k_tests {
    /// Against a full stable sort (the interpreter's way), on lanes with
    /// ties, NaN and -0, along a middle axis, for every k, both
    /// directions.
    #[test]
    fn top_k_matches_a_stable_sort() {
        use crate::interp::kernels::movement::nan_greatest;
        let cmp = |a: &f32, b: &f32| nan_greatest(a, b, a.is_nan(), b.is_nan());
        let (outer, n, inner) = (2, 7, 3);
        let vals = [1.0, 3.0, f32::NAN, -0.0, 3.0, 0.0, -2.0, 3.0, f32::NAN];
        let x: Vec<f32> = (0..outer * n * inner)
            .map(|i| vals[(i * 5 + i / 7) % vals.len()])
            .collect();
        for largest in [true, false] {
            for k in 0..=n {
                let mut v = vec![0f32; outer * k * inner];
                let mut ix = vec![0i64; outer * k * inner];
                super::top_k(&x, (outer, n, inner), k, largest, cmp, &mut v, &mut ix);
                for o in 0..outer {
                    for i in 0..inner {
                        let at = |j: usize| x[(o * n + j) * inner + i];
                        let mut order: Vec<usize> = (0..n).collect();
                        order.sort_by(|&a, &b| {
                            let c = cmp(&at(a), &at(b));
                            if largest {
                                c.reverse()
                            } else {
                                c
                            }
                        });
                        for (j, &p) in order[..k].iter().enumerate() {
                            let q = (o * k + j) * inner + i;
                            assert_eq!(ix[q], p as i64, "k {k} largest {largest}");
                            assert_eq!(v[q].to_bits(), at(p).to_bits());
                        }
                    }
                }
            }
        }
    }
}

/// ArgMax/ArgMin along the middle axis of `x` viewed as `[outer, n,
/// inner]` (n ≥ 1): for each lane the index of its best element, where
/// `better(p, q)` says p is strictly better than q; the first best, or the
/// last with `last` (as the interpreter decides: a later element is taken
/// when the best so far is not strictly better). The lanes of a row are
/// compared side by side, so the operand is read once, in order.
pub fn arg_best<T: Copy>(
    x: &[T],
    (outer, n, inner): (usize, usize, usize),
    last: bool,
    better: impl Fn(T, T) -> bool,
    out: &mut [i64],
) {
    assert!(n >= 1 && x.len() >= outer * n * inner && out.len() >= outer * inner);
    for o in 0..outer {
        let base = o * n * inner;
        let mut best: Vec<T> = x[base..base + inner].to_vec();
        let idx = &mut out[o * inner..(o + 1) * inner];
        idx.fill(0);
        for k in 1..n {
            let row = &x[base + k * inner..][..inner];
            for ((b, i), &v) in best.iter_mut().zip(idx.iter_mut()).zip(row) {
                let take = if last { !better(*b, v) } else { better(v, *b) };
                if take {
                    *b = v;
                    *i = k as i64;
                }
            }
        }
    }
}

/// GatherElements: `out[p]` (p over the `ishape` of `indices`) is the data
/// element at p with its `axis` coordinate replaced by `indices[p]`
/// (negative counts from the end).
pub fn gather_elements<T: Copy>(
    data: &[T],
    shape: &[usize],
    indices: &[i64],
    ishape: &[usize],
    axis: usize,
    out: &mut [T],
) -> Result<(), String> {
    if out.len() != indices.len() {
        return Err("GatherElements: indices and result differ in shape".into());
    }
    along_axis(shape, indices, ishape, axis, |k, o| out[k] = data[o])
        .map_err(|e| format!("GatherElements: {e}"))
}

/// Tile: `x` of `shape` repeated `reps[d]` times along each axis d, over
/// all of `out`. Each output row is copied whole from its source row,
/// `reps[last]` times over.
pub fn tile<T: Copy>(x: &[T], shape: &[usize], reps: &[usize], out: &mut [T]) {
    let r = shape.len();
    let total: usize = shape.iter().zip(reps).map(|(s, k)| s * k).product();
    assert_eq!(out.len(), total, "tile: output length");
    if total == 0 {
        return;
    }
    if r == 0 {
        out[0] = x[0];
        return;
    }
    let row = shape[r - 1];
    let st = strides(shape);
    let out_dims: Vec<usize> = (0..r - 1).map(|d| shape[d] * reps[d]).collect();
    let mut coord = vec![0usize; r - 1];
    for dst in out.chunks_exact_mut(row * reps[r - 1]) {
        let src: usize = coord
            .iter()
            .enumerate()
            .map(|(d, &c)| (c % shape[d]) * st[d])
            .sum();
        for piece in dst.chunks_exact_mut(row) {
            piece.copy_from_slice(&x[src..src + row]);
        }
        for d in (0..r - 1).rev() {
            coord[d] += 1;
            if coord[d] < out_dims[d] {
                break;
            }
            coord[d] = 0;
        }
    }
}

/// CumSum along the middle axis of `[outer, n, inner]`, inclusive or
/// `exclusive`, forward or `reverse`, accumulating in `A` (f64 for f32
/// data, as the interpreter does; the integer type itself, wrapping, for
/// integers) and converting back with `back`.
#[allow(clippy::too_many_arguments)]
pub fn cumsum<T: Copy, A: Copy>(
    x: &[T],
    (outer, n, inner): (usize, usize, usize),
    exclusive: bool,
    reverse: bool,
    zero: A,
    add: impl Fn(A, T) -> A,
    back: impl Fn(A) -> T,
    out: &mut [T],
) {
    assert!(x.len() >= outer * n * inner && out.len() >= outer * n * inner);
    let mut acc = vec![zero; inner];
    for o in 0..outer {
        acc.fill(zero);
        for step in 0..n {
            let k = if reverse { n - 1 - step } else { step };
            let at = (o * n + k) * inner;
            for ((a, &v), y) in acc
                .iter_mut()
                .zip(&x[at..at + inner])
                .zip(&mut out[at..at + inner])
            {
                if exclusive {
                    *y = back(*a);
                    *a = add(*a, v);
                } else {
                    *a = add(*a, v);
                    *y = back(*a);
                }
            }
        }
    }
}

/// Trilu over `x` viewed as `mats` matrices of `rows x cols`: an element
/// is kept where its column minus its row is at least `k` (`upper`) or at
/// most `k` (lower), else `zero`; each matrix row is one copy and one fill
/// of its two runs.
pub fn trilu<T: Copy>(
    x: &[T],
    (mats, rows, cols): (usize, usize, usize),
    k: i64,
    upper: bool,
    zero: T,
    out: &mut [T],
) {
    assert!(x.len() >= mats * rows * cols && out.len() >= mats * rows * cols);
    for (xr, or) in x
        .chunks_exact(cols.max(1))
        .zip(out.chunks_exact_mut(cols.max(1)))
        .take(mats * rows)
        .enumerate()
        .map(|(r, (a, b))| ((r % rows.max(1), a), b))
    {
        let (i, xs) = xr;
        // The first column kept (upper) or dropped (lower): j - i = k.
        let edge = (i as i64 + k).clamp(0, cols as i64) as usize;
        let edge_lower = (i as i64 + k + 1).clamp(0, cols as i64) as usize;
        if upper {
            or[..edge].fill(zero);
            or[edge..].copy_from_slice(&xs[edge..]);
        } else {
            or[..edge_lower].copy_from_slice(&xs[..edge_lower]);
            or[edge_lower..].fill(zero);
        }
    }
}
