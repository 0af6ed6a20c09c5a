//! Integer GEMM, the quantized path's one product: `C[m][n] = Σ_k (A[m][k] -
//! za[m]) · (B[k][n] - zb[n])` over 8-bit operands, exact in i32, then an
//! output stage ([`QOut`]: requantize to u8/i8, or keep i32).
//!
//! The inner product is AVX-512 VNNI's `vpdpbusd` (four u8 × i8 products
//! summed into each i32 lane) where the CPU has it; on AVX2 without VNNI
//! `vpmaddwd` on operands widened to i16 ([`Isa::Avx2`]: exact, where
//! `vpmaddubsw` saturates); else portable Rust.
//! The instruction wants one unsigned and one signed operand, so each
//! packed operand is stored in the domain the kernel needs: an i8 operand
//! that must be unsigned is stored +128 (its zero point +128 with it), a u8
//! operand that must be signed is stored -128; every mix of u8/i8 runs on
//! the one instruction and `(a - za)(b - zb)` is unchanged. Zero points
//! leave the loop: `Σ(a-za)(b-zb) = Σab - za·Σ_k b - zb·Σ_k a + K·za·zb`,
//! the sums taken while packing.
//!
//! Layout: A in panels of [`MR`] rows, B in panels of [`NR`] columns, each
//! `[K/4][rows or cols][4]` bytes (K padded to a multiple of 4 with zeros,
//! which add nothing to `Σab`; the sums cover the real K only).

use super::common::for_each_unit;

/// Rows of a register tile.
pub const MR: usize = 8;
/// Columns of a register tile (two 512-bit vectors of i32).
pub const NR: usize = 32;

/// Whether this CPU runs the VNNI kernel (AVX-512 F/BW/VNNI).
pub fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The instruction set a product runs on, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 VNNI: `vpdpbusd`, four products into each i32 lane.
    Vnni,
    /// AVX2: `vpmaddwd` on i16 operands, two exact products into each
    /// i32 lane: A kept widened (`Packed::wide`), B widened in registers
    /// as it is loaded. `vpmaddubsw` would take bytes as they are, but it
    /// saturates its i16 pair sums (255·127·2 does not fit), and splitting
    /// A to stay inside i16 measured 1.6× slower on Zen 3 than widening.
    Avx2,
    Portable,
}

impl Isa {
    /// The best this CPU runs.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if has_vnni() {
                return Isa::Vnni;
            }
            if is_x86_feature_detected!("avx2") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// An 8-bit operand as it comes: its bytes and whether they are signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8 {
    U8,
    I8,
}

/// The stored byte of `v` (an operand byte of type `from`) in the domain
/// `unsigned` or not, and the shift applied to values (and zero points).
#[inline(always)]
fn to_domain(v: u8, from: Int8, unsigned: bool) -> u8 {
    match (from, unsigned) {
        (Int8::U8, true) | (Int8::I8, false) => v,
        // i8 → u8: +128; u8 → i8: -128. Both flip the top bit.
        _ => v ^ 0x80,
    }
}

/// The zero point in the stored domain.
pub fn shifted_zero(z: i32, from: Int8, unsigned: bool) -> i32 {
    match (from, unsigned) {
        (Int8::I8, true) => z + 128,
        (Int8::U8, false) => z - 128,
        _ => z,
    }
}

/// The value of a stored byte.
#[inline(always)]
fn stored_value(b: u8, unsigned: bool) -> i32 {
    if unsigned {
        b as i32
    } else {
        b as i8 as i32
    }
}

/// One depth group of a B operand being packed: its four rows (`real`
/// of them real), `n` columns, group `q` of `k4`, the byte flip into the
/// stored domain and whether that domain is unsigned.
#[derive(Clone, Copy)]
struct Group<'a> {
    rows: [&'a [u8]; 4],
    real: usize,
    n: usize,
    q: usize,
    k4: usize,
    flip: u8,
    unsigned: bool,
}

/// Depth group `q` of every B panel from its four rows (`real` of them;
/// the rest, past K, are zeros): column c's four bytes side by side,
/// flipped to the stored domain, and the rows' stored values added to the
/// column sums in the same pass. Whole panels interleave in AVX2 byte and
/// word unpacks and sum by `vpmaddubsw`/`vpmaddwd` against ones; byte by
/// byte this was a third of a 3×3 conv's time.
fn pack_b_group(gr: &Group, data: &mut [u8], sums: &mut [i32]) {
    let n = gr.n;
    let mut first = 0;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2; whole panels only.
        unsafe { pack_b_group_avx2(gr, data, sums) };
        first = n / NR;
    }
    for p in first..n.div_ceil(NR) {
        pack_b_panel(gr, data, sums, p);
    }
}

/// [`pack_b_group`] for panel `p`, portably.
fn pack_b_panel(gr: &Group, data: &mut [u8], sums: &mut [i32], p: usize) {
    let Group {
        rows,
        real,
        n,
        q,
        k4,
        flip,
        unsigned,
    } = *gr;
    let c0 = p * NR;
    let cols = NR.min(n - c0);
    let mut g = [[0u8; NR]; 4];
    for (d, row) in g.iter_mut().enumerate().take(real) {
        for (r, &b) in row.iter_mut().zip(&rows[d][c0..c0 + cols]) {
            *r = b ^ flip;
        }
    }
    let dst = &mut data[(p * k4 + q) * NR * 4..(p * k4 + q + 1) * NR * 4];
    for c in 0..NR {
        for (d, row) in g.iter().enumerate() {
            dst[c * 4 + d] = row[c];
        }
    }
    for (c, t) in sums[c0..c0 + cols].iter_mut().enumerate() {
        *t += g
            .iter()
            .map(|row| stored_value(row[c], unsigned))
            .sum::<i32>();
    }
}

