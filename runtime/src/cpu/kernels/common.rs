//! Helpers every kernel file shares: the fused-epilogue type, the
//! per-thread scratch buffer, the conv spatial [`Axis`], the 8x8-block
//! transpose (direct convs and the transposed product), the threading
//! threshold and work-unit runner, and (in tests) the LCG data and
//! tolerance check.
//!
//! They live here, below all kernels, so that the kernel files form a
//! chain rather than a circle: each kernel imports shared helpers from
//! `common` and may use a lower-level kernel (conv uses implicit, packed,
//! smallk and rows; matmul uses packed), but no lower kernel imports back.

use std::cell::Cell;

use gemm::Parallelism;

/// Below this many flops a product runs single-threaded: forking rayon
/// tasks costs a few microseconds, which is all a small product takes.
pub(crate) const PAR_FLOPS: f64 = 2.0e6;

/// How to thread one gemm call of `flops` work given `threads` workers.
pub(crate) fn parallelism(threads: usize, flops: f64) -> Parallelism {
    if threads > 1 && flops >= PAR_FLOPS {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// Runs `unit(0..units)`: on the current rayon pool when `parallel` and
/// there is more than one, else in order on this thread.
pub(crate) fn for_each_unit(parallel: bool, units: usize, unit: impl Fn(usize) + Sync + Send) {
    use rayon::prelude::*;
    if parallel && units > 1 {
        (0..units).into_par_iter().for_each(unit);
    } else {
        (0..units).for_each(unit);
    }
}

/// `dst[j·dst_ld + i] = src[i·src_ld + j]` for `i < rows`, `j < cols`:
/// 8x8 blocks through registers (the scalar loop's strided stores were a
/// third of a small depthwise conv), the edges one by one. `AVX` (the
/// callers compiled for AVX2) shuffles each block in eight ymm registers;
/// left to LLVM the block was 64 scalar loads and stores, 40 % of a 5x5
/// conv over 14x14 maps.
#[inline(always)]
pub(super) fn transpose<const AVX: bool>(
    src: &[f32],
    src_ld: usize,
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    dst_ld: usize,
) {
    let (r8, c8) = (rows / 8 * 8, cols / 8 * 8);
    for i0 in (0..r8).step_by(8) {
        for j0 in (0..c8).step_by(8) {
            #[cfg(target_arch = "x86_64")]
            if AVX {
                assert!((i0 + 7) * src_ld + j0 + 8 <= src.len());
                assert!((j0 + 7) * dst_ld + i0 + 8 <= dst.len());
                // SAFETY: the block's rows lie inside both slices
                // (asserted); callers with AVX set run with AVX2 enabled.
                unsafe {
                    transpose8_avx(
                        src.as_ptr().add(i0 * src_ld + j0),
                        src_ld,
                        dst.as_mut_ptr().add(j0 * dst_ld + i0),
                        dst_ld,
                    )
                };
                continue;
            }
            let mut b = [[0f32; 8]; 8];
            for (i, row) in b.iter_mut().enumerate() {
                row.copy_from_slice(&src[(i0 + i) * src_ld + j0..][..8]);
            }
            for j in 0..8 {
                let d = &mut dst[(j0 + j) * dst_ld + i0..][..8];
                for i in 0..8 {
                    d[i] = b[i][j];
                }
            }
        }
    }
    for i in 0..rows {
        let tail = if i < r8 { c8 } else { 0 };
        for j in tail..cols {
            dst[j * dst_ld + i] = src[i * src_ld + j];
        }
    }
}

/// One 8x8 block transposed in registers: unpacks of row pairs, 64-bit
/// shuffles, then 128-bit lane swaps.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose8_avx(src: *const f32, src_ld: usize, dst: *mut f32, dst_ld: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's: eight rows of eight at both ends, AVX2 on.
    unsafe {
        let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_ld)));
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let out = [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ];
        for (j, &o) in out.iter().enumerate() {
            _mm256_storeu_ps(dst.add(j * dst_ld), o);
        }
    }
}

/// [`transpose`] on whatever this CPU has: 8x8 register blocks with
/// AVX2, else the portable loop.
pub(crate) fn transpose_any(
    src: &[f32],
    src_ld: usize,
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    dst_ld: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        fn avx2(
            src: &[f32],
            src_ld: usize,
            rows: usize,
            cols: usize,
            dst: &mut [f32],
            dst_ld: usize,
        ) {
            transpose::<true>(src, src_ld, rows, cols, dst, dst_ld)
        }
        // SAFETY: the CPU has AVX2.
        unsafe { avx2(src, src_ld, rows, cols, dst, dst_ld) };
        return;
    }
    transpose::<false>(src, src_ld, rows, cols, dst, dst_ld)
}

