//! `RNN`, `GRU` and `LSTM` on the cpu backend, in their common form:
//! default activations (Tanh; Sigmoid/Tanh; Sigmoid/Tanh/Tanh), no clip,
//! no peepholes, no coupled gates, every sequence full length (the
//! lowering sends anything else to the interpreter, whose driver covers
//! all of it). Semantics are the interpreter's (`control/rnn.rs`), in
//! f32: per direction, the input projection of the whole sequence is one
//! matrix product, then each step is one product of the state with the
//! recurrence weights followed by the gates' elementwise math.

use super::kernels::dequant::{QuantB, QuantBits, QuantGrid};
use super::kernels::matmul::{sgemm, Strides};
use super::kernels::packed::PackedB;
use super::kernels::parallelism;
use gemm::Parallelism;

/// Which cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    Rnn,
    Gru { linear_before_reset: bool },
    Lstm,
}

impl Recurrent {
    /// Gates per hidden unit (1, 3 or 4).
    pub fn cell_gates(&self) -> usize {
        self.cell.gates()
    }
}

impl Cell {
    fn gates(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru { .. } => 3,
            Cell::Lstm => 4,
        }
    }
}

/// A recurrent layer planned for static shapes.
#[derive(Debug, Clone)]
pub struct Recurrent {
    pub cell: Cell,
    pub seq: usize,
    pub batch: usize,
    pub input: usize,
    pub hidden: usize,
    pub dirs: usize,
    /// `direction = "reverse"` (with one direction).
    pub reverse: bool,
    /// ONNX `layout = 1`: X and Y batch-major.
    pub batch_major: bool,
}

use super::approx::{sigmoid, tanh};

/// The operands a run reads: X, W, R, and B, initial_h, initial_c where
/// given.
pub struct Operands<'a> {
    pub x: &'a [f32],
    /// W, unless [`Operands::packed`] has it.
    pub w: Option<&'a [f32]>,
    /// R, unless [`Operands::packed`] has it.
    pub r: Option<&'a [f32]>,
    /// The constant weights the plan packed.
    pub packed: &'a PackedWeights,
    pub b: Option<&'a [f32]>,
    pub h0: Option<&'a [f32]>,
    pub c0: Option<&'a [f32]>,
}

/// The results a run writes (those the node has).
pub struct Results<'a> {
    pub y: Option<&'a mut [f32]>,
    pub y_h: Option<&'a mut [f32]>,
    pub y_c: Option<&'a mut [f32]>,
}

impl Recurrent {
    fn x_row(&self, t: usize, b: usize) -> usize {
        if self.batch_major {
            b * self.seq + t
        } else {
            t * self.batch + b
        }
    }

    /// Offset of state `[d, b]` in Y_h/Y_c (layout-dependent).
    fn state_at(&self, d: usize, b: usize) -> usize {
        let h = self.hidden;
        if self.batch_major {
            (b * self.dirs + d) * h
        } else {
            (d * self.batch + b) * h
        }
    }

    fn y_at(&self, t: usize, d: usize, b: usize) -> usize {
        let h = self.hidden;
        if self.batch_major {
            ((b * self.seq + t) * self.dirs + d) * h
        } else {
            ((t * self.dirs + d) * self.batch + b) * h
        }
    }