/// The whole panels of [`pack_b_group`] on AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_b_group_avx2(gr: &Group, data: &mut [u8], sums: &mut [i32]) {
    use std::arch::x86_64::*;
    let (rows, real, q, k4) = (gr.rows, gr.real, gr.q, gr.k4);
    let vflip = _mm256_set1_epi8(gr.flip as i8);
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    for p in 0..gr.n / NR {
        let c0 = p * NR;
        let row = |d: usize| {
            if d < real {
                // SAFETY: row d holds n ≥ c0 + NR bytes.
                let v = unsafe { _mm256_loadu_si256(rows[d].as_ptr().add(c0) as *const __m256i) };
                _mm256_xor_si256(v, vflip)
            } else {
                _mm256_setzero_si256()
            }
        };
        let (a, b, c, d) = (row(0), row(1), row(2), row(3));
        // Bytes, then words, interleaved within 128-bit lanes: u0 holds
        // columns 0-3 | 16-19, u1 4-7 | 20-23, u2 8-11 | 24-27, u3 12-15 |
        // 28-31, each column's four depths side by side.
        let (ab_lo, ab_hi) = (_mm256_unpacklo_epi8(a, b), _mm256_unpackhi_epi8(a, b));
        let (cd_lo, cd_hi) = (_mm256_unpacklo_epi8(c, d), _mm256_unpackhi_epi8(c, d));
        let u0 = _mm256_unpacklo_epi16(ab_lo, cd_lo);
        let u1 = _mm256_unpackhi_epi16(ab_lo, cd_lo);
        let u2 = _mm256_unpacklo_epi16(ab_hi, cd_hi);
        let u3 = _mm256_unpackhi_epi16(ab_hi, cd_hi);
        let out = [
            _mm256_permute2x128_si256(u0, u1, 0x20),
            _mm256_permute2x128_si256(u2, u3, 0x20),
            _mm256_permute2x128_si256(u0, u1, 0x31),
            _mm256_permute2x128_si256(u2, u3, 0x31),
        ];
        for (i, &o) in out.iter().enumerate() {
            // SAFETY: the group's NR·4 bytes in panel p, and 8 column sums
            // from c0 + 8i, lie inside `data` and `sums`.
            unsafe {
                let dst = data.as_mut_ptr().add((p * k4 + q) * NR * 4 + 32 * i);
                _mm256_storeu_si256(dst as *mut __m256i, o);
                let pairs = if gr.unsigned {
                    _mm256_maddubs_epi16(o, ones8)
                } else {
                    _mm256_maddubs_epi16(ones8, o)
                };
                let quads = _mm256_madd_epi16(pairs, ones16);
                let sp = sums.as_mut_ptr().add(c0 + 8 * i) as *mut __m256i;
                _mm256_storeu_si256(sp, _mm256_add_epi32(_mm256_loadu_si256(sp), quads));
            }
        }
    }
}

/// A packed operand: panels of `width` rows (A) or columns (B) over K, in
/// the stored domain, with each row's/column's sum over K.
#[derive(Clone, Debug)]
pub struct Packed {
    /// Rows (A) or columns (B) in all.
    pub count: usize,
    pub k: usize,
    /// Whether the stored bytes are u8 (else i8).
    pub unsigned: bool,
    width: usize,
    data: Vec<u8>,
    sums: Vec<i32>,
    /// For an A operand on [`Isa::Avx2`]: the stored values as i16, laid
    /// out as `data`. Empty otherwise.
    wide: Vec<i16>,
}

impl Packed {
    /// Makes [`Packed::wide`] from the packed bytes: what the AVX2
    /// kernel multiplies instead of A.
    pub fn widen(&mut self) {
        let unsigned = self.unsigned;
        self.wide = self
            .data
            .iter()
            .map(|&b| stored_value(b, unsigned) as i16)
            .collect();
    }

    /// An A operand as the kernel this CPU runs wants it.
    fn for_kernel(mut self) -> Packed {
        if Isa::detect() == Isa::Avx2 {
            self.widen();
        }
        self
    }

    fn k4(&self) -> usize {
        self.k.div_ceil(4)
    }

    fn panel(&self, p: usize) -> &[u8] {
        let len = self.k4() * self.width * 4;
        &self.data[p * len..(p + 1) * len]
    }

    /// Packs `count` rows/columns of K values: `at(i, k)` is the byte of
    /// row/column `i` at depth `k` (an operand of type `from`), stored in
    /// the domain `unsigned`; `width` is [`MR`] for A, [`NR`] for B.
    pub fn new(
        count: usize,
        k: usize,
        width: usize,
        from: Int8,
        unsigned: bool,
        at: impl Fn(usize, usize) -> u8,
    ) -> Packed {
        let k4 = k.div_ceil(4);
        let panels = count.div_ceil(width);
        let mut data = vec![0u8; panels * k4 * width * 4];
        let mut sums = vec![0i32; count];
        for p in 0..panels {
            let base = p * k4 * width * 4;
            for i in 0..width.min(count - p * width) {
                let row = p * width + i;
                let mut s = 0i32;
                for kk in 0..k {
                    let b = to_domain(at(row, kk), from, unsigned);
                    s += stored_value(b, unsigned);
                    data[base + (kk / 4) * width * 4 + i * 4 + kk % 4] = b;
                }
                sums[row] = s;
            }
        }
        let packed = Packed {
            count,
            k,
            unsigned,
            width,
            data,
            sums,
            wide: vec![],
        };
        if width == MR {
            packed.for_kernel()
        } else {
            packed
        }
    }

    /// Packs the rows of a row-major `count × k` byte matrix `src` (stride
    /// `ld` between rows) as an A operand ([`Packed::new`] with `width` =
    /// [`MR`] for this layout): four depths are four contiguous bytes of a
    /// row, so each moves as one word, flipped to the stored domain (the
    /// element-wise `new` was a tenth of a dynamic-int8 transformer's
    /// time).
    pub fn from_rows(
        count: usize,
        k: usize,
        src: &[u8],
        ld: usize,
        from: Int8,
        unsigned: bool,
    ) -> Packed {
        let width = MR;
        let k4 = k.div_ceil(4);
        let panels = count.div_ceil(width);
        let mut data = vec![0u8; panels * k4 * width * 4];
        let mut sums = vec![0i32; count];
        let flip = to_domain(0, from, unsigned);
        for (row, sum) in sums.iter_mut().enumerate() {
            let (p, i) = (row / width, row % width);
            let base = p * k4 * width * 4 + i * 4;
            let r = &src[row * ld..row * ld + k];
            for (q, w) in r.chunks(4).enumerate() {
                let d = &mut data[base + q * width * 4..][..w.len()];
                for (d, &b) in d.iter_mut().zip(w) {
                    *d = b ^ flip;
                }
            }
            *sum = if unsigned {
                r.iter().map(|&b| (b ^ flip) as i32).sum()
            } else {
                r.iter().map(|&b| (b ^ flip) as i8 as i32).sum()
            };
        }
        Packed {
            count,
            k,
            unsigned,
            width,
            data,
            sums,
            wide: vec![],
        }
        .for_kernel()
    }

