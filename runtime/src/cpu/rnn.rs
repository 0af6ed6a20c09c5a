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

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The operands a run reads: X, W, R, and B, initial_h, initial_c where
/// given.
pub struct Operands<'a> {
    pub x: &'a [f32],
    pub w: &'a [f32],
    pub r: &'a [f32],
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
            for step in 0..seq {
                let t = if reverse { seq - 1 - step } else { step };
                // H · R_dᵀ for the whole batch (the gates that use it).
                sgemm(
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
                );
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
                    sgemm(
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
                    );
                }
                for b in 0..batch {
                    let xr = &xw[self.x_row(t, b) * gh..][..gh];
                    let xg = |k: usize| xr[k] + wb[k];
                    let hrow = &hr[b * gh..][..gh];
                    let hg = |k: usize| hrow[k] + rb[k];
                    let hs_b = &mut hs[b * h..][..h];
                    let cs_b = &mut cs[b * h..][..h];
                    match self.cell {
                        Cell::Rnn => {
                            for (j, v) in hs_b.iter_mut().enumerate() {
                                *v = (xg(j) + hg(j)).tanh();
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
                                    xg(2 * h + j) + rh[b * h + j] + rb[2 * h + j]
                                };
                                hs_b[j] = (1.0 - z) * pre.tanh() + z * hs_b[j];
                            }
                        }
                        Cell::Lstm => {
                            // Gates in ONNX's order: i, o, f, c.
                            for j in 0..h {
                                let i = sigmoid(xg(j) + hg(j));
                                let f = sigmoid(xg(2 * h + j) + hg(2 * h + j));
                                let c = (xg(3 * h + j) + hg(3 * h + j)).tanh();
                                let cn = f * cs_b[j] + i * c;
                                let o = sigmoid(xg(h + j) + hg(h + j));
                                cs_b[j] = cn;
                                hs_b[j] = o * cn.tanh();
                            }
                        }
                    }
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
