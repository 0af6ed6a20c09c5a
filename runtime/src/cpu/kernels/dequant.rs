//! Weight-only quantized products, `Y = A · dequantize(W)` (Kiln's
//! `kiln.DequantMatMul`): A in f32, the constant `K x N` weights kept as
//! 8- or 4-bit integers with f32 scales and zero points per tensor, per
//! column or per block of rows (MatMulNBits, blocked int4
//! `DequantizeLinear`, `Cast(int8) * scale`).
//!
//! The weights are laid out like [`super::packed::PackedB`]'s panels (16
//! columns per strip, k rows each), but as bytes: 16 per row at 8 bits,
//! 8 at 4 bits (byte c holds column c in its low nibble and c + 8 in its
//! high one, so unpacking is two shifts and no shuffles). Each work unit
//! unpacks a `kc x 16` block of a strip into an L1 scratch panel just
//! before the f32 micro-kernel sweeps it (the loop of
//! [`super::packed::product`]), so weights cross memory at their packed
//! size, which is what bounds a batch-1 product (a GEMV reads every weight
//! once); with many rows the unpacking is shared by all of them.
//!
//! Unpacking computes `q · scale - zero · scale` as one FMA per weight
//! (`zero · scale` is loop-invariant): exactly DequantizeLinear's `(q -
//! zero) · scale` when the zero point is 0, as symmetric weight
//! quantizers write it, within an ulp of it otherwise. (The two-operation
//! form left the unpacking a fifth of a MiniLM layer's time, and the
//! weight-only layers 15-20 % slower than their f32 originals; with the
//! FMA they are 5 % faster.) The sums then round like the f32 MatMul's.

use super::common::{for_each_unit, line_offset, Epilogue};
use super::packed::{product, PackedB, Panels, TileStore, KC, MAX_STRIPS, NR};

/// The integer type of quantized weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantBits {
    I8,
    U8,
    I4,
    U4,
}

impl QuantBits {
    fn bytes_per_row(self) -> usize {
        match self {
            QuantBits::I8 | QuantBits::U8 => NR,
            QuantBits::I4 | QuantBits::U4 => NR / 2,
        }
    }

    fn range(self) -> (i32, i32) {
        match self {
            QuantBits::I8 => (-128, 127),
            QuantBits::U8 => (0, 255),
            QuantBits::I4 => (-8, 7),
            QuantBits::U4 => (0, 15),
        }
    }
}

/// How scales and zero points spread over `W [K, N]`: one per `group`
/// rows (K for none, 1 per row) and per column or for all columns. Per
/// column, the kernel keeps them in f32 per group and column, so small
/// groups cost memory: callers take blocks of 16 rows or more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantGrid {
    /// Rows of W that share a scale (a multiple of nothing in
    /// particular; blocks of 16-256 in practice, or K).
    pub group: usize,
    /// A scale per column (else one for every column).
    pub per_column: bool,
}

/// Constant quantized `K x N` weights in 16-column panels.
#[derive(Debug, Clone)]
pub struct QuantB {
    k: usize,
    n: usize,
    bits: QuantBits,
    group: usize,
    per_column: bool,
    /// `[strips][k][bytes_per_row]`.
    data: Vec<u8>,
    /// Per column `[strips][groups][16]` (zero past n), else `[groups]`:
    /// each group's scales and zero points.
    scales: Vec<f32>,
    zeros: Vec<f32>,
}