    /// Packs the columns of a row-major `k × n` byte matrix `src` (stride
    /// `ld` between rows) as a B operand, reusing `self`'s buffers.
    pub fn pack_b_rows(
        &mut self,
        src: &[u8],
        k: usize,
        n: usize,
        ld: usize,
        from: Int8,
        unsigned: bool,
    ) {
        let flip = self.begin_b(k, n, from, unsigned);
        for q in 0..k.div_ceil(4) {
            let real = 4.min(k - 4 * q);
            let rows: [&[u8]; 4] = std::array::from_fn(|d| {
                let kk = 4 * q + d.min(real - 1);
                &src[kk * ld..kk * ld + n]
            });
            self.put_group(rows, real, q, flip);
        }
    }

    /// Packs a B operand of `k` rows of `n` bytes made on demand, four at
    /// a time: `fill(kk, row)` writes row `kk` (an im2col row, say, so the
    /// unfolded matrix never exists whole, and is read once, in cache);
    /// `staging` holds the four.
    pub fn pack_b_generated(
        &mut self,
        k: usize,
        n: usize,
        from: Int8,
        unsigned: bool,
        staging: &mut Vec<u8>,
        mut fill: impl FnMut(usize, &mut [u8]),
    ) {
        let flip = self.begin_b(k, n, from, unsigned);
        staging.resize(4 * n, 0);
        for q in 0..k.div_ceil(4) {
            let real = 4.min(k - 4 * q);
            for (d, row) in staging.chunks_exact_mut(n).enumerate().take(real) {
                fill(4 * q + d, row);
            }
            let rows: [&[u8]; 4] = std::array::from_fn(|d| &staging[d * n..(d + 1) * n]);
            self.put_group(rows, real, q, flip);
        }
    }

    /// Depth group `q` of a B operand from its rows ([`pack_b_group`]).
    fn put_group(&mut self, rows: [&[u8]; 4], real: usize, q: usize, flip: u8) {
        let group = Group {
            rows,
            real,
            n: self.count,
            q,
            k4: self.k4(),
            flip,
            unsigned: self.unsigned,
        };
        pack_b_group(&group, &mut self.data, &mut self.sums);
    }

    /// Sizes the buffers for a `k × n` B operand; the byte flip into the
    /// stored domain.
    fn begin_b(&mut self, k: usize, n: usize, from: Int8, unsigned: bool) -> u8 {
        self.count = n;
        self.k = k;
        self.unsigned = unsigned;
        self.width = NR;
        // Every byte is written by `pack_b_group`, padding included: no
        // clearing.
        self.data.resize(n.div_ceil(NR) * k.div_ceil(4) * NR * 4, 0);
        self.sums.clear();
        self.sums.resize(n, 0);
        if to_domain(0, from, unsigned) == 0 {
            0
        } else {
            0x80
        }
    }

    /// An empty B operand for [`Packed::pack_b_rows`] to fill.
    pub fn empty() -> Packed {
        Packed {
            count: 0,
            k: 0,
            unsigned: true,
            width: NR,
            data: vec![],
            sums: vec![],
            wide: vec![],
        }
    }
}

/// What becomes of the exact i32 sums.
#[derive(Clone, Copy)]
pub enum QOut<'a> {
    /// `sat(round_half_even(acc · mult) + zero)` into 8-bit values
    /// (`lo..=hi`, the output type's range or an activation's), `mult`
    /// per row (`per_row`) or per column, or one value.
    Requant {
        mult: &'a [f32],
        per_row: bool,
        zero: i32,
        lo: i32,
        hi: i32,
        out: *mut u8,
    },
    /// The sums as they are.
    I32 { out: *mut i32 },
}

// SAFETY: the pointers are the caller's result buffer; threads of one
// product write disjoint tiles of it.
unsafe impl Send for QOut<'_> {}
// SAFETY: as for `Send`.
unsafe impl Sync for QOut<'_> {}

/// One product's description beyond its operands.
pub struct QGemm<'a> {
    /// A's zero points in the stored domain: one, or one per row.
    pub za: &'a [i32],
    /// B's zero points in the stored domain: one, or one per column.
    pub zb: &'a [i32],
    /// Added to each exact sum: one per row (`bias_per_row`) or per column.
    pub bias: Option<&'a [i32]>,
    pub bias_per_row: bool,
    /// Distance between rows of C, in elements.
    pub ldc: usize,
    pub out: QOut<'a>,
}

#[inline(always)]
fn pick(v: &[i32], i: usize) -> i32 {
    if v.len() == 1 {
        v[0]
    } else {
        v[i]
    }
}

#[inline(always)]
fn pickf(v: &[f32], i: usize) -> f32 {
    if v.len() == 1 {
        v[0]
    } else {
        v[i]
    }
}

