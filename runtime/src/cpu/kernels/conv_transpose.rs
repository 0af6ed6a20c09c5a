//! ConvTranspose (the gradient of a conv with respect to its input, the
//! upsampling layer of U-Nets, FCN decoders and text detectors) as a
//! product and a scatter, the way onnxruntime and Caffe run it:
//!
//! ```text
//! cols[(mo, kk), p] = Σ_c W[c, mo, kk] · x[c, p]        (one GEMM per group)
//! out[mo, p·stride - pad + kk·dilation] += cols[(mo, kk), p]   (col2im)
//! ```
//!
//! The product goes through the `gemm` crate ([`sgemm`]), which reads W's
//! transpose in place (W is `[C, M/g, k...]`, so `W_gᵀ` is a column-major
//! view) and packs it itself; the scatter walks one output channel per
//! work unit, a row of input positions at a time, so for unit strides
//! its inner loop is a contiguous add that LLVM vectorizes. Spatial rank
//! is any (1-D audio decoders, 2-D, 3-D volumes).

use rayon::prelude::*;

use super::common::{parallelism, with_scratch};
use super::matmul::{sgemm, Strides};

/// Where a ConvTranspose's windows go: per spatial axis, the stride,
/// dilation and the pad cut from the beginning of the full result, and
/// the output extent (ONNX's rule, resolved by the caller from
/// `kiln_ir::ops::geometry::Transposed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvTransposeAttrs {
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pad_begin: Vec<i64>,
    pub out_spatial: Vec<usize>,
    pub group: usize,
}

/// A planned ConvTranspose: `x [N, C, in...]`, `w [C, M/g, k...]`, an
/// optional bias `[M]`, result `[N, M, out...]`.
#[derive(Debug, Clone)]
pub struct ConvTransposePlan {
    n: usize,
    c: usize,
    /// Output channels per group.
    mg: usize,
    group: usize,
    input: Vec<usize>,
    kernel: Vec<usize>,
    out_shape: Vec<usize>,
    attrs: ConvTransposeAttrs,
    has_bias: bool,
}

/// Below this many scattered floats per run the scatter stays on one
/// thread.
const PAR_SCATTER: usize = 1 << 15;

impl ConvTransposePlan {
    pub fn new(
        x: &[usize],
        w: &[usize],
        has_bias: bool,
        attrs: &ConvTransposeAttrs,
    ) -> Result<ConvTransposePlan, String> {
        let r = x.len().checked_sub(2).filter(|&r| r > 0);
        let Some(r) = r else {
            return Err(format!("ConvTranspose input {x:?} has no spatial axes"));
        };
        if w.len() != x.len() {
            return Err(format!("ConvTranspose weights {w:?} for input {x:?}"));
        }
        let group = attrs.group.max(1);
        if w[0] != x[1] || !x[1].is_multiple_of(group) {
            return Err(format!(
                "ConvTranspose weights {w:?} do not fit input {x:?} with group {group}"
            ));
        }
        let rank_ok = |v: usize| v == r;
        if !rank_ok(attrs.strides.len())
            || !rank_ok(attrs.dilations.len())
            || !rank_ok(attrs.pad_begin.len())
            || !rank_ok(attrs.out_spatial.len())
        {
            return Err("ConvTranspose attributes of another rank".into());
        }
        if attrs.strides.contains(&0) || attrs.dilations.contains(&0) {
            return Err("ConvTranspose strides and dilations must be positive".into());
        }
        let mut out_shape = vec![x[0], w[1] * group];
        out_shape.extend(&attrs.out_spatial);
        Ok(ConvTransposePlan {
            n: x[0],
            c: x[1],
            mg: w[1],
            group,
            input: x[2..].to_vec(),
            kernel: w[2..].to_vec(),
            out_shape,
            attrs: attrs.clone(),
            has_bias,
        })
    }

    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    pub fn has_bias(&self) -> bool {
        self.has_bias
    }

    fn in_n(&self) -> usize {
        self.input.iter().product()
    }

    fn k_n(&self) -> usize {
        self.kernel.iter().product()
    }