impl QuantB {
    /// Packs `W[K, N]` whose element `(r, c)` is `value(r · n + c)`, with
    /// `scales` and `zeros` laid out `[K.div_ceil(group)][N or 1]`.
    pub fn new(
        k: usize,
        n: usize,
        bits: QuantBits,
        value: impl Fn(usize) -> i32,
        scales: &[f32],
        zeros: &[i32],
        grid: QuantGrid,
    ) -> Result<QuantB, String> {
        let group = grid.group.max(1);
        let groups = k.div_ceil(group).max(1);
        let cols = if grid.per_column { n } else { 1 };
        if scales.len() != groups * cols || zeros.len() != scales.len() {
            return Err(format!(
                "{} scales and {} zero points for {groups} groups of {cols} columns",
                scales.len(),
                zeros.len()
            ));
        }
        let (lo, hi) = bits.range();
        if let Some(z) = zeros.iter().find(|&&z| !(lo..=hi).contains(&z)) {
            return Err(format!("zero point {z} is outside {lo}..={hi}"));
        }
        let strips = n.div_ceil(NR);
        // Per column: strip-major, like the weights, so a strip's
        // parameters are read in one contiguous run with its bytes.
        // Otherwise one value per group.
        let (sc, zs) = if grid.per_column {
            let mut sc = vec![0.0f32; strips * groups * NR];
            let mut zs = vec![0.0f32; strips * groups * NR];
            for g in 0..groups {
                for c in 0..n {
                    let at = ((c / NR) * groups + g) * NR + c % NR;
                    sc[at] = scales[g * n + c];
                    zs[at] = zeros[g * n + c] as f32;
                }
            }
            (sc, zs)
        } else {
            (scales.to_vec(), zeros.iter().map(|&z| z as f32).collect())
        };
        let bpr = bits.bytes_per_row();
        let mut data = vec![0u8; strips * k * bpr];
        for s in 0..strips {
            for r in 0..k {
                let row = &mut data[(s * k + r) * bpr..][..bpr];
                for jj in 0..NR {
                    let c = s * NR + jj;
                    if c >= n {
                        break;
                    }
                    let v = value(r * n + c);
                    if !(lo..=hi).contains(&v) {
                        return Err(format!("weight {v} is outside {lo}..={hi}"));
                    }
                    let byte = v as u8;
                    match bits {
                        QuantBits::I8 | QuantBits::U8 => row[jj] = byte,
                        QuantBits::I4 | QuantBits::U4 => {
                            let nib = byte & 15;
                            if jj < NR / 2 {
                                row[jj] |= nib;
                            } else {
                                row[jj - NR / 2] |= nib << 4;
                            }
                        }
                    }
                }
            }
        }
        Ok(QuantB {
            k,
            n,
            bits,
            group,
            per_column: grid.per_column,
            data,
            scales: sc,
            zeros: zs,
        })
    }

    /// The scales and zero points of group `g` for strip `s`'s 16 columns.
    #[inline(always)]
    fn params(&self, s: usize, g: usize) -> ([f32; NR], [f32; NR]) {
        if self.per_column {
            let at = (s * self.k.div_ceil(self.group).max(1) + g) * NR;
            let sc: [f32; NR] = self.scales[at..at + NR].try_into().expect("16 scales");
            let zs: [f32; NR] = self.zeros[at..at + NR].try_into().expect("16 zeros");
            (sc, zs)
        } else {
            ([self.scales[g]; NR], [self.zeros[g]; NR])
        }
    }

    /// `(K, N)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// Bytes the packed weights and their parameters occupy.
    pub fn bytes(&self) -> usize {
        self.data.len() + 4 * (self.scales.len() + self.zeros.len())
    }

    /// Whether the host can run products on these weights.
    pub fn available() -> bool {
        PackedB::available()
    }

    /// `out[i·n + j] = Σ_kk a[i·lda + kk]·W[kk, j]` for `i < m`, threaded
    /// and with an epilogue as [`super::packed::product`].
    ///
    /// Panics if a view does not fit its slice or the host lacks AVX2/FMA.
    #[allow(clippy::too_many_arguments)]
    pub fn product(
        &self,
        m: usize,
        a: &[f32],
        lda: usize,
        out: &mut [f32],
        threads: usize,
        epilogue: Option<&Epilogue>,
    ) {
        product(
            self,
            m,
            a,
            lda,
            out,
            threads,
            epilogue,
            TileStore::default(),
        );
    }