/// `C = A·B` through `g`'s output stage, threaded over tiles when
/// `threads > 1` and the product is big enough.
pub fn qgemm(a: &Packed, b: &Packed, g: &QGemm, threads: usize) {
    assert_eq!(a.k, b.k, "qgemm: depths differ");
    assert!(
        a.unsigned != b.unsigned,
        "qgemm: one operand must be unsigned"
    );
    let (m, n) = (a.count, b.count);
    if m == 0 || n == 0 {
        return;
    }
    // An A operand packed without its i16 copy (none of this module's
    // constructors does that) runs portably rather than wrongly.
    let isa = match Isa::detect() {
        Isa::Avx2 if a.wide.is_empty() => Isa::Portable,
        isa => isa,
    };
    // Work units: a block of rows × a block of column panels.
    let row_panels = m.div_ceil(MR);
    let col_panels = n.div_ceil(NR);
    let rows_per = 8usize; // panels of A per unit (64 rows)
    let cols_per = 4usize; // panels of B per unit (128 columns)
    let ru = row_panels.div_ceil(rows_per);
    let cu = col_panels.div_ceil(cols_per);
    let flops = 2.0 * (m * n * a.k) as f64;
    let parallel = threads > 1 && flops >= super::common::PAR_FLOPS;
    for_each_unit(parallel, ru * cu, |u| {
        let (r, c) = (u / cu, u % cu);
        let rps = r * rows_per..((r + 1) * rows_per).min(row_panels);
        let cps = c * cols_per..((c + 1) * cols_per).min(col_panels);
        match isa {
            // SAFETY: `Isa::detect` checked the features.
            #[cfg(target_arch = "x86_64")]
            Isa::Vnni => unsafe { unit_avx512(a, b, g, rps, cps) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { unit_avx2(a, b, g, rps, cps) },
            _ => unit(a, b, g, rps, cps, Isa::Portable),
        }
    });
}

/// The tiles of one work unit, each stored as soon as it is summed.
#[inline(always)]
fn unit(
    a: &Packed,
    b: &Packed,
    g: &QGemm,
    rps: std::ops::Range<usize>,
    cps: std::ops::Range<usize>,
    isa: Isa,
) {
    for cp in cps {
        let cols = Columns::new(b, g, cp * NR);
        for rp in rps.clone() {
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Vnni && cols.cols == NR && matches!(g.out, QOut::Requant { .. }) {
                // SAFETY: the CPU has the features; the tile's columns are
                // all real.
                unsafe { vnni_tile_requant(a, b, g, rp, cp, &cols) };
                continue;
            }
            let mut acc = [[0i32; NR]; MR];
            tile(a, b, rp, cp, isa, &mut acc);
            store(a, g, rp * MR, &cols, &acc);
        }
    }
}

/// A whole-width tile summed and requantized in registers: the VNNI
/// sums go straight through the output stage in 512-bit vectors and
/// leave as bytes. Through memory (sums stored to a tile array, reloaded
/// per element, bytes narrowed by `vpmovdb` to memory) the output stage
/// of a short-K product cost three times its products.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_tile_requant(
    a: &Packed,
    b: &Packed,
    g: &QGemm,
    rp: usize,
    cp: usize,
    cols: &Columns,
) {
    use std::arch::x86_64::*;
    let QOut::Requant {
        mult,
        per_row,
        zero,
        lo,
        hi,
        out,
    } = g.out
    else {
        return;
    };
    let (pa, pb) = (a.panel(rp), b.panel(cp));
    // SAFETY: the panels hold k4 groups, as `vnni_tile` reads them.
    let sums = unsafe {
        if a.unsigned {
            vnni_sums::<true>(pa, pb, a.k4())
        } else {
            vnni_sums::<false>(pa, pb, a.k4())
        }
    };
    // SAFETY: the column arrays hold NR = 2 · 16 values each.
    let load =
        |v: &[i32; NR], h: usize| unsafe { _mm512_loadu_si512(v.as_ptr().add(16 * h) as *const _) };
    let colsum = [load(&cols.colsum, 0), load(&cols.colsum, 1)];
    let zb = [load(&cols.zb, 0), load(&cols.zb, 1)];
    let cbias = [load(&cols.bias, 0), load(&cols.bias, 1)];
    let cscale = (!per_row).then(|| {
        let s = cols.scale.unwrap_or([0.0; NR]);
        // SAFETY: as above.
        unsafe {
            [
                _mm512_loadu_ps(s.as_ptr()),
                _mm512_loadu_ps(s.as_ptr().add(16)),
            ]
        }
    });
    const MAGIC: f32 = 12_582_912.0;
    let flo = _mm512_set1_ps((lo - zero) as f32);
    let fhi = _mm512_set1_ps((hi - zero) as f32);
    let magic = _mm512_set1_ps(MAGIC);
    let back = _mm512_set1_epi32(zero - MAGIC.to_bits() as i32);
    let k = a.k as i32;
    let m0 = rp * MR;
    for (r, row) in sums.iter().enumerate().take(MR.min(a.count - m0)) {
        let m = m0 + r;
        let za = pick(g.za, m);
        let t = k * za - a.sums[m];
        let row_bias = match g.bias {
            Some(bias) if g.bias_per_row => pick(bias, m),
            _ => 0,
        };
        // Σ(a-za)(b-zb) + bias = Σab - za·Σb + zb·t + bias. The common
        // case, symmetric weights (za = 0) and one activation zero point,
        // leaves one per-row constant: no vector multiplies per row.
        let zb_one = g.zb.len() == 1;
        let row_const = if zb_one {
            g.zb[0].wrapping_mul(t).wrapping_add(row_bias)
        } else {
            row_bias
        };
        let (vza, vt, vrc) = (
            _mm512_set1_epi32(za),
            _mm512_set1_epi32(t),
            _mm512_set1_epi32(row_const),
        );
        let scale = cscale.unwrap_or([_mm512_set1_ps(pickf(mult, m)); 2]);
        let mut bytes = [_mm_setzero_si128(); 2];
        for h in 0..2 {
            let mut v = _mm512_add_epi32(row[h], _mm512_add_epi32(cbias[h], vrc));
            if za != 0 {
                v = _mm512_sub_epi32(v, _mm512_mullo_epi32(vza, colsum[h]));
            }
            if !zb_one {
                v = _mm512_add_epi32(v, _mm512_mullo_epi32(zb[h], vt));
            }
            // round_clamped: clamp (NaN → lo, as `max` returns its second
            // operand), round half to even by the magic add, then + zero.
            let x = _mm512_mul_ps(_mm512_cvtepi32_ps(v), scale[h]);
            let c = _mm512_min_ps(_mm512_max_ps(x, flo), fhi);
            let q = _mm512_add_epi32(_mm512_castps_si512(_mm512_add_ps(c, magic)), back);
            bytes[h] = _mm512_cvtepi32_epi8(q);
        }
        // SAFETY: row m, columns n0..n0 + NR are inside C; tiles are disjoint.
        unsafe {
            let dst = out.add(m * g.ldc + cols.n0);
            _mm_storeu_si128(dst as *mut __m128i, bytes[0]);
            _mm_storeu_si128(dst.add(16) as *mut __m128i, bytes[1]);
        }
    }
}