    pub fn run(&self, ops: &Operands, out: &mut Results, threads: usize) -> Result<(), String> {
        let (seq, batch, isz, h, dirs) = (self.seq, self.batch, self.input, self.hidden, self.dirs);
        let g = self.cell.gates();
        let gh = g * h;
        let sizes_ok = ops.x.len() == seq * batch * isz
            && ops.w.is_none_or(|w| w.len() == dirs * gh * isz)
            && ops.r.is_none_or(|r| r.len() == dirs * gh * h)
            && ops.b.is_none_or(|b| b.len() == dirs * 2 * gh)
            && ops.h0.is_none_or(|s| s.len() == dirs * batch * h)
            && ops.c0.is_none_or(|s| s.len() == dirs * batch * h);
        if !sizes_ok {
            return Err("recurrent layer: operands of other sizes".into());
        }
        let par = parallelism(threads, 2.0 * (seq * batch * isz * gh) as f64);
        // GRU with the reset before the product takes the candidate gate's
        // recurrence from its own product (below), not from H · R_dᵀ.
        let reset_first = self.cell
            == Cell::Gru {
                linear_before_reset: false,
            };
        let hr_cols = if reset_first { 2 * h } else { gh };
        let zeros = vec![0f32; 2 * gh];
        // The weights as given, where the plan did not pack them.
        let packed_w = ops.packed.w_fits(dirs, gh, isz).then_some(ops.packed);
        let packed_r = ops
            .packed
            .r_fits(dirs, h, gh, hr_cols)
            .then_some(ops.packed);
        let w = match (packed_w, ops.w) {
            (Some(_), _) => None,
            (None, Some(w)) => Some(w),
            (None, None) => return Err("recurrent layer: W is missing".into()),
        };
        let r = match (packed_r, ops.r) {
            (Some(_), _) => None,
            (None, Some(r)) => Some(r),
            (None, None) => return Err("recurrent layer: R is missing".into()),
        };
        // Each direction's whole-sequence input projection, X · W_dᵀ (rows
        // in X's order, so batch-major X needs no copy), on every thread.
        let xws: Vec<Vec<f32>> = (0..dirs)
            .map(|d| {
                let mut xw = vec![0f32; seq * batch * gh];
                match (packed_w, w) {
                    (Some(p), _) => p.project(d, seq * batch, ops.x, isz, &mut xw, threads),
                    (None, Some(w)) => sgemm(
                        seq * batch,
                        gh,
                        isz,
                        &mut xw,
                        Strides::row_major(gh),
                        false,
                        ops.x,
                        Strides::row_major(isz),
                        &w[d * gh * isz..][..gh * isz],
                        Strides { rs: 1, cs: isz },
                        1.0,
                        par,
                    ),
                    (None, None) => unreachable!("W is checked above"),
                }
                xw
            })
            .collect();
        let want_y = out.y.is_some();
        // One direction's recurrence: its hidden states `[seq, batch, h]`
        // in time order (when Y is wanted) and its final H and C.
        let run_dir = |d: usize| -> Direction {
            let xw = &xws[d];
            let bd = ops.b.map_or(&zeros[..], |b| &b[d * 2 * gh..][..2 * gh]);
            let (wb, rb) = bd.split_at(gh);
            let mut hr = vec![0f32; batch * gh];
            let mut rh = vec![0f32; batch * h];
            let mut reset = vec![0f32; batch * h];
            let (mut hs, mut cs) = (vec![0f32; batch * h], vec![0f32; batch * h]);
            let mut ys = vec![0f32; if want_y { seq * batch * h } else { 0 }];
            for b in 0..batch {
                let (hs_b, cs_b) = (&mut hs[b * h..][..h], &mut cs[b * h..][..h]);
                let at = self.state_at(d, b);
                match ops.h0 {
                    Some(s) => hs_b.copy_from_slice(&s[at..][..h]),
                    None => hs_b.fill(0.0),
                }
                match ops.c0 {
                    Some(s) => cs_b.copy_from_slice(&s[at..][..h]),
                    None => cs_b.fill(0.0),
                }
            }
            let reverse = d == 1 || self.reverse;
            // A few rows: GEMVs over R packed once (the gemm crate
            // packed R, 256 KiB for a 128-wide LSTM, again at every step).
            let rd = r.map_or(&[][..], |r| &r[d * gh * h..][..gh * h]);
            for step in 0..seq {
                let t = if reverse { seq - 1 - step } else { step };
                // H · R_dᵀ for the whole batch (the gates that use it).
                match packed_r {
                    Some(p) => p.recur(d, false, batch, &hs, &mut hr, gh),
                    None => sgemm(
                        batch,
                        hr_cols,
                        h,
                        &mut hr,
                        Strides::row_major(gh),
                        false,
                        &hs,
                        Strides::row_major(h),
                        rd,
                        Strides { rs: 1, cs: h },
                        1.0,
                        Parallelism::None,
                    ),
                }
                if reset_first {
                    // (r ⊙ H) · R_hᵀ: the reset gate before the product.
                    for b in 0..batch {
                        let row = &hr[b * gh..][..gh];
                        for j in 0..h {
                            let xv = xw[self.x_row(t, b) * gh + h + j] + wb[h + j];
                            let r = sigmoid(xv + row[h + j] + rb[h + j]);
                            reset[b * h + j] = r * hs[b * h + j];
                        }
                    }
                    match packed_r {
                        Some(p) => p.recur(d, true, batch, &reset, &mut rh, h),
                        None => sgemm(
                            batch,
                            h,
                            h,
                            &mut rh,
                            Strides::row_major(h),
                            false,
                            &reset,
                            Strides::row_major(h),
                            &rd[2 * h * h..],
                            Strides { rs: 1, cs: h },
                            1.0,
                            Parallelism::None,
                        ),
                    }
                }
                for b in 0..batch {
                    let xr = &xw[self.x_row(t, b) * gh..][..gh];
                    let hrow = &hr[b * gh..][..gh];
                    let hs_b = &mut hs[b * h..][..h];
                    let cs_b = &mut cs[b * h..][..h];
                    let gates = Gates {
                        x: xr,
                        wb,
                        h: hrow,
                        rb,
                        reset_h: &rh[b * h..][..h],
                    };
                    cell_step(self.cell, &gates, hs_b, cs_b);
                    if want_y {
                        ys[(t * batch + b) * h..][..h].copy_from_slice(hs_b);
                    }
                }
            }
            Direction { ys, hs, cs }
        };
        // The directions are independent: with two threads they run side
        // by side (each step is a few GEMVs too small to split, so one
        // thread per direction is the parallelism a BiGRU/BiLSTM has).
        let done: Vec<Direction> = if dirs == 2 && threads > 1 {
            let (fw, bw) = rayon::join(|| run_dir(0), || run_dir(1));
            vec![fw, bw]
        } else {
            (0..dirs).map(run_dir).collect()
        };
        for (d, dir) in done.iter().enumerate() {
            if let Some(y) = out.y.as_deref_mut() {
                for t in 0..seq {
                    for b in 0..batch {
                        y[self.y_at(t, d, b)..][..h]
                            .copy_from_slice(&dir.ys[(t * batch + b) * h..][..h]);
                    }
                }
            }
            for b in 0..batch {
                let at = self.state_at(d, b);
                if let Some(y_h) = out.y_h.as_deref_mut() {
                    y_h[at..][..h].copy_from_slice(&dir.hs[b * h..][..h]);
                }
                if let Some(y_c) = out.y_c.as_deref_mut() {
                    y_c[at..][..h].copy_from_slice(&dir.cs[b * h..][..h]);
                }
            }
        }
        Ok(())
    }
}

