//! Products with a short inner dimension, `out[m, p] = bias[m] + Σ_k
//! a[m, k]·b[k, p]` for k up to 576: the shape of first convolutions (3
//! input channels: k = 27 or 147 after im2col) and of the narrow convs of
//! small CNNs (k = 16-432).
//!
//! For such k the `gemm` crate spends much of its time packing both
//! operands, and a conv bias costs it a prefill pass over the output it
//! then re-reads (measured on Zen 4, 1 thread: 46-71 GFLOP/s on these
//! shapes, 53-88 here). Here `a` (the weights) is read in place, and `b`,
//! row-major with the positions `p` contiguous (an im2col block, or the
//! input planes of a 1x1 conv), is copied one 16-position strip at a time
//! into a dense k x 16 panel that stays in L1 while every 6-row block of
//! `a` sweeps over it: a 6x16 register tile (12 ymm accumulators, started
//! from the bias), two loads and six broadcasts per 12 FMAs. A column tail
//! computes all 16 lanes and stores only its own, masked, so no position
//! needs a scalar loop. On AVX-512 hosts [`sweep`] runs the same panels
//! through a 12x16 tile over two strips at once ([`avx512`]); the
//! implicit-GEMM convs and the packed-B matmuls sweep their panels through
//! it too.
//!
//! AVX2 + FMA only; [`available`] says whether the host has them and the
//! caller keeps the `gemm` crate path otherwise.

use crate::cpu::approx;

/// Largest inner dimension this kernel is used for: up to here it measured
/// ahead of the `gemm` crate or even with it. k = 576 (3x3 convs over 64
/// channels: ResNet-50's first stage, SqueezeNet's last fires) is
/// included since it also takes the fused Relu: on an AVX2 EPYC, ResNet's
/// 3x3 64->64 at 56x56 ran min 3.3 vs 3.4 ms on 1 thread, 1.9-2.1 vs
/// 2.2-2.3 ms on 2. Beyond, the two were even within noise (k up to 4608,
/// on Zen 4) and the crate, which blocks k for the caches, is kept.
pub(crate) const MAX_K: usize = 576;

/// The activation applied to each output element as it is stored: the
/// nonlinearity `f` first, then `min(hi, max(lo, v))` (a fused Relu is
/// `[0, inf)`, no bounds `(-inf, inf)`), NaN kept. Applying it in the
/// tile saves the pass over the output an epilogue loop would make (and
/// that loop is 128-bit generated code: a Sigmoid+Mul epilogue ran at 0.5
/// ns per element on Zen 5, a bias Add + Gelu after MiniLM's 1536-wide
/// layer at 1.2 ns).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Clamp {
    pub lo: f32,
    pub hi: f32,
    pub f: Nonlinearity,
}

/// The nonlinear part of a [`Clamp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nonlinearity {
    Identity,
    /// `v · sigmoid(v)` (SiLU: YOLO's, EfficientNet's and Llama's
    /// activation), on the accumulator registers.
    Swish,
    /// Gelu, erf form ([`approx::gelu`]), on the accumulators' lanes
    /// ([`gelu_lanes`]).
    Gelu,
    /// Gelu, tanh form ([`approx::gelu_tanh`]), as `Gelu`.
    GeluTanh,
    /// `v · max(0, min(1, v/6 + 1/2))` (MobileNetV3's activation), on
    /// the accumulator registers.
    HardSwish,
}

impl Clamp {
    /// Bounds alone (Relu, Clip).
    pub(crate) fn bounds(lo: f32, hi: f32) -> Clamp {
        Clamp {
            lo,
            hi,
            f: Nonlinearity::Identity,
        }
    }

    /// `f`, unbounded.
    pub(crate) fn unbounded(f: Nonlinearity) -> Clamp {
        Clamp {
            lo: f32::NEG_INFINITY,
            hi: f32::INFINITY,
            f,
        }
    }

    /// `v · sigmoid(v)`, unbounded.
    pub(crate) fn swish() -> Clamp {
        Self::unbounded(Nonlinearity::Swish)
    }

    /// The activation of one value (the scalar paths').
    pub(crate) fn apply(self, v: f32) -> f32 {
        let v = match self.f {
            // As the vector forms: zero far below (v / inf would be -0 or
            // NaN at -inf).
            Nonlinearity::Swish if v < -87.0 => 0.0,
            Nonlinearity::Swish => v / (1.0 + (-v).exp()),
            Nonlinearity::Gelu => approx::gelu(v),
            Nonlinearity::GeluTanh => approx::gelu_tanh(v),
            // As the generated loops compute it (a NaN stays NaN).
            Nonlinearity::HardSwish => v * (v * (1.0 / 6.0) + 0.5).clamp(0.0, 1.0),
            Nonlinearity::Identity => v,
        };
        // (f32::clamp keeps a NaN.)
        v.clamp(self.lo, self.hi)
    }
}

/// The Gelu forms on one vector's 16 lanes, through the activation
/// library's loop ([`crate::cpu::activation`]): inlined into a tile at a
/// fixed length, the compiler turns it into whole vectors of the tile's
/// width (a loop over each stored row's lanes instead left the 16 floats
/// to the scalar remainder of a 64-wide vector loop).
#[inline(always)]
fn gelu_lanes(f: Nonlinearity, lanes: &mut [f32; 16]) {
    use crate::cpu::activation::{apply_in_place, Activation};
    match f {
        Nonlinearity::Gelu => apply_in_place(Activation::Gelu, lanes),
        Nonlinearity::GeluTanh => apply_in_place(Activation::GeluTanh, lanes),
        Nonlinearity::Identity | Nonlinearity::Swish | Nonlinearity::HardSwish => {}
    }
}

/// e^r on r in [-ln2/2, ln2/2]: Taylor to degree 6 (truncation 1.2e-7
/// relative), after the Cody-Waite reduction e^x = 2^n · e^r with
/// r = x - n·ln2 in two parts ([`LN2_HI`] exact in f32 times any n that
/// occurs): the exponential of the tile's swish.
#[cfg(target_arch = "x86_64")]
const EXP_POLY: [f32; 7] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
];
#[cfg(target_arch = "x86_64")]
const LN2_HI: f32 = 0.693_145_75;
#[cfg(target_arch = "x86_64")]
const LN2_LO: f32 = 1.428_606_8e-6;