/// [`unit`] compiled for AVX-512, so the output stage's fixed-size array
/// loops vectorize 16 wide (the crate's SSE2 baseline has not even a
/// 32-bit vector multiply).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn unit_avx512(
    a: &Packed,
    b: &Packed,
    g: &QGemm,
    rps: std::ops::Range<usize>,
    cps: std::ops::Range<usize>,
) {
    unit(a, b, g, rps, cps, Isa::Vnni)
}

/// [`unit`] compiled for AVX2, so the output stage's fixed-size array
/// loops vectorize 8 wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn unit_avx2(
    a: &Packed,
    b: &Packed,
    g: &QGemm,
    rps: std::ops::Range<usize>,
    cps: std::ops::Range<usize>,
) {
    unit(a, b, g, rps, cps, Isa::Avx2)
}

/// The raw sums `Σ a·b` of one tile.
#[inline(always)]
fn tile(a: &Packed, b: &Packed, rp: usize, cp: usize, isa: Isa, acc: &mut [[i32; NR]; MR]) {
    let (pa, pb) = (a.panel(rp), b.panel(cp));
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Vnni => {
            // SAFETY: the caller checked the features; panels hold k4
            // groups of MR (A) and NR (B) dwords, which is what the kernel
            // reads.
            unsafe {
                if a.unsigned {
                    vnni_tile::<true>(pa, pb, a.k4(), acc)
                } else {
                    vnni_tile::<false>(pa, pb, a.k4(), acc)
                }
            };
            return;
        }
        Isa::Avx2 => {
            let len = a.k4() * MR * 4;
            let wide = &a.wide[rp * len..(rp + 1) * len];
            // SAFETY: the caller checked the features; `wide` holds k4
            // groups of MR·4 i16, the B panel k4 groups of NR dwords.
            unsafe {
                if a.unsigned {
                    avx2_tile::<false>(wide, pb, a.k4(), acc)
                } else {
                    avx2_tile::<true>(wide, pb, a.k4(), acc)
                }
            };
            return;
        }
        Isa::Portable => {}
    }
    let _ = isa;
    portable_tile(pa, pb, a.k4(), a.unsigned, acc);
}

/// The AVX2 tile ([`Isa::Avx2`]) in sub-tiles of 2 rows × 16 columns (8
/// sums, 4 vectors of B, one of A: 13 of 16 registers). Per group of 4
/// depths, B's 16 columns × 4 bytes widen to four vectors of i16 (zero-
/// or sign-extended: `B_UNSIGNED`), each row's four i16 of A are
/// broadcast, and `vpmaddwd` leaves per column two i32 (depths 0+1, 2+3)
/// that a horizontal add joins once per sub-tile (4 columns a vector).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2_tile<const B_UNSIGNED: bool>(
    wide: &[i16],
    pb: &[u8],
    k4: usize,
    acc: &mut [[i32; NR]; MR],
) {
    use std::arch::x86_64::*;
    debug_assert!(wide.len() >= k4 * MR * 4 && pb.len() >= k4 * NR * 4);
    let (ap, bp) = (wide.as_ptr(), pb.as_ptr());
    for ch in 0..NR / 16 {
        for r0 in (0..MR).step_by(2) {
            let mut s = [[_mm256_setzero_si256(); 4]; 2];
            for q in 0..k4 {
                // SAFETY: group q of both panels, inside them.
                unsafe {
                    let src = bp.add(q * NR * 4 + ch * 64);
                    let b: [__m256i; 4] = std::array::from_fn(|j| {
                        let v = _mm_loadu_si128(src.add(16 * j) as *const __m128i);
                        if B_UNSIGNED {
                            _mm256_cvtepu8_epi16(v)
                        } else {
                            _mm256_cvtepi8_epi16(v)
                        }
                    });
                    let g = ap.add(q * MR * 4 + r0 * 4);
                    for (r, sr) in s.iter_mut().enumerate() {
                        let a = _mm256_set1_epi64x((g.add(r * 4) as *const i64).read_unaligned());
                        for (x, &bj) in sr.iter_mut().zip(&b) {
                            *x = _mm256_add_epi32(*x, _mm256_madd_epi16(a, bj));
                        }
                    }
                }
            }
            for (r, sr) in s.iter().enumerate() {
                for j in 0..2 {
                    // [c0 c1 c4 c5 | c2 c3 c6 c7] → c0..c7.
                    let h = _mm256_hadd_epi32(sr[2 * j], sr[2 * j + 1]);
                    let h = _mm256_permute4x64_epi64(h, 0xD8);
                    // SAFETY: row r0 + r, 8 columns of the tile.
                    unsafe {
                        _mm256_storeu_si256(
                            acc[r0 + r].as_mut_ptr().add(ch * 16 + 8 * j) as *mut __m256i,
                            h,
                        )
                    };
                }
            }
        }
    }
}

fn portable_tile(pa: &[u8], pb: &[u8], k4: usize, a_unsigned: bool, acc: &mut [[i32; NR]; MR]) {
    for q in 0..k4 {
        let ga = &pa[q * MR * 4..(q + 1) * MR * 4];
        let gb = &pb[q * NR * 4..(q + 1) * NR * 4];
        for (r, row) in acc.iter_mut().enumerate() {
            let av: [i32; 4] = std::array::from_fn(|j| stored_value(ga[r * 4 + j], a_unsigned));
            for (c, x) in row.iter_mut().enumerate() {
                let bv = &gb[c * 4..c * 4 + 4];
                *x += av[0] * stored_value(bv[0], !a_unsigned)
                    + av[1] * stored_value(bv[1], !a_unsigned)
                    + av[2] * stored_value(bv[2], !a_unsigned)
                    + av[3] * stored_value(bv[3], !a_unsigned);
            }
        }
    }
}

/// The VNNI tile: per group of 4 depths, two vectors of B (32 columns × 4
/// bytes) and one broadcast dword of A per row, 16 `vpdpbusd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_tile<const A_UNSIGNED: bool>(
    pa: &[u8],
    pb: &[u8],
    k4: usize,
    acc: &mut [[i32; NR]; MR],
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's contract.
    let c = unsafe { vnni_sums::<A_UNSIGNED>(pa, pb, k4) };
    for (r, cr) in c.iter().enumerate() {
        // SAFETY: each row of `acc` holds NR = 32 i32s.
        unsafe {
            _mm512_storeu_si512(acc[r].as_mut_ptr() as *mut _, cr[0]);
            _mm512_storeu_si512(acc[r].as_mut_ptr().add(16) as *mut _, cr[1]);
        }
    }
}

