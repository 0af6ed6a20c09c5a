//! Row kernels shared by depthwise convolution and windowed pooling, with
//! runtime CPU feature dispatch.
//!
//! Both ops reduce, for each output row, a few input rows: every tap `k` of
//! the kernel's last (W) axis combines input element `o*stride + off_k`
//! into output `o`. Each input row is first copied once per plane into a
//! padded row (the pad value is the op's identity: 0 for sums, -inf for
//! max), so no output needs a bounds check, and split into `stride` phases
//! (even / odd elements for stride 2), so every tap reads a contiguous
//! slice instead of needing gathers. Outputs are then computed in a scratch
//! row rounded up to whole 8-float vectors, with all W taps fused into one
//! pass: no scalar border or remainder loops, which dominated on the
//! narrow (12-24 wide) rows of OCR models.
//!
//! The crate is compiled for baseline x86-64 (SSE2); the same generic code
//! is instantiated once more under `avx2,fma` and picked at plan time with
//! `is_x86_feature_detected!`, which doubles the vector width and fuses the
//! multiply-adds.

/// Instruction set a plan's row kernels run with, detected once at plan
/// build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

impl Isa {
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Isa::Avx2Fma;
        }
        Isa::Portable
    }
}

/// How a tap combines into the accumulator.
pub(crate) trait Op {
    fn step(acc: f32, w: f32, x: f32) -> f32;
}

/// `acc + w * x`, fused when `FMA` (only instantiated where the CPU has it:
/// without hardware FMA `mul_add` is a slow libm call).
pub(crate) struct MulAdd<const FMA: bool>;
impl<const FMA: bool> Op for MulAdd<FMA> {
    #[inline(always)]
    fn step(acc: f32, w: f32, x: f32) -> f32 {
        if FMA {
            w.mul_add(x, acc)
        } else {
            acc + w * x
        }
    }
}

/// Max that propagates NaN, ignoring the weight. Written as a select so it
/// vectorizes (compare + blend).
pub(crate) struct Max;
impl Op for Max {
    #[inline(always)]
    fn step(acc: f32, _w: f32, x: f32) -> f32 {
        nan_max(acc, x)
    }
}

/// Sum, ignoring the weight.
pub(crate) struct Add;
impl Op for Add {
    #[inline(always)]
    fn step(acc: f32, _w: f32, x: f32) -> f32 {
        acc + x
    }
}

/// Max that propagates NaN (f32::max would drop it).
#[inline(always)]
pub(crate) fn nan_max(acc: f32, v: f32) -> f32 {
    if v > acc || v.is_nan() {
        v
    } else {
        acc
    }
}

/// Floats per fused chunk: one AVX2 vector (two SSE2 ones).
const LANES: usize = 8;

/// The W-axis geometry of a depthwise conv or pool, planned once.
#[derive(Debug, Clone)]
pub(crate) struct RowGeom {
    input: usize,
    stride: usize,
    pad_begin: usize,
    /// `output` rounded up to whole chunks: the scratch row length.
    pub padded_out: usize,
    /// Per tap k: where its slice starts in the split row
    /// (`phase * phase_len + start`, for padded index `k*dilation`).
    tap_starts: Vec<usize>,
    /// Elements per phase of the padded row.
    phase_len: usize,
}

impl RowGeom {
    pub(crate) fn new(
        input: usize,
        output: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
        pad_begin: usize,
    ) -> RowGeom {
        let padded_out = output.div_ceil(LANES).max(1) * LANES;
        // Padded indices read: up to (padded_out-1)*stride + (kernel-1)*d,
        // and the whole input must fit after pad_begin.
        let len =
            ((padded_out - 1) * stride + (kernel.max(1) - 1) * dilation + 1).max(pad_begin + input);
        let phase_len = len.div_ceil(stride);
        let tap_starts = (0..kernel)
            .map(|k| {
                let q = k * dilation;
                (q % stride) * phase_len + q / stride
            })
            .collect();
        RowGeom {
            input,
            stride,
            pad_begin,
            padded_out,
            tap_starts,
            phase_len,
        }
    }

    /// Floats of one padded, phase-split row.
    pub(crate) fn split_len(&self) -> usize {
        self.stride * self.phase_len
    }
}

