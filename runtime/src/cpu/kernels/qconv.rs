//! Quantized convolution (QLinearConv and ConvInteger) over 8-bit NCHW
//! tensors, 1-D or 2-D: groups with more than one input channel run as
//! integer GEMMs ([`super::qgemm`]) over the weights packed once and the
//! input's columns (the input itself for a 1×1 stride-1 conv, else an
//! im2col of bytes whose padding is the input's zero point, so padded taps
//! add `(zx - zx)·w = 0`); groups of one input channel (depthwise, with
//! any multiplier) run a direct kernel. The exact i32 sums leave through
//! the product's output stage: requantized per output channel, or i32.

use std::cell::Cell;

use super::common::for_each_unit;
use super::qgemm::{qgemm, requant, shifted_zero, Int8, Packed, QGemm, QOut, MR};

thread_local! {
    static SCRATCH: Cell<Option<(Vec<u8>, Packed)>> = const { Cell::new(None) };
}

/// What the sums become.
#[derive(Clone, Debug)]
pub enum QConvOut {
    /// `sat(round(acc · mult[m]) + zero)` in `lo..=hi` (8-bit result).
    Requant {
        mult: Vec<f32>,
        zero: i32,
        lo: i32,
        hi: i32,
    },
    /// The exact sums (ConvInteger).
    I32,
}

/// The geometry of a conv, 2-D (1-D as height 1).
#[derive(Clone, Debug)]
pub struct QConvGeometry {
    /// Input: batch, channels, height, width.
    pub x: [usize; 4],
    /// Output channels.
    pub m: usize,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub dilations: [usize; 2],
    /// Top, left (the bottom/right pads only shape the output).
    pub pads: [usize; 2],
    pub out: [usize; 2],
    pub group: usize,
}

/// A planned quantized conv; weights packed once, shared by every run.
#[derive(Clone, Debug)]
pub struct QConvPlan {
    g: QConvGeometry,
    x_type: Int8,
    /// The input's zero point (its own domain).
    x_zero: i32,
    /// GEMM path: per group, the weights as A (signed domain).
    packed: Vec<Packed>,
    /// Per output channel, the weights' zero point in A's domain.
    w_zero_a: Vec<i32>,
    /// Direct path: per output channel, its taps minus the zero point.
    direct: Option<Vec<i32>>,
    bias: Vec<i32>,
    out: QConvOut,
}

fn byte_value(b: u8, t: Int8) -> i32 {
    match t {
        Int8::U8 => b as i32,
        Int8::I8 => b as i8 as i32,
    }
}

