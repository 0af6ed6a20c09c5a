//! Helpers every kernel file shares: the fused-epilogue type, the
//! per-thread scratch buffer, the conv spatial [`Axis`], the threading
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
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| s.set(buf));
    r
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
