//! ONNX pooling: `MaxPool`, `AveragePool` (1-D to 3-D, strides, dilations,
//! asymmetric pads, `ceil_mode`, `count_include_pad`) and `GlobalAveragePool`
//! / `GlobalMaxPool`, planned once for static shapes.
//!
//! Window validity is separable per axis, so the plan precomputes, for each
//! axis and output index, the range of in-bounds taps and the number of taps
//! inside the padded extent; a window's divisor is the product over axes.
//! Windowed pools run one output row at a time: the window's input rows
//! are combined elementwise first (max and sum are separable), then that
//! one row is reduced over its W taps (`rows.rs`, with AVX2 dispatch); the
//! global pools reduce in 16 lanes so they vectorize. Max pools with 2- or
//! 3-wide windows at stride 1 or 2 (the CNN pools) take an AVX2 path that
//! splits strided taps in registers and, when unpadded, reads the
//! window's rows in place (SqueezeNet's 3x3/2 pools, in the model, 1
//! thread: 0.23 -> 0.20 and 0.19 -> 0.15 ms).

use rayon::prelude::*;

use super::common::with_scratch;
use super::rows::{self, Add, Isa, Max, Op, RowGeom};

/// Which pooling op. `count_include_pad` counts the explicit pads in the
/// average's divisor (never the cells past them that `ceil_mode` adds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    Average { count_include_pad: bool },
    GlobalAverage,
    GlobalMax,
}

/// Pooling attributes, pads in ONNX order (begins, then ends). Empty
/// `strides` / `dilations` / `pads` mean the ONNX defaults (1, 1, 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolAttrs {
    pub kernel: Vec<usize>,
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>,
    pub ceil_mode: bool,
}

/// Per-output-index facts of one axis.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    /// First input index of tap `k_lo`.
    start: usize,
    /// In-bounds taps are `k_lo..k_hi`.
    k_lo: usize,
    k_hi: usize,
    /// Taps inside [-pad_begin, input + pad_end).
    padded_count: usize,
}

#[derive(Debug, Clone)]
struct Axis {
    input: usize,
    dilation: usize,
    windows: Vec<Window>,
}

impl Axis {
    fn unit() -> Axis {
        Axis {
            input: 1,
            dilation: 1,
            windows: vec![Window {
                start: 0,
                k_lo: 0,
                k_hi: 1,
                padded_count: 1,
            }],
        }
    }
}

/// Below this many input elements pooling runs on one thread.
const PAR_ELEMS: usize = 64 * 1024;

/// An ONNX pooling op planned for a static input shape.
#[derive(Debug, Clone)]
pub struct PoolPlan {
    kind: PoolKind,
    /// N * C.
    planes: usize,
    /// Spatial axes D, H, W (leading ones unit for 1-D / 2-D); unused for
    /// the global kinds.
    axes: [Axis; 3],
    in_vol: usize,
    out_shape: Vec<usize>,
    /// The W axis's row geometry, and a unit weight per W tap (the row
    /// kernels take weights; max and sum ignore them).
    row_geom: RowGeom,
    ones: Vec<f32>,
    /// Average: each W window's divisor share, as f32 so a row's division
    /// vectorizes (counts are small integers, exact in f32).
    w_counts: Vec<f32>,
    isa: Isa,
    /// Max pools whose W taps are 2 or 3 wide, undilated, with stride 1
    /// or 2, on an AVX2 host: the W pass is [`max_w`], strided taps split
    /// in registers, instead of the general padded row kernels.
    fast_w: Option<FastW>,
    /// 1-D windows that tile the row (kernel = stride, no padding, no
    /// dilation: audio nets' MaxPool(4)): each result one block of this
    /// many inputs, reduced in place. The general path's per-plane setup
    /// cost more than the work on their short rows.
    blocks: Option<usize>,
}

/// The block size of windows that tile a 1-D row (see
/// [`PoolPlan::blocks`]), if these axes' windows do.
fn tiling_blocks(axes: &[Axis; 3]) -> Option<usize> {
    let [ad, ah, aw] = axes;
    let unit = |a: &Axis| {
        a.input == 1
            && a.windows.len() == 1
            && (a.windows[0].start, a.windows[0].k_lo, a.windows[0].k_hi) == (0, 0, 1)
    };
    let k = aw.windows.first()?.k_hi;
    let tiles = aw
        .windows
        .iter()
        .enumerate()
        .all(|(j, w)| w.k_lo == 0 && w.k_hi == k && w.start == j * k && w.padded_count == k);
    (k >= 1 && unit(ad) && unit(ah) && aw.dilation == 1 && tiles).then_some(k)
}

/// The W axis of a [`max_w`] pool.
#[derive(Debug, Clone, Copy)]
struct FastW {
    kernel: usize,
    stride: usize,
    pad_begin: usize,
    /// No W padding and no tap of a real output past the row's end: the
    /// window's input rows can be read in place ([`max_rows`]).
    in_place: bool,
}

impl FastW {
    /// Floats of the padded row [`max_w`] reads for `output` results:
    /// whole 8-result chunks, each reading up to 16 floats past its first
    /// tap.
    fn padded_len(&self, output: usize) -> usize {
        output.div_ceil(8) * 8 * self.stride + 16
    }
}

