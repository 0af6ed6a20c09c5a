//! Products `out[M, N] = A[M, K] · B[K, N]` whose B is a constant (a
//! layer's weights), the shape of every dense layer in a transformer.
//!
//! B is packed once, when the plan is built, into 16-column panels (`K x
//! 16` floats each, the last zero-padded), which is exactly what the
//! small-k micro-kernel ([`super::smallk::sweep`]) sweeps its register
//! tiles over (6x16, or 12x16 over two panels at once on AVX-512); A is
//! read in place, one
//! broadcast per row and k. The `gemm`
//! crate instead packs both operands on every call: on MiniLM's layers
//! (M = 128, K and N 384-1536) that packing and its dispatch were a fifth
//! of the matmul time (measured on this project's AVX2 EPYC VM, 1 thread,
//! MiniLM in `kiln profile`: 65 -> 72 GFLOP/s for the plain matmuls, 45 ->
//! 48 with the GELU epilogue; alone, 90-95 vs the crate's 88-93).
//!
//! Loops: k in blocks of at most [`KC`] (a 16 KiB panel block stays in L1
//! while every row block of A passes over it; later blocks add onto the
//! tile), then strips, then row blocks. Each sweep prefetches the panel
//! block it will sweep next: a layer's weights are read once per run, from
//! L3 or memory, and the hardware prefetchers ramp up anew on each 16 KiB
//! block (alone in a loop, where the weights stay cached, these products
//! ran at 105-115 GFLOP/s on Zen 4; inside MiniLM at 88-94 without the
//! prefetch, and the model ran 5 % faster with it). Work is cut into units
//! of (row chunk, strip chunk) whose output (at most [`UNIT_OUT_FLOATS`])
//! is still in L2 when the unit hands it to the fused epilogue.
//!
//! AVX2 + FMA only ([`super::smallk::available`]); plans keep the `gemm`
//! crate path otherwise.

use super::common::{for_each_unit, line_offset, Epilogue, PAR_FLOPS};
use super::smallk::{Clamp, Nonlinearity};
use super::weights::ConstWeights;

/// Largest block of k per pass over the panels: 256 x 16 floats = 16 KiB,
/// half of a 32 KiB L1 data cache, leaving room for A's rows.
pub(crate) const KC: usize = 256;

/// Output floats per work unit (256 KiB): a quarter of a 1 MiB L2.
const UNIT_OUT_FLOATS: usize = 1 << 16;

/// Bytes of B above which re-reading it per row chunk would stream it
/// from memory each time (past L2 and a share of L3).
const STREAMED_B_BYTES: usize = 4 << 20;

/// Bytes of A that stay in L2 while the strips sweep over them.
const RESIDENT_A_BYTES: usize = 512 << 10;

/// Columns per panel (the micro-kernel's tile width).
pub(crate) const NR: usize = 16;

/// Most strips one sweep takes ([`super::smallk::strips_per_tile`]).
pub(crate) const MAX_STRIPS: usize = 2;

/// What a product's tiles apply as they store it: a bias per column (`n`
/// floats, added as the first block of k starts: each row of a layer's
/// output gets the same vector) and an activation (as the last block is
/// stored). A transformer layer's `Gelu(x·W + b)` then costs no pass of
/// its own over the output.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TileStore<'a> {
    pub bias: Option<&'a [f32]>,
    pub clamp: Option<Clamp>,
}

/// The column bias and activation a plan over packed panels folds into
/// its tile store ([`TileStore`]): a `MatMul`'s or `Gemm`'s `Add` of a
/// layer bias and the activation after it.
#[derive(Debug, Clone, Default)]
pub struct FoldedStore {
    /// Columns of the product.
    n: usize,
    bias: Option<ConstWeights>,
    clamp: Option<Clamp>,
}

impl FoldedStore {
    pub(crate) fn new(n: usize) -> FoldedStore {
        FoldedStore {
            n,
            ..FoldedStore::default()
        }
    }

    /// Makes every output `product + bias[j]` for column j (`bias` holds
    /// n floats), added as the tiles start; returns whether it was taken
    /// (n floats, no bias or activation yet).
    pub fn fuse_bias(&mut self, bias: ConstWeights) -> bool {
        let ok = self.bias.is_none() && self.clamp.is_none() && bias.len() == self.n;
        if ok {
            self.bias = Some(bias);
        }
        ok
    }