/// Whether the host can run [`gemm_small_k_raw`].
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i·ldo + j] (+)= Σ_k a[i·k + kk]·b[kk·ldb + j]` for `i < m`, `j < n`:
/// `a` is dense row-major `m x k`, `b` and `out` have row strides `ldb`
/// and `ldo`; `out` is overwritten, starting from `bias[i]` when given
/// (the bias costs no pass of its own over the output).
///
/// Panics if a view does not fit its slice or the host lacks AVX2/FMA
/// (check [`available`] first).
#[allow(clippy::too_many_arguments)]
#[cfg(test)]
pub(crate) fn gemm_small_k(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    out: &mut [f32],
    ldo: usize,
    bias: Option<&[f32]>,
    clamp: Option<Clamp>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        (m - 1) * ldo + n <= out.len(),
        "gemm_small_k: out out of bounds"
    );
    assert!(m == 1 || ldo >= n, "gemm_small_k: aliasing out rows");
    // SAFETY: the view fits `out` (asserted), whose mutable borrow rules
    // out overlap with the inputs.
    unsafe { gemm_small_k_raw(m, n, k, a, b, ldb, out.as_mut_ptr(), ldo, bias, clamp) }
}

/// `out[i·ldo + j] = bias[i] + Σ_k a[i·k + kk]·b[kk·ldb + j]` for `i < m`,
/// `j < n`, then clamped when `clamp` is given, written through a raw
/// pointer for callers whose threads write disjoint tiles of one buffer
/// (`gemm_small_k` is the safe form tests use).
///
/// Panics if an input view does not fit its slice or the host lacks
/// AVX2/FMA.
///
/// # Safety
/// `out` is valid for reads and writes of the `m x n` view with row stride
/// `ldo` (`ldo >= n` when `m > 1`), no other thread accesses that view
/// during the call, and it overlaps neither `a` nor `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_small_k_raw(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    out: *mut f32,
    ldo: usize,
    bias: Option<&[f32]>,
    clamp: Option<Clamp>,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(available(), "gemm_small_k: host lacks AVX2/FMA");
    assert!(a.len() >= m * k, "gemm_small_k: a out of bounds");
    assert!(
        bias.is_none_or(|b| b.len() >= m),
        "gemm_small_k: short bias"
    );
    assert!(
        k == 0 || (k - 1) * ldb + n <= b.len(),
        "gemm_small_k: b out of bounds"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (asserted above); the asserts and
    // the caller's contract keep every element the tiles touch (rows
    // i < m, positions j < n, taps kk < k; tails masked) inside its view.
    unsafe {
        avx2::run(
            m,
            n,
            k,
            a.as_ptr(),
            b.as_ptr(),
            ldb,
            out,
            ldo,
            bias.map(<[f32]>::as_ptr),
            clamp,
        )
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (ldb, out, ldo, bias, clamp);
}

/// [`avx2::sweep`], or [`avx512::sweep`] where the host has AVX-512F: its
/// taller 12-row tiles, or 6-row ones where `a`'s rows are a multiple of
/// 4 KiB apart: 12 such rows share one set of the L1 (8-way on Zen 4,
/// 12-way on Zen 5) and evict one another every k step (the 1x1 convs
/// over 1024 and 2048 channels of ResNet-50 ran 25-33 % slower on 12-row
/// tiles than on 6, the other convs and dense layers 0-7 % faster; Zen 4,
/// 1 thread). Those convs took the AVX2 tile before, which on Zen 5's
/// full-width 512-bit FMAs reaches half the peak: in 6-row AVX-512 tiles
/// ResNet-50's 1x1 1024->256 convs went from 1.05 to 0.75 ms (98 -> 137
/// GFLOP/s), its 1024->512 from 2.2 to 1.55 ms (Zen 5, 1 thread, `kiln
/// profile`; 12-row tiles: 0.86 and 1.78 ms).
///
/// # Safety
/// As for [`avx2::sweep`].
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sweep(
    m: usize,
    k: usize,
    a: *const f32,
    lda: usize,
    panels: (*const f32, usize),
    dests: &[avx2::Dest],
    init: avx2::Init,
    clamp: Option<Clamp>,
    next: Option<*const f32>,
) {
    // SAFETY: both paths need what the caller vouches for (`avx2::sweep`'s
    // contract: AVX2/FMA, every view in bounds); the AVX-512 path also
    // needs AVX-512F, which `avx512::available` has just detected.
    unsafe {
        if avx512::available() {
            let mr = if lda.is_multiple_of(1024) {
                avx2::MR
            } else {
                avx512::MR
            };
            avx512::sweep(mr, m, k, a, lda, panels, dests, init, clamp, next)
        } else {
            avx2::sweep(m, k, a, lda, panels, dests, init, clamp, next)
        }
    }
}

/// Strips a [`sweep`] tile covers at once: 2 on AVX-512 hosts (see
/// [`avx512`]'s tile), 1 elsewhere. Callers that can hand a sweep
/// several strips should hand it at least this many.
pub(super) fn strips_per_tile() -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        return 2;
    }
    1
}

/// One strip of a tile job: its panel, where its first output row goes
/// (row stride, lane masks of a partial strip) and what it adds as it
/// starts (a fused residual).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct StripJob {
    panel: *const f32,
    out: *mut f32,
    ld: usize,
    masks: Option<(std::arch::x86_64::__m256i, std::arch::x86_64::__m256i)>,
    add: Option<avx2::Addend>,
}

/// One tile of a sweep: its rows of `a`, its strip (and, for a paired
/// tile, the next strip), how it starts, and the panel to prefetch.
#[cfg(target_arch = "x86_64")]
struct TileJob {
    rows: usize,
    a: *const f32,
    first: StripJob,
    second: Option<StripJob>,
    init: avx2::Init,
    next: Option<*const f32>,
}

