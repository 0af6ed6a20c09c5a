//! Depthwise convs on 2-D maps too wide for the channels-in-lanes
//! path, with AVX-512 or AVX2: a plane at a time, its rows copied once
//! into padded, phase-split rows (the pads zero, so no stored output needs
//! a bounds check, and every tap of a stride-s conv reads a contiguous
//! run), then each output row summed in registers (four of 16 floats, or
//! eight of 8) over all its taps and stored once. One body serves both
//! widths through [`Lanes`].
//!
//! The row kernel (`rows.rs`, 8-wide) loads and stores its accumulator
//! once per kernel row and pays a call, a dispatch and a copy per output
//! row; on the 28-wide rows of mobile nets' stride-2 stages that made a
//! 3x3 conv run at 7 GFLOP/s (9.5 here); stride 1 gained as much. The row
//! kernel keeps maps barely taller than the kernel ([`applies`]). Quantized depthwise convs use this one too, reading their
//! bytes directly (`qconv.rs`).

use super::super::common::{with_scratch, Axis};

/// Output positions summed in registers at once: four vectors.
const BLOCK: usize = 64;
/// The widest kernel row this kernel takes.
const MAX_KW: usize = 16;

/// The geometry of one plane's padded, phase-split rows.
struct Layout {
    /// Padded rows.
    rows: usize,
    /// Phases per row (the W stride).
    phases: usize,
    /// Floats per phase: the padded columns of the phase, and room for
    /// the splitter's whole-vector stores past them (up to 16 floats). A
    /// block's loads past a phase read the next phase or row (lanes whose
    /// results are never kept), and the buffer ends in a block of slack.
    seg: usize,
}

impl Layout {
    fn new(h: &Axis, w: &Axis) -> Layout {
        let rows = h.padded_extent();
        let wp = w.padded_extent();
        let phases = w.stride;
        // Not a whole block of slack per row: that doubled a 56-wide
        // plane's rows, which then no longer fit L1 beside its input and
        // output.
        let seg = wp.div_ceil(phases) + 16;
        Layout { rows, phases, seg }
    }

    fn len(&self) -> usize {
        self.rows * self.phases * self.seg
    }
}

/// Whether this host and conv take the kernel: AVX-512 (F, BW, VL) or
/// AVX2 with FMA, a 2-D map with rows and columns, strided along W or at
/// least twice as tall as the kernel. At W stride 2 the row kernel is the
/// slower one (3x3 over 56x56: 7 against 9.5 GFLOP/s, and the quantized
/// form, reading bytes, 6.7 against 12 GOP/s). At stride 1 it lost too
/// once a stride-1 row is one copy instead of a gather (Zen 3, 1 thread:
/// 3x3 over 144x56x56 0.45 against 0.70-1.2 ms, over 96x112x112 1.2
/// against 2.0, 5x5 over 240x28x28 0.45 against 0.71-1.26), except on
/// maps barely taller than the kernel, where most taps read padding
/// (PP-OCR's 5x5 over 3x48 maps: 0.64 against 0.33 ms).
pub(crate) fn applies(axes: &[Axis; 3]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        axes[0].kernel == 1
            && axes[0].input == 1
            && (axes[2].stride >= 2 || axes[1].output >= 2 * axes[1].kernel)
            && axes[2].kernel <= MAX_KW
            && axes[1].input > 0
            && axes[2].input > 0
            && width().is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = axes;
        false
    }
}

/// The vector width this CPU runs the kernel at: 16 (AVX-512 F, BW, VL)
/// or 8 (AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
fn width() -> Option<usize> {
    use std::is_x86_feature_detected as has;
    if has!("avx512f") && has!("avx512bw") && has!("avx512vl") {
        Some(16)
    } else if has!("avx2") && has!("fma") {
        Some(8)
    } else {
        None
    }
}