impl PoolPlan {
    /// `attrs` is ignored for the global kinds.
    pub fn new(kind: PoolKind, x_shape: &[usize], attrs: &PoolAttrs) -> Result<PoolPlan, String> {
        let err = |why: &str| Err(format!("{kind:?}: {why} (x {x_shape:?}, {attrs:?})"));
        if x_shape.len() < 3 {
            return err("need N, C and at least one spatial dim");
        }
        let sd = x_shape.len() - 2;
        let planes = x_shape[0] * x_shape[1];
        let in_vol: usize = x_shape[2..].iter().product();
        let mut axes = [Axis::unit(), Axis::unit(), Axis::unit()];
        // A global pool: one reduction per plane.
        let global = |kind: PoolKind| {
            let mut out_shape = x_shape[..2].to_vec();
            out_shape.extend(std::iter::repeat_n(1, sd));
            PoolPlan {
                kind,
                planes,
                axes: [Axis::unit(), Axis::unit(), Axis::unit()],
                in_vol,
                out_shape,
                row_geom: RowGeom::new(1, 1, 1, 1, 1, 0),
                ones: vec![1.0],
                w_counts: Vec::new(),
                isa: Isa::detect(),
                fast_w: None,
                blocks: None,
            }
        };
        if matches!(kind, PoolKind::GlobalAverage | PoolKind::GlobalMax) {
            return Ok(global(kind));
        }
        if sd > 3 {
            return err("more than 3 spatial dims");
        }
        let pick = |v: &[usize], i: usize, dflt: usize| if v.is_empty() { dflt } else { v[i] };
        if attrs.kernel.len() != sd
            || !(attrs.strides.is_empty() || attrs.strides.len() == sd)
            || !(attrs.dilations.is_empty() || attrs.dilations.len() == sd)
            || !(attrs.pads.is_empty() || attrs.pads.len() == 2 * sd)
        {
            return err("attribute lengths do not match the spatial rank");
        }
        let mut out_shape = x_shape[..2].to_vec();
        let mut row_geom = RowGeom::new(1, 1, 1, 1, 1, 0);
        for i in 0..sd {
            let input = x_shape[2 + i];
            let kernel = attrs.kernel[i];
            let stride = pick(&attrs.strides, i, 1);
            let dilation = pick(&attrs.dilations, i, 1);
            let (pb, pe) = (pick(&attrs.pads, i, 0), pick(&attrs.pads, sd + i, 0));
            if kernel == 0 || stride == 0 || dilation == 0 {
                return err("zero kernel, stride or dilation");
            }
            let span = dilation * (kernel - 1) + 1;
            let padded = input + pb + pe;
            if padded < span {
                return err("kernel larger than the padded input");
            }
            let mut output = if attrs.ceil_mode {
                (padded - span).div_ceil(stride) + 1
            } else {
                (padded - span) / stride + 1
            };
            // ONNX (like PyTorch) drops a ceil-mode window that would start
            // inside the end padding.
            if attrs.ceil_mode && (output - 1) * stride >= input + pb {
                output -= 1;
            }
            let windows = (0..output)
                .map(|o| {
                    // Window tap k reads padded index o*stride + k*dilation,
                    // input index that minus pb.
                    let base = o * stride;
                    let k_lo = pb.saturating_sub(base).div_ceil(dilation).min(kernel);
                    let taps_below = |limit: usize| {
                        // Number of k in [0, kernel) with base + k*d < limit.
                        if limit <= base {
                            0
                        } else {
                            (limit - base).div_ceil(dilation).min(kernel)
                        }
                    };
                    let k_hi = taps_below(input + pb).max(k_lo);
                    Window {
                        start: (base + k_lo * dilation).saturating_sub(pb),
                        k_lo,
                        k_hi,
                        padded_count: taps_below(padded),
                    }
                })
                .collect();
            if i == sd - 1 {
                row_geom = RowGeom::new(input, output, kernel, stride, dilation, pb);
            }
            axes[3 - sd + i] = Axis {
                input,
                dilation,
                windows,
            };
            out_shape.push(output);
        }
        // One window that is the whole map (kernel = input, no padding,
        // no dilation: the AveragePool(7) that ends ResNet-style exports)
        // is the global pool; the windowed path's per-plane setup made
        // 2048 such 7x7 planes take 0.49 ms, 20x onnxruntime.
        let whole = |a: &Axis| {
            a.dilation == 1
                && a.windows.len() == 1
                && (a.windows[0].start, a.windows[0].k_lo) == (0, 0)
                && a.windows[0].k_hi == a.input
                && a.windows[0].padded_count == a.input
        };
        if axes.iter().all(whole) {
            return Ok(global(match kind {
                PoolKind::Max => PoolKind::GlobalMax,
                _ => PoolKind::GlobalAverage,
            }));
        }
        let ones = vec![1.0; attrs.kernel[sd - 1]];
        let isa = Isa::detect();
        let (kw, sw) = (attrs.kernel[sd - 1], pick(&attrs.strides, sd - 1, 1));
        #[cfg(target_arch = "x86_64")]
        let fast_isa = isa == Isa::Avx2Fma;
        #[cfg(not(target_arch = "x86_64"))]
        let fast_isa = false;
        let fast_w = (kind == PoolKind::Max
            && fast_isa
            && pick(&attrs.dilations, sd - 1, 1) == 1
            && matches!(kw, 2 | 3)
            && matches!(sw, 1 | 2))
        .then(|| {
            let pad_begin = pick(&attrs.pads, sd - 1, 0);
            let (w_in, w_out) = (x_shape[x_shape.len() - 1], axes[2].windows.len());
            FastW {
                kernel: kw,
                stride: sw,
                pad_begin,
                in_place: pad_begin == 0 && w_out > 0 && (w_out - 1) * sw + kw <= w_in,
            }
        });
        let w_counts = match kind {
            PoolKind::Average { count_include_pad } => axes[2]
                .windows
                .iter()
                .map(|w| window_count(w, count_include_pad) as f32)
                .collect(),
            _ => Vec::new(),
        };
        let blocks = tiling_blocks(&axes);
        Ok(PoolPlan {
            kind,
            planes,
            axes,
            in_vol,
            out_shape,
            row_geom,
            ones,
            w_counts,
            isa,
            fast_w,
            blocks,
        })
    }

    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    /// `x` and `out` must have the planned lengths (debug-asserted); `out` is
    /// fully overwritten. NaNs propagate through max as in numpy.
    pub fn run(&self, x: &[f32], out: &mut [f32], threads: usize) {
        let out_vol: usize = self.out_shape[2..].iter().product();
        debug_assert_eq!(x.len(), self.planes * self.in_vol);
        debug_assert_eq!(out.len(), self.planes * out_vol);
        if out.is_empty() {
            return;
        }
        let plane = |(p, o): (usize, &mut [f32])| {
            let xp = &x[p * self.in_vol..][..self.in_vol];
            match self.blocks {
                Some(k) => self.blocks_plane(k, xp, o),
                None => self.plane(xp, o),
            }
        };
        if threads > 1 && x.len() >= PAR_ELEMS {
            out.par_chunks_mut(out_vol).enumerate().for_each(plane);
        } else {
            out.chunks_mut(out_vol).enumerate().for_each(plane);
        }
    }