/// The tiles of a sweep in order: `mr`-row blocks of rows `0..m`, each
/// over every strip (two strips at a time when `pair`, an odd last one
/// alone), `next` on the very first (see [`avx2::sweep`]). Pointers are
/// offset with `wrapping_add`; the tile that dereferences them carries
/// the safety contract.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn for_each_tile(
    mr: usize,
    pair: bool,
    m: usize,
    a: *const f32,
    lda: usize,
    panels: (*const f32, usize),
    dests: &[avx2::Dest],
    init: avx2::Init,
    next: Option<*const f32>,
    mut tile: impl FnMut(TileJob),
) {
    let mut i = 0;
    while i < m {
        // The last rows split evenly when a full tile would leave a short
        // one: a tile's accumulators are each one FMA chain, so a tile of
        // r < 4 rows waits on FMA latency as long as one of 4 (8 rows as
        // 6 + 2 cost 10 units of FMA time per k, as 4 + 4 cost 8: M = 32,
        // 128 and 512 end that way).
        let rest = m - i;
        let rows = if rest > mr && rest <= mr + mr / 2 {
            rest.div_ceil(2)
        } else {
            rest.min(mr)
        };
        let init = match init {
            avx2::Init::Bias(b) => avx2::Init::Bias(b.wrapping_add(i)),
            other => other,
        };
        let strip = |s: usize| {
            let d: &avx2::Dest = &dests[s];
            StripJob {
                panel: panels.0.wrapping_add(s * panels.1),
                out: d.out.wrapping_add(i * d.ld),
                ld: d.ld,
                masks: d.masks,
                add: d.add.map(|a| avx2::Addend {
                    src: a.src.wrapping_add(i * a.ld),
                    ..a
                }),
            }
        };
        let step = if pair { 2 } else { 1 };
        let first_block = !matches!(init, avx2::Init::Load);
        for s in (0..dests.len()).step_by(step) {
            // The next row block's addend and output lines of these
            // strips, a whole pass over the strips ahead: a residual that
            // comes from memory (ResNet's 56x56 stage: 3 MB) otherwise
            // stalls every tile as it starts, and the stores wait on
            // their lines too (1x1 64->256 convs with a residual ran at
            // half the speed of those without).
            if first_block && i + rows < m {
                for d in &dests[s..(s + step).min(dests.len())] {
                    for r in i + rows..(i + 2 * rows).min(m) {
                        prefetch_line(d.out.wrapping_add(r * d.ld).cast_const(), true);
                        if let Some(a) = d.add.filter(|a| a.ld > 0) {
                            prefetch_line(a.src.wrapping_add(r * a.ld), false);
                        }
                    }
                }
            }
            tile(TileJob {
                rows,
                a: a.wrapping_add(i * lda),
                first: strip(s),
                second: (pair && s + 1 < dests.len()).then(|| strip(s + 1)),
                init,
                next: if i == 0 && s == 0 { next } else { None },
            });
        }
        i += rows;
    }
}