/// The sums of [`vnni_tile`] in registers: per row, two vectors of 16
/// columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn vnni_sums<const A_UNSIGNED: bool>(
    pa: &[u8],
    pb: &[u8],
    k4: usize,
) -> [[std::arch::x86_64::__m512i; 2]; MR] {
    use std::arch::x86_64::*;
    let mut c = [[_mm512_setzero_si512(); 2]; MR];
    let (mut ap, mut bp) = (pa.as_ptr(), pb.as_ptr());
    for _ in 0..k4 {
        // SAFETY: each group is MR·4 bytes of A and NR·4 bytes of B, within
        // the panels (k4 groups each).
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_si512(bp as *const _),
                _mm512_loadu_si512(bp.add(64) as *const _),
            )
        };
        for (r, cr) in c.iter_mut().enumerate() {
            // SAFETY: as above.
            let av = _mm512_set1_epi32(unsafe { (ap.add(r * 4) as *const i32).read_unaligned() });
            if A_UNSIGNED {
                cr[0] = _mm512_dpbusd_epi32(cr[0], av, b0);
                cr[1] = _mm512_dpbusd_epi32(cr[1], av, b1);
            } else {
                cr[0] = _mm512_dpbusd_epi32(cr[0], b0, av);
                cr[1] = _mm512_dpbusd_epi32(cr[1], b1, av);
            }
        }
        // SAFETY: stays within the panels or one past their end.
        unsafe {
            ap = ap.add(MR * 4);
            bp = bp.add(NR * 4);
        }
    }
    c
}

/// One column panel's share of the output stage, gathered once per panel
/// (not per tile: with a short K, gathering them per tile cost more than
/// the products) into tile-sized arrays, so the per-row loops are plain
/// arithmetic on fixed-size arrays (vectorized).
struct Columns {
    n0: usize,
    /// Real columns in this panel.
    cols: usize,
    colsum: [i32; NR],
    zb: [i32; NR],
    bias: [i32; NR],
    scale: Option<[f32; NR]>,
}

impl Columns {
    #[inline(always)]
    fn new(b: &Packed, g: &QGemm, n0: usize) -> Columns {
        let cols = NR.min(b.count - n0);
        let gather = |v: &[i32]| {
            let mut out = [0i32; NR];
            for (c, o) in out.iter_mut().enumerate().take(cols) {
                *o = pick(v, n0 + c);
            }
            out
        };
        let scale = match g.out {
            QOut::Requant {
                mult,
                per_row: false,
                ..
            } => {
                let mut out = [0f32; NR];
                for (c, o) in out.iter_mut().enumerate().take(cols) {
                    *o = pickf(mult, n0 + c);
                }
                Some(out)
            }
            _ => None,
        };
        Columns {
            n0,
            cols,
            colsum: gather(&b.sums),
            zb: gather(g.zb),
            bias: match g.bias {
                Some(bias) if !g.bias_per_row => gather(bias),
                _ => [0; NR],
            },
            scale,
        }
    }
}

/// Corrects a tile's sums for the zero points and the bias and writes it
/// through the output stage.
#[inline(always)]
fn store(a: &Packed, g: &QGemm, m0: usize, cols: &Columns, acc: &[[i32; NR]; MR]) {
    let rows = MR.min(a.count - m0);
    let k = a.k as i32;
    let n0 = cols.n0;
    for (r, row) in acc.iter().enumerate().take(rows) {
        let m = m0 + r;
        let za = pick(g.za, m);
        // Σ(a-za)(b-zb) = Σab - za·Σb - zb·Σa + K·za·zb, with t = K·za - Σa.
        let t = k * za - a.sums[m];
        let row_bias = match g.bias {
            Some(bias) if g.bias_per_row => pick(bias, m),
            _ => 0,
        };
        // One expression per element, used where it is stored: through an
        // array on the stack, the 512-bit values were stored and reloaded
        // (two 256-bit halves on Zen 4, which store forwarding does not
        // serve as one load), a stall per row that made a short-K
        // product's output stage cost more than its products.
        let v = |c: usize| row[c] - za * cols.colsum[c] + cols.zb[c] * t + cols.bias[c] + row_bias;
        let at = m * g.ldc + n0;
        match g.out {
            QOut::I32 { out } => {
                // SAFETY: (m, n0..n0 + cols) is inside C; tiles are disjoint.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.add(at), cols.cols) };
                if let Ok(dst) = <&mut [i32; NR]>::try_from(&mut *dst) {
                    // A whole row at a constant length (vectorized).
                    for (c, d) in dst.iter_mut().enumerate() {
                        *d = v(c);
                    }
                } else {
                    for (c, d) in dst.iter_mut().enumerate() {
                        *d = v(c);
                    }
                }
            }
            QOut::Requant {
                mult,
                zero,
                lo,
                hi,
                out,
                ..
            } => {
                let s: [f32; NR] = cols.scale.unwrap_or([pickf(mult, m); NR]);
                let (flo, fhi) = ((lo - zero) as f32, (hi - zero) as f32);
                let q = |c: usize| (round_clamped(v(c) as f32 * s[c], flo, fhi) + zero) as u8;
                // SAFETY: as above.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.add(at), cols.cols) };
                if let Ok(dst) = <&mut [u8; NR]>::try_from(&mut *dst) {
                    // A whole row at a constant length (vectorized).
                    for (c, d) in dst.iter_mut().enumerate() {
                        *d = q(c);
                    }
                } else {
                    for (c, d) in dst.iter_mut().enumerate() {
                        *d = q(c);
                    }
                }
            }
        }
    }
}

/// `sat(round_half_even(x · mult) + zero)` into `lo..=hi`.
#[inline(always)]
pub fn requant(x: i32, mult: f32, zero: i32, lo: i32, hi: i32) -> i32 {
    round_clamped(x as f32 * mult, (lo - zero) as f32, (hi - zero) as f32) + zero
}