    /// The product for at most [`GEMV_ROWS`] rows (batch-1 decoding):
    /// each strip's weights are unpacked in registers and multiplied at
    /// once, with no scratch panel, so the loop runs at the speed the
    /// packed bytes arrive. Threaded over chunks of strips; `epilogue` as
    /// for [`QuantB::product`].
    ///
    /// Panics if a view does not fit its slice.
    #[allow(clippy::too_many_arguments)]
    pub fn gemv(
        &self,
        m: usize,
        a: &[f32],
        lda: usize,
        out: &mut [f32],
        threads: usize,
        epilogue: Option<&Epilogue>,
    ) {
        let (k, n) = (self.k, self.n);
        assert!(m <= GEMV_ROWS, "QuantB::gemv: {m} rows");
        assert!(out.len() >= m * n, "QuantB::gemv: out too short");
        assert!(
            m == 0 || k == 0 || (m - 1) * lda + k <= a.len(),
            "QuantB::gemv: a out of bounds"
        );
        if m == 0 || n == 0 {
            return;
        }
        let strips = n.div_ceil(NR);
        // Weights from memory: both threads' share of the bandwidth is
        // worth having once there are a few hundred KiB of them.
        let parallel = threads > 1 && self.data.len() >= 1 << 17;
        let units = if parallel {
            (threads * crate::cpu::UNITS_PER_THREAD).min(strips)
        } else {
            1
        };
        let out_addr = out.as_mut_ptr().expose_provenance();
        let unit = |u: usize| {
            let (s0, s1) = (u * strips / units, (u + 1) * strips / units);
            let out = std::ptr::with_exposed_provenance_mut::<f32>(out_addr);
            for s in s0..s1 {
                let mut acc = [[0.0f32; NR]; GEMV_ROWS];
                gemv_strip(self, s, m, a, lda, &mut acc);
                let (c0, len) = (s * NR, (n - s * NR).min(NR));
                for (i, row) in acc.iter().enumerate().take(m) {
                    // SAFETY: row i < m, columns c0..c0 + len < n of the
                    // dense m x n `out` (asserted to fit), which only this
                    // unit writes (strips are split between units).
                    unsafe {
                        std::ptr::copy_nonoverlapping(row.as_ptr(), out.add(i * n + c0), len)
                    };
                }
            }
            if let Some(epi) = epilogue {
                let (c0, c1) = (s0 * NR, (s1 * NR).min(n));
                for r in 0..m {
                    epi(out, r * n + c0, r * n + c1);
                }
            }
        };
        for_each_unit(parallel, units, unit);
    }

    /// Unpacks rows `k0..k0 + kc` of strip `s` into `dst` (`kc x 16`).
    fn unpack(&self, s: usize, k0: usize, kc: usize, dst: &mut [f32]) {
        let bpr = self.bits.bytes_per_row();
        let src = &self.data[(s * self.k + k0) * bpr..][..kc * bpr];
        let mut r = 0;
        while r < kc {
            // Rows up to the next group boundary share parameters.
            let g = (k0 + r) / self.group;
            let end = ((g + 1) * self.group - k0).min(kc);
            let (sc, zs) = self.params(s, g);
            let (sc, zs) = (&sc, &zs);
            let (src, dst) = (&src[r * bpr..end * bpr], &mut dst[r * NR..end * NR]);
            unpack_rows(self.bits, src, sc, zs, dst);
            r = end;
        }
    }
}

/// Rows a [`QuantB::gemv`] takes.
pub const GEMV_ROWS: usize = 4;

type Acc = [[f32; NR]; GEMV_ROWS];

crate::cpu::simd_fn! {
    /// `acc[i][j] = Σ_kk a[i·lda + kk] · W[kk, 16·s + j]` for rows i < m
    /// (on AVX-512 a row of 16 weights is one register).
    fn gemv_strip(q: &QuantB, s: usize, m: usize, a: &[f32], lda: usize, acc: &mut Acc) {
        match (q.bits, m) {
            (QuantBits::I8, 1) => gemv_rows::<0, 1>(q, s, m, a, lda, acc),
            (QuantBits::U8, 1) => gemv_rows::<1, 1>(q, s, m, a, lda, acc),
            (QuantBits::I4, 1) => gemv_rows::<2, 1>(q, s, m, a, lda, acc),
            (QuantBits::U4, 1) => gemv_rows::<3, 1>(q, s, m, a, lda, acc),
            (QuantBits::I8, 2) => gemv_rows::<0, 2>(q, s, m, a, lda, acc),
            (QuantBits::U8, 2) => gemv_rows::<1, 2>(q, s, m, a, lda, acc),
            (QuantBits::I4, 2) => gemv_rows::<2, 2>(q, s, m, a, lda, acc),
            (QuantBits::U4, 2) => gemv_rows::<3, 2>(q, s, m, a, lda, acc),
            (QuantBits::I8, _) => gemv_rows::<0, GEMV_ROWS>(q, s, m, a, lda, acc),
            (QuantBits::U8, _) => gemv_rows::<1, GEMV_ROWS>(q, s, m, a, lda, acc),
            (QuantBits::I4, _) => gemv_rows::<2, GEMV_ROWS>(q, s, m, a, lda, acc),
            (QuantBits::U4, _) => gemv_rows::<3, GEMV_ROWS>(q, s, m, a, lda, acc),
        }
    }
}