/// An input plane: f32 values, or 8-bit ones whose zero point is taken
/// off as they are read (the exact-f32 path of quantized depthwise convs,
/// which so never writes an f32 copy of its input).
#[derive(Clone, Copy)]
pub(crate) enum Plane<'a> {
    F32(&'a [f32]),
    Bytes {
        x: &'a [u8],
        signed: bool,
        zero: i32,
    },
}

/// One input plane `x` ([H, W]) and the `mg` output planes it makes
/// (`out`, [mg, OH, OW]), with their kernels `w` ([mg, KH, KW]) and bias.
pub(crate) fn plane(axes: &[Axis; 3], x: Plane, w: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let (h, wa) = (&axes[1], &axes[2]);
    let lay = Layout::new(h, wa);
    // The rows, a block of slack for stores that run past the last
    // row's columns, then the converted input line.
    with_scratch(lay.len() + BLOCK + wa.input, |buf| {
        let (rows, line) = buf.split_at_mut(lay.len() + BLOCK);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `applies` checked the width's features; `rows` holds
        // the layout.
        unsafe {
            if width() == Some(16) {
                split_rows(h, wa, &lay, x, line, rows, split2_avx512);
                sum_rows_avx512(h, wa, &lay, rows, w, bias, out)
            } else {
                split_rows(h, wa, &lay, x, line, rows, split2_avx2);
                sum_rows_avx2(h, wa, &lay, rows, w, bias, out)
            }
        };
    });
}

/// The plane's padded, phase-split rows: padded column p of padded row r
/// at `rows[(r·phases + p % s)·seg + p / s]`, the pads zero. Past the
/// padded width a row holds anything: only lanes of positions past the
/// row's end read it, and those are never stored. `split2` is the
/// stride-2 splitter of the width that runs.
fn split_rows(
    h: &Axis,
    w: &Axis,
    lay: &Layout,
    x: Plane,
    line: &mut [f32],
    rows: &mut [f32],
    split2: Split2,
) {
    let s = lay.phases;
    let row_len = s * lay.seg;
    let (pl, wi) = (w.pad_begin, w.input);
    let wp = w.padded_extent();
    // Rows of padding: zero up to the padded width in each phase (what a
    // stored output reads).
    let zero_row = |row: &mut [f32]| {
        for ph in 0..s {
            row[ph * lay.seg..][..wp.div_ceil(s) + 1].fill(0.0);
        }
    };
    for r in 0..h.pad_begin {
        zero_row(&mut rows[r * row_len..]);
    }
    // Where each pad column lies in a row's phases, computed once: two
    // divisions per row were a tenth of a stride-2 3x3 conv.
    let pad_at: Vec<usize> = (0..pl)
        .chain(pl + wi..wp)
        .map(|p| (p % s) * lay.seg + p / s)
        .collect();
    // Stride 2 (the common one) splits and converts the plane's rows 16 or
    // 32 columns at a time in one call (a call per row, with its setup,
    // was a fifth of a small strided conv); other strides go a row at a
    // time through `line` and a gather per phase.
    if s == 2 {
        let dst = &mut rows[h.pad_begin * row_len..];
        // SAFETY: `applies` checked the features; the rows hold the
        // plane's columns.
        unsafe { split2(x, h.input, wi, pl, lay.seg, row_len, dst) };
    }
    for r in 0..h.input {
        let dst = &mut rows[(r + h.pad_begin) * row_len..];
        match (x, s) {
            (_, 2) => {}
            (x, _) => {
                let src: &[f32] = match x {
                    Plane::F32(x) => &x[r * wi..(r + 1) * wi],
                    Plane::Bytes { x, signed, zero } => {
                        bytes_to_f32(&x[r * wi..(r + 1) * wi], signed, zero, line);
                        line
                    }
                };
                if s == 1 {
                    // One phase: the row itself, after the left pad.
                    dst[pl..pl + wi].copy_from_slice(src);
                }
                // Phase ph holds padded columns ph, ph + s, ...: the
                // input columns from the first at or after the left pad,
                // every s-th.
                for ph in (0..s).filter(|_| s > 1) {
                    let first = (pl + s - 1 - ph) / s * s + ph;
                    let Some(from) = first.checked_sub(pl) else {
                        continue;
                    };
                    let seg = &mut dst[ph * lay.seg + first / s..(ph + 1) * lay.seg];
                    for (d, &v) in seg.iter_mut().zip(src.iter().skip(from).step_by(s)) {
                        *d = v;
                    }
                }
            }
        }
        // The pad columns, left and right, after the data: its stores
        // may run past the row's columns.
        for &at in &pad_at {
            dst[at] = 0.0;
        }
    }
    // Rows of padding below, after the last row's stores ran into them.
    for r in h.pad_begin + h.input..lay.rows {
        zero_row(&mut rows[r * row_len..]);
    }
}

