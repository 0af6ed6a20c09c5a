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
            // Channels-last pays a transposition to fill vectors whose
            // rows would not; planar rows of 16 or more fill them as they are.
            if g.m == c && g.group == c && g.out[1] < 16 {
                self.run_channels_last(x, x_zero, d, out, threads);
            } else {
                self.run_planar(x, x_zero, d, out, threads);
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
                            strided_bytes(&mut line[lo..hi], &src[first..], s);
                        }
                    }
                    row += 1;
                }
            }
        }
    }

    /// Depthwise with small maps (one output channel per input channel,
    /// rows shorter than a vector): channels-last, so the taps' products
    /// vectorize over channels (mobile nets' 7×7 and 14×14 maps leave NCHW
    /// rows too short). The input is copied once to `[h + pads][w + pads][c]`
    /// as `x - zx` with zeros around it (a padded tap adds `0·w`), the taps
    /// transposed to `[tap][c]`; each output pixel sums its taps over all
    /// channels, then is requantized into the NCHW result.
    fn run_channels_last(&self, x: &[u8], xz: i32, taps_of: &[i32], out: *mut u8, threads: usize) {
        let g = &self.g;
        let [n, c, h, w] = g.x;
        let [oh, ow] = g.out;
        let [kh, kw] = g.kernel;
        let taps = kh * kw;
        let (hp, wp) = self.padded_extent();
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
            let (xt, wt) = (&xt, &wt);
            for_each_unit(parallel, oh, |y| {
                let at = img * c * oh * ow + y * ow;
                #[cfg(target_arch = "x86_64")]
                if avx2 {
                    // SAFETY: the CPU has AVX2 (`has_avx2`); the row lies
                    // inside the result and units write disjoint rows.
                    return unsafe { self.channels_last_row_avx2(xt, wt, y, out_addr, at) };
                }
                // SAFETY: as above.
                unsafe { self.channels_last_row(xt, wt, y, out_addr, at) }
            });
        }
    }

    /// One output row of [`QConvPlan::run_channels_last`], written at
    /// element `at` of the result (channel planes `oh·ow` apart).
    #[inline(always)]
    unsafe fn channels_last_row(&self, xt: &[i32], wt: &[i32], y: usize, out: usize, at: usize) {
        let g = &self.g;
        let c = g.x[1];
        let [oh, ow] = g.out;
        let [kh, kw] = g.kernel;
        let wp = self.padded_extent().1;
        let mut acc = vec![0i32; c];
        let mut q = vec![0u8; c];
        for xo in 0..ow {
            acc.copy_from_slice(&self.bias);
            for i in 0..kh {
                let iy = y * g.strides[0] + i * g.dilations[0];
                for j in 0..kw {
                    let ix = xo * g.strides[1] + j * g.dilations[1];
                    let src = &xt[(iy * wp + ix) * c..(iy * wp + ix + 1) * c];
                    let wv = &wt[(i * kw + j) * c..(i * kw + j + 1) * c];
                    for ((a, &xv), &wv) in acc.iter_mut().zip(src).zip(wv) {
                        *a += xv * wv;
                    }
                }
            }
            match &self.out {
                QConvOut::Requant { mult, zero, lo, hi } => {
                    for ((d, &a), &m) in q.iter_mut().zip(&acc).zip(mult) {
                        *d = requant(a, m, *zero, *lo, *hi) as u8;
                    }
                    let o = out as *mut u8;
                    for (ch, &b) in q.iter().enumerate() {
                        // SAFETY: the caller's row, inside the result.
                        unsafe { o.add(at + xo + ch * oh * ow).write(b) };
                    }
                }
                QConvOut::I32 => {
                    let o = out as *mut i32;
                    for (ch, &a) in acc.iter().enumerate() {
                        // SAFETY: as above.
                        unsafe { o.add(at + xo + ch * oh * ow).write(a) };
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn channels_last_row_avx2(
        &self,
        xt: &[i32],
        wt: &[i32],
        y: usize,
        out: usize,
        at: usize,
    ) {
        // SAFETY: the caller's contract.
        unsafe { self.channels_last_row(xt, wt, y, out, at) }
    }

    /// Rows and columns the windows reach, padding included.
    fn padded_extent(&self) -> (usize, usize) {
        let g = &self.g;
        let [_, _, h, w] = g.x;
        let [oh, ow] = g.out;
        let hp =
            ((oh - 1) * g.strides[0] + (g.kernel[0] - 1) * g.dilations[0] + 1).max(h + g.pads[0]);
        let wp =
            ((ow - 1) * g.strides[1] + (g.kernel[1] - 1) * g.dilations[1] + 1).max(w + g.pads[1]);
        (hp, wp)
    }

    /// One input channel per group, planar (NCHW), one input plane per
    /// unit with all its output channels: the plane is copied once as
    /// `x - zx` in i32 with zeros around it and its columns split by phase
    /// modulo the stride, so every tap of an output row reads one
    /// contiguous run and the row's sums vectorize over its width.
    fn run_planar(&self, x: &[u8], xz: i32, taps_of: &[i32], out: *mut u8, threads: usize) {
        let [n, c, _, _] = self.g.x;
        let out_addr = out as usize;
        let parallel = threads > 1 && self.ops() >= 2.0e6;
        let avx2 = has_avx2();
        for_each_unit(parallel, n * c, |u| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the CPU has AVX2 (`has_avx2`); units write the
                // disjoint output channels of their plane.
                return unsafe { self.planar_unit_avx2(x, xz, taps_of, out_addr, u) };
            }
            // SAFETY: as above.
            unsafe { self.planar_unit(x, xz, taps_of, out_addr, u) }
        });
    }

    /// Input plane `u` (image · channel) of [`QConvPlan::run_planar`].
    #[inline(always)]
    unsafe fn planar_unit(&self, x: &[u8], xz: i32, taps_of: &[i32], out: usize, u: usize) {
        let g = &self.g;
        let [_, c, h, w] = g.x;
        let [oh, ow] = g.out;
        let [kh, kw] = g.kernel;
        let [sh, sw] = g.strides;
        let [dh, dw] = g.dilations;
        let taps = kh * kw;
        let mg = g.m / g.group;
        let (img, ci) = (u / c, u % c);
        let (hp, wp) = self.padded_extent();
        // Padded column p sits in phase p % sw at p / sw.
        let seg = wp.div_ceil(sw);
        let mut xp = vec![0i32; hp * sw * seg];
        let plane = &x[u * h * w..(u + 1) * h * w];
        for (y, src) in plane.chunks_exact(w).enumerate() {
            let row = &mut xp[(y + g.pads[0]) * sw * seg..(y + g.pads[0] + 1) * sw * seg];
            if sw == 1 {
                // One phase, a plain copy (vectorized; `step_by` is not).
                for (d, &b) in row[g.pads[1]..g.pads[1] + w].iter_mut().zip(src) {
                    *d = byte_value(b, self.x_type) - xz;
                }
                continue;
            }
            // Phase `ph` holds padded columns ph, ph + sw, ...: input
            // columns from the first at or after the left pad.
            for ph in 0..sw {
                let first = (g.pads[1] + sw - ph - 1) / sw * sw + ph;
                let dst = &mut row[ph * seg + first / sw..(ph + 1) * seg];
                let from = first - g.pads[1];
                if from < w {
                    for (d, &b) in dst.iter_mut().zip(src[from..].iter().step_by(sw)) {
                        *d = byte_value(b, self.x_type) - xz;
                    }
                }
            }
        }
        let mut acc = vec![0i32; ow];
        for m in ci * mg..(ci + 1) * mg {
            let wt = &taps_of[m * taps..(m + 1) * taps];
            let at = ((img * g.m + m) * oh) * ow;
            for y in 0..oh {
                acc.fill(self.bias[m]);
                for i in 0..kh {
                    let row = &xp[(y * sh + i * dh) * sw * seg..(y * sh + i * dh + 1) * sw * seg];
                    for j in 0..kw {
                        let p = j * dw;
                        let from = (p % sw) * seg + p / sw;
                        let wv = wt[i * kw + j];
                        for (a, &xv) in acc.iter_mut().zip(&row[from..from + ow]) {
                            *a += xv * wv;
                        }
                    }
                }
                match &self.out {
                    QConvOut::Requant { mult, zero, lo, hi } => {
                        // SAFETY: row `y` of channel `m`, inside the result.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut((out as *mut u8).add(at + y * ow), ow)
                        };
                        for (d, &a) in dst.iter_mut().zip(&acc) {
                            *d = requant(a, mult[m], *zero, *lo, *hi) as u8;
                        }
                    }
                    QConvOut::I32 => {
                        // SAFETY: as above.
                        let dst = unsafe {
                            std::slice::from_raw_parts_mut((out as *mut i32).add(at + y * ow), ow)
                        };
                        dst.copy_from_slice(&acc);
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn planar_unit_avx2(&self, x: &[u8], xz: i32, taps_of: &[i32], out: usize, u: usize) {
        // SAFETY: the caller's contract.
        unsafe { self.planar_unit(x, xz, taps_of, out, u) }
    }
}

/// Whether the AVX2 forms of the direct kernels may run (asked once per
/// run; the crate's baseline, SSE2, has no 32-bit vector multiply).
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

crate::cpu::simd_fn! {
    /// `dst[t] = src[t · s]`: a strided row of an im2col (stride 2 or 3
    /// is the usual first conv). Stride 2 takes fixed 32-byte chunks, which
    /// vectorize as byte shuffles; the plain loop ran a byte at a time.
    fn strided_bytes(dst: &mut [u8], src: &[u8], s: usize) {
        const CH: usize = 32;
        let mut done = 0;
        if s == 2 {
            // Whole chunks whose 64 source bytes all exist (the last
            // output needs only the first byte of its pair).
            let whole = (dst.len() / CH).min(src.len() / (2 * CH)) * CH;
            for (d, sc) in dst[..whole].chunks_exact_mut(CH).zip(src.chunks_exact(2 * CH)) {
                let sc: &[u8; 2 * CH] = sc.try_into().expect("64 bytes");
                for t in 0..CH {
                    d[t] = sc[2 * t];
                }
            }
            done = whole;
        }
        for (t, d) in dst.iter_mut().enumerate().skip(done) {
            *d = src[t * s];
        }
    }
}

#[cfg(test)]
mod tests {

    /// The stride-2 fast path matches the plain gather for every length
    /// around the chunk size, including sources that end on an odd byte.
    #[test]
    fn strided_bytes_gathers_every_other_byte() {
        for s in [2usize, 3] {
            for n in [0usize, 1, 31, 32, 33, 63, 64, 65, 100] {
                for extra in [0usize, 1] {
                    let src: Vec<u8> = (0..(n.max(1) - 1) * s + 1 + extra)
                        .map(|i| i as u8)
                        .collect();
                    let mut got = vec![0u8; n];
                    strided_bytes(&mut got, &src, s);
                    let want: Vec<u8> = (0..n).map(|t| src[t * s]).collect();
                    assert_eq!(got, want, "s {s} n {n} extra {extra}");
                }
            }
        }
    }
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
            ([1, 5, 20, 37], 5, [3, 3], [1, 1], [1, 1], [1, 1], 5),
            ([2, 3, 21, 40], 3, [3, 3], [2, 2], [1, 1], [1, 1], 3),
            ([1, 4, 19, 41], 4, [5, 5], [2, 2], [1, 2], [2, 4], 4),
            ([1, 4, 18, 33], 4, [3, 3], [3, 3], [1, 1], [0, 1], 4),
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