impl QConvPlan {
    /// `w` is the weights' bytes `[m, c/group, kh, kw]` of type `w_type`,
    /// `w_zero` one value or one per output channel, `bias` per output
    /// channel (zeros without one).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        g: QConvGeometry,
        x_type: Int8,
        x_zero: i32,
        w: &[u8],
        w_type: Int8,
        w_zero: &[i32],
        bias: Vec<i32>,
        out: QConvOut,
    ) -> Result<QConvPlan, String> {
        let [_, c, _, _] = g.x;
        if g.group == 0 || !c.is_multiple_of(g.group) || !g.m.is_multiple_of(g.group) {
            return Err(format!(
                "group {} does not divide {c} input and {} output channels",
                g.group, g.m
            ));
        }
        let cg = c / g.group;
        let mg = g.m / g.group;
        let taps = g.kernel[0] * g.kernel[1];
        let k = cg * taps;
        if w.len() != g.m * k || bias.len() != g.m {
            return Err("quantized conv: weight or bias size does not match".into());
        }
        if !(w_zero.len() == 1 || w_zero.len() == g.m) {
            return Err("quantized conv: weight zero points per output channel or one".into());
        }
        if let QConvOut::Requant { mult, .. } = &out {
            if mult.len() != g.m {
                return Err("quantized conv: one multiplier per output channel".into());
            }
        }
        let wz = |m: usize| {
            if w_zero.len() == 1 {
                w_zero[0]
            } else {
                w_zero[m]
            }
        };
        let (packed, direct) = if cg == 1 {
            let d = (0..g.m)
                .flat_map(|m| (0..taps).map(move |t| (m, t)))
                .map(|(m, t)| byte_value(w[m * taps + t], w_type) - wz(m))
                .collect();
            (vec![], Some(d))
        } else {
            let p = (0..g.group)
                .map(|gi| Packed::new(mg, k, MR, w_type, false, |r, kk| w[(gi * mg + r) * k + kk]))
                .collect();
            (p, None)
        };
        let w_zero_a = (0..g.m)
            .map(|m| shifted_zero(wz(m), w_type, false))
            .collect();
        Ok(QConvPlan {
            g,
            x_type,
            x_zero,
            packed,
            w_zero_a,
            direct,
            bias,
            out,
        })
    }

    pub fn out_shape(&self) -> [usize; 4] {
        [self.g.x[0], self.g.m, self.g.out[0], self.g.out[1]]
    }

    pub fn ops(&self) -> f64 {
        let [n, c, _, _] = self.g.x;
        2.0 * (n * self.g.m * self.g.out[0] * self.g.out[1]) as f64
            * (c / self.g.group * self.g.kernel[0] * self.g.kernel[1]) as f64
    }

    /// Whether the input's columns are the input itself.
    fn pointwise(&self) -> bool {
        let g = &self.g;
        g.kernel == [1, 1] && g.strides == [1, 1] && g.pads == [0, 0]
    }

    /// Runs on `x` (the input's bytes), writing `out`: bytes (8-bit result)
    /// or i32s, as planned; `x_zero` replaces the planned input zero point
    /// (one read at run time).
    ///
    /// # Safety
    /// `out` must be valid for writes of [`QConvPlan::out_shape`]'s element
    /// count of the planned result type (u8/i8, or i32 aligned for it), and
    /// not aliased by `x`.
    pub unsafe fn run(
        &self,
        x: &[u8],
        x_zero: Option<i32>,
        out: *mut u8,
        threads: usize,
    ) -> Result<(), String> {
        let x_zero = x_zero.unwrap_or(self.x_zero);
        let g = &self.g;
        let [n, c, h, w] = g.x;
        if x.len() != n * c * h * w {
            return Err("quantized conv: input size does not match the plan".into());
        }
        let ohw = g.out[0] * g.out[1];
        if let Some(d) = &self.direct {
            if g.m == c && g.group == c {
                self.run_depthwise(x, x_zero, d, out, threads);
            } else {
                self.run_direct(x, x_zero, d, out, threads);
            }
            return Ok(());
        }
        let cg = c / g.group;
        let mg = g.m / g.group;
        let taps = g.kernel[0] * g.kernel[1];
        let k = cg * taps;
        let zb = [shifted_zero(x_zero, self.x_type, true)];
        // This thread's im2col and packing buffers, reused across runs
        // (fresh ones cost page faults on every call); taken out for the
        // call, so a re-entrant call makes its own.
        let (mut cols, mut pb) = SCRATCH
            .with(Cell::take)
            .unwrap_or_else(|| (vec![], Packed::empty()));
        for img in 0..n {
            for gi in 0..g.group {
                let xg = &x[(img * c + gi * cg) * h * w..(img * c + (gi + 1) * cg) * h * w];
                let src: &[u8] = if self.pointwise() {
                    xg
                } else {
                    cols.resize(k * ohw, 0);
                    self.im2col(xg, cg, x_zero as u8, &mut cols);
                    &cols
                };
                pb.pack_b_rows(src, k, ohw, ohw, self.x_type, true);
                let m0 = gi * mg;
                let at = (img * g.m + m0) * ohw;
                let qout = match &self.out {
                    QConvOut::Requant { mult, zero, lo, hi } => QOut::Requant {
                        mult: &mult[m0..m0 + mg],
                        per_row: true,
                        zero: *zero,
                        lo: *lo,
                        hi: *hi,
                        // SAFETY: `out` holds n·m·ohw bytes.
                        out: unsafe { out.add(at) },
                    },
                    QConvOut::I32 => QOut::I32 {
                        // SAFETY: `out` holds n·m·ohw i32s.
                        out: unsafe { (out as *mut i32).add(at) },
                    },
                };
                let gemm = QGemm {
                    za: &self.w_zero_a[m0..m0 + mg],
                    zb: &zb,
                    bias: Some(&self.bias[m0..m0 + mg]),
                    bias_per_row: true,
                    ldc: ohw,
                    out: qout,
                };
                qgemm(&self.packed[gi], &pb, &gemm, threads);
            }
        }
        SCRATCH.with(|c| c.set(Some((cols, pb))));
        Ok(())
    }

    /// The columns of one group's input `xg` (`cg` channels): row
    /// `(ci, i, j)`, column `(oh, ow)`; taps outside the input read the
    /// input's zero point.
    /// `pad` is the zero point's own byte.
    fn im2col(&self, xg: &[u8], cg: usize, pad: u8, cols: &mut [u8]) {
        let g = &self.g;
        let [_, _, h, w] = g.x;
        let [oh, ow] = g.out;
        let mut row = 0;
        for ci in 0..cg {
            let plane = &xg[ci * h * w..(ci + 1) * h * w];
            for i in 0..g.kernel[0] {
                for j in 0..g.kernel[1] {
                    let dst = &mut cols[row * oh * ow..(row + 1) * oh * ow];
                    let s = g.strides[1];
                    let off = (j * g.dilations[1]) as isize - g.pads[1] as isize;
                    // Outputs whose tap lands inside a row: lo..hi.
                    let lo = if off >= 0 {
                        0
                    } else {
                        ((-off) as usize).div_ceil(s)
                    };
                    let hi = if w as isize - off <= 0 {
                        0
                    } else {
                        ((w as isize - off) as usize).div_ceil(s).min(ow)
                    }
                    .max(lo);
                    for y in 0..oh {
                        let iy =
                            (y * g.strides[0] + i * g.dilations[0]) as isize - g.pads[0] as isize;
                        let line = &mut dst[y * ow..(y + 1) * ow];
                        if iy < 0 || iy >= h as isize {
                            line.fill(pad);
                            continue;
                        }
                        let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                        line[..lo].fill(pad);
                        line[hi..].fill(pad);
                        let first = (lo as isize * s as isize + off) as usize;
                        if s == 1 {
                            line[lo..hi].copy_from_slice(&src[first..first + (hi - lo)]);
                        } else {
                            for (t, d) in line[lo..hi].iter_mut().enumerate() {
                                *d = src[first + t * s];
                            }
                        }
                    }
                    row += 1;
                }
            }
        }
    }

    /// Depthwise (one output channel per input channel): channels-last,
    /// so the taps' products vectorize over channels whatever the spatial
    /// size (mobile nets' 7×7 and 14×14 maps leave NCHW rows too short).
    /// The input is copied once to `[h + pads][w + pads][c]` as `x - zx`
    /// in i16 with zeros around it (a padded tap adds `0·w`), the taps
    /// transposed to `[tap][c]`; each output pixel sums its taps over all
    /// channels, then is requantized into the NCHW result.
    fn run_depthwise(&self, x: &[u8], xz: i32, taps_of: &[i32], out: *mut u8, threads: usize) {
        let g = &self.g;
        let [n, c, h, w] = g.x;
        let [oh, ow] = g.out;
        let [kh, kw] = g.kernel;
        let taps = kh * kw;
        // Rows and columns the windows reach, padding included.
        let hp = ((oh - 1) * g.strides[0] + (kh - 1) * g.dilations[0] + 1).max(h + g.pads[0]);
        let wp = ((ow - 1) * g.strides[1] + (kw - 1) * g.dilations[1] + 1).max(w + g.pads[1]);
        let wt: Vec<i32> = (0..taps)
            .flat_map(|t| (0..c).map(move |ch| (t, ch)))
            .map(|(t, ch)| taps_of[ch * taps + t])
            .collect();
        let out_addr = out as usize;
        let parallel = threads > 1 && self.ops() >= 2.0e6;
        let avx2 = has_avx2();
        for img in 0..n {
            let mut xt = vec![0i32; hp * wp * c];
            for ch in 0..c {
                let plane = &x[(img * c + ch) * h * w..(img * c + ch + 1) * h * w];
                for y in 0..h {
                    for xx in 0..w {
                        let b = plane[y * w + xx];
                        xt[((y + g.pads[0]) * wp + xx + g.pads[1]) * c + ch] =
                            byte_value(b, self.x_type) - xz;
                    }
                }
            }
            let xt = &xt;
            let wt = &wt;
            for_each_unit(parallel, oh, |y| {
                let mut acc = vec![0i32; c];
                for xo in 0..ow {
                    acc.copy_from_slice(&self.bias);
                    for i in 0..kh {
                        let iy = y * g.strides[0] + i * g.dilations[0];
                        for j in 0..kw {
                            let ix = xo * g.strides[1] + j * g.dilations[1];
                            let src = &xt[(iy * wp + ix) * c..(iy * wp + ix + 1) * c];
                            let wv = &wt[(i * kw + j) * c..(i * kw + j + 1) * c];
                            mac(avx2, &mut acc, src, wv);
                        }
                    }
                    let at = img * c * oh * ow + y * ow + xo;
                    match &self.out {
                        QConvOut::Requant { mult, zero, lo, hi } => {
                            let o = out_addr as *mut u8;
                            for (ch, &a) in acc.iter().enumerate() {
                                let q = requant(a, mult[ch], *zero, *lo, *hi);
                                // SAFETY: inside the result; units write
                                // disjoint rows.
                                unsafe { o.add(at + ch * oh * ow).write(q as u8) };
                            }
                        }
                        QConvOut::I32 => {
                            let o = out_addr as *mut i32;
                            for (ch, &a) in acc.iter().enumerate() {
                                // SAFETY: as above.
                                unsafe { o.add(at + ch * oh * ow).write(a) };
                            }
                        }
                    }
                }
            });
        }
    }

    /// One input channel per group: each output channel sums its taps
    /// directly, rows of outputs at a time.
    fn run_direct(&self, x: &[u8], xz: i32, taps_of: &[i32], out: *mut u8, threads: usize) {
        let g = &self.g;
        let [n, c, h, w] = g.x;
        let [oh, ow] = g.out;
        let mg = g.m / g.group;
        let taps = g.kernel[0] * g.kernel[1];
        let xt = self.x_type;
        let out_addr = out as usize;
        let parallel = threads > 1 && self.ops() >= 2.0e6;
        for_each_unit(parallel, n * g.m, |u| {
            let (img, m) = (u / g.m, u % g.m);
            let ci = m / mg;
            let plane = &x[(img * c + ci) * h * w..(img * c + ci + 1) * h * w];
            let wt = &taps_of[m * taps..(m + 1) * taps];
            let mut acc = vec![0i32; ow];
            let mut xs = vec![0i32; w];
            for y in 0..oh {
                acc.fill(self.bias[m]);
                for i in 0..g.kernel[0] {
                    let iy = (y * g.strides[0] + i * g.dilations[0]) as isize - g.pads[0] as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let src = &plane[iy as usize * w..(iy as usize + 1) * w];
                    for (d, &b) in xs.iter_mut().zip(src) {
                        *d = byte_value(b, xt) - xz;
                    }
                    for j in 0..g.kernel[1] {
                        let wv = wt[i * g.kernel[1] + j];
                        let off = (j * g.dilations[1]) as isize - g.pads[1] as isize;
                        let s = g.strides[1];
                        // Outputs whose tap lands inside the row.
                        let lo = if off >= 0 {
                            0
                        } else {
                            ((-off) as usize).div_ceil(s)
                        };
                        let hi = if (w as isize - off) <= 0 {
                            0
                        } else {
                            ((w as isize - off) as usize).div_ceil(s).min(ow)
                        };
                        if s == 1 {
                            let base = off + lo as isize;
                            if lo < hi {
                                let xr = &xs[base as usize..base as usize + (hi - lo)];
                                for (a, &xv) in acc[lo..hi].iter_mut().zip(xr) {
                                    *a += xv * wv;
                                }
                            }
                        } else {
                            for (xo, a) in acc.iter_mut().enumerate().take(hi).skip(lo) {
                                *a += xs[(xo as isize * s as isize + off) as usize] * wv;
                            }
                        }
                    }
                }
                let at = ((img * g.m + m) * oh + y) * ow;
                match &self.out {
                    QConvOut::Requant { mult, zero, lo, hi } => {
                        let out = out_addr as *mut u8;
                        for (xo, &a) in acc.iter().enumerate() {
                            let q = requant(a, mult[m], *zero, *lo, *hi);
                            // SAFETY: inside the result; units write
                            // disjoint channels.
                            unsafe { out.add(at + xo).write(q as u8) };
                        }
                    }
                    QConvOut::I32 => {
                        let out = out_addr as *mut i32;
                        for (xo, &a) in acc.iter().enumerate() {
                            // SAFETY: as above.
                            unsafe { out.add(at + xo).write(a) };
                        }
                    }
                }
            }
        });
    }
}