crate::cpu::simd_fn! {
    /// `dst = x - zero` of 8-bit values, as f32.
    pub(crate) fn bytes_to_f32(src: &[u8], signed: bool, zero: i32, dst: &mut [f32]) {
        if signed {
            for (d, &b) in dst.iter_mut().zip(src) {
                *d = (b as i8 as i32 - zero) as f32;
            }
        } else {
            for (d, &b) in dst.iter_mut().zip(src) {
                *d = (b as i32 - zero) as f32;
            }
        }
    }
}

/// The plane's rows split by stride 2: `(x, rows, width, left pad, seg,
/// row_len, dst)`, `dst` from the first data row on.
type Split2 = unsafe fn(Plane, usize, usize, usize, usize, usize, &mut [f32]);

/// The rows of [`split_rows`] at stride 2, each by `row` (inlined: same
/// features).
macro_rules! split2_rows {
    ($name:ident, $row:ident, $features:literal) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        unsafe fn $name(
            x: Plane,
            rows: usize,
            wi: usize,
            pl: usize,
            seg: usize,
            row_len: usize,
            dst: &mut [f32],
        ) {
            for r in 0..rows {
                // SAFETY: this function's features; row r's phases.
                unsafe { $row(x, r * wi, wi, pl, seg, &mut dst[r * row_len..]) };
            }
        }
    };
}

split2_rows!(
    split2_avx512,
    split2_row_avx512,
    "avx512f,avx512bw,avx512vl"
);
split2_rows!(split2_avx2, split2_row_avx2, "avx2,fma");