/// Prefetches the 64 bytes at `p` into L1 (for writing when `write`); a
/// prefetch never faults, whatever `p`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_line(p: *const f32, write: bool) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
    // SAFETY: prefetches are hints: they do not fault on any address.
    unsafe {
        if write {
            _mm_prefetch::<_MM_HINT_ET0>(p.cast());
        } else {
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::{Clamp, Nonlinearity};

    pub(in crate::cpu::kernels) const MR: usize = 6;
    pub(in crate::cpu::kernels) const NR: usize = 16;

    /// The 16 floats at `p`, only the lanes `masks` sets when given (the
    /// others 0).
    ///
    /// # Safety
    /// AVX2 present; the read lanes are valid.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load16(p: *const f32, masks: Option<(__m256i, __m256i)>) -> [__m256; 2] {
        // SAFETY: AVX2 is enabled on this function, and the caller vouches
        // that the lanes read are valid: all 16 floats at `p` (so `p + 8`
        // is inside them), or only those `masks` selects (`maskload`
        // touches no other lane).
        unsafe {
            match masks {
                Some((ml, mh)) => [_mm256_maskload_ps(p, ml), _mm256_maskload_ps(p.add(8), mh)],
                None => [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))],
            }
        }
    }

    /// Lane masks for a tail of `len` < 16 columns: (first 8, next 8).
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::cpu::kernels) fn tail_masks(len: usize) -> (__m256i, __m256i) {
        let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let lo = _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32), lanes);
        let hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(len as i32 - 8), lanes);
        (lo, hi)
    }

    /// Loops over 16-column strips, and within a strip over 6-row blocks,
    /// so the strip of `b` stays in L1 while all of `a` passes over it.
    /// Each strip is first copied into a dense k x 16 panel (past a tail,
    /// lanes hold stale values whose results are never stored): `b`'s rows
    /// are often a page or more apart (im2col rows of a 224x224 image), and
    /// k separate pages per strip would thrash the TLB and defeat the
    /// prefetchers.
    ///
    /// # Safety
    /// AVX2 and FMA available; the views described by (m, n, k, ldb, ldo)
    /// lie inside the allocations behind the pointers; `out` overlaps
    /// neither input.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run(
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        b: *const f32,
        ldb: usize,
        out: *mut f32,
        ldo: usize,
        bias: Option<*const f32>,
        clamp: Option<Clamp>,
    ) {
        let mut panel = vec![0.0f32; k * NR];
        let pp = panel.as_mut_ptr();
        let mut j = 0;
        while j < n {
            let len = (n - j).min(NR);
            // SAFETY: kk < k and j + len <= n, so row kk of the strip,
            // b[kk·ldb + j..][..len], lies in the k x n view of `b` the caller
            // vouches for (all 16 floats are read only when len == NR);
            // `panel` is this call's own k·NR floats, so pp[kk·NR..][..16]
            // is inside it and overlaps nothing else. AVX2 is enabled here.
            unsafe {
                for kk in 0..k {
                    let src = b.add(kk * ldb + j);
                    let dst = pp.add(kk * NR);
                    if len == NR {
                        _mm256_storeu_ps(dst, _mm256_loadu_ps(src));
                        _mm256_storeu_ps(dst.add(8), _mm256_loadu_ps(src.add(8)));
                    } else {
                        std::ptr::copy_nonoverlapping(src, dst, len);
                    }
                }
            }
            let masks = (len < NR).then(|| tail_masks(len));
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(MR);
                // SAFETY: i < m and j < n: row i of the dense m x k `a`,
                // element (i, j) of the m x n `out` view and bias[i] are
                // inside the views the caller vouches for.
                let (ap, op, init) = unsafe {
                    (
                        a.add(i * k),
                        out.add(i * ldo + j),
                        bias.map_or(Init::Zero, |b| Init::Bias(b.add(i))),
                    )
                };
                // SAFETY: AVX2/FMA are enabled here, as `tile_rows` needs;
                // rows i..i + rows (i + rows <= m) of `a` (k floats each),
                // of `out` (columns j..j + len, the rest masked off when
                // len < NR; stride ldo) and of the bias are inside the
                // caller's views; the panel holds k x 16 floats; `out`
                // overlaps neither input (caller's contract) nor the panel
                // (this call's own).
                unsafe { tile_rows(rows, k, ap, k, pp, op, ldo, init, None, masks, clamp, None) };
                i += rows;
            }
            j += len;
        }
    }

    /// What an output tile starts from before the products are added.
    #[derive(Clone, Copy)]
    pub(in crate::cpu::kernels) enum Init {
        Zero,
        /// `bias[r]` for the tile's row r.
        Bias(*const f32),
        /// The tile's current contents (a later block of k).
        Load,
    }

    /// Where [`sweep`] puts one strip's tiles: the first row's 16 columns,
    /// the row stride, and lane masks for a partial strip.
    #[derive(Clone, Copy)]
    pub(in crate::cpu::kernels) struct Dest {
        pub out: *mut f32,
        pub ld: usize,
        pub masks: Option<(__m256i, __m256i)>,
        /// Added to the tile as it starts (a fused residual).
        pub add: Option<Addend>,
    }

    /// A matrix added to a tile when it starts: its first row's 16
    /// columns, its row stride, and lane masks for a partial strip (only
    /// those lanes are read).
    #[derive(Clone, Copy)]
    pub(in crate::cpu::kernels) struct Addend {
        pub src: *const f32,
        pub ld: usize,
        pub masks: Option<(__m256i, __m256i)>,
    }

    /// Rows `0..m` over the panels of one or more strips, 6-row tile by
    /// tile, strips inner (a block's k floats per row stay in L1 across
    /// the strips): strip s's panel is at `panels.0 + s · panels.1`, its
    /// tile goes to `dests[s]`, `out[r·ld + j] = init + Σ_kk a[r·lda + kk]
    /// · panel[kk·16 + j]`. A function of its own with the tile inlined:
    /// callers without AVX2 enabled would otherwise call the tile out of
    /// line, with its arguments in memory (5-8 % of a k = 64 product).
    ///
    /// `next`, when given, is the k x 16 panel the caller sweeps after
    /// this one: the first tile pulls it into L1 one line per k step, so a
    /// panel that comes from L3 or memory (a layer's packed weights, read
    /// once per sweep) is there by the time its sweep starts; hardware
    /// prefetchers only catch on a few lines into each new panel.
    ///
    /// # Safety
    /// As for [`tile`], for each 6-row block and strip (`Init::Bias`
    /// points at m floats); `next` may point anywhere (prefetches do not
    /// fault).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::cpu::kernels) unsafe fn sweep(
        m: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        panels: (*const f32, usize),
        dests: &[Dest],
        init: Init,
        clamp: Option<Clamp>,
        next: Option<*const f32>,
    ) {
        super::for_each_tile(MR, false, m, a, lda, panels, dests, init, next, |t| {
            let s = t.first;
            // SAFETY: AVX2/FMA are enabled here, as `tile_rows` needs.
            // `for_each_tile` hands each tile rows i..i + t.rows (t.rows <=
            // MR, i + t.rows <= m) of `a`, of strip s's destination and of
            // its addend, strip s's panel and the bias from row i: all
            // inside the views this function's caller vouches for; `next`
            // is only prefetched, which never faults.
            unsafe {
                tile_rows(
                    t.rows, k, t.a, lda, s.panel, s.out, s.ld, t.init, s.add, s.masks, clamp,
                    t.next,
                )
            }
        });
    }

    /// `v · sigmoid(v) = v / (1 + e^-v)`, as the AVX-512 tile's, 2^n built
    /// from its exponent bits.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn swish8(v: __m256) -> __m256 {
        // x = -v, clamped so that 2^n stays finite (|n| <= 126).
        let x = _mm256_sub_ps(_mm256_setzero_ps(), v);
        let x = _mm256_min_ps(
            _mm256_set1_ps(87.0),
            _mm256_max_ps(_mm256_set1_ps(-87.0), x),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(super::LN2_LO), r);
        let c = &super::EXP_POLY;
        let mut p = _mm256_set1_ps(c[6]);
        for &ci in c[..6].iter().rev() {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(ci));
        }
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        let e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
        let y = _mm256_div_ps(v, _mm256_add_ps(_mm256_set1_ps(1.0), e));
        // Below -87 the result is under 1e-36: zero (the clamp would
        // leave v / 6e37).
        let far = _mm256_cmp_ps::<_CMP_LT_OQ>(v, _mm256_set1_ps(-87.0));
        _mm256_blendv_ps(y, _mm256_setzero_ps(), far)
    }

    /// [`tile`] for `rows` (1..=6) rows.
    ///
    /// # Safety
    /// As for [`tile`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::cpu::kernels) unsafe fn tile_rows(
        rows: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        panel: *const f32,
        out: *mut f32,
        ldo: usize,
        init: Init,
        add: Option<Addend>,
        masks: Option<(__m256i, __m256i)>,
        clamp: Option<Clamp>,
        next: Option<*const f32>,
    ) {
        macro_rules! go {
            ($r:literal) => {
                match next {
                    None => tile::<$r, false>(
                        k, a, lda, panel, out, ldo, init, add, masks, clamp, panel,
                    ),
                    Some(p) => {
                        tile::<$r, true>(k, a, lda, panel, out, ldo, init, add, masks, clamp, p)
                    }
                }
            };
        }
        // SAFETY: AVX2/FMA are enabled here as on `tile`; `rows` is in
        // 1..=6 (this function's documented range) and each arm runs
        // `tile::<R>` with R == rows, so the rows it touches are the rows
        // this function's caller vouches for under `tile`'s contract.
        unsafe {
            match rows {
                6 => go!(6),
                5 => go!(5),
                4 => go!(4),
                3 => go!(3),
                2 => go!(2),
                _ => go!(1),
            }
        }
    }

    /// One `R x 16` output tile, `out[r][j] = init + Σ_kk a[r·lda + kk] ·
    /// panel[kk·16 + j]`, from a dense k x 16 panel, clamped on the way
    /// out when `clamp` is given; loads and stores are masked to the
    /// tail's columns when `masks` is given. With `PF`, step kk also
    /// prefetches line kk of the panel at `pf`.
    ///
    /// # Safety
    /// Rows `0..R` of `a` (k floats each, stride `lda`) and of `out` (the
    /// tile's columns, stride `ldo`; only the lanes `masks` selects when
    /// given) are valid, `out` for reads and writes and overlapping
    /// neither input; `panel` holds k x 16 floats; `Init::Bias` points at
    /// R floats; `add`, when given, is valid for reads of rows `0..R`
    /// (stride `add.ld`) in the lanes its masks select.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize, const PF: bool>(
        k: usize,
        a: *const f32,
        lda: usize,
        panel: *const f32,
        out: *mut f32,
        ldo: usize,
        init: Init,
        add: Option<Addend>,
        masks: Option<(__m256i, __m256i)>,
        clamp: Option<Clamp>,
        pf: *const f32,
    ) {
        let mut c = [[_mm256_setzero_ps(); 2]; R];
        match init {
            Init::Zero => {}
            Init::Bias(bias) => {
                for (r, cr) in c.iter_mut().enumerate() {
                    // SAFETY: `Init::Bias` points at R floats, and r < R.
                    let v = _mm256_broadcast_ss(unsafe { &*bias.add(r) });
                    *cr = [v, v];
                }
            }
            Init::Load => {
                for (r, cr) in c.iter_mut().enumerate() {
                    // SAFETY: row r < R of the tile is valid for reads in
                    // the lanes `load16` reads (all 16, or those `masks`
                    // selects); AVX2 is enabled here.
                    *cr = unsafe { load16(out.add(r * ldo), masks) };
                }
            }
        }
        if let Some(add) = add {
            for (r, cr) in c.iter_mut().enumerate() {
                // SAFETY: row r < R of the addend is valid for reads in the
                // lanes its masks select, which are all `load16` reads.
                let v = unsafe { load16(add.src.add(r * add.ld), add.masks) };
                *cr = [_mm256_add_ps(cr[0], v[0]), _mm256_add_ps(cr[1], v[1])];
            }
        }
        for kk in 0..k {
            if PF {
                // wrapping_add: a prefetch address need not be in bounds.
                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(kk * NR).cast());
            }
            // SAFETY: kk < k, and the panel holds k x 16 floats.
            let (b0, b1) = unsafe {
                (
                    _mm256_loadu_ps(panel.add(kk * NR)),
                    _mm256_loadu_ps(panel.add(kk * NR + 8)),
                )
            };
            for (r, cr) in c.iter_mut().enumerate() {
                // SAFETY: row r < R of `a` holds k floats at stride lda,
                // and kk < k.
                let av = _mm256_broadcast_ss(unsafe { &*a.add(r * lda + kk) });
                cr[0] = _mm256_fmadd_ps(av, b0, cr[0]);
                cr[1] = _mm256_fmadd_ps(av, b1, cr[1]);
            }
        }
        if let Some(Clamp { lo, hi, f }) = clamp {
            if f == Nonlinearity::Swish {
                for cr in c.iter_mut() {
                    for v in cr.iter_mut() {
                        *v = swish8(*v);
                    }
                }
            } else if f == Nonlinearity::HardSwish {
                let (sixth, half) = (_mm256_set1_ps(1.0 / 6.0), _mm256_set1_ps(0.5));
                let (zero, one) = (_mm256_setzero_ps(), _mm256_set1_ps(1.0));
                for cr in c.iter_mut() {
                    for v in cr.iter_mut() {
                        // A multiply, then an add, as the generated loops
                        // round them (an FMA moved results near v = -3,
                        // where HardSwish is ill-conditioned, enough to
                        // change which boxes a detector kept); min/max
                        // return their second operand on a NaN.
                        let t = _mm256_add_ps(_mm256_mul_ps(*v, sixth), half);
                        let t = _mm256_min_ps(one, _mm256_max_ps(zero, t));
                        *v = _mm256_mul_ps(*v, t);
                    }
                }
            } else if f != Nonlinearity::Identity {
                for cr in c.iter_mut() {
                    let mut lanes = [0.0f32; 16];
                    // SAFETY: 16 floats of `lanes`, 8 per half; AVX2 is
                    // enabled here.
                    unsafe {
                        _mm256_storeu_ps(lanes.as_mut_ptr(), cr[0]);
                        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), cr[1]);
                    }
                    super::gelu_lanes(f, &mut lanes);
                    // SAFETY: as above.
                    *cr = unsafe {
                        [
                            _mm256_loadu_ps(lanes.as_ptr()),
                            _mm256_loadu_ps(lanes.as_ptr().add(8)),
                        ]
                    };
                }
            }
            // max(lo, v) and min(hi, v) return v when it is NaN.
            let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
            for cr in c.iter_mut() {
                for v in cr.iter_mut() {
                    *v = _mm256_min_ps(hi, _mm256_max_ps(lo, *v));
                }
            }
        }
        for (r, cr) in c.iter().enumerate() {
            // SAFETY: row r < R of the tile is valid for writes: its 16
            // columns (so `p + 8` is inside them), or only the lanes
            // `masks` selects (`maskstore` writes no other lane); it
            // overlaps neither input, which this function only reads.
            unsafe {
                let p = out.add(r * ldo);
                match masks {
                    Some((ml, mh)) => {
                        _mm256_maskstore_ps(p, ml, cr[0]);
                        _mm256_maskstore_ps(p.add(8), mh, cr[1]);
                    }
                    None => {
                        _mm256_storeu_ps(p, cr[0]);
                        _mm256_storeu_ps(p.add(8), cr[1]);
                    }
                }
            }
        }
    }
}