/// A fused epilogue: `(out, lo, hi)` with `out` the base of the kernel's
/// output (valid for all of it) and `lo..hi` the flat range just finished.
pub type Epilogue<'a> = dyn Fn(*mut f32, usize, usize) + Sync + 'a;

thread_local! {
    /// Per-thread im2col buffer, reused across calls so a steady-state run
    /// does not allocate (it keeps the largest size seen on that thread).
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch. The buffer is taken
/// out of the thread-local for the duration, so a re-entrant call (rayon can
/// run another task on this thread while a threaded gemm waits) simply
/// allocates its own instead of aliasing ours.
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(Cell::take);
    let r = f(line_aligned(&mut buf, len));
    SCRATCH.with(|s| s.set(buf));
    r
}

/// Floats in a 64-byte cache line.
const LINE_FLOATS: usize = 16;

/// `len` floats of `buf` (grown as needed, by a line of slack) starting
/// on a 64-byte cache line. The allocator places a buffer 16 bytes into a
/// line, so without this three of four 512-bit loads from it split
/// across two lines: the depthwise lanes kernel, which loads one and a
/// half vectors per FMA, ran at half its speed.
pub(super) fn line_aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len + LINE_FLOATS {
        buf.resize(len + LINE_FLOATS, 0.0);
    }
    let off = line_offset(buf);
    &mut buf[off..off + len]
}

/// Floats from the start of `buf` to its first 64-byte line boundary
/// (under 16): where a buffer with a line of slack starts its contents.
pub(super) fn line_offset(buf: &[f32]) -> usize {
    buf.as_ptr()
        .align_offset(LINE_FLOATS * 4)
        .min(LINE_FLOATS - 1)
}

/// One spatial axis of a conv, after normalisation to 3 axes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Axis {
    pub input: usize,
    pub kernel: usize,
    pub stride: usize,
    pub dilation: usize,
    pub pad_begin: usize,
    pub output: usize,
}

impl Axis {
    pub(super) const UNIT: Axis = Axis {
        input: 1,
        kernel: 1,
        stride: 1,
        dilation: 1,
        pad_begin: 0,
        output: 1,
    };

    /// Output positions `[lo, hi)` whose input index `o*stride + off` lies
    /// in `[0, input)`, where `off = k*dilation - pad_begin` for tap `k`.
    #[inline]
    pub(crate) fn valid_range(&self, k: usize) -> (usize, usize, isize) {
        let off = (k * self.dilation) as isize - self.pad_begin as isize;
        let s = self.stride as isize;
        let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
        let room = self.input as isize - off;
        let hi = if room <= 0 { 0 } else { (room + s - 1) / s };
        let hi = (hi as usize).min(self.output);
        let lo = (lo as usize).min(hi);
        (lo, hi, off)
    }

    /// The padded length every tap of every output reads: the last
    /// output's last tap, or the input after the leading pad if longer.
    pub(crate) fn padded_extent(&self) -> usize {
        ((self.output - 1) * self.stride + (self.kernel - 1) * self.dilation + 1)
            .max(self.pad_begin + self.input)
    }

    /// Input index of output `o`, tap `k`, or None when it lands in padding.
    #[inline]
    pub(super) fn input_index(&self, o: usize, k: usize) -> Option<usize> {
        let i = (o * self.stride + k * self.dilation).checked_sub(self.pad_begin)?;
        (i < self.input).then_some(i)
    }
}

/// Test data and tolerance shared by the kernels' unit tests.
#[cfg(test)]
pub(super) mod testing {
    /// Deterministic data in [-1, 1).
    pub(crate) fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Checks `got` against `want`, where `scale[i]` is the sum of |terms|
    /// that made up `want[i]`.
    pub(crate) fn check(got: &[f32], want: &[f32], scale: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for i in 0..got.len() {
            let tol = 1e-4 * scale[i].max(1e-6);
            // Equal infinities (all-padding max windows) and NaNs (0/0
            // averages) match exactly; everything else within tolerance.
            let same = got[i] == want[i] || (got[i].is_nan() && want[i].is_nan());
            assert!(
                same || (got[i] - want[i]).abs() <= tol,
                "{what}: at {i}: got {} want {} (tol {tol})",
                got[i],
                want[i]
            );
        }
    }
}