/// Copies the rows of `x` (each `input` long) into `dst` (a whole number of
/// rows), one padded,
/// phase-split row (`g.split_len()` long) each: padded element
/// `q = pad_begin + i` holds `x[r][i]`, every other one `fill`, and padded
/// element `q` sits at `(q % stride) * phase_len + q / stride`.
#[inline(always)]
pub(crate) fn pad_split(g: &RowGeom, x: &[f32], fill: f32, dst: &mut [f32]) {
    let (s, pl, pb) = (g.stride, g.phase_len, g.pad_begin);
    // Rows are counted from `dst`: a zero-width input still has rows (all
    // padding) that the other axes' taps may read.
    for (r, drow) in dst.chunks_exact_mut(s * pl).enumerate() {
        let xrow = &x[r * g.input..][..g.input];
        if s == 1 {
            drow[..pb].fill(fill);
            drow[pb..pb + g.input].copy_from_slice(xrow);
            drow[pb + g.input..].fill(fill);
            continue;
        }
        if s == 2 {
            // The common stride, as a pair loop the compiler vectorizes
            // (a strided copy per phase stays scalar).
            drow.fill(fill);
            let (p0, p1) = drow.split_at_mut(pl);
            // Input 2m sits at padded pb + 2m: phase pb % 2, index
            // pb/2 + m; input 2m+1 in the other phase, at pb/2 + m when pb
            // is even, else pb/2 + 1 + m.
            let (ev, od, ob) = if pb % 2 == 0 {
                (p0, p1, pb / 2)
            } else {
                (p1, p0, pb / 2 + 1)
            };
            let half = g.input / 2;
            let pairs = xrow.chunks_exact(2);
            if let Some(&v) = pairs.remainder().first() {
                ev[pb / 2 + half] = v;
            }
            let evs = &mut ev[pb / 2..][..half];
            for ((e, o), pr) in evs.iter_mut().zip(&mut od[ob..][..half]).zip(pairs) {
                *e = pr[0];
                *o = pr[1];
            }
            continue;
        }
        for (p, dph) in drow.chunks_exact_mut(pl).enumerate() {
            // Phase p holds padded q = p + j*s; input index q - pb lies in
            // [0, input) for j in [j0, j1).
            let j0 = pb.saturating_sub(p).div_ceil(s);
            let j1 = (pb + g.input).saturating_sub(p).div_ceil(s).max(j0);
            dph[..j0].fill(fill);
            dph[j1..].fill(fill);
            if j0 == j1 {
                continue;
            }
            let first = p + j0 * s - pb;
            for (d, &v) in dph[j0..j1].iter_mut().zip(xrow[first..].iter().step_by(s)) {
                *d = v;
            }
        }
    }
}

/// Combines padded, split input rows `srcs` into the scratch output row
/// `acc` (`g.padded_out` long) for all their W taps at once, weights `w`
/// (row-major, `srcs.len()` x W taps): with the H taps fused too, `acc`
/// stays in registers across a whole 3x3 or 5x5 window.
#[inline(always)]
pub(crate) fn rows<O: Op>(g: &RowGeom, srcs: &[&[f32]], w: &[f32], acc: &mut [f32]) {
    let n = g.padded_out;
    let acc = &mut acc[..n];
    let kw = g.tap_starts.len();
    macro_rules! fused {
        ($($k:literal)*) => {
            match srcs.len() * kw {
                $($k => {
                    // Nested loops, not from_fn(t / kw, t % kw): divisions
                    // per tap cost more than a narrow row's arithmetic.
                    let mut xs: [&[f32]; $k] = [&[]; $k];
                    let mut slots = xs.iter_mut();
                    for src in srcs {
                        // tap_starts first: zip polls it first, so the
                        // row's end does not consume a slot.
                        for (&st, x) in g.tap_starts.iter().zip(slots.by_ref()) {
                            *x = &src[st..][..n];
                        }
                    }
                    let mut ws = [0.0f32; $k];
                    ws.copy_from_slice(&w[..$k]);
                    return fused::<O, $k>(acc, xs, ws);
                })*
                _ => {}
            }
        };
    }
    fused!(1 2 3 4 5 6 7 8 9 10 12 14 15 16 20 21 25);
    // Other shapes: one W row at a time (fused 1..=7), else tap by tap.
    for (r, src) in srcs.iter().enumerate() {
        let wr = &w[r * kw..][..kw];
        let tap = |k: usize| -> &[f32] { &src[g.tap_starts[k]..][..n] };
        macro_rules! fused_row {
            ($($k:literal)*) => {
                match kw {
                    $($k => {
                        let xs: [&[f32]; $k] = std::array::from_fn(|k| tap(k));
                        let ws: [f32; $k] = std::array::from_fn(|k| wr[k]);
                        fused::<O, $k>(acc, xs, ws);
                        continue;
                    })*
                    _ => {}
                }
            };
        }
        fused_row!(1 2 3 4 5 6 7);
        for (k, &wv) in wr.iter().enumerate() {
            for (a, &x) in acc.iter_mut().zip(tap(k)) {
                *a = O::step(*a, wv, x);
            }
        }
    }
}

/// `acc[i] = step(...step(acc[i], w[0], xs[0][i])..., w[K-1], xs[K-1][i])`
/// in whole chunks (`acc.len()` is a multiple of `LANES`): one load and
/// store of `acc` for all K taps, and no remainder loop.
#[inline(always)]
fn fused<O: Op, const K: usize>(acc: &mut [f32], xs: [&[f32]; K], w: [f32; K]) {
    for (c, chunk) in acc.chunks_exact_mut(LANES).enumerate() {
        let mut a = [0.0f32; LANES];
        a.copy_from_slice(chunk);
        for k in 0..K {
            let x = &xs[k][c * LANES..][..LANES];
            for l in 0..LANES {
                a[l] = O::step(a[l], w[k], x[l]);
            }
        }
        chunk.copy_from_slice(&a);
    }
}

/// `dst[i] = step(a[i], 1, b[i])`. Out of place on purpose: written in
/// place, LLVM turns a max's "keep acc" branch into masked stores, which
/// are microcoded and several times slower on AMD cores.
#[inline(always)]
pub(crate) fn combine<O: Op>(dst: &mut [f32], a: &[f32], b: &[f32]) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = O::step(x, 1.0, y);
    }
}

/// Sum of `x` in 16 independent lanes (vectorizes, unlike a sequential f32
/// sum, and rounds less).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// NaN-propagating max of `x` in 16 lanes (-inf when empty).
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |a, &v| nan_max(a, v));
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = nan_max(*a, v);
        }
    }
    acc.iter().fold(tail, |a, &v| nan_max(a, v))
}