/// The same tiles on AVX-512F: 12 rows x 16 columns of each of two strips
/// at once, one zmm accumulator per row and strip, each broadcast of `a`
/// feeding both strips' FMAs, over the same k x 16 panels. Zen 4 runs a
/// 512-bit FMA as two 256-bit halves, so the peak is AVX2's; the win there
/// is half the instructions per FMA and a taller tile (each panel line
/// loaded once per 12 rows instead of 6). Zen 5 runs them at full width,
/// and there the loads per FMA bound the tile: see [`avx512`]'s `tile`.
#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    use super::avx2::{Dest, Init};
    use super::{Clamp, Nonlinearity};

    pub(in crate::cpu::kernels) const MR: usize = 12;

    /// Whether the host has AVX-512F (and AVX2/FMA, which every AVX-512
    /// x86-64 has) for [`sweep`].
    pub(in crate::cpu::kernels) fn available() -> bool {
        super::available() && is_x86_feature_detected!("avx512f")
    }

    /// [`super::avx2::sweep`] with tiles of `mr` rows (at most [`MR`]).
    ///
    /// # Safety
    /// As for [`super::avx2::sweep`], with AVX-512F present.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(in crate::cpu::kernels) unsafe fn sweep(
        mr: usize,
        m: usize,
        k: usize,
        a: *const f32,
        lda: usize,
        panels: (*const f32, usize),
        dests: &[Dest],
        init: Init,
        clamp: Option<Clamp>,
        next: Option<*const f32>,
    ) {
        super::for_each_tile(
            mr.clamp(1, MR),
            true,
            m,
            a,
            lda,
            panels,
            dests,
            init,
            next,
            |t| {
                let strip = |s: super::StripJob| Strip {
                    panel: s.panel,
                    out: s.out,
                    ld: s.ld,
                    mask: mask16(s.masks),
                    add: s.add.map(|a| (a.src, a.ld, mask16(a.masks))),
                };
                let first = strip(t.first);
                let (a, init) = (t.a, t.init);
                macro_rules! go {
                    ($r:literal) => {
                        match (t.second.map(strip), t.next) {
                            (None, None) => tile::<$r, 1, false>(
                                k,
                                a,
                                lda,
                                [first, first],
                                init,
                                clamp,
                                first.panel,
                            ),
                            (None, Some(p)) => {
                                tile::<$r, 1, true>(k, a, lda, [first, first], init, clamp, p)
                            }
                            (Some(second), None) => tile::<$r, 2, false>(
                                k,
                                a,
                                lda,
                                [first, second],
                                init,
                                clamp,
                                first.panel,
                            ),
                            (Some(second), Some(p)) => {
                                tile::<$r, 2, true>(k, a, lda, [first, second], init, clamp, p)
                            }
                        }
                    };
                }
                // SAFETY: AVX-512F/AVX2/FMA are enabled here, as `tile` needs.
                // `for_each_tile` hands each tile rows i..i + t.rows (t.rows <=
                // MR, i + t.rows <= m) of `a`, of its strips' destinations and
                // addends, the strips' panels and the bias from row i: all
                // inside the views this function's caller vouches for; each arm
                // runs `tile::<R, W>` with R == t.rows and W the strips it has;
                // `next` is only prefetched.
                unsafe {
                    match t.rows {
                        12 => go!(12),
                        11 => go!(11),
                        10 => go!(10),
                        9 => go!(9),
                        8 => go!(8),
                        7 => go!(7),
                        6 => go!(6),
                        5 => go!(5),
                        4 => go!(4),
                        3 => go!(3),
                        2 => go!(2),
                        _ => go!(1),
                    }
                }
            },
        );
    }

    /// One strip of an AVX-512 tile: its k x 16 panel, its first output
    /// row (row stride, lane mask: bit j is column j) and its addend
    /// (first row, row stride, lane mask).
    #[derive(Clone, Copy)]
    struct Strip {
        panel: *const f32,
        out: *mut f32,
        ld: usize,
        mask: u16,
        add: Option<(*const f32, usize, u16)>,
    }

    /// Lane mask (bit j: column j) of an AVX2 mask pair; all 16 without.
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn mask16(masks: Option<(__m256i, __m256i)>) -> u16 {
        match masks {
            None => u16::MAX,
            Some((lo, hi)) => {
                let lo = _mm256_movemask_ps(_mm256_castsi256_ps(lo)) as u16;
                let hi = _mm256_movemask_ps(_mm256_castsi256_ps(hi)) as u16;
                lo | (hi << 8)
            }
        }
    }

    /// One tile of `R` rows over `W` (1 or 2) strips, as [`super::avx2`]'s
    /// over each strip, with the columns past a tail masked by the strip's
    /// mask. Two strips share each broadcast of `a`: a 12x16 tile issues
    /// 13 loads per 12 FMAs and ran at 84 % of the 512-bit FMA peak on Zen
    /// 5 (every operand in L1), a 12x32 tile 14 per 24 and ran at 97 %.
    /// The accumulators are two flat arrays: one of `[__m512; 2]` rows
    /// spilled to the stack.
    ///
    /// # Safety
    /// As for the AVX2 tile, for each of the first `W` strips, with
    /// AVX-512F present.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn tile<const R: usize, const W: usize, const PF: bool>(
        k: usize,
        a: *const f32,
        lda: usize,
        strips: [Strip; 2],
        init: Init,
        clamp: Option<Clamp>,
        pf: *const f32,
    ) {
        let [s0, s1] = strips;
        let mut c0 = [_mm512_setzero_ps(); R];
        let mut c1 = [_mm512_setzero_ps(); R];
        match init {
            Init::Zero => {}
            Init::Bias(bias) => {
                for r in 0..R {
                    // SAFETY: `Init::Bias` points at R floats, and r < R.
                    c0[r] = _mm512_set1_ps(unsafe { *bias.add(r) });
                    c1[r] = c0[r];
                }
            }
            Init::Load => {
                for r in 0..R {
                    // SAFETY: row r < R of each strip's tile is valid for
                    // reads in the lanes its mask selects, the only ones
                    // loaded.
                    unsafe {
                        c0[r] = _mm512_maskz_loadu_ps(s0.mask, s0.out.add(r * s0.ld));
                        if W == 2 {
                            c1[r] = _mm512_maskz_loadu_ps(s1.mask, s1.out.add(r * s1.ld));
                        }
                    }
                }
            }
        }
        if let Some((src, ld, lanes)) = s0.add {
            for (r, cr) in c0.iter_mut().enumerate() {
                // SAFETY: row r < R of the addend is valid for reads in the
                // lanes `lanes` selects, the only ones loaded.
                let v = unsafe { _mm512_maskz_loadu_ps(lanes, src.add(r * ld)) };
                *cr = _mm512_add_ps(*cr, v);
            }
        }
        if W == 2 {
            if let Some((src, ld, lanes)) = s1.add {
                for (r, cr) in c1.iter_mut().enumerate() {
                    // SAFETY: as for the first strip's addend.
                    let v = unsafe { _mm512_maskz_loadu_ps(lanes, src.add(r * ld)) };
                    *cr = _mm512_add_ps(*cr, v);
                }
            }
        }
        for kk in 0..k {
            if PF {
                _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(kk * 16).cast());
            }
            // SAFETY: kk < k, and each strip's panel holds k x 16 floats.
            let b0 = unsafe { _mm512_loadu_ps(s0.panel.add(kk * 16)) };
            let b1 = if W == 2 {
                // SAFETY: as above.
                unsafe { _mm512_loadu_ps(s1.panel.add(kk * 16)) }
            } else {
                b0
            };
            for r in 0..R {
                // SAFETY: row r < R of `a` holds k floats at stride lda,
                // and kk < k.
                let av = _mm512_set1_ps(unsafe { *a.add(r * lda + kk) });
                c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
                if W == 2 {
                    c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
                }
            }
        }
        if let Some(Clamp { lo, hi, f }) = clamp {
            // (Inline: a function taking the accumulators by reference
            // put them on the stack through the whole k loop.)
            if f == Nonlinearity::Swish {
                for cr in c0.iter_mut() {
                    *cr = swish16(*cr);
                }
                if W == 2 {
                    for cr in c1.iter_mut() {
                        *cr = swish16(*cr);
                    }
                }
            } else if f == Nonlinearity::HardSwish {
                let (sixth, half) = (_mm512_set1_ps(1.0 / 6.0), _mm512_set1_ps(0.5));
                let (zero, one) = (_mm512_setzero_ps(), _mm512_set1_ps(1.0));
                for r in 0..R {
                    // As the AVX2 tile: a multiply, then an add.
                    let t = _mm512_add_ps(_mm512_mul_ps(c0[r], sixth), half);
                    c0[r] = _mm512_mul_ps(c0[r], _mm512_min_ps(one, _mm512_max_ps(zero, t)));
                    if W == 2 {
                        let t = _mm512_add_ps(_mm512_mul_ps(c1[r], sixth), half);
                        c1[r] = _mm512_mul_ps(c1[r], _mm512_min_ps(one, _mm512_max_ps(zero, t)));
                    }
                }
            } else if f != Nonlinearity::Identity {
                // On copies: a loop that calls out indexes its array at
                // run time, which would keep that array (the
                // accumulators) in memory through the k loop.
                let mut t = c0;
                t.iter_mut().for_each(|v| *v = gelu16(f, *v));
                c0 = t;
                if W == 2 {
                    let mut t = c1;
                    t.iter_mut().for_each(|v| *v = gelu16(f, *v));
                    c1 = t;
                }
            }
            // max(lo, v) and min(hi, v) return v when it is NaN.
            let (lo, hi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
            for r in 0..R {
                c0[r] = _mm512_min_ps(hi, _mm512_max_ps(lo, c0[r]));
                if W == 2 {
                    c1[r] = _mm512_min_ps(hi, _mm512_max_ps(lo, c1[r]));
                }
            }
        }
        for r in 0..R {
            // SAFETY: row r < R of each strip's tile is valid for writes in
            // the lanes its mask selects (the only ones stored) and
            // overlaps neither input.
            unsafe {
                _mm512_mask_storeu_ps(s0.out.add(r * s0.ld), s0.mask, c0[r]);
                if W == 2 {
                    _mm512_mask_storeu_ps(s1.out.add(r * s1.ld), s1.mask, c1[r]);
                }
            }
        }
    }

    /// [`super::gelu_lanes`] on one vector.
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    fn gelu16(f: Nonlinearity, v: __m512) -> __m512 {
        let mut lanes = [0.0f32; 16];
        // SAFETY: 16 floats of `lanes`; AVX-512F is enabled here.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), v) };
        super::gelu_lanes(f, &mut lanes);
        // SAFETY: as above.
        unsafe { _mm512_loadu_ps(lanes.as_ptr()) }
    }

    /// `v · sigmoid(v) = v / (1 + e^-v)`, e^-v as 2^n (`scalef`) times a
    /// polynomial of the rest ([`super::EXP_POLY`]); -v clamped to ±87 so
    /// that e^-v stays finite, and a v below -87 gives zero (the exact
    /// result is under 1e-36).
    #[inline]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn swish16(v: __m512) -> __m512 {
        // x = -v, clamped so that 2^n stays finite (|n| <= 126).
        let x = _mm512_sub_ps(_mm512_setzero_ps(), v);
        let x = _mm512_min_ps(
            _mm512_set1_ps(87.0),
            _mm512_max_ps(_mm512_set1_ps(-87.0), x),
        );
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_HI), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_LO), r);
        let c = &super::EXP_POLY;
        let mut p = _mm512_set1_ps(c[6]);
        for &ci in c[..6].iter().rev() {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(ci));
        }
        let e = _mm512_scalef_ps(p, n);
        let y = _mm512_div_ps(v, _mm512_add_ps(_mm512_set1_ps(1.0), e));
        // Below -87 the result is under 1e-36: zero (the clamp would
        // leave v / 6e37).
        let far = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, _mm512_set1_ps(-87.0));
        _mm512_mask_mov_ps(y, far, _mm512_setzero_ps())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::common::testing::lcg;

    /// The tile store's activation in f64.
    fn naive_act(c: Clamp, v: f64) -> f64 {
        let v = match c.f {
            Nonlinearity::Identity => v,
            Nonlinearity::Swish => v / (1.0 + (-v).exp()),
            // (`approx`'s own tests hold these to the exact functions.)
            Nonlinearity::Gelu => approx::gelu(v as f32) as f64,
            Nonlinearity::GeluTanh => approx::gelu_tanh(v as f32) as f64,
            Nonlinearity::HardSwish => v * (v / 6.0 + 0.5).clamp(0.0, 1.0),
        };
        v.max(c.lo as f64).min(c.hi as f64)
    }

    /// The swish of both vector widths against f64, over the whole range
    /// (relative error 2e-6, 16 ulp, within |v| <= 16, 1e-5 beyond), NaN kept.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn swish_matches_f64() {
        use std::arch::x86_64::*;
        let xs: Vec<f32> = (-2000..=2000)
            .map(|i| i as f32 * 0.05)
            .chain([-1e30, -200.0, -88.5, 88.5, 200.0, 1e30, 0.0, -0.0, f32::NAN])
            .collect();
        let check = |x: f32, got: f32, what: &str| {
            let want = naive_act(Clamp::swish(), x as f64);
            if x.is_nan() {
                assert!(got.is_nan(), "{what}: NaN lost");
            } else {
                // Far out, e^-v carries the rounding of v·log2(e) (an f32
                // near 87 is good to 4e-6).
                let rel = if x.abs() <= 16.0 { 2e-6 } else { 1e-5 };
                let err = (got as f64 - want).abs();
                assert!(
                    err <= rel * want.abs() + 1e-30,
                    "{what}({x}) = {got}, want {want}"
                );
            }
        };
        for &x in &xs {
            if available() {
                // SAFETY: AVX2/FMA checked.
                let v = unsafe { avx2::swish8(_mm256_set1_ps(x)) };
                let mut out = [0f32; 8];
                // SAFETY: 8 floats.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
                check(x, out[0], "swish8");
            }
            if avx512::available() {
                // SAFETY: AVX-512F checked.
                let v = unsafe { avx512::swish16(_mm512_set1_ps(x)) };
                let mut out = [0f32; 16];
                // SAFETY: 16 floats.
                unsafe { _mm512_storeu_ps(out.as_mut_ptr(), v) };
                check(x, out[0], "swish16");
            }
            check(x, Clamp::swish().apply(x), "scalar");
        }
    }

    /// Both sweeps (6-row AVX2, 12-row AVX-512) over one to three strips
    /// of panels: every row count up to 2 tiles and a remainder, full and
    /// masked strips (paired and alone on AVX-512), each start (zero,
    /// bias, the output's contents), a residual addend, a clamp that keeps
    /// a NaN, with and without a prefetched next panel.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sweeps_match_naive_product() {
        use avx2::{tail_masks, Addend, Dest, Init};
        type Sweep = unsafe fn(
            usize,
            usize,
            *const f32,
            usize,
            (*const f32, usize),
            &[Dest],
            Init,
            Option<Clamp>,
            Option<*const f32>,
        );
        let mut sweeps: Vec<(&str, Sweep)> = Vec::new();
        if available() {
            sweeps.push(("avx2", avx2::sweep));
        }
        if avx512::available() {
            // Both row counts the dispatch uses (12, and 6 for rows 4 KiB
            // apart).
            sweeps.push(("avx512 x12", |m, k, a, lda, p, d, i, c, n| {
                // SAFETY: the caller's contract, as for `avx512::sweep`.
                unsafe { avx512::sweep(avx512::MR, m, k, a, lda, p, d, i, c, n) }
            }));
            sweeps.push(("avx512 x6", |m, k, a, lda, p, d, i, c, n| {
                // SAFETY: the caller's contract, as for `avx512::sweep`.
                unsafe { avx512::sweep(avx2::MR, m, k, a, lda, p, d, i, c, n) }
            }));
        }
        for (name, sweep) in sweeps {
            for m in [1, 5, 6, 7, 11, 12, 13, 25] {
                for (k, lens) in [
                    (0, &[16][..]),
                    (1, &[3]),
                    (5, &[16, 16, 9]),
                    (300, &[16, 7]),
                ] {
                    for (start, clamp, next, with_add) in [
                        (0, None, false, false),
                        (1, Some(Clamp::bounds(-0.1, 0.2)), true, false),
                        (2, Some(Clamp::bounds(0.0, f32::INFINITY)), false, true),
                        (1, Some(Clamp::swish()), false, true),
                        (0, Some(Clamp::unbounded(Nonlinearity::Gelu)), false, true),
                        (
                            2,
                            Some(Clamp::unbounded(Nonlinearity::GeluTanh)),
                            true,
                            false,
                        ),
                        (
                            1,
                            Some(Clamp::unbounded(Nonlinearity::HardSwish)),
                            false,
                            true,
                        ),
                    ] {
                        let lda = k + 3;
                        let mut a = lcg(1, m * lda);
                        if k > 0 && clamp.is_some() {
                            a[0] = f32::NAN;
                        }
                        let panel_len = k * 16;
                        let panels = lcg(2, panel_len * lens.len() + 16);
                        let bias = lcg(3, m);
                        let ld = 16 * lens.len() + 5;
                        let init = lcg(4, m * ld);
                        let addend = lcg(5, m * ld);
                        let mut out = init.clone();
                        let dests: Vec<Dest> = lens
                            .iter()
                            .enumerate()
                            .map(|(s, &len)| Dest {
                                out: out[s * 16..].as_mut_ptr(),
                                ld,
                                // SAFETY: AVX2 is present (checked above).
                                masks: (len < 16).then(|| unsafe { tail_masks(len) }),
                                add: with_add.then(|| Addend {
                                    src: addend[s * 16..].as_ptr(),
                                    ld,
                                    // SAFETY: as above.
                                    masks: (len < 16).then(|| unsafe { tail_masks(len) }),
                                }),
                            })
                            .collect();
                        let start_with = match start {
                            0 => Init::Zero,
                            1 => Init::Bias(bias.as_ptr()),
                            _ => Init::Load,
                        };
                        let pf = next.then_some(panels.as_ptr());
                        // SAFETY: every view is inside its vector; the
                        // sweep's features are present.
                        unsafe {
                            sweep(
                                m,
                                k,
                                a.as_ptr(),
                                lda,
                                (panels.as_ptr(), panel_len),
                                &dests,
                                start_with,
                                clamp,
                                pf,
                            )
                        };
                        for i in 0..m {
                            for (s, &len) in lens.iter().enumerate() {
                                for j in 0..16 {
                                    let at = i * ld + s * 16 + j;
                                    let got = out[at];
                                    if j >= len {
                                        assert_eq!(
                                            got.to_bits(),
                                            init[at].to_bits(),
                                            "{name}: masked lane written"
                                        );
                                        continue;
                                    }
                                    let mut want = match start {
                                        0 => 0.0,
                                        1 => bias[i] as f64,
                                        _ => init[at] as f64,
                                    };
                                    if with_add {
                                        want += addend[at] as f64;
                                    }
                                    for kk in 0..k {
                                        want += a[i * lda + kk] as f64
                                            * panels[s * panel_len + kk * 16 + j] as f64;
                                    }
                                    if let Some(c) = clamp {
                                        want = naive_act(c, want);
                                    }
                                    let what =
                                        format!("{name} m{m} k{k} start {start} ({i}, {s}, {j})");
                                    if i == 0 && k > 0 && clamp.is_some() {
                                        assert!(got.is_nan(), "{what}: NaN lost");
                                    } else {
                                        assert!(
                                            (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                            "{what}: {got} vs {want}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every tile shape: full and partial row blocks, full and masked
    /// column strips, k = 0 and 1, strided b and out, with and without bias
    /// and clamp (a NaN in `a` checks that the clamp keeps it).
    #[test]
    fn matches_naive_product() {
        if !available() {
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (6, 16, 3),
            (7, 17, 5),
            (5, 3, 27),
            (13, 40, 0),
            (64, 100, 27),
            (12, 33, 147),
        ] {
            let clamps = [
                None,
                Some(Clamp::bounds(0.0, f32::INFINITY)),
                Some(Clamp::bounds(-0.1, 0.2)),
                Some(Clamp::swish()),
            ];
            for (with_bias, clamp) in [false, true]
                .into_iter()
                .flat_map(|b| clamps.map(|c| (b, c)))
            {
                let (ldb, ldo) = (n + 3, n + 5);
                let mut a = lcg(1, m * k);
                if k > 0 && clamp.is_some() {
                    a[0] = f32::NAN;
                }
                let b = lcg(2, k.max(1) * ldb);
                let init = lcg(3, m * ldo);
                let bias = lcg(4, m);
                let mut out = init.clone();
                gemm_small_k(
                    m,
                    n,
                    k,
                    &a,
                    &b,
                    ldb,
                    &mut out,
                    ldo,
                    with_bias.then_some(&bias[..]),
                    clamp,
                );
                for i in 0..m {
                    for j in 0..ldo {
                        let got = out[i * ldo + j];
                        if j >= n {
                            assert_eq!(got, init[i * ldo + j], "padding column written");
                            continue;
                        }
                        let mut want = if with_bias { bias[i] as f64 } else { 0.0 };
                        for kk in 0..k {
                            want += a[i * k + kk] as f64 * b[kk * ldb + j] as f64;
                        }
                        if let Some(c) = clamp {
                            want = naive_act(c, want);
                        }
                        if i == 0 && k > 0 && clamp.is_some() {
                            assert!(got.is_nan(), "m{m} n{n} k{k} ({i},{j}): NaN lost");
                            continue;
                        }
                        assert!(
                            (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "m{m} n{n} k{k} bias {with_bias} {clamp:?} at ({i},{j}): {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