    /// A plane of [`PoolPlan::blocks`] windows: result j reduces inputs
    /// `j·k .. j·k + k` (NaN wins a max, as in numpy).
    fn blocks_plane(&self, k: usize, x: &[f32], out: &mut [f32]) {
        let windows = x.chunks_exact(k);
        match self.kind {
            PoolKind::Average { .. } => {
                let inv = 1.0 / k as f32;
                for (o, w) in out.iter_mut().zip(windows) {
                    *o = w.iter().sum::<f32>() * inv;
                }
            }
            _ => {
                for (o, w) in out.iter_mut().zip(windows) {
                    *o = w[1..]
                        .iter()
                        .fold(w[0], |m, &v| if v > m || v.is_nan() { v } else { m });
                }
            }
        }
    }

    /// One plane: dispatches on the detected ISA, with the padded,
    /// phase-split plane and an output row in scratch for windowed pools.
    fn plane(&self, x: &[f32], out: &mut [f32]) {
        let split = match self.kind {
            PoolKind::Max | PoolKind::Average { .. } => {
                let fast = self
                    .fast_w
                    .map_or(0, |f| f.padded_len(self.axes[2].windows.len()));
                2 * self.axes[2].input
                    + self.row_geom.split_len().max(fast)
                    + self.row_geom.padded_out
            }
            _ => 0,
        };
        let mut body = |buf: &mut [f32]| match self.isa {
            Isa::Portable => self.plane_body(x, out, buf),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::Avx2Fma is only picked when avx2 and fma were
            // detected on this CPU.
            Isa::Avx2Fma => unsafe { self.plane_avx2(x, out, buf) },
        };
        // Global pools need no scratch: skip the thread-local round trip,
        // which is a visible share of a 7x7 plane.
        if split == 0 {
            body(&mut [])
        } else {
            with_scratch(split, body)
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn plane_avx2(&self, x: &[f32], out: &mut [f32], buf: &mut [f32]) {
        self.plane_body(x, out, buf)
    }

    /// The plane, compiled once per ISA.
    #[inline(always)]
    fn plane_body(&self, x: &[f32], out: &mut [f32], buf: &mut [f32]) {
        match self.kind {
            PoolKind::GlobalAverage => out[0] = rows::sum(x) / self.in_vol as f32,
            PoolKind::GlobalMax => out[0] = rows::max(x),
            PoolKind::Max => {
                self.window_plane::<Max>(x, out, None, buf);
                self.nan_empty_windows(out);
            }
            PoolKind::Average { count_include_pad } => {
                self.window_plane::<Add>(x, out, Some(count_include_pad), buf)
            }
        }
    }

    /// A max window with no input tap (pads at least the kernel's
    /// extent) is NaN, as in the ONNX reference and as an all-padding
    /// average is (0/0); the row kernels leave -inf there.
    fn nan_empty_windows(&self, out: &mut [f32]) {
        let [ad, ah, aw] = &self.axes;
        let empty = |w: &Window| w.k_hi == w.k_lo;
        if !self.axes.iter().any(|a| a.windows.iter().any(empty)) {
            return;
        }
        let mut i = 0;
        for wd in &ad.windows {
            for wh in &ah.windows {
                for ww in &aw.windows {
                    if empty(wd) || empty(wh) || empty(ww) {
                        out[i] = f32::NAN;
                    }
                    i += 1;
                }
            }
        }
    }

    /// One [C-plane] of a windowed pool, an output row at a time; `avg` is
    /// None for max, else `count_include_pad`. Max and sum are separable:
    /// the window's in-bounds D/H input rows are first combined
    /// elementwise into one row (contiguous, vectorized), and only that
    /// row is padded, phase-split and reduced over the W taps. Combining
    /// first does the W-tap work once per output row instead of once per
    /// input row of the window, and pads one row instead of the plane.
    #[inline(always)]
    fn window_plane<O: Op>(&self, x: &[f32], out: &mut [f32], avg: Option<bool>, buf: &mut [f32]) {
        let [ad, ah, aw] = &self.axes;
        let g = &self.row_geom;
        let width = aw.input;
        let (vrows, rest) = buf.split_at_mut(2 * width);
        let fast_len = self.fast_w.map_or(0, |f| f.padded_len(aw.windows.len()));
        let (split, acc) = rest.split_at_mut(g.split_len().max(fast_len));
        // Pad with the op's identity, so padding never changes a result.
        let init = if avg.is_some() {
            0.0
        } else {
            f32::NEG_INFINITY
        };
        let mut orows = out.chunks_exact_mut(aw.windows.len());
        let fast = self.fast_w.filter(|_| avg.is_none());
        if fast.is_some() {
            // The row max_w reads: -inf, except where each row's values go.
            split[..fast_len].fill(f32::NEG_INFINITY);
        }
        for wd in &ad.windows {
            for wh in &ah.windows {
                let Some(orow) = orows.next() else { return };
                let window_rows = || {
                    taps(*wd, ad)
                        .flat_map(|id| taps(*wh, ah).map(move |ih| (id * ah.input + ih) * width))
                };
                let mut starts = window_rows();
                #[cfg(target_arch = "x86_64")]
                if let Some(f) = fast.filter(|f| f.in_place) {
                    // Up to 8 window rows, whose last chunk's reads stay
                    // inside x.
                    let mut rows_at = [0usize; 8];
                    let mut count = 0;
                    for st in window_rows() {
                        if count == 8 || st + f.padded_len(orow.len()) > x.len() {
                            count = usize::MAX;
                            break;
                        }
                        rows_at[count] = st;
                        count += 1;
                    }
                    if (1..=8).contains(&count) {
                        // SAFETY: AVX2 (fast_w is only planned on AVX2
                        // hosts); every row's reads end inside x (checked).
                        unsafe { max_rows(f, x, &rows_at[..count], orow) };
                        continue;
                    }
                }
                let row = |st: usize| &x[st..][..width];
                // Ping-pong between two rows (see rows::combine).
                let (mut vrow, mut spare) = vrows.split_at_mut(width);
                match (starts.next(), starts.next()) {
                    (None, _) => vrow.fill(init),
                    (Some(r0), None) => vrow.copy_from_slice(row(r0)),
                    (Some(r0), Some(r1)) => {
                        rows::combine::<O>(vrow, row(r0), row(r1));
                        for st in starts {
                            rows::combine::<O>(spare, vrow, row(st));
                            std::mem::swap(&mut vrow, &mut spare);
                        }
                    }
                }
                #[cfg(target_arch = "x86_64")]
                if let Some(f) = fast {
                    split[f.pad_begin..][..width].copy_from_slice(vrow);
                    // SAFETY: fast_w is only planned on AVX2 hosts; the
                    // padded row holds padded_len(output) floats.
                    unsafe { max_w(f, &split[..fast_len], orow) };
                    continue;
                }
                rows::pad_split(g, vrow, init, split);
                acc.fill(init);
                rows::rows::<O>(g, &[&*split], &self.ones, acc);
                match avg {
                    None => orow.copy_from_slice(&acc[..orow.len()]),
                    Some(include_pad) => {
                        let cdh =
                            (window_count(wd, include_pad) * window_count(wh, include_pad)) as f32;
                        for ((v, &a), &cw) in orow.iter_mut().zip(acc.iter()).zip(&self.w_counts) {
                            // 0/0 = NaN for an all-padding window, as numpy.
                            *v = a / (cdh * cw);
                        }
                    }
                }
            }
        }
    }
}

/// `out[j] = max(x[r + j·stride + k] for r in rows, k < kernel)`, NaN
/// propagating, read in place: each 8-result chunk first takes the max
/// over the window's rows of the 16 (stride 2) or 8 (stride 1) floats
/// each tap needs, then splits and combines the taps in registers. No
/// copies, and per chunk only `rows · 4` loads.
///
/// # Safety
/// AVX2 available; `r + fast.padded_len(out.len()) <= x.len()` for every
/// row start `r`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_rows(fast: FastW, x: &[f32], rows: &[usize], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = out.len();
    let k3 = fast.kernel == 3;
    for j in (0..n).step_by(8) {
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        // SAFETY: chunk j reads x[r + j·stride ..][..18] at most, inside
        // padded_len (the caller's contract).
        let m = unsafe {
            let (mut a, mut b, mut c, mut d) = (ninf, ninf, ninf, ninf);
            for &r in rows {
                let p = x.as_ptr().add(r + j * fast.stride);
                if fast.stride == 1 {
                    a = nan_max8(a, _mm256_loadu_ps(p));
                    b = nan_max8(b, _mm256_loadu_ps(p.add(1)));
                    if k3 {
                        c = nan_max8(c, _mm256_loadu_ps(p.add(2)));
                    }
                } else {
                    a = nan_max8(a, _mm256_loadu_ps(p));
                    b = nan_max8(b, _mm256_loadu_ps(p.add(8)));
                    if k3 {
                        c = nan_max8(c, _mm256_loadu_ps(p.add(2)));
                        d = nan_max8(d, _mm256_loadu_ps(p.add(10)));
                    }
                }
            }
            if fast.stride == 1 {
                let m = nan_max8(a, b);
                if k3 {
                    nan_max8(m, c)
                } else {
                    m
                }
            } else {
                let (e, o) = deinterleave(a, b);
                let m = nan_max8(e, o);
                if k3 {
                    nan_max8(m, deinterleave(c, d).0)
                } else {
                    m
                }
            }
        };
        store8(out, j, m);
    }
}

/// max(acc, v) keeping a NaN v; MAXPS returns its second operand (acc,
/// also when acc is NaN) unless v is greater: the scalar `nan_max`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn nan_max8(
    acc: std::arch::x86_64::__m256,
    v: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    _mm256_blendv_ps(
        _mm256_max_ps(v, acc),
        v,
        _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
    )
}