/// One direction's results: hidden states `[seq, batch, hidden]` in time
/// order (empty when Y is not wanted), and the final H and C.
struct Direction {
    ys: Vec<f32>,
    hs: Vec<f32>,
    cs: Vec<f32>,
}

/// Batches up to this size take [`panel_product`] for the recurrence.
pub const SMALL_BATCH: usize = 8;

/// A layer's constant weights, packed once by the plan: W_dᵀ in the
/// kernel library's panels (the gemm crate packed W again at every run, a
/// third of the input projection's time), R for a small batch's steps;
/// or, for `kiln.DequantLSTM`, W kept 8-bit with its scales ([`QuantB`]).
#[derive(Debug, Clone, Default)]
pub struct PackedWeights {
    w: Option<InputWeights>,
    r: Option<PackedRecurrence>,
}

#[derive(Debug, Clone)]
enum InputWeights {
    F32(Vec<PackedB>),
    Quant(Vec<QuantB>),
}

/// A constant 8-bit weight `[dirs, gates·hidden, cols]` in the layout of
/// an ONNX recurrent layer's W or R, with a scale and zero point per
/// direction (`dirs` each) or per direction and row (`dirs·gates·hidden`).
pub struct QuantWeight<'a> {
    pub bits: QuantBits,
    /// Elements.
    pub len: usize,
    /// Element `i < len` of the weight.
    pub value: &'a dyn Fn(usize) -> i32,
    pub scales: &'a [f32],
    pub zeros: &'a [i32],
}