/// Columns `at..at + n` of the plane (a row) into their phases (stride 2),
/// 32 columns per two permutes: input column c is padded column c + pl,
/// so the even columns go to phase pl % 2 from index pl / 2, the odd ones
/// to the other phase from (pl + 1) / 2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn split2_row_avx512(x: Plane, at: usize, n: usize, pl: usize, seg: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let even_at = (pl % 2) * seg + pl / 2;
    let odd_at = ((pl + 1) % 2) * seg + pl.div_ceil(2);
    let ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    assert!(dst.len() >= 2 * seg, "split2: a row's phases");
    for c in (0..n).step_by(32) {
        let left = n - c;
        let (m0, m1) = (left.min(16), left.saturating_sub(16).min(16));
        // Sixteen columns from c and from c + 16, zeros past the row; in
        // this function's body, not a helper's: a non-inlined helper
        // returned its vector through the stack (closures and callees do
        // not inherit target features).
        let (a, b) = match x {
            // SAFETY: masked loads of the row's columns.
            Plane::F32(x) => unsafe {
                let p = x.as_ptr().add(at + c);
                (
                    _mm512_maskz_loadu_ps(((1u32 << m0) - 1) as u16, p),
                    _mm512_maskz_loadu_ps(((1u32 << m1) - 1) as u16, p.add(16)),
                )
            },
            Plane::Bytes { x, signed, zero } => {
                // SAFETY: masked loads of the row's bytes (a tail copied
                // to the stack was reloaded before its stores retired).
                let (lo, hi) = unsafe {
                    let p = x.as_ptr().add(at + c);
                    (
                        _mm_maskz_loadu_epi8(((1u32 << m0) - 1) as u16, p as *const i8),
                        _mm_maskz_loadu_epi8(((1u32 << m1) - 1) as u16, p.add(16) as *const i8),
                    )
                };
                let (lo, hi) = if signed {
                    (_mm512_cvtepi8_epi32(lo), _mm512_cvtepi8_epi32(hi))
                } else {
                    (_mm512_cvtepu8_epi32(lo), _mm512_cvtepu8_epi32(hi))
                };
                let z = _mm512_set1_epi32(zero);
                (
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(lo, z)),
                    _mm512_cvtepi32_ps(_mm512_sub_epi32(hi, z)),
                )
            }
        };
        // SAFETY: the stores write 16 floats from column c/2 of each
        // phase: past the row's last column they write garbage into the
        // phase's slack (a block, more than 16) or, for the last phase,
        // into the next row (split later) or the slack after the rows
        // (`plane`); the caller zeros the pads after. Unmasked on purpose:
        // masked stores are microcoded on AMD cores.
        unsafe {
            _mm512_storeu_ps(
                dst.as_mut_ptr().add(even_at + c / 2),
                _mm512_permutex2var_ps(a, ie, b),
            );
            _mm512_storeu_ps(
                dst.as_mut_ptr().add(odd_at + c / 2),
                _mm512_permutex2var_ps(a, io, b),
            );
        }
    }
}

/// [`split2_row_avx512`] on AVX2: 16 columns per step, split by two
/// in-lane shuffles and a cross-lane permute. A row's last partial step
/// reads on into the next row (lanes past the row's end are never
/// stored; the caller zeros the pad columns after), and through a copy
/// only at the end of the plane: AVX2 has no masked byte loads, and a
/// copy per row, reloaded at once, stalled on store forwarding (half the
/// conv's time).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn split2_row_avx2(x: Plane, at: usize, n: usize, pl: usize, seg: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let even_at = (pl % 2) * seg + pl / 2;
    let odd_at = ((pl + 1) % 2) * seg + pl.div_ceil(2);
    assert!(dst.len() >= 2 * seg, "split2: a row's phases");
    // Once per row: zeroing them per step cost a stack store a step.
    let (mut tail_f32, mut tail_u8) = ([0f32; 16], [0u8; 16]);
    for c in (0..n).step_by(16) {
        let left = (n - c).min(16);
        let (a, b) = match x {
            Plane::F32(x) => {
                let tail = &mut tail_f32;
                let src = if at + c + 16 <= x.len() {
                    &x[at + c..at + c + 16]
                } else {
                    tail[..left].copy_from_slice(&x[at + c..at + n]);
                    &tail[..]
                };
                // SAFETY: 16 floats at src.
                unsafe {
                    (
                        _mm256_loadu_ps(src.as_ptr()),
                        _mm256_loadu_ps(src.as_ptr().add(8)),
                    )
                }
            }
            Plane::Bytes { x, signed, zero } => {
                let tail = &mut tail_u8;
                let src = if at + c + 16 <= x.len() {
                    &x[at + c..at + c + 16]
                } else {
                    tail[..left].copy_from_slice(&x[at + c..at + n]);
                    &tail[..]
                };
                // SAFETY: 16 bytes at src.
                let v = unsafe { _mm_loadu_si128(src.as_ptr() as *const __m128i) };
                let (lo, hi) = if signed {
                    (
                        _mm256_cvtepi8_epi32(v),
                        _mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)),
                    )
                } else {
                    (
                        _mm256_cvtepu8_epi32(v),
                        _mm256_cvtepu8_epi32(_mm_srli_si128(v, 8)),
                    )
                };
                let z = _mm256_set1_epi32(zero);
                (
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(lo, z)),
                    _mm256_cvtepi32_ps(_mm256_sub_epi32(hi, z)),
                )
            }
        };
        // [a0 a2 b0 b2 | a4 a6 b4 b6] → [a0 a2 a4 a6 b0 b2 b4 b6]; odd alike.
        let order =
            |v: __m256| _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(v), 0b11_01_10_00));
        let even = order(_mm256_shuffle_ps(a, b, 0b10_00_10_00));
        let odd = order(_mm256_shuffle_ps(a, b, 0b11_01_11_01));
        // SAFETY: as in `split2_row_avx512`: 8 floats from column c/2 of each
        // phase, past the row's end into slack the caller provides.
        unsafe {
            _mm256_storeu_ps(dst.as_mut_ptr().add(even_at + c / 2), even);
            _mm256_storeu_ps(dst.as_mut_ptr().add(odd_at + c / 2), odd);
        }
    }
}

