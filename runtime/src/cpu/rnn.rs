//! `RNN`, `GRU` and `LSTM` on the cpu backend, in their common form:
//! default activations (Tanh; Sigmoid/Tanh; Sigmoid/Tanh/Tanh), no clip,
//! no peepholes, no coupled gates, every sequence full length (the
//! lowering sends anything else to the interpreter, whose driver covers
//! all of it). Semantics are the interpreter's (`control/rnn.rs`), in
//! f32: per direction, the input projection of the whole sequence is one
//! matrix product, then each step is one product of the state with the
//! recurrence weights followed by the gates' elementwise math.

use super::kernels::matmul::{sgemm, Strides};
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
    pub w: &'a [f32],
    pub r: &'a [f32],
    /// R transposed per direction, `[D, hidden, gates·hidden]`, where the
    /// plan made it from a constant R (see [`transpose_recurrence`]).
    pub r_t: Option<&'a [f32]>,
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
            && ops.w.len() == dirs * gh * isz
            && ops.r.len() == dirs * gh * h
            && ops.r_t.is_none_or(|r| r.len() == dirs * gh * h)
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
        let mut xw = vec![0f32; seq * batch * gh];
        let mut hr = vec![0f32; batch * gh];
        let mut rh = vec![0f32; batch * h];
        let mut reset = vec![0f32; batch * h];
        let (mut hs, mut cs) = (vec![0f32; batch * h], vec![0f32; batch * h]);
        for d in 0..dirs {
            let wd = &ops.w[d * gh * isz..][..gh * isz];
            let rd = &ops.r[d * gh * h..][..gh * h];
            let bd = ops.b.map_or(&zeros[..], |b| &b[d * 2 * gh..][..2 * gh]);
            let (wb, rb) = bd.split_at(gh);
            // The whole sequence's input projection: X · W_dᵀ (rows in X's
            // order, so batch-major X needs no copy).
            sgemm(
                seq * batch,
                gh,
                isz,
                &mut xw,
                Strides::row_major(gh),
                false,
                ops.x,
                Strides::row_major(isz),
                wd,
                Strides { rs: 1, cs: isz },
                1.0,
                par,
            );
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
            // A few rows: broadcast products over R_dᵀ's rows (the gemm
            // crate packed R, 256 KiB for a 128-wide LSTM, again at every
            // step).
            let rt = ops
                .r_t
                .filter(|_| batch <= SMALL_BATCH)
                .map(|r| &r[d * gh * h..][..gh * h]);
            for step in 0..seq {
                let t = if reverse { seq - 1 - step } else { step };
                // H · R_dᵀ for the whole batch (the gates that use it).
                match rt {
                    Some(rt) => small_product(batch, h, hr_cols, &hs, rt, gh, &mut hr, gh),
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
                    match rt {
                        // Rows 2h..3h of R_d are columns 2h..3h of R_dᵀ.
                        Some(rt) => {
                            small_product(batch, h, h, &reset, &rt[2 * h..], gh, &mut rh, h)
                        }
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
                    if let Some(y) = out.y.as_deref_mut() {
                        y[self.y_at(t, d, b)..][..h].copy_from_slice(hs_b);
                    }
                }
            }
            for b in 0..batch {
                let at = self.state_at(d, b);
                if let Some(y_h) = out.y_h.as_deref_mut() {
                    y_h[at..][..h].copy_from_slice(&hs[b * h..][..h]);
                }
                if let Some(y_c) = out.y_c.as_deref_mut() {
                    y_c[at..][..h].copy_from_slice(&cs[b * h..][..h]);
                }
            }
        }
        Ok(())
    }
}

/// Batches up to this size take [`small_product`] for the recurrence.
const SMALL_BATCH: usize = 8;

/// R `[D, gates·hidden, hidden]` transposed per direction to `[D, hidden,
/// gates·hidden]`, the layout [`Operands::r_t`] takes: made once, by the
/// plan, from a constant R.
pub fn transpose_recurrence(r: &[f32], dirs: usize, hidden: usize) -> Vec<f32> {
    let rows = r.len().checked_div(dirs * hidden).unwrap_or(0);
    let mut t = vec![0f32; r.len()];
    for d in 0..dirs {
        let (src, dst) = (&r[d * rows * hidden..], &mut t[d * rows * hidden..]);
        for row in 0..rows {
            for c in 0..hidden {
                dst[c * rows + row] = src[row * hidden + c];
            }
        }
    }
    t
}

crate::cpu::simd_fn! {
    /// `out[i·ldo + j] = Σ_kk a[i·k + kk] · b[kk·ldb + j]` for `i < m`, `j
    /// < n`: a few rows against a row-major matrix, 128 columns at a time
    /// in registers (eight independent accumulator chains), each row of b
    /// read as one contiguous run (a GEMV per row of a).
    fn small_product(
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        b: &[f32],
        ldb: usize,
        out: &mut [f32],
        ldo: usize,
    ) {
        const NB: usize = 128;
        let mut j0 = 0;
        while j0 < n {
            let w = NB.min(n - j0);
            for i in 0..m {
                let mut acc = [0f32; NB];
                let row = &a[i * k..(i + 1) * k];
                if w == NB {
                    for (kk, &x) in row.iter().enumerate() {
                        let br: &[f32; NB] = b[kk * ldb + j0..kk * ldb + j0 + NB]
                            .try_into()
                            .expect("NB floats");
                        for j in 0..NB {
                            acc[j] = x.mul_add(br[j], acc[j]);
                        }
                    }
                } else {
                    for (kk, &x) in row.iter().enumerate() {
                        let br = &b[kk * ldb + j0..kk * ldb + j0 + w];
                        for (acc, &bv) in acc.iter_mut().zip(br) {
                            *acc = x.mul_add(bv, *acc);
                        }
                    }
                }
                out[i * ldo + j0..i * ldo + j0 + w].copy_from_slice(&acc[..w]);
            }
            j0 += w;
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