impl QuantWeight<'_> {
    /// The f32 values, `(q - zero) · scale` as DequantizeLinear computes
    /// them.
    fn dequantized(&self, rows: usize, cols: usize, dirs: usize) -> Result<Vec<f32>, String> {
        if self.len != dirs * rows * cols || self.zeros.len() != self.scales.len() {
            return Err(format!("{} weights for [{dirs}, {rows}, {cols}]", self.len));
        }
        let per_row = if self.scales.len() == dirs * rows {
            true
        } else if self.scales.len() == dirs {
            false
        } else {
            return Err(format!(
                "{} scales for {dirs} directions",
                self.scales.len()
            ));
        };
        Ok((0..self.len)
            .map(|i| {
                let p = if per_row { i / cols } else { i / (rows * cols) };
                ((self.value)(i) - self.zeros[p]) as f32 * self.scales[p]
            })
            .collect())
    }

    /// Direction d's weights transposed, `[cols, rows]`, as [`QuantB`].
    fn packed(&self, d: usize, rows: usize, cols: usize, dirs: usize) -> Result<QuantB, String> {
        if self.len != dirs * rows * cols {
            return Err(format!("{} weights for [{dirs}, {rows}, {cols}]", self.len));
        }
        let (grid, scales, zeros) = if self.scales.len() == dirs * rows && rows > 1 {
            let at = d * rows..(d + 1) * rows;
            (true, &self.scales[at.clone()], &self.zeros[at])
        } else if self.scales.len() == dirs {
            (false, &self.scales[d..d + 1], &self.zeros[d..d + 1])
        } else {
            return Err(format!(
                "{} scales for {dirs} directions of {rows} rows",
                self.scales.len()
            ));
        };
        if zeros.len() != scales.len() {
            return Err("as many zero points as scales needed".into());
        }
        // B[kk, c] = weight[d, c, kk]: element kk·rows + c of B.
        let base = d * rows * cols;
        QuantB::new(
            cols,
            rows,
            self.bits,
            |i| (self.value)(base + (i % rows) * cols + i / rows),
            scales,
            zeros,
            QuantGrid {
                group: cols,
                per_column: grid,
            },
        )
    }
}

impl PackedWeights {
    /// Packs what is given of a constant `W [dirs, gates·hidden, input]`
    /// and `R [dirs, gates·hidden, hidden]` for `layer` (R only for a
    /// batch of at most [`SMALL_BATCH`], W only where the host runs the
    /// kernel library's products).
    pub fn new(
        layer: &Recurrent,
        w: Option<&[f32]>,
        r: Option<&[f32]>,
    ) -> Result<PackedWeights, String> {
        let (dirs, h, isz) = (layer.dirs, layer.hidden, layer.input);
        let gh = layer.cell.gates() * h;
        let w = match w {
            Some(w) if PackedB::available() => {
                if w.len() != dirs * gh * isz {
                    return Err("recurrent layer: W of another size".into());
                }
                // W_d is [gates·hidden, input]: B = W_dᵀ is column-major.
                Some(InputWeights::F32(
                    (0..dirs)
                        .map(|d| PackedB::new(isz, gh, &w[d * gh * isz..][..gh * isz], 1, isz))
                        .collect(),
                ))
            }
            _ => None,
        };
        let r = match r {
            Some(r) if layer.batch <= SMALL_BATCH => {
                Some(PackedRecurrence::new(r, layer.cell, dirs, h)?)
            }
            _ => None,
        };
        Ok(PackedWeights { w, r })
    }