/// A packed row of 16 weights as f32 (`KIND` 0-3 for I8, U8, I4, U4).
#[inline(always)]
fn widen<const KIND: u8>(row: &[u8]) -> [f32; NR] {
    let mut w = [0.0f32; NR];
    match KIND {
        0 | 1 => {
            let b: &[u8; NR] = row.try_into().expect("16 bytes");
            for j in 0..NR {
                w[j] = if KIND == 0 {
                    b[j] as i8 as f32
                } else {
                    b[j] as f32
                };
            }
        }
        _ => {
            const H: usize = NR / 2;
            let b: &[u8; H] = row.try_into().expect("8 bytes");
            let mut n = [0u8; NR];
            for j in 0..H {
                n[j] = b[j] & 15;
                n[j + H] = b[j] >> 4;
            }
            for j in 0..NR {
                // Sign-extending a nibble: (x ^ 8) - 8.
                w[j] = if KIND == 2 {
                    ((n[j] ^ 8) as i8 - 8) as f32
                } else {
                    n[j] as f32
                };
            }
        }
    }
    w
}

/// The strip's product for `R` rows, of which the first `rows` are A's
/// (the others are zero rows: `a` is indexed only for A's), with `KIND`
/// 0-3 for I8, U8, I4, U4.
///
/// Within a group of rows sharing scales, `Σ a·(q - z)·s` is computed as
/// `s · (Σ a·q - z · Σ a)`: per weight a conversion and one FMA, where
/// dequantizing each weight first took two more operations and left the
/// loop compute-bound at a quarter of the memory bandwidth. The sums
/// round differently from the reference's (dequantize, then multiply),
/// as any reordering of an f32 dot product does.
#[inline(always)]
fn gemv_rows<const KIND: u8, const R: usize>(
    q: &QuantB,
    s: usize,
    rows: usize,
    a: &[f32],
    lda: usize,
    acc: &mut Acc,
) {
    let k = q.k;
    let bpr = q.bits.bytes_per_row();
    let src = &q.data[s * k * bpr..][..k * bpr];
    let mut sums = [[0.0f32; NR]; R];
    let mut r0 = 0;
    while r0 < k {
        let g = r0 / q.group;
        let r1 = ((g + 1) * q.group).min(k);
        let (sc, zs) = q.params(s, g);
        let mut dots = [[0.0f32; NR]; R];
        let mut asum = [0.0f32; R];
        let mut r = r0;
        if R == 1 {
            // One row: four rows of weights at a time into chains of their
            // own (one chain per 16 columns left the loop waiting on the
            // FMA latency, a quarter of its throughput, where the weights
            // come from cache: an LSTM's recurrence).
            let mut d4 = [[0.0f32; NR]; 4];
            let quads = (r1 - r0) / 4;
            let quad_rows = src[r0 * bpr..(r0 + 4 * quads) * bpr].chunks_exact(4 * bpr);
            for (w4, x4) in quad_rows.zip(a[r0..r0 + 4 * quads].chunks_exact(4)) {
                for u in 0..4 {
                    let w = widen::<KIND>(&w4[u * bpr..(u + 1) * bpr]);
                    for j in 0..NR {
                        d4[u][j] = x4[u].mul_add(w[j], d4[u][j]);
                    }
                }
            }
            for j in 0..NR {
                dots[0][j] = (d4[0][j] + d4[1][j]) + (d4[2][j] + d4[3][j]);
            }
            // In eight chains (one would be a dependent add per row).
            let mut s8 = [0.0f32; 8];
            let xs = &a[r0..r0 + 4 * quads];
            for c in xs.chunks_exact(8) {
                for j in 0..8 {
                    s8[j] += c[j];
                }
            }
            asum[0] = s8.iter().sum::<f32>() + xs.chunks_exact(8).remainder().iter().sum::<f32>();
            r += 4 * quads;
        }
        for r in r..r1 {
            let w = widen::<KIND>(&src[r * bpr..(r + 1) * bpr]);
            for i in 0..R {
                let x = if i < rows { a[i * lda + r] } else { 0.0 };
                asum[i] += x;
                for j in 0..NR {
                    dots[i][j] += x * w[j];
                }
            }
        }
        for i in 0..R {
            for j in 0..NR {
                sums[i][j] += sc[j] * (dots[i][j] - zs[j] * asum[i]);
            }
        }
        r0 = r1;
    }
    acc[..R].copy_from_slice(&sums);
}