/// Whether [`mac`] may take its AVX2 form (asked once per run, not per
/// tap).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `acc += x · w`, element by element: in AVX2 code where `avx2` says the
/// CPU has it (the crate's baseline, SSE2, has no 32-bit vector multiply).
fn mac(avx2: bool, acc: &mut [i32], x: &[i32], w: &[i32]) {
    #[inline(always)]
    fn plain(acc: &mut [i32], x: &[i32], w: &[i32]) {
        for ((a, &xv), &wv) in acc.iter_mut().zip(x).zip(w) {
            *a += xv * wv;
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        fn in_avx2(acc: &mut [i32], x: &[i32], w: &[i32]) {
            plain(acc, x, w)
        }
        if avx2 {
            // SAFETY: the caller checked the CPU has AVX2 (`has_avx2`).
            return unsafe { in_avx2(acc, x, w) };
        }
    }
    plain(acc, x, w)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cpu::kernels::qgemm::tests::lcg_bytes as bytes;

    /// The exact sums against a naive conv, on both paths, with pads,
    /// strides, dilations and groups.
    #[test]
    fn conv_integer_against_naive() {
        for (x, m, kernel, s, d, p, group) in [
            ([1, 4, 7, 9], 5, [3, 3], [1, 1], [1, 1], [1, 1], 1),
            ([2, 6, 8, 5], 4, [3, 2], [2, 1], [1, 2], [1, 0], 2),
            ([1, 3, 6, 6], 6, [3, 3], [2, 2], [1, 1], [1, 1], 3),
            ([1, 3, 5, 11], 3, [1, 5], [1, 3], [1, 1], [0, 2], 3),
            ([1, 8, 4, 4], 3, [1, 1], [1, 1], [1, 1], [0, 0], 1),
            ([2, 5, 7, 6], 5, [3, 3], [2, 2], [1, 1], [1, 1], 5),
            ([1, 4, 9, 9], 4, [5, 5], [1, 1], [1, 1], [2, 2], 4),
            ([1, 3, 6, 7], 3, [3, 2], [1, 2], [2, 1], [2, 0], 3),
        ] {
            let [n, c, h, w] = x;
            let out = [
                (h + 2 * p[0] - d[0] * (kernel[0] - 1) - 1) / s[0] + 1,
                (w + 2 * p[1] - d[1] * (kernel[1] - 1) - 1) / s[1] + 1,
            ];
            let cg = c / group;
            let xv = bytes(1, n * c * h * w);
            let wv = bytes(2, m * cg * kernel[0] * kernel[1]);
            let (xz, wz) = (131, -3);
            let bias: Vec<i32> = (0..m as i32).map(|i| i * 100 - 150).collect();
            let g = QConvGeometry {
                x,
                m,
                kernel,
                strides: s,
                dilations: d,
                pads: p,
                out,
                group,
            };
            let plan = QConvPlan::new(
                g,
                Int8::U8,
                xz,
                &wv,
                Int8::I8,
                &[wz],
                bias.clone(),
                QConvOut::I32,
            )
            .unwrap();
            let mut got = vec![0i32; n * m * out[0] * out[1]];
            // SAFETY: `got` holds the result's i32s.
            unsafe { plan.run(&xv, None, got.as_mut_ptr() as *mut u8, 2) }.unwrap();
            let mg = m / group;
            for img in 0..n {
                for mo in 0..m {
                    for y in 0..out[0] {
                        for xo in 0..out[1] {
                            let mut want = bias[mo];
                            let gi = mo / mg;
                            for ci in 0..cg {
                                for i in 0..kernel[0] {
                                    for j in 0..kernel[1] {
                                        let iy = (y * s[0] + i * d[0]) as isize - p[0] as isize;
                                        let ix = (xo * s[1] + j * d[1]) as isize - p[1] as isize;
                                        if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize
                                        {
                                            continue;
                                        }
                                        let xb = xv[((img * c + gi * cg + ci) * h + iy as usize)
                                            * w
                                            + ix as usize]
                                            as i32;
                                        let wb = wv
                                            [((mo * cg + ci) * kernel[0] + i) * kernel[1] + j]
                                            as i8
                                            as i32;
                                        want += (xb - xz) * (wb - wz);
                                    }
                                }
                            }
                            let at = ((img * m + mo) * out[0] + y) * out[1] + xo;
                            assert_eq!(
                                got[at], want,
                                "{x:?} m{m} {kernel:?} g{group} at {img},{mo},{y},{xo}"
                            );
                        }
                    }
                }
            }
        }
    }
}