    /// Applies `min(hi, max(lo, v))` (a Relu or constant Clip) to every
    /// output as the tiles store it; returns whether it was taken (no
    /// activation yet, ordered bounds).
    pub fn fuse_clamp(&mut self, lo: f32, hi: f32) -> bool {
        self.fuse(Clamp::bounds(lo, hi))
    }

    /// Applies `v · sigmoid(v)` (SiLU) as [`FoldedStore::fuse_clamp`]
    /// does its bounds.
    pub fn fuse_swish(&mut self) -> bool {
        self.fuse(Clamp::swish())
    }

    /// Applies HardSwish as [`FoldedStore::fuse_clamp`] does its bounds.
    pub fn fuse_hardswish(&mut self) -> bool {
        self.fuse(Clamp::unbounded(Nonlinearity::HardSwish))
    }

    /// Applies Gelu (erf form, or tanh form when `tanh`) as
    /// [`FoldedStore::fuse_clamp`] does its bounds.
    pub fn fuse_gelu(&mut self, tanh: bool) -> bool {
        self.fuse(Clamp::unbounded(if tanh {
            Nonlinearity::GeluTanh
        } else {
            Nonlinearity::Gelu
        }))
    }

    fn fuse(&mut self, c: Clamp) -> bool {
        let ok = self.clamp.is_none() && c.lo <= c.hi;
        if ok {
            self.clamp = Some(c);
        }
        ok
    }

    /// What the tiles apply.
    pub(crate) fn tile_store(&self) -> TileStore<'_> {
        TileStore {
            bias: self.bias.as_deref(),
            clamp: self.clamp,
        }
    }
}

/// A constant `K x N` right operand in 16-column panels.
#[derive(Debug, Clone)]
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    /// `[n.div_ceil(16)][k][16]` from `start` on, zero past column n.
    panels: Vec<f32>,
    /// Where the panels start in `panels`: on a 64-byte line, so that no
    /// tile's 512-bit panel load splits across two lines.
    start: usize,
}

impl PackedB {
    /// Packs the `k x n` matrix `b[i·rs + j·cs]`.
    ///
    /// Panics if the view does not fit `b`.
    pub(crate) fn new(k: usize, n: usize, b: &[f32], rs: usize, cs: usize) -> PackedB {
        assert!(
            k == 0 || n == 0 || (k - 1) * rs + (n - 1) * cs < b.len(),
            "PackedB: view out of bounds"
        );
        let strips = n.div_ceil(NR);
        let mut panels = vec![0.0f32; strips * k * NR + NR];
        let start = line_offset(&panels);
        let body = &mut panels[start..start + strips * k * NR];
        for (s, panel) in body.chunks_exact_mut((k * NR).max(1)).enumerate() {
            for (i, row) in panel.chunks_exact_mut(NR).enumerate() {
                for (jj, v) in row.iter_mut().enumerate() {
                    let j = s * NR + jj;
                    if j < n {
                        *v = b[i * rs + j * cs];
                    }
                }
            }
        }
        PackedB {
            k,
            n,
            panels,
            start,
        }
    }

    /// `(K, N)`.
    pub(crate) fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Whether the host can run [`PackedB::product`].
    pub(crate) fn available() -> bool {
        super::smallk::available()
    }

    /// `out[i·n + j] = Σ_kk a[i·lda + kk]·B[kk, j]` for `i < m`, `j < n`
    /// (out dense row-major), threaded over `threads` workers of the
    /// current pool; `epilogue` gets each finished range of `out`, once, on
    /// the thread that wrote it.
    ///
    /// Panics if a view does not fit its slice or the host lacks AVX2/FMA.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn product(
        &self,
        m: usize,
        a: &[f32],
        lda: usize,
        out: &mut [f32],
        threads: usize,
        epilogue: Option<&Epilogue>,
        store: TileStore,
    ) {
        product(self, m, a, lda, out, threads, epilogue, store);
    }
}