    fn out_n(&self) -> usize {
        self.attrs.out_spatial.iter().product()
    }

    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.c * self.in_n() * self.mg * self.k_n()) as f64
    }

    /// Runs on `x`, `w` and `bias` of the planned shapes, writing all of
    /// `out`.
    pub fn run(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32], threads: usize) {
        let (cg, in_n, k_n, o_n) = (self.c / self.group, self.in_n(), self.k_n(), self.out_n());
        let rows = self.mg * k_n;
        let m = self.mg * self.group;
        assert_eq!(x.len(), self.n * self.c * in_n, "ConvTranspose: input size");
        assert_eq!(w.len(), self.c * rows, "ConvTranspose: weight size");
        assert_eq!(out.len(), self.n * m * o_n, "ConvTranspose: output size");
        assert!(
            bias.is_none_or(|b| b.len() == m),
            "ConvTranspose: bias size"
        );
        if out.is_empty() {
            return;
        }
        let par = parallelism(threads, 2.0 * (rows * in_n * cg) as f64);
        let scatter_par = threads > 1 && rows * in_n >= PAR_SCATTER;
        with_scratch(rows * in_n, |cols| {
            for b in 0..self.n {
                for g in 0..self.group {
                    let xg = &x[(b * self.c + g * cg) * in_n..][..cg * in_n];
                    let wg = &w[g * cg * rows..][..cg * rows];
                    // cols[rows, in_n] = W_gᵀ[rows, cg] · x_g[cg, in_n].
                    if cg == 0 {
                        cols.fill(0.0);
                    } else {
                        sgemm(
                            rows,
                            in_n,
                            cg,
                            cols,
                            Strides::row_major(in_n),
                            false,
                            wg,
                            Strides { rs: 1, cs: rows },
                            xg,
                            Strides::row_major(in_n),
                            1.0,
                            par,
                        );
                    }
                    let first = (b * m + g * self.mg) * o_n;
                    let dst = &mut out[first..][..self.mg * o_n];
                    let cols = &*cols;
                    let channel = |(mo, plane): (usize, &mut [f32])| {
                        plane.fill(bias.map_or(0.0, |bv| bv[g * self.mg + mo]));
                        self.scatter(&cols[mo * k_n * in_n..][..k_n * in_n], plane);
                    };
                    if scatter_par {
                        dst.par_chunks_mut(o_n).enumerate().for_each(channel);
                    } else {
                        dst.chunks_mut(o_n).enumerate().for_each(channel);
                    }
                }
            }
        });
    }

    /// Adds one output channel's columns (`[k_n][in_n]`) into its plane.
    fn scatter(&self, cols: &[f32], plane: &mut [f32]) {
        let r = self.input.len();
        let out = &self.attrs.out_spatial;
        let (last_in, last_out) = (self.input[r - 1], out[r - 1]);
        let in_rows = self.in_n() / last_in.max(1);
        let (s_last, d_last, p_last) = (
            self.attrs.strides[r - 1],
            self.attrs.dilations[r - 1],
            self.attrs.pad_begin[r - 1],
        );
        let mut kidx = vec![0usize; r];
        for src in cols.chunks_exact(self.in_n().max(1)).take(self.k_n()) {
            // Input positions along the last axis whose output lands
            // inside: o = i·s - p + k·d in [0, out).
            let shift = kidx[r - 1] as i64 * d_last as i64 - p_last;
            let (lo, hi) = valid_inputs(shift, s_last, last_in, last_out);
            let mut ridx = vec![0usize; r - 1];
            for row in 0..in_rows {
                if lo < hi {
                    if let Some(base) = self.row_offset(&ridx, &kidx) {
                        let o0 = (lo as i64 * s_last as i64 + shift) as usize;
                        let s = &src[row * last_in..][lo..hi];
                        let d = &mut plane[base + o0..];
                        if s_last == 1 {
                            for (o, v) in d[..s.len()].iter_mut().zip(s) {
                                *o += v;
                            }
                        } else {
                            for (o, v) in d.iter_mut().step_by(s_last).zip(s) {
                                *o += v;
                            }
                        }
                    }
                }
                next_index(&mut ridx, &self.input[..r - 1]);
            }
            next_index(&mut kidx, &self.kernel);
        }
    }

    /// The plane offset of the output row that input row `ridx` (all axes
    /// but the last) reaches through kernel position `kidx`; `None` when it
    /// falls outside.
    fn row_offset(&self, ridx: &[usize], kidx: &[usize]) -> Option<usize> {
        let out = &self.attrs.out_spatial;
        let r = out.len();
        let mut off = 0usize;
        for d in 0..r - 1 {
            let o = ridx[d] as i64 * self.attrs.strides[d] as i64 - self.attrs.pad_begin[d]
                + kidx[d] as i64 * self.attrs.dilations[d] as i64;
            if o < 0 || o >= out[d] as i64 {
                return None;
            }
            off = off * out[d] + o as usize;
        }
        Some(off * out[r - 1])
    }
}

/// The input range `lo..hi` whose outputs `i·s + shift` lie in `0..out`.
fn valid_inputs(shift: i64, s: usize, input: usize, out: usize) -> (usize, usize) {
    let s = s as i64;
    // Smallest i with i·s + shift >= 0.
    let lo = if shift >= 0 { 0 } else { (-shift + s - 1) / s };
    // Largest i with i·s + shift <= out - 1, plus one.
    let top = out as i64 - 1 - shift;
    let hi = if top < 0 { 0 } else { top / s + 1 };
    let hi = hi.min(input as i64);
    (lo.min(hi) as usize, hi.max(0) as usize)
}