/// `x` saturated to `lo..=hi` (integer bounds, so rounding commutes with
/// it; NaN becomes `lo`), rounded half to even, as i32 — in operations
/// that vectorize: adding 1.5·2²³ leaves no fraction bits (the FPU rounds
/// half to even), and the integer is read from the sum's low mantissa bits
/// instead of a saturating float-to-int conversion (scalar code with
/// branches; `f32::round_ties_even` is a libm call on this crate's SSE2
/// baseline).
#[inline(always)]
pub fn round_clamped(x: f32, lo: f32, hi: f32) -> i32 {
    const MAGIC: f32 = 12_582_912.0;
    let c = x.max(lo).min(hi);
    (c + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Seeded pseudo-random bytes (the quantized kernels' test data).
    pub(in crate::cpu::kernels) fn lcg_bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 33) as u8
            })
            .collect()
    }

    /// The word-wise row packer gives exactly the element-wise one's
    /// panels and sums.
    #[test]
    fn from_rows_packs_as_new_does() {
        for (count, k, ld) in [(1, 1, 1), (5, 7, 9), (MR + 3, 33, 33), (2 * MR, 64, 70)] {
            let src = lcg_bytes(count as u64 * 31 + k as u64, count * ld);
            for from in [Int8::U8, Int8::I8] {
                for unsigned in [true, false] {
                    let a = Packed::new(count, k, MR, from, unsigned, |r, kk| src[r * ld + kk]);
                    let b = Packed::from_rows(count, k, &src, ld, from, unsigned);
                    assert_eq!(a.data, b.data, "{count}x{k} {from:?} {unsigned}");
                    assert_eq!(a.sums, b.sums, "{count}x{k} {from:?} {unsigned}");
                }
            }
        }
    }

    /// The B packers (matrix rows and generated rows; vector whole
    /// panels, portable partial ones) give the element-wise packer's
    /// panels and column sums.
    #[test]
    fn b_packers_pack_as_new_does() {
        for (k, n) in [(1, 1), (5, 31), (7, 32), (9, 33), (16, 64), (13, 100)] {
            let src = lcg_bytes(k as u64 * 7 + n as u64, k * n);
            for from in [Int8::U8, Int8::I8] {
                for unsigned in [true, false] {
                    let want = Packed::new(n, k, NR, from, unsigned, |c, kk| src[kk * n + c]);
                    let mut rows = Packed::empty();
                    rows.pack_b_rows(&src, k, n, n, from, unsigned);
                    let mut generated = Packed::empty();
                    let mut staging = vec![];
                    generated.pack_b_generated(k, n, from, unsigned, &mut staging, |kk, row| {
                        row.copy_from_slice(&src[kk * n..(kk + 1) * n])
                    });
                    for got in [&rows, &generated] {
                        assert_eq!(got.data, want.data, "{k}x{n} {from:?} {unsigned}");
                        assert_eq!(got.sums, want.sums, "{k}x{n} {from:?} {unsigned}");
                    }
                }
            }
        }
    }

    fn val(b: u8, t: Int8) -> i32 {
        match t {
            Int8::U8 => b as i32,
            Int8::I8 => b as i8 as i32,
        }
    }

    /// Every mix of u8/i8, odd sizes (padding in M, N and K), per-row and
    /// per-column zero points, bias: the exact sums, on whichever path
    /// this CPU takes and on the portable one.
    #[test]
    fn exact_against_naive() {
        for (m, k, n) in [(1, 1, 1), (3, 7, 5), (9, 33, 37), (17, 64, 70), (8, 4, 32)] {
            for (ta, tb) in [
                (Int8::U8, Int8::I8),
                (Int8::I8, Int8::U8),
                (Int8::U8, Int8::U8),
                (Int8::I8, Int8::I8),
            ] {
                let av = lcg_bytes(1 + m as u64, m * k);
                let bv = lcg_bytes(2 + n as u64, k * n);
                let za: Vec<i32> = (0..m).map(|i| val(i as u8 * 37, ta)).collect();
                let zb: Vec<i32> = vec![val(3, tb)];
                let bias: Vec<i32> = (0..n).map(|i| i as i32 * 7 - 50).collect();
                for a_unsigned in [true, false] {
                    let pa = Packed::new(m, k, MR, ta, a_unsigned, |r, kk| av[r * k + kk]);
                    let mut pb = Packed::empty();
                    pb.pack_b_rows(&bv, k, n, n, tb, !a_unsigned);
                    let zas: Vec<i32> = za
                        .iter()
                        .map(|&z| shifted_zero(z, ta, a_unsigned))
                        .collect();
                    let zbs: Vec<i32> = zb
                        .iter()
                        .map(|&z| shifted_zero(z, tb, !a_unsigned))
                        .collect();
                    let mut out = vec![0i32; m * n];
                    let g = QGemm {
                        za: &zas,
                        zb: &zbs,
                        bias: Some(&bias),
                        bias_per_row: false,
                        ldc: n,
                        out: QOut::I32 {
                            out: out.as_mut_ptr(),
                        },
                    };
                    qgemm(&pa, &pb, &g, 2);
                    let mut port = vec![[[0i32; NR]; MR]; 1];
                    for i in 0..m {
                        for j in 0..n {
                            let want: i32 = (0..k)
                                .map(|kk| {
                                    (val(av[i * k + kk], ta) - za[i])
                                        * (val(bv[kk * n + j], tb) - zb[0])
                                })
                                .sum::<i32>()
                                + bias[j];
                            assert_eq!(
                                out[i * n + j],
                                want,
                                "{ta:?}x{tb:?} {m}x{k}x{n} at {i},{j}"
                            );
                        }
                    }
                    // The portable tile agrees with the one that ran.
                    portable_tile(pa.panel(0), pb.panel(0), pa.k4(), a_unsigned, &mut port[0]);
                    let mut fast = [[0i32; NR]; MR];
                    tile(&pa, &pb, 0, 0, Isa::detect(), &mut fast);
                    assert_eq!(port[0], fast);
                    // So does the AVX2 one wherever the CPU runs it (on a
                    // VNNI CPU too, which would not choose it).
                    #[cfg(target_arch = "x86_64")]
                    if is_x86_feature_detected!("avx2") {
                        let mut split = pa.clone();
                        split.widen();
                        let mut avx2 = [[0i32; NR]; MR];
                        tile(&split, &pb, 0, 0, Isa::Avx2, &mut avx2);
                        assert_eq!(port[0], avx2, "{ta:?}x{tb:?} {m}x{k}x{n} avx2");
                    }
                }
            }
        }
    }

    /// The requantizing output stage (the in-register VNNI one for whole
    /// tiles, the array one for partial tiles and other CPUs) gives what
    /// [`requant`] gives on the exact sums: scales per row and per column,
    /// per-row zero points, an activation's bounds, signed output.
    #[test]
    fn requantized_products_match_requant_of_exact_sums() {
        for (m, k, n) in [(8, 16, 32), (17, 36, 70), (3, 5, 96), (16, 64, 64)] {
            let av = lcg_bytes(7 + m as u64, m * k);
            let bv = lcg_bytes(8 + n as u64, k * n);
            // Per-row zero points, then none (symmetric weights: the
            // output stage's short form).
            let za: Vec<i32> = (0..m).map(|i| (i as i32 % 5) - 2).collect();
            let zb = [131];
            for za in [za.clone(), vec![0; m]] {
                let bias: Vec<i32> = (0..m).map(|i| i as i32 * 31 - 90).collect();
                let exact: Vec<i32> = (0..m * n)
                    .map(|at| {
                        let (i, j) = (at / n, at % n);
                        (0..k)
                            .map(|kk| {
                                (av[i * k + kk] as i8 as i32 - za[i])
                                    * (bv[kk * n + j] as i32 - zb[0])
                            })
                            .sum::<i32>()
                            + bias[i]
                    })
                    .collect();
                let pa = Packed::new(m, k, MR, Int8::I8, false, |r, kk| av[r * k + kk]);
                let mut pb = Packed::empty();
                pb.pack_b_rows(&bv, k, n, n, Int8::U8, true);
                let row_mult: Vec<f32> = (0..m).map(|i| 0.002 * (i + 1) as f32).collect();
                let col_mult: Vec<f32> = (0..n).map(|j| 0.001 * (j % 7 + 1) as f32).collect();
                for (mult, per_row, zero, lo, hi) in [
                    (&row_mult, true, 7, 0, 255),
                    (&col_mult, false, 128, 128, 200),
                    (&row_mult, true, -3, -128, 127),
                ] {
                    let mut out = vec![0u8; m * n];
                    let g = QGemm {
                        za: &za,
                        zb: &zb,
                        bias: Some(&bias),
                        bias_per_row: true,
                        ldc: n,
                        out: QOut::Requant {
                            mult,
                            per_row,
                            zero,
                            lo,
                            hi,
                            out: out.as_mut_ptr(),
                        },
                    };
                    qgemm(&pa, &pb, &g, 1);
                    for (at, &got) in out.iter().enumerate() {
                        let (i, j) = (at / n, at % n);
                        let s = if per_row { mult[i] } else { mult[j] };
                        let want = requant(exact[at], s, zero, lo, hi) as u8;
                        assert_eq!(got, want, "{m}x{k}x{n} per_row {per_row} at {i},{j}");
                    }
                }
            }
        }
    }

    /// The AVX2 tile is exact where `vpmaddubsw` would saturate
    /// (255·127 + 255·127 > i16), over long K, with either operand
    /// unsigned.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_tile_is_exact_at_the_extremes() {
        if !is_x86_feature_detected!("avx2") {
            eprintln!("skipped: no AVX2");
            return;
        }
        let (m, n) = (MR, NR);
        for k in [4, 257, 600] {
            for a_unsigned in [false, true] {
                // Alternating extremes of A's stored domain against B's.
                let (a_ext, b_ext): ([u8; 2], [u8; 2]) = if a_unsigned {
                    ([255, 255], [0x80, 0x7f])
                } else {
                    ([0x7f, 0x80], [255, 255])
                };
                let av: Vec<u8> = (0..m * k).map(|i| a_ext[(i / k + i / 2) % 2]).collect();
                let bv: Vec<u8> = (0..k * n).map(|i| b_ext[(i / n) % 3 % 2]).collect();
                // Bytes already in their stored domains: no flips.
                let as_type = |unsigned| if unsigned { Int8::U8 } else { Int8::I8 };
                let mut pa = Packed::new(m, k, MR, as_type(a_unsigned), a_unsigned, |r, kk| {
                    av[r * k + kk]
                });
                pa.widen();
                let mut pb = Packed::empty();
                pb.pack_b_rows(&bv, k, n, n, as_type(!a_unsigned), !a_unsigned);
                let mut got = [[0i32; NR]; MR];
                tile(&pa, &pb, 0, 0, Isa::Avx2, &mut got);
                let stored = |b: u8, unsigned: bool| stored_value(b, unsigned);
                for (i, row) in got.iter().enumerate() {
                    for (j, &x) in row.iter().enumerate() {
                        let want: i32 = (0..k)
                            .map(|kk| {
                                stored(av[i * k + kk], a_unsigned)
                                    * stored(bv[kk * n + j], !a_unsigned)
                            })
                            .sum();
                        assert_eq!(x, want, "k {k} a_unsigned {a_unsigned} at {i},{j}");
                    }
                }
            }
        }
    }

    #[test]
    fn small_rounding_is_half_to_even() {
        for i in -2000..2000 {
            let x = i as f32 * 0.25;
            let want = x.round_ties_even().clamp(-300.0, 300.0) as i32;
            assert_eq!(round_clamped(x, -300.0, 300.0), want, "{x}");
        }
        assert_eq!(round_clamped(f32::NAN, -5.0, 5.0), -5);
        assert_eq!(round_clamped(1e30, -5.0, 5.0), 5);
    }

    #[test]
    fn requant_rounds_half_to_even_and_saturates() {
        assert_eq!(requant(5, 0.5, 0, 0, 255), 2); // 2.5 → 2
        assert_eq!(requant(7, 0.5, 0, 0, 255), 4); // 3.5 → 4
        assert_eq!(requant(-3, 0.5, 10, 0, 255), 8); // -1.5 → -2
        assert_eq!(requant(i32::MAX, 1.0, 0, 0, 255), 255);
        assert_eq!(requant(-1000, 1.0, 128, 0, 255), 0);
        assert_eq!(requant(-1000, 1.0, 0, -128, 127), -128);
    }
}