crate::cpu::simd_fn! {
    /// `dst` row r = `q · sc - zs · sc` for the quantized row r of `src`
    /// (16-lane rows, which vectorize).
    fn unpack_rows(bits: QuantBits, src: &[u8], sc: &[f32; NR], zs: &[f32; NR], dst: &mut [f32]) {
        #[inline(always)]
        fn row(q: &[f32; NR], sc: &[f32; NR], zs: &[f32; NR], out: &mut [f32]) {
            let out: &mut [f32; NR] = (&mut out[..NR]).try_into().expect("16 floats");
            for j in 0..NR {
                out[j] = q[j].mul_add(sc[j], -(zs[j] * sc[j]));
            }
        }
        let mut q = [0.0f32; NR];
        match bits {
            QuantBits::I8 | QuantBits::U8 => {
                for (s, d) in src.chunks_exact(NR).zip(dst.chunks_exact_mut(NR)) {
                    let s: &[u8; NR] = s.try_into().expect("16 bytes");
                    if bits == QuantBits::I8 {
                        for j in 0..NR {
                            q[j] = s[j] as i8 as f32;
                        }
                    } else {
                        for j in 0..NR {
                            q[j] = s[j] as f32;
                        }
                    }
                    row(&q, sc, zs, d);
                }
            }
            QuantBits::I4 | QuantBits::U4 => {
                const H: usize = NR / 2;
                for (s, d) in src.chunks_exact(H).zip(dst.chunks_exact_mut(NR)) {
                    let s: &[u8; H] = s.try_into().expect("8 bytes");
                    // Sign-extending a nibble: (x ^ 8) - 8.
                    let sign = if bits == QuantBits::I4 { 8 } else { 0 };
                    for j in 0..H {
                        q[j] = (((s[j] & 15) as i32 ^ sign) - sign) as f32;
                        q[j + H] = (((s[j] >> 4) as i32 ^ sign) - sign) as f32;
                    }
                    row(&q, sc, zs, d);
                }
            }
        }
    }
}

// SAFETY: `unpack` fills `kc x 16` floats of the scratch panel (KC x 16,
// and kc <= KC) for any strip s < strips and rows within k, which it
// checks through slice indexing.
unsafe impl Panels for QuantB {
    type Scratch = Vec<f32>;
    const UNPACKS: bool = true;

    fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    fn scratch(&self) -> Vec<f32> {
        // A line of slack: the panels start on a 64-byte line.
        vec![0.0; MAX_STRIPS * KC * NR + NR]
    }

    unsafe fn panels(
        &self,
        s: usize,
        count: usize,
        k0: usize,
        kc: usize,
        scratch: &mut Vec<f32>,
    ) -> (*const f32, usize) {
        let start = line_offset(scratch);
        let body = &mut scratch[start..];
        for (i, panel) in body.chunks_exact_mut(kc * NR).take(count).enumerate() {
            self.unpack(s + i, k0, kc, panel);
        }
        (body.as_ptr(), kc * NR)
    }

    fn prefetch(&self, _s: usize, _k0: usize) -> Option<*const f32> {
        // The packed bytes stream in order; the hardware prefetchers
        // follow them.
        None
    }
}

/// `kiln.DequantMatMul` for `A [..., M, K]` (or `[K]`) and constant
/// quantized `W [K, N]`: every row of A's batch dims is one row of a
/// single product.
#[derive(Debug, Clone)]
pub struct DequantMatMulPlan {
    rows: usize,
    out_shape: Vec<usize>,
    w: QuantB,
}