/// (even, odd) elements of the 16 floats `a ++ b`, in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn deinterleave(
    a: std::arch::x86_64::__m256,
    b: std::arch::x86_64::__m256,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let order = |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(v)));
    (
        order(_mm256_shuffle_ps::<0x88>(a, b)),
        order(_mm256_shuffle_ps::<0xDD>(a, b)),
    )
}

/// `out[j..j + 8] = m`, cut at the end of `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn store8(out: &mut [f32], j: usize, m: std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let n = out.len();
    if j + 8 <= n {
        // SAFETY: out[j..j + 8] exists.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j), m) };
    } else {
        let mut last = [0.0f32; 8];
        // SAFETY: `last` holds 8 floats.
        unsafe { _mm256_storeu_ps(last.as_mut_ptr(), m) };
        out[j..].copy_from_slice(&last[..n - j]);
    }
}

/// `out[j] = max(row[j·stride + k] for k < kernel)`, NaN propagating, over
/// a row already padded with -inf (`fast.padded_len(out.len())` floats).
/// For stride 2 each 16 floats are split into their even and odd halves
/// in registers: no phase-split copy of the row.
///
/// # Safety
/// AVX2 available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_w(fast: FastW, row: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(row.len() >= fast.padded_len(out.len()));
    let n = out.len();
    for j in (0..n).step_by(8) {
        // SAFETY: chunk j reads row[j·stride ..][..18] at most, inside
        // padded_len (asserted).
        let m = unsafe {
            let p = row.as_ptr().add(j * fast.stride);
            let load = |i: usize| _mm256_loadu_ps(p.add(i));
            if fast.stride == 1 {
                let m = nan_max8(load(0), load(1));
                if fast.kernel == 3 {
                    nan_max8(m, load(2))
                } else {
                    m
                }
            } else {
                let (e, o) = deinterleave(load(0), load(8));
                let m = nan_max8(e, o);
                if fast.kernel == 3 {
                    nan_max8(m, deinterleave(load(2), load(10)).0)
                } else {
                    m
                }
            }
        };
        store8(out, j, m);
    }
}