/// Advances a row-major multi-index over `dims` (wrapping to zeros).
fn next_index(idx: &mut [usize], dims: &[usize]) {
    for d in (0..idx.len()).rev() {
        idx[d] += 1;
        if idx[d] < dims[d] {
            return;
        }
        idx[d] = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::kernels::common::testing::{check, lcg};

    /// The definition, one output element at a time.
    fn reference(
        x: &[f32],
        xs: &[usize],
        w: &[f32],
        ws: &[usize],
        bias: Option<&[f32]>,
        a: &ConvTransposeAttrs,
    ) -> Vec<f32> {
        let r = xs.len() - 2;
        let (n, c, mg) = (xs[0], xs[1], ws[1]);
        let (g, cg) = (a.group, c / a.group);
        let m = mg * g;
        let in_n: usize = xs[2..].iter().product();
        let k_n: usize = ws[2..].iter().product();
        let o_n: usize = a.out_spatial.iter().product();
        let mut out = vec![0f32; n * m * o_n];
        for b in 0..n {
            for mm in 0..m {
                let (gi, mo) = (mm / mg, mm % mg);
                for ci in 0..cg {
                    let cc = gi * cg + ci;
                    let mut iidx = vec![0usize; r];
                    for p in 0..in_n {
                        let mut kidx = vec![0usize; r];
                        for kk in 0..k_n {
                            let mut off = 0usize;
                            let mut ok = true;
                            for d in 0..r {
                                let o = iidx[d] as i64 * a.strides[d] as i64 - a.pad_begin[d]
                                    + kidx[d] as i64 * a.dilations[d] as i64;
                                if o < 0 || o >= a.out_spatial[d] as i64 {
                                    ok = false;
                                }
                                off = off * a.out_spatial[d] + o.max(0) as usize;
                            }
                            if ok {
                                out[(b * m + mm) * o_n + off] +=
                                    w[(cc * mg + mo) * k_n + kk] * x[(b * c + cc) * in_n + p];
                            }
                            next_index(&mut kidx, &ws[2..]);
                        }
                        next_index(&mut iidx, &xs[2..]);
                    }
                }
                if let Some(bv) = bias {
                    for v in &mut out[(b * m + mm) * o_n..][..o_n] {
                        *v += bv[mm];
                    }
                }
            }
        }
        out
    }

    fn case(xs: &[usize], ws: &[usize], a: ConvTransposeAttrs, bias: bool, threads: usize) {
        let x = lcg(1, xs.iter().product());
        let w = lcg(2, ws.iter().product());
        let m = ws[1] * a.group;
        let bv = bias.then(|| lcg(3, m));
        let plan = ConvTransposePlan::new(xs, ws, bias, &a).unwrap();
        let mut got = vec![f32::NAN; plan.out_shape().iter().product()];
        plan.run(&x, &w, bv.as_deref(), &mut got, threads);
        let want = reference(&x, xs, &w, ws, bv.as_deref(), &a);
        let scale = vec![1.0 + xs[1] as f32 / 4.0; want.len()];
        check(&got, &want, &scale, &format!("{xs:?} {ws:?} {a:?}"));
    }

    fn attrs(s: &[usize], d: &[usize], p: &[i64], o: &[usize], group: usize) -> ConvTransposeAttrs {
        ConvTransposeAttrs {
            strides: s.to_vec(),
            dilations: d.to_vec(),
            pad_begin: p.to_vec(),
            out_spatial: o.to_vec(),
            group,
        }
    }

    #[test]
    fn matches_the_definition() {
        // U-Net upsampling: 2x2 stride 2, windows that do not overlap.
        case(
            &[1, 8, 5, 6],
            &[8, 4, 2, 2],
            attrs(&[2, 2], &[1, 1], &[0, 0], &[10, 12], 1),
            true,
            1,
        );
        // Overlapping 4x4 stride 2 with pad 1 (DCGAN, FCN), two threads.
        case(
            &[2, 6, 7, 7],
            &[6, 5, 4, 4],
            attrs(&[2, 2], &[1, 1], &[1, 1], &[14, 14], 1),
            true,
            2,
        );
        // 3x3 stride 1 pad 1, groups, dilation, output padding's extra row.
        case(
            &[1, 6, 4, 5],
            &[6, 2, 3, 3],
            attrs(&[1, 2], &[2, 1], &[1, 0], &[6, 12], 3),
            false,
            1,
        );
        // Depthwise upsampling, 1-D, and 3-D.
        case(
            &[1, 4, 9],
            &[4, 1, 3],
            attrs(&[3], &[1], &[1], &[26], 4),
            true,
            1,
        );
        case(
            &[1, 3, 3, 4, 2],
            &[3, 2, 2, 3, 2],
            attrs(&[2, 1, 2], &[1, 1, 1], &[0, 1, 0], &[6, 4, 5], 1),
            true,
            2,
        );
        // An output cut by a negative begin pad and an explicit size.
        case(
            &[1, 2, 3, 3],
            &[2, 3, 3, 3],
            attrs(&[2, 2], &[1, 1], &[-1, 2], &[9, 4], 1),
            true,
            1,
        );
    }
}