impl DequantMatMulPlan {
    pub fn new(a_shape: &[usize], w: QuantB) -> Result<DequantMatMulPlan, String> {
        let Some(&k) = a_shape.last() else {
            return Err("DequantMatMul: A is a scalar".into());
        };
        if k != w.k {
            return Err(format!(
                "DequantMatMul: A {a_shape:?} has {k} columns, W {} rows",
                w.k
            ));
        }
        if !QuantB::available() {
            return Err("DequantMatMul: the host lacks AVX2/FMA".into());
        }
        let mut out_shape = a_shape[..a_shape.len() - 1].to_vec();
        out_shape.push(w.n);
        let rows = a_shape[..a_shape.len() - 1].iter().product();
        Ok(DequantMatMulPlan { rows, out_shape, w })
    }

    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    pub fn flops(&self) -> f64 {
        2.0 * (self.rows * self.w.k * self.w.n) as f64
    }

    /// `out = A · dequantize(W)`; `epilogue` as for
    /// [`super::packed::product`]. Every element of `out` is written.
    pub fn run(&self, a: &[f32], out: &mut [f32], threads: usize, epilogue: Option<&Epilogue>) {
        if self.rows <= GEMV_ROWS {
            self.w.gemv(self.rows, a, self.w.k, out, threads, epilogue);
        } else {
            self.w
                .product(self.rows, a, self.w.k, out, threads, epilogue);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::common::testing::lcg;

    /// The product against the dequantized weights multiplied in f64, for
    /// every type, per-tensor / per-column / blocked grids, a partial last
    /// strip and group, one row (GEMV) and many.
    #[test]
    fn matches_dequantized_product() {
        if !QuantB::available() {
            eprintln!("skipped: the host lacks AVX2/FMA");
            return;
        }
        let mut pool = lcg(7, 1 << 16).into_iter().cycle();
        let mut next = move || pool.next().unwrap_or(0.0);
        for bits in [QuantBits::I8, QuantBits::U8, QuantBits::I4, QuantBits::U4] {
            for (k, n, group, per_column) in [
                (40usize, 37usize, 40usize, true),
                (300, 20, 32, true),
                (70, 16, 70, false),
                (513, 33, 16, true),
                (50, 20, 1, false),
            ] {
                for m in [1, 2, 3, 5, 70] {
                    let (lo, hi) = bits.range();
                    let span = (hi - lo + 1) as f32;
                    let w: Vec<i32> = (0..k * n)
                        .map(|_| lo + ((next() * 0.5 + 0.5) * span) as i32 % (hi - lo + 1))
                        .collect();
                    let groups = k.div_ceil(group);
                    let cols = if per_column { n } else { 1 };
                    let scales: Vec<f32> = (0..groups * cols)
                        .map(|_| 0.01 + 0.02 * next().abs())
                        .collect();
                    let zeros: Vec<i32> = (0..groups * cols)
                        .map(|i| lo + (i as i32 * 7) % (hi - lo + 1))
                        .collect();
                    let q = QuantB::new(
                        k,
                        n,
                        bits,
                        |i| w[i],
                        &scales,
                        &zeros,
                        QuantGrid { group, per_column },
                    )
                    .expect("pack");
                    let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
                    let plan = DequantMatMulPlan::new(&[m, k], q).expect("plan");
                    for threads in [1, 2] {
                        let mut out = vec![f32::NAN; m * n];
                        rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .expect("pool")
                            .install(|| plan.run(&a, &mut out, threads, None));
                        for i in 0..m {
                            for j in 0..n {
                                let mut want = 0.0f64;
                                for r in 0..k {
                                    let g = (r / group) * cols + if per_column { j } else { 0 };
                                    let wv = ((w[r * n + j] - zeros[g]) as f32 * scales[g]) as f64;
                                    want += a[i * k + r] as f64 * wv;
                                }
                                let got = out[i * n + j] as f64;
                                assert!(
                                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                    "{bits:?} k{k} n{n} g{group} m{m} t{threads} ({i},{j}): {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        let grid = QuantGrid {
            group: 4,
            per_column: true,
        };
        let e = QuantB::new(8, 2, QuantBits::I4, |_| 0, &[1.0; 3], &[0; 3], grid);
        assert!(e.is_err());
        let e = QuantB::new(8, 2, QuantBits::I4, |_| 9, &[1.0; 4], &[0; 4], grid);
        assert!(e.unwrap_err().contains("outside"));
        let e = QuantB::new(8, 2, QuantBits::U8, |_| 0, &[1.0; 4], &[300; 4], grid);
        assert!(e.unwrap_err().contains("zero point"));
    }
}