    /// Packs 8-bit W (kept 8-bit, unpacked block by block as the input
    /// projection runs) and R (dequantized here: a step's product with a
    /// few rows of H is bound by how fast R arrives from L2 or by
    /// unpacking it, and the f32 blocks measured faster than widening the
    /// bytes at every step, 1.3 against 1.5 ms on a 128-wide BiLSTM on
    /// Zen 3). Needs an AVX2/FMA host.
    pub fn quantized(
        layer: &Recurrent,
        w: &QuantWeight,
        r: &QuantWeight,
    ) -> Result<PackedWeights, String> {
        if !QuantB::available() {
            return Err("8-bit recurrent weights need AVX2 and FMA".into());
        }
        let (dirs, h, isz) = (layer.dirs, layer.hidden, layer.input);
        let gh = layer.cell.gates() * h;
        let w = (0..dirs)
            .map(|d| w.packed(d, gh, isz, dirs))
            .collect::<Result<_, _>>()?;
        let mut packed = PackedWeights::new(layer, None, Some(&r.dequantized(gh, h, dirs)?))?;
        packed.w = Some(InputWeights::Quant(w));
        Ok(packed)
    }

    /// Whether W is packed (the step need not read it).
    pub fn has_w(&self) -> bool {
        self.w.is_some()
    }

    /// Whether R is packed.
    pub fn has_r(&self) -> bool {
        self.r.is_some()
    }

    /// Whether W is packed for `dirs` directions of `gh x isz`.
    fn w_fits(&self, dirs: usize, gh: usize, isz: usize) -> bool {
        match &self.w {
            Some(InputWeights::F32(p)) => {
                p.len() == dirs && p.iter().all(|p| p.dims() == (isz, gh))
            }
            Some(InputWeights::Quant(q)) => {
                q.len() == dirs && q.iter().all(|q| q.dims() == (isz, gh))
            }
            None => false,
        }
    }

    /// Whether R is packed for a layer of `dirs` directions, `h` wide,
    /// `gh` columns, the product with H taking the first `hr_cols`.
    fn r_fits(&self, dirs: usize, h: usize, gh: usize, hr_cols: usize) -> bool {
        self.r
            .as_ref()
            .is_some_and(|p| p.fits(dirs, h, gh, hr_cols))
    }

    /// W's projection of `m` rows of `x` for direction d, into `out` (`m x
    /// gates·hidden`). W must be packed ([`PackedWeights::w_fits`]).
    fn project(&self, d: usize, m: usize, x: &[f32], lda: usize, out: &mut [f32], threads: usize) {
        match &self.w {
            Some(InputWeights::F32(p)) => {
                p[d].product(m, x, lda, out, threads, None, Default::default())
            }
            Some(InputWeights::Quant(q)) => q[d].product(m, x, lda, out, threads, None),
            None => unreachable!("project: W is not packed"),
        }
    }

    /// A step's product of `m` rows of `a` with direction d's R: the
    /// first part of its columns or (`second`) the rest, into `out` (row
    /// stride `ldo`). R must be packed ([`PackedWeights::r_fits`]).
    fn recur(&self, d: usize, second: bool, m: usize, a: &[f32], out: &mut [f32], ldo: usize) {
        match &self.r {
            Some(p) => panel_product(m, a, p.part(d, second), out, ldo),
            None => unreachable!("recur: R is not packed"),
        }
    }
}