// SAFETY: `panels` holds `[strips][k][16]` floats, so every strip s <
// strips has its rows at `(s·k + k0)·16`; the panel is not written while
// the product runs.
unsafe impl Panels for PackedB {
    type Scratch = ();
    const UNPACKS: bool = false;

    fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    fn scratch(&self) {}

    unsafe fn panels(
        &self,
        s: usize,
        _count: usize,
        k0: usize,
        _kc: usize,
        _: &mut (),
    ) -> (*const f32, usize) {
        // SAFETY: in bounds by the caller's contract (s < strips, k0 < k);
        // strip s + i's rows are k·16 floats further on.
        let p = unsafe {
            self.panels
                .as_ptr()
                .add(self.start + (s * self.k + k0) * NR)
        };
        (p, self.k * NR)
    }

    fn prefetch(&self, s: usize, k0: usize) -> Option<*const f32> {
        Some(
            self.panels
                .as_ptr()
                .wrapping_add(self.start + (s * self.k + k0) * NR),
        )
    }
}

/// Where a product's right operand comes from: `K x N` as k x 16 panels
/// (the micro-kernel's layout), read in place ([`PackedB`]) or unpacked
/// on the fly into a scratch panel (the quantized weights of
/// [`super::dequant::QuantB`]). One loop structure ([`product`]) serves
/// both.
///
/// # Safety
/// [`Panels::panel`] must return `kc x 16` readable floats for every strip
/// `s < n.div_ceil(16)` and rows `k0..k0 + kc` within `k`.
pub(crate) unsafe trait Panels: Sync {
    /// What one work unit unpacks its panels into.
    type Scratch;
    /// Whether making a panel costs work (unpacking) that units over
    /// separate rows would each repeat: then every unit takes all rows.
    const UNPACKS: bool;
    /// `(k, n)`.
    fn dims(&self) -> (usize, usize);
    fn scratch(&self) -> Self::Scratch;
    /// Rows `k0..k0 + kc` (`kc <= KC`) of the panels of strips `s..s +
    /// count` (`count` at most [`MAX_STRIPS`]): `kc x 16` floats each,
    /// the first at the pointer, each next one the returned stride
    /// further on.
    ///
    /// # Safety
    /// `s + count <= n.div_ceil(16)`, `k0 + kc <= k`; the pointer is valid
    /// until `scratch` is next used.
    unsafe fn panels(
        &self,
        s: usize,
        count: usize,
        k0: usize,
        kc: usize,
        scratch: &mut Self::Scratch,
    ) -> (*const f32, usize);
    /// An address worth prefetching before the sweep of strip `s` at row
    /// `k0` (it need not be valid: prefetches do not fault).
    fn prefetch(&self, s: usize, k0: usize) -> Option<*const f32>;
}