/// The vector operations the row sums need, at one width; implemented
/// with AVX-512 and AVX2 intrinsics and always inlined into the
/// `target_feature` function of that width, so one body serves both.
trait Lanes {
    const N: usize;
    type V: Copy;
    unsafe fn splat(x: f32) -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
}

/// A [`Lanes`] width from its intrinsics, and the `target_feature`
/// entry point that runs [`sum_rows`] at it.
macro_rules! width {
    ($name:ident, $entry:ident, $features:literal, $n:literal, $v:ident,
     $splat:ident, $load:ident, $store:ident, $fmadd:ident) => {
        #[cfg(target_arch = "x86_64")]
        struct $name;

        #[cfg(target_arch = "x86_64")]
        impl Lanes for $name {
            const N: usize = $n;
            type V = std::arch::x86_64::$v;
            #[inline(always)]
            unsafe fn splat(x: f32) -> Self::V {
                // SAFETY: the caller's features.
                unsafe { std::arch::x86_64::$splat(x) }
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self::V {
                // SAFETY: the caller's features and pointer.
                unsafe { std::arch::x86_64::$load(p) }
            }
            #[inline(always)]
            unsafe fn store(p: *mut f32, v: Self::V) {
                // SAFETY: the caller's features and pointer.
                unsafe { std::arch::x86_64::$store(p, v) }
            }
            #[inline(always)]
            unsafe fn fmadd(a: Self::V, b: Self::V, c: Self::V) -> Self::V {
                // SAFETY: the caller's features.
                unsafe { std::arch::x86_64::$fmadd(a, b, c) }
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $entry(
            h: &Axis,
            w: &Axis,
            lay: &Layout,
            rows: &[f32],
            wts: &[f32],
            bias: Option<&[f32]>,
            out: &mut [f32],
        ) {
            // SAFETY: this function's features.
            unsafe { sum_rows::<$name>(h, w, lay, rows, wts, bias, out) }
        }
    };
}

width!(
    Avx512,
    sum_rows_avx512,
    "avx512f",
    16,
    __m512,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps
);
width!(
    Avx2,
    sum_rows_avx2,
    "avx2,fma",
    8,
    __m256,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps
);

/// Every output row of every output plane, in blocks of up to [`BLOCK`]
/// positions held in registers over all the taps; inlined into the
/// `target_feature` function of its width.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn sum_rows<L: Lanes>(
    h: &Axis,
    w: &Axis,
    lay: &Layout,
    rows: &[f32],
    wts: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let (kh, kw) = (h.kernel, w.kernel);
    let (oh, ow) = (h.output, w.output);
    let planes = out.len() / (oh * ow);
    let row_len = lay.phases * lay.seg;
    // Each tap's offset from a block's first position in its padded row.
    let mut offsets = [0usize; MAX_KW];
    for (j, o) in offsets.iter_mut().enumerate().take(kw) {
        let p = j * w.dilation;
        *o = (p % lay.phases) * lay.seg + p / lay.phases;
    }
    let taps = &offsets[..kw];
    for m in 0..planes {
        let b = bias.map_or(0.0, |b| b[m]);
        let wm = &wts[m * kh * kw..][..kh * kw];
        for y in 0..oh {
            let first = y * h.stride * row_len;
            let block = Block {
                rows: &rows[first..],
                row_step: h.dilation * row_len,
                taps,
                wts: wm,
                bias: b,
            };
            for x0 in (0..ow).step_by(BLOCK) {
                let n = BLOCK.min(ow - x0);
                // The rest of the output from this block on: a block's
                // last vector may write past it into positions computed
                // later (rows and planes go in order).
                let dst = &mut out[(m * oh + y) * ow + x0..];
                // SAFETY: the caller's features; the block reads inside
                // the layout.
                unsafe {
                    match n.div_ceil(L::N) {
                        1 => block.sum::<L, 1>(x0, n, dst),
                        2 => block.sum::<L, 2>(x0, n, dst),
                        3 => block.sum::<L, 3>(x0, n, dst),
                        4 => block.sum::<L, 4>(x0, n, dst),
                        5 => block.sum::<L, 5>(x0, n, dst),
                        6 => block.sum::<L, 6>(x0, n, dst),
                        7 => block.sum::<L, 7>(x0, n, dst),
                        _ => block.sum::<L, 8>(x0, n, dst),
                    }
                }
            }
        }
    }
}

/// One output row's inputs: its first padded row, the distance between
/// the rows its kernel rows read, the W taps' offsets, the kernel, the
/// bias.
struct Block<'a> {
    rows: &'a [f32],
    row_step: usize,
    taps: &'a [usize],
    wts: &'a [f32],
    bias: f32,
}

impl Block<'_> {
    /// Positions `x0..x0 + n` (n at most N·NV) of the row, summed in NV
    /// registers over every tap, then stored at the start of `dst`. The
    /// last vector is stored whole where `dst` has room (what it writes
    /// past n is overwritten later), through a copy only at `dst`'s end:
    /// masked stores are microcoded on AMD cores. (Unrolling the tap loop
    /// for 3- and 5-wide kernels let LLVM sum one vector's taps before the
    /// next's: one dependent chain, 40 % slower.)
    #[inline(always)]
    unsafe fn sum<L: Lanes, const NV: usize>(&self, x0: usize, n: usize, dst: &mut [f32]) {
        let kw = self.taps.len();
        let reach = self.taps.iter().max().copied().unwrap_or(0) + x0 + L::N * NV;
        // SAFETY: the caller's features (so for every intrinsic below).
        let mut acc = [unsafe { L::splat(self.bias) }; NV];
        for (i, wr) in self.wts.chunks_exact(kw).enumerate() {
            let row = &self.rows[i * self.row_step..];
            // One check per kernel row for all its taps' loads.
            assert!(
                row.len() >= reach,
                "plane kernel: a tap reads past the rows"
            );
            let base = row.as_ptr().wrapping_add(x0);
            for (&t, &wt) in self.taps[..kw].iter().zip(&wr[..kw]) {
                // SAFETY: as above.
                let wv = unsafe { L::splat(wt) };
                for (v, a) in acc.iter_mut().enumerate() {
                    // SAFETY: t + x0 + N·NV <= reach <= row.len().
                    *a = unsafe { L::fmadd(wv, L::load(base.add(t + L::N * v)), *a) };
                }
            }
        }
        for (v, &a) in acc.iter().enumerate() {
            let at = L::N * v;
            if at + L::N <= dst.len() {
                // SAFETY: dst[at..at + N] is inside dst.
                unsafe { L::store(dst.as_mut_ptr().add(at), a) };
            } else {
                let mut tail = [0f32; 16];
                // SAFETY: N <= 16 floats into `tail`.
                unsafe { L::store(tail.as_mut_ptr(), a) };
                dst[at..n].copy_from_slice(&tail[..n - at]);
            }
        }
    }
}