/// A constant R laid out for the per-step product `H · R_dᵀ` of a small
/// batch: per direction, R_dᵀ (`[hidden, gates·hidden]`) in two parts of
/// columns, those of the product with H (all gates, or a GRU's first two
/// when its reset comes before the product) and the rest (that GRU's
/// candidate gate, multiplied with `r ⊙ H`); each part in blocks of
/// [`PackedRecurrence::width`] columns, a block's `hidden` rows stored
/// one after another. A step then streams each block in address order:
/// read row by row out of the plain transpose (a short run every
/// `gates·hidden` floats), the weights, re-read from L2 at every step,
/// came in at about 16 bytes a cycle, and the product was most of an
/// LSTM's time.
#[derive(Debug, Clone)]
struct PackedRecurrence {
    dirs: usize,
    hidden: usize,
    cols: usize,
    /// Columns in the first part.
    split: usize,
    /// Columns per block: as many as the accumulators that fit the
    /// registers (8 vectors).
    width: usize,
    /// `[dirs][cols·hidden]`, each direction's first part, then its second.
    data: Vec<f32>,
}

/// One part of one direction's packed R: `k x n` in blocks of `width`.
#[derive(Clone, Copy)]
struct Panels<'a> {
    k: usize,
    n: usize,
    width: usize,
    data: &'a [f32],
}

impl PackedRecurrence {
    /// Packs a constant `R [dirs, gates·hidden, hidden]` for `cell`.
    fn new(r: &[f32], cell: Cell, dirs: usize, hidden: usize) -> Result<PackedRecurrence, String> {
        let cols = cell.gates() * hidden;
        if r.len() != dirs * cols * hidden {
            return Err("recurrent layer: R of another size".into());
        }
        let split = if cell
            == (Cell::Gru {
                linear_before_reset: false,
            }) {
            2 * hidden
        } else {
            cols
        };
        let width = if crate::cpu::simd_wide() { 128 } else { 64 };
        let mut data = vec![0f32; r.len()];
        for d in 0..dirs {
            let src = &r[d * cols * hidden..][..cols * hidden];
            let dst = &mut data[d * cols * hidden..][..cols * hidden];
            for (c0, c1) in [(0, split), (split, cols)] {
                let part = &mut dst[c0 * hidden..c1 * hidden];
                let mut j0 = c0;
                while j0 < c1 {
                    let w = width.min(c1 - j0);
                    let block = &mut part[(j0 - c0) * hidden..][..w * hidden];
                    for kk in 0..hidden {
                        for j in 0..w {
                            // R_dᵀ[kk, j0 + j] = R_d[j0 + j, kk].
                            block[kk * w + j] = src[(j0 + j) * hidden + kk];
                        }
                    }
                    j0 += w;
                }
            }
        }
        Ok(PackedRecurrence {
            dirs,
            hidden,
            cols,
            split,
            width,
            data,
        })
    }

    /// Whether these are the weights of a layer of `dirs` directions,
    /// `hidden` wide, with `cols` columns split after `split`.
    fn fits(&self, dirs: usize, hidden: usize, cols: usize, split: usize) -> bool {
        (self.dirs, self.hidden, self.cols, self.split) == (dirs, hidden, cols, split)
    }

    /// Direction d's first (`second == false`) or second part.
    fn part(&self, d: usize, second: bool) -> Panels<'_> {
        let (h, cols, split) = (self.hidden, self.cols, self.split);
        let dir = &self.data[d * cols * h..][..cols * h];
        let (c0, c1) = if second { (split, cols) } else { (0, split) };
        Panels {
            k: h,
            n: c1 - c0,
            width: self.width,
            data: &dir[c0 * h..c1 * h],
        }
    }
}