/// `out[i·n + j] = Σ_kk a[i·lda + kk]·B[kk, j]` for `i < m`, `j < n` of
/// the panels `b` (out dense row-major), threaded over `threads` workers
/// of the current pool; `epilogue` gets each finished range of `out`,
/// once, on the thread that wrote it.
///
/// Panics if a view does not fit its slice, `store`'s bias is shorter
/// than n, or the host lacks AVX2/FMA.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product<P: Panels>(
    b: &P,
    m: usize,
    a: &[f32],
    lda: usize,
    out: &mut [f32],
    threads: usize,
    epilogue: Option<&Epilogue>,
    store: TileStore,
) {
    let (k, n) = b.dims();
    assert!(
        store.bias.is_none_or(|bias| bias.len() >= n),
        "PackedB: bias too short"
    );
    assert!(PackedB::available(), "PackedB: host lacks AVX2/FMA");
    assert!(out.len() >= m * n, "PackedB: out too short");
    assert!(
        m == 0 || k == 0 || (m - 1) * lda + k <= a.len(),
        "PackedB: a out of bounds"
    );
    if m == 0 || n == 0 {
        return;
    }
    let strips = n.div_ceil(NR);
    let flops = 2.0 * (m * n * k) as f64;
    let parallel = threads > 1 && flops >= PAR_FLOPS;
    let want = if parallel {
        threads * crate::cpu::UNITS_PER_THREAD
    } else {
        1
    };
    // A B beyond the caches streams from memory once per row chunk: when
    // it is that large and A small enough to stay in L2, every unit takes
    // all rows instead (LLaMA's LM head, [96, 512] x [512, 32000] with 65
    // MB of B, was cut into 16 row chunks: 1 GB read per run, 40 GFLOP/s).
    let b_streams = k * n * 4 > STREAMED_B_BYTES && m * k * 4 <= RESIDENT_A_BYTES;
    let (row_chunks, strip_chunks) = if !P::UNPACKS && (m >= 64 || m > n) && !b_streams {
        // Row chunks whose output fits the unit budget, rows split
        // evenly among them (chunks of 36, 36, 36 and 20 rows, whole
        // 6-row tiles, left one of two threads 16 rows behind on
        // MiniLM's 1536-wide layers).
        let row_target = (UNIT_OUT_FLOATS / (strips * NR)).max(6);
        let row_chunks = m.div_ceil(row_target);
        (row_chunks, want.div_ceil(row_chunks).clamp(1, strips))
    } else {
        // A few rows (a small conv map's positions) and many
        // columns: every unit takes all rows, so each panel of B (up
        // to 8 MB of weights, from memory) is read once, not once per
        // row chunk; chunks of strips keep the budget. (MiniLM's
        // M = 128 products ran 8 % slower cut this way.)
        let chunks = (m * n).div_ceil(UNIT_OUT_FLOATS).max(want);
        (1, chunks.clamp(1, strips))
    };
    let out_addr = out.as_mut_ptr().expose_provenance();
    let unit = |u: usize| {
        let (rc, sc) = (u / strip_chunks, u % strip_chunks);
        let (r0, r1) = (rc * m / row_chunks, (rc + 1) * m / row_chunks);
        let (s0, s1) = (sc * strips / strip_chunks, (sc + 1) * strips / strip_chunks);
        let out = std::ptr::with_exposed_provenance_mut::<f32>(out_addr);
        // SAFETY: rows r0..r1 of `a` (asserted to fit) and the panels
        // s0..s1 are in bounds; the unit writes only rows r0..r1 x columns
        // of strips s0..s1 of `out` (asserted to fit), which no other unit
        // touches, and `out` is mutably borrowed by this call, so it
        // overlaps neither input.
        unsafe { unit(b, r0, r1, s0, s1, a.as_ptr(), lda, out, store) };
        if let Some(epi) = epilogue {
            let (c0, c1) = (s0 * NR, (s1 * NR).min(n));
            if c0 == 0 && c1 == n {
                epi(out, r0 * n, r1 * n);
            } else {
                for r in r0..r1 {
                    epi(out, r * n + c0, r * n + c1);
                }
            }
        }
    };
    let units = row_chunks * strip_chunks;
    for_each_unit(parallel, units, unit);
}

