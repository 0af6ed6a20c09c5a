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
//! needs a scalar loop.
//!
//! AVX2 + FMA only; [`available`] says whether the host has them and the
//! caller keeps the `gemm` crate path otherwise.

/// Largest inner dimension this kernel is used for: up to here it measured
/// ahead of the `gemm` crate or even with it. k = 576 (3x3 convs over 64
/// channels: ResNet-50's first stage, SqueezeNet's last fires) is
/// included since it also takes the fused Relu: on an AVX2 EPYC, ResNet's
/// 3x3 64->64 at 56x56 ran min 3.3 vs 3.4 ms on 1 thread, 1.9-2.1 vs
/// 2.2-2.3 ms on 2. Beyond, the two were even within noise (k up to 4608,
/// on Zen 4) and the crate, which blocks k for the caches, is kept.
pub(crate) const MAX_K: usize = 576;

/// Bounds applied to each output element as it is stored (a fused Relu is
/// `[0, inf)`): `min(hi, max(lo, v))`, NaN kept. Clamping in the tile
/// saves the separate pass over the output a Relu epilogue would make.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Clamp {
    pub lo: f32,
    pub hi: f32,
}

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

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    use std::arch::x86_64::*;

    use super::Clamp;

    pub(in crate::cpu::kernels) const MR: usize = 6;
    pub(in crate::cpu::kernels) const NR: usize = 16;

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
            // SAFETY: row kk of the strip is b[kk*ldb + j .. + len], inside
            // the view; the panel holds k*NR floats.
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
                let (ap, op) = (a.add(i * k), out.add(i * ldo + j));
                let init = bias.map_or(Init::Zero, |b| Init::Bias(b.add(i)));
                // SAFETY: as for `run`; rows i..i+rows and columns
                // j..j+len are inside the views.
                unsafe { tile_rows(rows, k, ap, k, pp, op, ldo, init, masks, clamp) };
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
    }

    /// Rows `0..m` over the panels of one or more strips, 6-row tile by
    /// tile, strips inner (a block's k floats per row stay in L1 across
    /// the strips): strip s's panel is at `panels.0 + s · panels.1`, its
    /// tile goes to `dests[s]`, `out[r·ld + j] = init + Σ_kk a[r·lda + kk]
    /// · panel[kk·16 + j]`. A function of its own with the tile inlined:
    /// callers without AVX2 enabled would otherwise call the tile out of
    /// line, with its arguments in memory (5-8 % of a k = 64 product).
    ///
    /// # Safety
    /// As for [`tile`], for each 6-row block and strip (`Init::Bias`
    /// points at m floats).
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
    ) {
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(MR);
            let init = match init {
                // SAFETY: rows i..i+rows of the bias exist.
                Init::Bias(b) => Init::Bias(unsafe { b.add(i) }),
                other => other,
            };
            for (s, d) in dests.iter().enumerate() {
                // SAFETY: forwarded contract, rows i..i+rows of strip s.
                unsafe {
                    tile_rows(
                        rows,
                        k,
                        a.add(i * lda),
                        lda,
                        panels.0.add(s * panels.1),
                        d.out.add(i * d.ld),
                        d.ld,
                        init,
                        d.masks,
                        clamp,
                    )
                };
            }
            i += rows;
        }
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
        masks: Option<(__m256i, __m256i)>,
        clamp: Option<Clamp>,
    ) {
        // SAFETY: forwarded contract.
        unsafe {
            match rows {
                6 => tile::<6>(k, a, lda, panel, out, ldo, init, masks, clamp),
                5 => tile::<5>(k, a, lda, panel, out, ldo, init, masks, clamp),
                4 => tile::<4>(k, a, lda, panel, out, ldo, init, masks, clamp),
                3 => tile::<3>(k, a, lda, panel, out, ldo, init, masks, clamp),
                2 => tile::<2>(k, a, lda, panel, out, ldo, init, masks, clamp),
                _ => tile::<1>(k, a, lda, panel, out, ldo, init, masks, clamp),
            }
        }
    }

    /// One `R x 16` output tile, `out[r][j] = init + Σ_kk a[r·lda + kk] ·
    /// panel[kk·16 + j]`, from a dense k x 16 panel, clamped on the way
    /// out when `clamp` is given; loads and stores are masked to the
    /// tail's columns when `masks` is given.
    ///
    /// # Safety
    /// Rows `0..R` of `a` (k floats each, stride `lda`) and of `out` (the
    /// tile's columns, stride `ldo`) are valid, `out` for writes and
    /// overlapping neither input; `panel` holds k x 16 floats; `Init::Bias`
    /// points at R floats.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile<const R: usize>(
        k: usize,
        a: *const f32,
        lda: usize,
        panel: *const f32,
        out: *mut f32,
        ldo: usize,
        init: Init,
        masks: Option<(__m256i, __m256i)>,
        clamp: Option<Clamp>,
    ) {
        // SAFETY (whole body): every pointer offset stays inside the
        // views the caller vouches for; masked lanes are not accessed.
        unsafe {
            let mut c = [[_mm256_setzero_ps(); 2]; R];
            match init {
                Init::Zero => {}
                Init::Bias(bias) => {
                    for (r, cr) in c.iter_mut().enumerate() {
                        let v = _mm256_broadcast_ss(&*bias.add(r));
                        *cr = [v, v];
                    }
                }
                Init::Load => {
                    for (r, cr) in c.iter_mut().enumerate() {
                        let p = out.add(r * ldo);
                        *cr = match masks {
                            Some((ml, mh)) => {
                                [_mm256_maskload_ps(p, ml), _mm256_maskload_ps(p.add(8), mh)]
                            }
                            None => [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))],
                        };
                    }
                }
            }
            for kk in 0..k {
                let b0 = _mm256_loadu_ps(panel.add(kk * NR));
                let b1 = _mm256_loadu_ps(panel.add(kk * NR + 8));
                for (r, cr) in c.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*a.add(r * lda + kk));
                    cr[0] = _mm256_fmadd_ps(av, b0, cr[0]);
                    cr[1] = _mm256_fmadd_ps(av, b1, cr[1]);
                }
            }
            if let Some(Clamp { lo, hi }) = clamp {
                // max(lo, v) and min(hi, v) return v when it is NaN.
                let (lo, hi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
                for cr in c.iter_mut() {
                    for v in cr.iter_mut() {
                        *v = _mm256_min_ps(hi, _mm256_max_ps(lo, *v));
                    }
                }
            }
            for (r, cr) in c.iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::matmul::tests::lcg;

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
                Some(Clamp {
                    lo: 0.0,
                    hi: f32::INFINITY,
                }),
                Some(Clamp { lo: -0.1, hi: 0.2 }),
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
                            want = want.max(c.lo as f64).min(c.hi as f64);
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