/// `out[i·ldo + j] = Σ_kk a[i·k + kk] · B[kk, j]` for `i < m`, `j < n`,
/// B packed in blocks (a GEMV per row of a, one block at a time).
fn panel_product(m: usize, a: &[f32], b: Panels, out: &mut [f32], ldo: usize) {
    let k = b.k;
    let mut j0 = 0;
    while j0 < b.n {
        let w = b.width.min(b.n - j0);
        let block = &b.data[j0 * k..][..k * w];
        for i in 0..m {
            block_product(&a[i * k..][..k], block, &mut out[i * ldo + j0..][..w]);
        }
        j0 += w;
    }
}

crate::cpu::simd_fn! {
    /// `dst[j] = Σ_kk row[kk] · block[kk·w + j]` for `w = dst.len()`: the
    /// block's columns in registers (independent accumulator chains), its
    /// rows read in order.
    fn block_product(row: &[f32], block: &[f32], dst: &mut [f32]) {
        #[inline(always)]
        fn fixed<const W: usize>(row: &[f32], block: &[f32], dst: &mut [f32]) {
            let mut acc = [0f32; W];
            for (&x, br) in row.iter().zip(block.chunks_exact(W)) {
                let br: &[f32; W] = br.try_into().expect("W floats");
                for j in 0..W {
                    acc[j] = x.mul_add(br[j], acc[j]);
                }
            }
            dst.copy_from_slice(&acc);
        }
        match dst.len() {
            128 => fixed::<128>(row, block, dst),
            64 => fixed::<64>(row, block, dst),
            w => {
                let mut acc = [0f32; 128];
                for (&x, br) in row.iter().zip(block.chunks_exact(w)) {
                    for (acc, &bv) in acc.iter_mut().zip(br) {
                        *acc = x.mul_add(bv, *acc);
                    }
                }
                dst.copy_from_slice(&acc[..w]);
            }
        }
    }
}

/// One batch row's inputs to a step's gates: the input projection and its
/// bias, the recurrent product and its bias (`4h`, `3h` or `h` wide, in
/// ONNX's gate order), and, for a GRU with the reset before the product,
/// `(r ⊙ H) · R_hᵀ`.
struct Gates<'a> {
    x: &'a [f32],
    wb: &'a [f32],
    h: &'a [f32],
    rb: &'a [f32],
    reset_h: &'a [f32],
}

crate::cpu::simd_fn! {
    /// The cell's elementwise math for one batch row: the new hidden state
    /// (and, for an LSTM, cell state) in place, the gate loop vectorized
    /// with the branch-free sigmoid and tanh of [`super::approx`].
    fn cell_step(cell: Cell, g: &Gates, hs: &mut [f32], cs: &mut [f32]) {
        let h = hs.len();
        let xg = |k: usize| g.x[k] + g.wb[k];
        let hg = |k: usize| g.h[k] + g.rb[k];
        match cell {
            Cell::Rnn => {
                for (j, v) in hs.iter_mut().enumerate() {
                    *v = tanh(xg(j) + hg(j));
                }
            }
            Cell::Gru {
                linear_before_reset,
            } => {
                for j in 0..h {
                    let z = sigmoid(xg(j) + hg(j));
                    let pre = if linear_before_reset {
                        let r = sigmoid(xg(h + j) + hg(h + j));
                        xg(2 * h + j) + r * hg(2 * h + j)
                    } else {
                        xg(2 * h + j) + g.reset_h[j] + g.rb[2 * h + j]
                    };
                    hs[j] = (1.0 - z) * tanh(pre) + z * hs[j];
                }
            }
            Cell::Lstm => {
                // Gates in ONNX's order: i, o, f, c.
                for j in 0..h {
                    let i = sigmoid(xg(j) + hg(j));
                    let f = sigmoid(xg(2 * h + j) + hg(2 * h + j));
                    let c = tanh(xg(3 * h + j) + hg(3 * h + j));
                    let cn = f * cs[j] + i * c;
                    let o = sigmoid(xg(h + j) + hg(h + j));
                    cs[j] = cn;
                    hs[j] = o * tanh(cn);
                }
            }
        }
    }
}
