//! Row kernels shared by depthwise convolution and windowed pooling, with
//! runtime CPU feature dispatch.
//!
//! Both ops reduce, for each output row, a few input rows: every tap `k` of
//! the kernel's last (W) axis combines input element `o*stride + off_k`
//! into output `o`. Outputs whose taps all land inside the input (the
//! interior) are done with all W taps fused into one pass over contiguous
//! slices, which the compiler vectorizes without bounds checks; the few
//! border outputs take a scalar per-tap path. Strided convs and pools first
//! split each input row into `stride` phases (even / odd elements for
//! stride 2), so the interior reads stay contiguous instead of needing
//! gathers.
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

/// The W-axis geometry of a depthwise conv or pool, planned once.
#[derive(Debug, Clone)]
pub(crate) struct RowGeom {
    pub input: usize,
    pub output: usize,
    pub stride: usize,
    /// Per tap k: `k*dilation - pad_begin`, the input index of output 0.
    offs: Vec<isize>,
    /// Outputs `lo..hi` have every tap inside the input.
    lo: usize,
    hi: usize,
    /// Elements per phase row: `ceil(input / stride)`.
    pub phase_len: usize,
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
        let offs: Vec<isize> = (0..kernel)
            .map(|k| (k * dilation) as isize - pad_begin as isize)
            .collect();
        let s = stride as isize;
        let (mut lo, mut hi) = (0usize, output);
        for &off in &offs {
            // o*s + off >= 0  <=>  o >= ceil(-off / s).
            if off < 0 {
                lo = lo.max(((-off + s - 1) / s) as usize);
            }
            // o*s + off < input  <=>  o < ceil((input - off) / s).
            let room = input as isize - off;
            hi = hi.min(if room <= 0 {
                0
            } else {
                ((room + s - 1) / s) as usize
            });
        }
        RowGeom {
            input,
            output,
            stride,
            offs,
            lo: lo.min(hi),
            hi,
            phase_len: input.div_ceil(stride.max(1)),
        }
    }

    /// Floats of a row once split into phases (`input` when stride is 1).
    pub(crate) fn split_len(&self) -> usize {
        if self.stride == 1 {
            self.input
        } else {
            self.stride * self.phase_len
        }
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

/// Splits the `rows` rows of `x` (each `g.input` long) into phases:
/// `dst[r][p][j] = x[r][p + j*stride]`, phase rows `g.phase_len` long (the
/// tails of short phases are left as they were and never read).
#[inline(always)]
pub(crate) fn split_phases(g: &RowGeom, x: &[f32], dst: &mut [f32]) {
    let (s, pl) = (g.stride, g.phase_len);
    for (xrow, drow) in x.chunks_exact(g.input).zip(dst.chunks_exact_mut(s * pl)) {
        for (p, dph) in drow.chunks_exact_mut(pl).enumerate() {
            for (d, &v) in dph.iter_mut().zip(xrow.iter().skip(p).step_by(s)) {
                *d = v;
            }
        }
    }
}

/// Combines one input row into output row `dst` (`g.output` long) for all W
/// taps, weights `w` (one per tap). `src` is the input row itself when the
/// stride is 1, else its phase split (`g.split_len()` long).
#[inline(always)]
pub(crate) fn row<O: Op>(g: &RowGeom, src: &[f32], w: &[f32], dst: &mut [f32]) {
    let (s, pl) = (g.stride, g.phase_len);
    let split = s > 1;
    // Input element j of the row.
    let at = |j: usize| {
        if split {
            src[(j % s) * pl + j / s]
        } else {
            src[j]
        }
    };
    // Borders: per tap, bounds-checked.
    let border = |o: usize, acc: f32| {
        let mut acc = acc;
        for (&off, &wv) in g.offs.iter().zip(w) {
            let j = (o * s) as isize + off;
            if j >= 0 && (j as usize) < g.input {
                acc = O::step(acc, wv, at(j as usize));
            }
        }
        acc
    };
    let (lo, hi) = (g.lo, g.hi);
    for o in (0..lo).chain(hi..g.output) {
        dst[o] = border(o, dst[o]);
    }
    if lo == hi {
        return;
    }
    let n = hi - lo;
    // Interior slice of tap k: elements lo*s + off_k + i*s, i < n, which
    // all lie in one phase.
    let tap = |k: usize| -> &[f32] {
        let b = (lo * s) as isize + g.offs[k];
        debug_assert!(b >= 0);
        let b = b as usize;
        if split {
            &src[(b % s) * pl + b / s..][..n]
        } else {
            &src[b..][..n]
        }
    };
    let d = &mut dst[lo..hi];
    macro_rules! fused {
        ($k:literal) => {{
            let xs: [&[f32]; $k] = std::array::from_fn(|k| tap(k));
            let ws: [f32; $k] = std::array::from_fn(|k| w[k]);
            fused::<O, $k>(d, xs, ws)
        }};
    }
    match g.offs.len() {
        1 => fused!(1),
        2 => fused!(2),
        3 => fused!(3),
        4 => fused!(4),
        5 => fused!(5),
        7 => fused!(7),
        _ => {
            for (k, &wv) in w.iter().enumerate() {
                for (a, &x) in d.iter_mut().zip(tap(k)) {
                    *a = O::step(*a, wv, x);
                }
            }
        }
    }
}

/// `dst[i] = step(...step(dst[i], w[0], xs[0][i])..., w[K-1], xs[K-1][i])`:
/// one load and store of `dst` for all K taps.
#[inline(always)]
fn fused<O: Op, const K: usize>(dst: &mut [f32], xs: [&[f32]; K], w: [f32; K]) {
    let n = dst.len();
    let xs = xs.map(|x| &x[..n]);
    for i in 0..n {
        let mut acc = dst[i];
        for k in 0..K {
            acc = O::step(acc, w[k], xs[k][i]);
        }
        dst[i] = acc;
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