/// A window's share of the average's divisor along one axis.
fn window_count(w: &Window, include_pad: bool) -> usize {
    if include_pad {
        w.padded_count
    } else {
        w.k_hi - w.k_lo
    }
}

/// Input indices of the in-bounds taps of window `w` along `a`.
fn taps(w: Window, a: &Axis) -> impl Iterator<Item = usize> {
    let (start, d) = (w.start, a.dilation);
    (0..w.k_hi - w.k_lo).map(move |t| start + t * d)
}

#[cfg(test)]
mod tests {
    //! Plans against a naive per-tap pooling on LCG data, written straight
    //! from the ONNX definitions. Tolerance: relative 1e-4 of the sum of
    //! |terms| (averages); max must match exactly.
    use super::super::common::testing::{check, lcg};
    use super::*;

    fn reference(
        kind: PoolKind,
        xs: &[usize],
        a: &PoolAttrs,
        x: &[f32],
    ) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
        let sd = xs.len() - 2;
        let planes = xs[0] * xs[1];
        let ivol: usize = xs[2..].iter().product();
        let (kernel, strides, dil, pads) = match kind {
            PoolKind::GlobalAverage | PoolKind::GlobalMax => {
                (xs[2..].to_vec(), vec![1; sd], vec![1; sd], vec![0; 2 * sd])
            }
            _ => (
                a.kernel.clone(),
                a.strides.clone(),
                a.dilations.clone(),
                a.pads.clone(),
            ),
        };
        let osz: Vec<usize> = (0..sd)
            .map(|i| {
                let num = (xs[2 + i] + pads[i] + pads[sd + i]) as f64
                    - (dil[i] * (kernel[i] - 1) + 1) as f64;
                let mut o = if a.ceil_mode {
                    (num / strides[i] as f64).ceil()
                } else {
                    (num / strides[i] as f64).floor()
                } as usize
                    + 1;
                if a.ceil_mode && (o - 1) * strides[i] >= xs[2 + i] + pads[i] {
                    o -= 1;
                }
                o
            })
            .collect();
        let ovol: usize = osz.iter().product();
        let kvol: usize = kernel.iter().product();
        let mut shape = xs[..2].to_vec();
        shape.extend(&osz);
        let (mut out, mut sc) = (vec![0.0; planes * ovol], vec![0.0; planes * ovol]);
        for p in 0..planes {
            for op in 0..ovol {
                let mut o = vec![0; sd];
                let mut r = op;
                for d in (0..sd).rev() {
                    o[d] = r % osz[d];
                    r /= osz[d];
                }
                let (mut vals, mut padded_cells) = (Vec::new(), 0usize);
                'tap: for kp in 0..kvol {
                    let mut kk = vec![0; sd];
                    let mut r = kp;
                    for d in (0..sd).rev() {
                        kk[d] = r % kernel[d];
                        r /= kernel[d];
                    }
                    let mut ii = 0;
                    let mut inside = true;
                    for d in 0..sd {
                        let pi = o[d] * strides[d] + kk[d] * dil[d];
                        if pi >= xs[2 + d] + pads[d] + pads[sd + d] {
                            continue 'tap; // past the end pad (ceil mode)
                        }
                        let i = pi as isize - pads[d] as isize;
                        if i < 0 || i >= xs[2 + d] as isize {
                            inside = false;
                        } else {
                            ii = ii * xs[2 + d] + i as usize;
                        }
                    }
                    padded_cells += 1;
                    if inside {
                        vals.push(x[p * ivol + ii] as f64);
                    }
                }
                let (v, s) = match kind {
                    PoolKind::Max | PoolKind::GlobalMax => {
                        match vals.is_empty() {
                            // No input tap: NaN, as the ONNX reference.
                            true => (f64::NAN, 0.0),
                            false => (vals.iter().copied().fold(f64::NEG_INFINITY, f64::max), 0.0),
                        }
                    }
                    PoolKind::GlobalAverage => (
                        vals.iter().sum::<f64>() / vals.len() as f64,
                        vals.iter().map(|v| v.abs()).sum::<f64>() / vals.len() as f64,
                    ),
                    PoolKind::Average { count_include_pad } => {
                        let n = if count_include_pad {
                            padded_cells
                        } else {
                            vals.len()
                        } as f64;
                        (
                            vals.iter().sum::<f64>() / n,
                            vals.iter().map(|v| v.abs()).sum::<f64>() / n,
                        )
                    }
                };
                out[p * ovol + op] = v as f32;
                sc[p * ovol + op] = s as f32;
            }
        }
        (shape, out, sc)
    }

    fn case(
        xs: &[usize],
        kernel: &[usize],
        strides: &[usize],
        dil: &[usize],
        pads: &[usize],
        ceil: bool,
    ) {
        let attrs = PoolAttrs {
            kernel: kernel.to_vec(),
            strides: strides.to_vec(),
            dilations: dil.to_vec(),
            pads: pads.to_vec(),
            ceil_mode: ceil,
        };
        let x = lcg(21, xs.iter().product());
        for kind in [
            PoolKind::Max,
            PoolKind::Average {
                count_include_pad: false,
            },
            PoolKind::Average {
                count_include_pad: true,
            },
            PoolKind::GlobalAverage,
            PoolKind::GlobalMax,
        ] {
            let (shape, want, sc) = reference(kind, xs, &attrs, &x);
            let mut plan = PoolPlan::new(kind, xs, &attrs).unwrap();
            assert_eq!(plan.out_shape(), &shape[..], "{kind:?} {xs:?} {attrs:?}");
            for (threads, isa) in [
                (1, Isa::Portable),
                (1, Isa::detect()),
                (2, Isa::Portable),
                (2, Isa::detect()),
            ] {
                plan.isa = isa;
                let mut out = vec![f32::NAN; want.len()];
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| plan.run(&x, &mut out, threads));
                check(
                    &out,
                    &want,
                    &sc,
                    &format!("{kind:?} x{xs:?} {attrs:?} t{threads} {isa:?}"),
                );
            }
        }
    }

    #[test]
    fn pool_2d() {
        // One window over the whole map: planned as the global pool
        // (strides and ceil mode change nothing there); with a pad, or
        // a kernel one short of the map, it stays windowed.
        case(
            &[2, 5, 7, 7],
            &[7, 7],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            false,
        );
        case(
            &[1, 3, 6, 5],
            &[6, 5],
            &[2, 3],
            &[1, 1],
            &[0, 0, 0, 0],
            true,
        );
        case(
            &[1, 3, 6, 6],
            &[6, 6],
            &[1, 1],
            &[1, 1],
            &[0, 1, 0, 0],
            false,
        );
        case(
            &[1, 3, 6, 6],
            &[5, 6],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            false,
        );
        let whole = |k: &[usize], pads: &[usize]| {
            let attrs = PoolAttrs {
                kernel: k.to_vec(),
                pads: pads.to_vec(),
                ..PoolAttrs::default()
            };
            PoolPlan::new(PoolKind::Max, &[1, 3, 6, 6], &attrs)
                .unwrap()
                .kind
        };
        assert_eq!(whole(&[6, 6], &[]), PoolKind::GlobalMax);
        assert_eq!(whole(&[6, 6], &[0, 1, 0, 0]), PoolKind::Max);
        case(
            &[1, 3, 7, 7],
            &[3, 3],
            &[2, 2],
            &[1, 1],
            &[1, 1, 1, 1],
            false,
        );
        case(
            &[2, 2, 7, 8],
            &[3, 2],
            &[2, 3],
            &[1, 1],
            &[1, 0, 1, 1],
            true,
        );
        case(
            &[1, 2, 5, 5],
            &[2, 2],
            &[2, 2],
            &[1, 1],
            &[0, 0, 0, 0],
            true,
        );
        case(
            &[1, 2, 6, 6],
            &[3, 3],
            &[2, 2],
            &[1, 1],
            &[1, 1, 1, 1],
            true,
        );
        case(
            &[1, 1, 9, 10],
            &[2, 3],
            &[3, 2],
            &[2, 2],
            &[1, 2, 1, 0],
            true,
        );
        case(
            &[1, 1, 9, 10],
            &[2, 3],
            &[1, 1],
            &[3, 2],
            &[0, 1, 1, 2],
            false,
        );
        case(
            &[1, 1, 1, 1],
            &[1, 1],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            false,
        );
        case(
            &[2, 3, 4, 4],
            &[4, 4],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            false,
        );
        case(
            &[1, 64, 40, 40],
            &[3, 3],
            &[2, 2],
            &[1, 1],
            &[1, 1, 1, 1],
            false,
        );
    }

    /// The row kernels' fast paths: odd widths and widths not a multiple
    /// of 8, strides 2 and 3 (phase split, odd and even pads), dilation 2,
    /// ceil mode, fused tap counts and the tap-by-tap fallback (11 taps),
    /// and a plane set big enough to thread.
    #[test]
    fn pool_rows() {
        type S = &'static [usize];
        #[rustfmt::skip]
        let cases: &[(S, S, S, S, S, bool)] = &[
            (&[1, 3, 13, 37], &[3, 3], &[2, 2], &[1, 1], &[1, 1, 1, 1], true),
            (&[2, 2, 9, 53], &[2, 2], &[2, 2], &[1, 1], &[0, 0, 0, 0], false),
            (&[1, 2, 7, 45], &[3, 5], &[1, 2], &[2, 2], &[1, 2, 0, 3], true),
            (&[1, 1, 5, 33], &[1, 9], &[1, 1], &[1, 1], &[0, 4, 0, 4], false),
            (&[1, 2, 4, 30], &[2, 11], &[1, 2], &[1, 1], &[0, 5, 1, 5], true),
            (&[1, 4, 17, 70], &[3, 3], &[3, 3], &[1, 1], &[0, 0, 0, 0], true),
            (&[1, 2, 6, 17], &[2, 4], &[1, 1], &[1, 1], &[1, 1, 0, 2], false),
            (&[1, 16, 64, 71], &[3, 3], &[2, 2], &[1, 1], &[1, 1, 1, 1], false),
            (&[1, 8, 3, 300], &[1, 7], &[1, 1], &[1, 1], &[0, 3, 0, 3], false),
            (&[1, 1, 32, 32, 32], &[5, 5, 5], &[3, 3, 3], &[2, 2, 2], &[0; 6], true),
            // Unpadded 2- and 3-wide max windows, read in place (the
            // planes' last rows through the padded row instead).
            (&[1, 3, 13, 37], &[3, 3], &[2, 2], &[1, 1], &[0, 0, 0, 0], false),
            (&[1, 5, 27, 27], &[3, 3], &[2, 2], &[1, 1], &[0, 0, 0, 0], true),
            (&[1, 2, 9, 27], &[2, 2], &[1, 1], &[1, 1], &[0, 0, 0, 0], false),
            (&[2, 2, 6, 19], &[1, 3], &[1, 1], &[1, 1], &[0, 0, 0, 0], false),
        ];
        for &(xs, k, st, dil, pads, ceil) in cases {
            case(xs, k, st, dil, pads, ceil);
        }
    }

    /// NaN in the vector interior and at borders propagates to exactly the
    /// windows that cover it, for windowed and global max.
    #[test]
    fn max_nan_rows() {
        let (h, w) = (5, 37);
        let mut x = lcg(3, h * w);
        for &i in &[0, 17, 2 * w + 20, 3 * w + 36, 4 * w + 9] {
            x[i] = f32::NAN;
        }
        // Padded (the padded-row W pass) and unpadded (read in place), 2-
        // and 3-wide, strides 1 and 2.
        for (k, strides, pad, ceil_mode) in [
            (3, [2, 1], 1, true),
            (3, [1, 2], 0, false),
            (2, [2, 1], 0, false),
        ] {
            let attrs = PoolAttrs {
                kernel: vec![3, k],
                strides: strides.to_vec(),
                pads: vec![pad; 4],
                ceil_mode,
                ..Default::default()
            };
            let plan = PoolPlan::new(PoolKind::Max, &[1, 1, h, w], &attrs).unwrap();
            let (oh, ow) = (plan.out_shape()[2], plan.out_shape()[3]);
            let mut out = vec![0.0; oh * ow];
            plan.run(&x, &mut out, 1);
            for i in 0..oh {
                for j in 0..ow {
                    let mut want_nan = false;
                    for di in 0..3 {
                        for dj in 0..k {
                            let r = (i * strides[0] + di) as isize - pad as isize;
                            let c = (j * strides[1] + dj) as isize - pad as isize;
                            if r >= 0 && c >= 0 && (r as usize) < h && (c as usize) < w {
                                want_nan |= x[r as usize * w + c as usize].is_nan();
                            }
                        }
                    }
                    assert_eq!(out[i * ow + j].is_nan(), want_nan, "{attrs:?} at {i},{j}");
                }
            }
        }
        let g = PoolPlan::new(PoolKind::GlobalMax, &[1, 1, h, w], &PoolAttrs::default()).unwrap();
        let mut o = [0.0];
        g.run(&x, &mut o, 1);
        assert!(o[0].is_nan());
        g.run(&lcg(3, h * w), &mut o, 1);
        assert!(!o[0].is_nan());
    }

    /// Zero-width input, all padding: every window is empty.
    #[test]
    fn pool_zero_width() {
        let attrs = PoolAttrs {
            kernel: vec![1, 2],
            strides: vec![1, 2],
            pads: vec![0, 1, 0, 1],
            ..Default::default()
        };
        let plan = PoolPlan::new(PoolKind::Max, &[1, 2, 3, 0], &attrs).unwrap();
        assert_eq!(plan.out_shape(), &[1, 2, 3, 1]);
        let mut out = vec![0.0; 6];
        plan.run(&[], &mut out, 1);
        // Windows of padding only: NaN, as the ONNX reference.
        assert!(out.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn pool_1d_3d() {
        case(&[2, 3, 11], &[3], &[2], &[1], &[1, 1], true);
        case(&[1, 2, 10], &[2], &[3], &[2], &[0, 2], true);
        // Ceil mode would add a window starting in the end pad: dropped.
        case(&[1, 1, 4], &[2], &[3], &[1], &[0, 2], true);
        case(&[1, 1, 5], &[1], &[2], &[1], &[0, 1], true);
        case(
            &[1, 2, 5, 6, 7],
            &[2, 3, 2],
            &[2, 1, 2],
            &[1, 1, 2],
            &[1, 0, 1, 0, 1, 1],
            true,
        );
        case(
            &[1, 2, 4, 4, 4],
            &[2, 2, 2],
            &[2, 2, 2],
            &[1, 1, 1],
            &[0, 0, 0, 0, 0, 0],
            false,
        );
    }

    /// Windows that tile a 1-D row take the block path: exact sizes, a
    /// remainder the floor drops, kernel 1; with padding they do not.
    #[test]
    fn pool_1d_blocks() {
        case(&[2, 3, 16], &[4], &[4], &[1], &[0, 0], false);
        case(&[1, 5, 19], &[4], &[4], &[1], &[0, 0], false);
        case(&[1, 2, 7], &[1], &[1], &[1], &[0, 0], false);
        case(&[1, 2, 9], &[3], &[3], &[1], &[1, 1], false);
        let a = |k| PoolAttrs {
            kernel: vec![k],
            strides: vec![k],
            ..Default::default()
        };
        let plan = PoolPlan::new(PoolKind::Max, &[1, 2, 19], &a(4)).unwrap();
        assert_eq!(plan.blocks, Some(4));
        // NaN wins a max.
        let mut x = vec![0.5f32; 38];
        x[5] = f32::NAN;
        let mut out = vec![0.0; 8];
        plan.run(&x, &mut out, 1);
        assert!(out[1].is_nan() && out[0] == 0.5 && out[2] == 0.5);
    }

    #[test]
    fn pool_defaults_and_errors() {
        let a = PoolAttrs {
            kernel: vec![2, 2],
            ..Default::default()
        };
        let p = PoolPlan::new(PoolKind::Max, &[1, 1, 4, 5], &a).unwrap();
        assert_eq!(p.out_shape(), &[1, 1, 3, 4]);
        let g = PoolPlan::new(PoolKind::GlobalAverage, &[2, 3, 4, 5, 6, 7], &a).unwrap();
        assert_eq!(g.out_shape(), &[2, 3, 1, 1, 1, 1]);
        assert!(PoolPlan::new(PoolKind::Max, &[1, 1, 4], &a).is_err());
        assert!(PoolPlan::new(PoolKind::Max, &[1, 1, 1, 1], &a).is_err());
        assert!(PoolPlan::new(PoolKind::GlobalMax, &[1, 1], &a).is_err());
        let nan = PoolPlan::new(PoolKind::Max, &[1, 1, 2, 2], &a).unwrap();
        let mut out = [0.0];
        nan.run(&[1.0, f32::NAN, 3.0, 2.0], &mut out, 1);
        assert!(out[0].is_nan());
    }
}