/// Rows `r0..r1` x strips `s0..s1` of the product.
///
/// # Safety
/// AVX2/FMA present; rows r0..r1 of `a` hold k floats at stride `lda`;
/// `out` is valid for the dense `m x n` result and this view of it is
/// not accessed by anyone else during the call; `store`'s bias holds n
/// floats.
#[allow(clippy::too_many_arguments)]
unsafe fn unit<P: Panels>(
    b: &P,
    r0: usize,
    r1: usize,
    s0: usize,
    s1: usize,
    a: *const f32,
    lda: usize,
    out: *mut f32,
    store: TileStore,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::smallk::avx2::{tail_masks, Addend, Dest, Init};
        use super::smallk::sweep;
        let (k, n) = b.dims();
        let blocks = k.div_ceil(KC).max(1);
        let kc_even = k.div_ceil(blocks);
        let mut scratch = b.scratch();
        let per_sweep = super::smallk::strips_per_tile().min(MAX_STRIPS);
        for blk in 0..blocks {
            let k0 = blk * kc_even;
            let kc = kc_even.min(k - k0.min(k));
            let init = if blk == 0 { Init::Zero } else { Init::Load };
            let mut s = s0;
            while s < s1 {
                let count = per_sweep.min(s1 - s);
                // SAFETY: AVX2/FMA are present (the caller's contract;
                // `product` asserts it). s + count <= s1 <= strips and k0
                // + kc <= k, so the source gives kc x 16 floats per strip
                // (the `Panels` contract); `next` is only prefetched. Rows
                // r0..r1 of `a` hold k floats at stride lda (contract), of
                // which k0..k0 + kc are read; the sweep writes rows r0..r1
                // x the strips' columns (masked past n) of the dense m x n
                // `out`, which only this call touches and which overlaps
                // neither input.
                unsafe {
                    let panels = b.panels(s, count, k0, kc, &mut scratch);
                    let mut dests = [Dest {
                        out: std::ptr::null_mut(),
                        ld: 0,
                        masks: None,
                        add: None,
                    }; MAX_STRIPS];
                    for (i, dest) in dests[..count].iter_mut().enumerate() {
                        let len = (n - (s + i) * NR).min(NR);
                        let masks = (len < NR).then(|| tail_masks(len));
                        *dest = Dest {
                            out: out.add(r0 * n + (s + i) * NR),
                            ld: n,
                            masks,
                            // The column bias: the same 16 floats for
                            // every row (stride 0), masked past n.
                            add: store.bias.filter(|_| blk == 0).map(|bias| Addend {
                                src: bias.as_ptr().add((s + i) * NR),
                                ld: 0,
                                masks,
                            }),
                        };
                    }
                    // The panel after these: the next strip's, or the
                    // first strip's in the next block of k.
                    let next = if s + count < s1 {
                        b.prefetch(s + count, k0)
                    } else if blk + 1 < blocks {
                        b.prefetch(s0, k0 + kc)
                    } else {
                        None
                    };
                    sweep(
                        r1 - r0,
                        kc,
                        a.add(r0 * lda + k0),
                        lda,
                        panels,
                        &dests[..count],
                        init,
                        if blk + 1 == blocks { store.clamp } else { None },
                        next,
                    );
                }
                s += count;
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (b, r0, r1, s0, s1, a, lda, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::common::testing::{check, lcg};
    use std::sync::Mutex;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], lda: usize, b: &[f32]) -> Vec<f32> {
        let mut want = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for kk in 0..k {
                    s += a[i * lda + kk] as f64 * b[kk * n + j] as f64;
                }
                want[i * n + j] = s as f32;
            }
        }
        want
    }

    /// Odd sizes, column tails, several k blocks (k > KC), strided A, a B
    /// too large to re-read per row chunk, one and two threads; the
    /// epilogue sees every element once, finished.
    #[test]
    fn matches_naive_product_and_hands_over_each_element_once() {
        if !PackedB::available() {
            return;
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        for &(m, n, k) in &[
            (1, 1, 1),
            (1, 40, 300),
            (6, 16, 3),
            (7, 17, 5),
            (13, 33, 0),
            (128, 384, 384),
            (50, 1000, 600),
            (300, 70, 513),
            // A B past STREAMED_B_BYTES: every unit takes all rows.
            (64, 8200, 130),
        ] {
            for threads in [1, 2] {
                let lda = k + 3;
                let a = lcg(1, m * lda);
                let b = lcg(2, k * n);
                let packed = PackedB::new(k, n, &b, n, 1);
                let want = naive(m, n, k, &a, lda, &b);
                let mut out = vec![f32::NAN; m * n];
                // What the epilogue saw at hand-over, and how often.
                let seen = Mutex::new(vec![(0u8, f32::NAN); m * n]);
                let epi = |base: *mut f32, lo: usize, hi: usize| {
                    let mut seen = seen.lock().unwrap();
                    for (i, s) in seen[lo..hi].iter_mut().enumerate() {
                        // SAFETY: the product hands over in-bounds ranges.
                        *s = (s.0 + 1, unsafe { *base.add(lo + i) });
                    }
                };
                pool.install(|| {
                    packed.product(
                        m,
                        &a,
                        lda,
                        &mut out,
                        threads,
                        Some(&epi),
                        TileStore::default(),
                    )
                });
                let scale = vec![k as f32; m * n];
                let what = format!("m{m} n{n} k{k} t{threads}");
                check(&out, &want, &scale, &what);
                for (i, &(count, v)) in seen.into_inner().unwrap().iter().enumerate() {
                    assert_eq!(count, 1, "{what}: element {i} handed over {count} times");
                    assert_eq!(v, out[i], "{what}: element {i} handed over unfinished");
                }
            }
        }
    }
}
