//! Quantized convolution (QLinearConv and ConvInteger) over 8-bit NCHW
//! tensors, 1-D or 2-D: groups with more than one input channel run as
//! integer GEMMs ([`super::qgemm`]) over the weights packed once and the
//! input's columns (the input itself for a 1×1 stride-1 conv, else an
//! im2col of bytes whose padding is the input's zero point, so padded taps
//! add `(zx - zx)·w = 0`); groups of one input channel (depthwise, with
//! any multiplier) run a direct kernel. The exact i32 sums leave through
//! the product's output stage: requantized per output channel, or i32.
//!
//! Depthwise convs whose sums provably stay below 2²⁴ (every real one: 9
//! or 25 taps of `|w - zw| ≤ 255` times `|x - zx| ≤ 255` reach 1.6·10⁶)
//! run on the f32 depthwise kernels instead: f32 holds every integer up to
//! 2²⁴ exactly, so each product, each partial sum and the requantization's
//! input are the integer path's bit for bit, and the f32 kernels run 2-4×
//! the integer direct loops, which widen bytes to i32 and multiply in
//! half the lanes. Strided ones run the plane kernel (`conv/planes.rs`) on
//! their bytes and requantize each plane's sums from L1; the others go
//! through the f32 conv's own strategy (channels in lanes for small maps,
//! row passes for large ones): their bytes become f32 in one pass, and the
//! sums are requantized in the conv's epilogue while they are in cache.
//! The integer direct loops remain for sums that could pass 2²⁴.

use std::cell::Cell;

use super::common::{for_each_unit, Axis};
use super::conv::planes::{self, bytes_to_f32, Plane};
use super::conv::{takes_lanes, ConvAttrs, ConvPlan};
use super::qgemm::{
    qgemm, requant, round_clamped, shifted_zero, Int8, Packed, QGemm, QOut, MR, NR,
};

thread_local! {
    static SCRATCH: Cell<Option<(Vec<u8>, Packed)>> = const { Cell::new(None) };
    /// The exact-f32 path's input and sums, reused across runs.
    static F32_SCRATCH: Cell<Option<(Vec<f32>, Vec<f32>)>> = const { Cell::new(None) };
    /// The plane kernel's sums of one input plane's outputs.
    static PLANE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Integers up to this magnitude are exact in f32 (2²⁴).
const F32_EXACT: i64 = 1 << 24;

/// A depthwise conv planned on the f32 kernels (see the module comment).
#[derive(Clone, Debug)]
struct ExactF32 {
    route: Route,
    /// The taps minus the zero point, `[m, kh, kw]`.
    weights: Vec<f32>,
    bias: Vec<f32>,
}

/// Which f32 kernel an exact depthwise conv runs.
#[derive(Clone, Debug)]
enum Route {
    /// The plane kernel on the bytes, with the conv's axes (D, H, W).
    Planes([Axis; 3]),
    /// The f32 conv's own strategy, on an f32 copy of the input.
    Conv(ConvPlan),
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
    /// The direct path on the f32 kernels, where that is exact.
    exact: Option<ExactF32>,
    /// Bytes of B a GEMM unit packs at most (tests shrink it to cover
    /// blocks that start and end inside output rows).
    block_bytes: usize,
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
        let exact = direct.as_deref().and_then(|d| ExactF32::new(&g, d, &bias));
        Ok(QConvPlan {
            g,
            x_type,
            x_zero,
            packed,
            w_zero_a,
            direct,
            exact,
            block_bytes: 96 << 10,
            bias,
            out,
        })
    }

    /// This plan's exact-f32 path through the f32 conv's own strategy
    /// instead of the plane kernel (tests compare the two).
    #[cfg(test)]
    fn exact_on_conv_plan(mut self) -> QConvPlan {
        if let Some(e) = &mut self.exact {
            if let Some(plan) = ExactF32::conv_plan(&self.g, &e.weights) {
                e.route = Route::Conv(plan);
            }
        }
        self
    }

    /// This plan with GEMM units of one column panel (tests).
    #[cfg(test)]
    fn smallest_blocks(mut self) -> QConvPlan {
        self.block_bytes = 1;
        self
    }

    /// This plan without the exact-f32 path (tests compare the two).
    #[cfg(test)]
    fn integer_only(mut self) -> QConvPlan {
        self.exact = None;
        self
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
        if let Some(e) = &self.exact {
            self.run_exact(e, x, x_zero, out, threads);
            return Ok(());
        }
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
        let k = cg * g.kernel[0] * g.kernel[1];
        let zb = [shifted_zero(x_zero, self.x_type, true)];
        // Units: (image, group, block of output positions), each packing
        // its own block of B (made from the input as it is packed) and
        // multiplying it by all of the group's weights on one thread, so
        // the packing runs in parallel too and a block stays in L2 while
        // every weight row passes over it. A block is at most ~96 KiB of
        // B, and small enough to give each thread two units.
        let parallel = threads > 1 && self.ops() >= super::common::PAR_FLOPS;
        let mut block = (self.block_bytes / k.max(1)).max(NR) / NR * NR;
        if parallel {
            block = block.min(ohw.div_ceil(2 * threads).div_ceil(NR) * NR);
        }
        let blocks = ohw.div_ceil(block);
        let out_addr = out as usize;
        for_each_unit(parallel, n * g.group * blocks, |u| {
            let (img, gi, b) = (u / (g.group * blocks), u / blocks % g.group, u % blocks);
            let cols = b * block..((b + 1) * block).min(ohw);
            let xg = &x[(img * c + gi * cg) * h * w..(img * c + (gi + 1) * cg) * h * w];
            // This thread's im2col and packing buffers, reused across runs
            // (fresh ones cost page faults on every call); taken out for
            // the unit, so a re-entrant call makes its own.
            let (mut staging, mut pb) = SCRATCH
                .with(Cell::take)
                .unwrap_or_else(|| (vec![], Packed::empty()));
            if self.pointwise() {
                pb.pack_b_rows(&xg[cols.start..], k, cols.len(), ohw, self.x_type, true);
            } else {
                pb.pack_b_generated(k, cols.len(), self.x_type, true, &mut staging, |kk, row| {
                    self.im2col_row(xg, kk, x_zero as u8, cols.clone(), row)
                });
            }
            let m0 = gi * mg;
            let at = (img * g.m + m0) * ohw + cols.start;
            let qout = match &self.out {
                QConvOut::Requant { mult, zero, lo, hi } => QOut::Requant {
                    mult: &mult[m0..m0 + mg],
                    per_row: true,
                    zero: *zero,
                    lo: *lo,
                    hi: *hi,
                    // SAFETY: `out` holds n·m·ohw bytes; units write the
                    // disjoint column blocks of their rows.
                    out: unsafe { (out_addr as *mut u8).add(at) },
                },
                QConvOut::I32 => QOut::I32 {
                    // SAFETY: `out` holds n·m·ohw i32s; as above.
                    out: unsafe { (out_addr as *mut i32).add(at) },
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
            qgemm(&self.packed[gi], &pb, &gemm, 1);
            SCRATCH.with(|c| c.set(Some((staging, pb))));
        });
        Ok(())
    }

    /// The direct conv on the f32 kernels, by its route: the plane kernel
    /// on each input plane's bytes, its sums requantized from an L1-sized
    /// buffer; or `x - zx` as f32, the f32 conv with its bias, and the
    /// output stage applied to each finished range of sums (flat NCHW
    /// indices) on the thread that summed it.
    fn run_exact(&self, e: &ExactF32, x: &[u8], xz: i32, out: *mut u8, threads: usize) {
        let g = &self.g;
        let (m, ohw) = (g.m, g.out[0] * g.out[1]);
        let out_addr = out as usize;
        let signed = self.x_type == Int8::I8;
        let plan = match &e.route {
            Route::Conv(plan) => plan,
            Route::Planes(axes) => {
                // A plane at a time, bytes read directly, sums requantized
                // from an L1-sized buffer.
                let [n, c, h, w] = g.x;
                let mg = m / c;
                let kvol = g.kernel[0] * g.kernel[1];
                let parallel = threads > 1 && self.ops() >= super::common::PAR_FLOPS / 8.0;
                for_each_unit(parallel, n * c, |u| {
                    let ci = u % c;
                    let mut sums = PLANE.with(Cell::take);
                    sums.resize(mg * ohw, 0.0);
                    let plane = Plane::Bytes {
                        x: &x[u * h * w..(u + 1) * h * w],
                        signed,
                        zero: xz,
                    };
                    planes::plane(
                        axes,
                        plane,
                        &e.weights[ci * mg * kvol..][..mg * kvol],
                        Some(&e.bias[ci * mg..][..mg]),
                        &mut sums,
                    );
                    // Image u / c's output channels ci·mg.. are at u·mg·ohw.
                    self.output_stage(&sums, u * mg * ohw, out_addr);
                    PLANE.with(|p| p.set(sums));
                });
                return;
            }
        };
        let (mut xf, mut sums) = F32_SCRATCH.with(Cell::take).unwrap_or_default();
        xf.resize(x.len(), 0.0);
        sums.resize(g.x[0] * m * ohw, 0.0);
        bytes_to_f32(x, signed, xz, &mut xf);
        let stage = |src: *mut f32, lo: usize, hi: usize| {
            // SAFETY: the conv hands over `lo..hi` of its sums, final and
            // written by this thread.
            let v = unsafe { std::slice::from_raw_parts(src.add(lo), hi - lo) };
            self.output_stage(v, lo, out_addr);
        };
        plan.run_with_epilogue(&xf, &[], Some(&e.bias), &mut sums, threads, Some(&stage));
        F32_SCRATCH.with(|c| c.set(Some((xf, sums))));
    }

    /// The output stage of exact sums held as f32, `v` being the result's
    /// flat NCHW positions `at..at + v.len()`: requantized per channel, or
    /// i32.
    fn output_stage(&self, v: &[f32], at: usize, out_addr: usize) {
        let ohw = self.g.out[0] * self.g.out[1];
        let mut i = 0;
        while i < v.len() {
            let pos = at + i;
            let ch = (pos / ohw) % self.g.m;
            let len = (v.len() - i).min((pos / ohw + 1) * ohw - pos);
            let src = &v[i..i + len];
            match &self.out {
                QConvOut::Requant { mult, zero, lo, hi } => {
                    // SAFETY: the result holds bytes at every flat position
                    // of the conv's output; callers own `at..` of it.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut((out_addr as *mut u8).add(pos), len)
                    };
                    requant_f32(src, mult[ch], *zero, *lo, *hi, dst);
                }
                QConvOut::I32 => {
                    // SAFETY: as above; the result is i32s.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut((out_addr as *mut i32).add(pos), len)
                    };
                    f32_to_i32(src, dst);
                }
            }
            i += len;
        }
    }

    /// Columns `cols` (output positions `oh · ow + ow`) of row `kk` =
    /// `(ci, i, j)` of the im2col of one group's input `xg`: tap (i, j) of
    /// channel ci at each of those positions; taps outside the input read
    /// `pad`, the zero point's own byte.
    fn im2col_row(
        &self,
        xg: &[u8],
        kk: usize,
        pad: u8,
        cols: std::ops::Range<usize>,
        dst: &mut [u8],
    ) {
        let g = &self.g;
        let [_, _, h, w] = g.x;
        let ow = g.out[1];
        let [kh, kw] = g.kernel;
        let (ci, i, j) = (kk / (kh * kw), kk / kw % kh, kk % kw);
        let plane = &xg[ci * h * w..(ci + 1) * h * w];
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
        let mut at = cols.start;
        while at < cols.end {
            // The part of output row y in this block: x0..x1.
            let (y, x0) = (at / ow, at % ow);
            let x1 = ow.min(x0 + (cols.end - at));
            let line = &mut dst[at - cols.start..at - cols.start + (x1 - x0)];
            at += x1 - x0;
            let iy = (y * g.strides[0] + i * g.dilations[0]) as isize - g.pads[0] as isize;
            if iy < 0 || iy >= h as isize {
                line.fill(pad);
                continue;
            }
            let src = &plane[iy as usize * w..(iy as usize + 1) * w];
            let (a, b) = (lo.clamp(x0, x1), hi.clamp(x0, x1));
            line[..a - x0].fill(pad);
            line[b - x0..].fill(pad);
            if a < b {
                let first = (a as isize * s as isize + off) as usize;
                let part = &mut line[a - x0..b - x0];
                if s == 1 {
                    part.copy_from_slice(&src[first..first + (b - a)]);
                } else {
                    strided_bytes(part, &src[first..], s);
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

impl ExactF32 {
    /// The f32 plan of a direct conv whose taps minus their zero point
    /// are `taps_of` (per output channel), if every partial sum stays
    /// exact: `|x - zx| ≤ 255`, so a channel's sums are bounded by
    /// `|bias| + 255 · Σ|taps|`.
    fn new(g: &QConvGeometry, taps_of: &[i32], bias: &[i32]) -> Option<ExactF32> {
        let [_, c, h, w] = g.x;
        let [kh, kw] = g.kernel;
        let taps = kh * kw;
        let exact = (0..g.m).all(|m| {
            let tap_sum: i64 = taps_of[m * taps..(m + 1) * taps]
                .iter()
                .map(|&t| (t as i64).abs())
                .sum();
            (bias[m] as i64).abs() + 255 * tap_sum < F32_EXACT
        });
        if !exact {
            return None;
        }
        let weights: Vec<f32> = taps_of.iter().map(|&t| t as f32).collect();
        let axis = |a: usize, input: usize| Axis {
            input,
            kernel: g.kernel[a],
            stride: g.strides[a],
            dilation: g.dilations[a],
            pad_begin: g.pads[a],
            output: g.out[a],
        };
        let axes = [Axis::UNIT, axis(0, h), axis(1, w)];
        // Small maps with short rows stay on the f32 conv's channels-in-
        // lanes path, which fills vectors their rows do not.
        let route = if planes::applies(&axes) && !takes_lanes(&axes, 1, g.m / c, c) {
            Route::Planes(axes)
        } else {
            Route::Conv(Self::conv_plan(g, &weights)?)
        };
        Some(ExactF32 {
            route,
            weights,
            bias: bias.iter().map(|&b| b as f32).collect(),
        })
    }

    /// The f32 conv of this geometry with constant weights `weights`.
    fn conv_plan(g: &QConvGeometry, weights: &[f32]) -> Option<ConvPlan> {
        let [n, c, h, w] = g.x;
        // The end pads that give the planned output (extra ones only
        // shape it, and any that reach no tap are dropped).
        let end = |axis: usize, input: usize| {
            let reach =
                (g.out[axis] - 1) * g.strides[axis] + (g.kernel[axis] - 1) * g.dilations[axis] + 1;
            (reach as isize - input as isize - g.pads[axis] as isize).max(0) as usize
        };
        let attrs = ConvAttrs {
            strides: g.strides.to_vec(),
            dilations: g.dilations.to_vec(),
            pads: vec![g.pads[0], g.pads[1], end(0, h), end(1, w)],
            group: g.group,
        };
        let ws = [g.m, 1, g.kernel[0], g.kernel[1]];
        let plan = ConvPlan::new(&[n, c, h, w], &ws, true, &attrs, Some(weights)).ok()?;
        (plan.out_shape() == [n, g.m, g.out[0], g.out[1]]).then_some(plan)
    }
}

crate::cpu::simd_fn! {
    /// The output stage of exact integer sums held as f32: what
    /// [`requant`] gives on the same integers.
    fn requant_f32(src: &[f32], mult: f32, zero: i32, lo: i32, hi: i32, dst: &mut [u8]) {
        let (flo, fhi) = ((lo - zero) as f32, (hi - zero) as f32);
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = (round_clamped(v * mult, flo, fhi) + zero) as u8;
        }
    }
}

crate::cpu::simd_fn! {
    /// Exact integer sums held as f32, as i32.
    fn f32_to_i32(src: &[f32], dst: &mut [i32]) {
        for (d, &v) in dst.iter_mut().zip(src) {
            *d = v as i32;
        }
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

/// `dst[t] = src[t · s]`: a strided row of an im2col (stride 2 or 3 is
/// the usual first conv). Stride 2 goes 32 bytes at a time: on AVX2 by
/// masking words to their low bytes and packing them (the loop
/// auto-vectorized for AVX2 was a quarter of a first conv's time on Zen
/// 3), elsewhere in fixed chunks that vectorize as byte shuffles.
fn strided_bytes(dst: &mut [u8], src: &[u8], s: usize) {
    let mut done = 0;
    if s == 2 {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            done = unsafe { evens_bytes_avx2(dst, src) };
        }
        done += evens_bytes(&mut dst[done..], &src[2 * done..]);
    }
    for (t, d) in dst.iter_mut().enumerate().skip(done) {
        *d = src[t * s];
    }
}

crate::cpu::simd_fn! {
    /// `dst[t] = src[2t]` for whole chunks of 32 whose 64 source bytes
    /// all exist (the last output needs only the first byte of its pair);
    /// how many were written.
    fn evens_bytes(dst: &mut [u8], src: &[u8]) -> usize {
        const CH: usize = 32;
        let whole = (dst.len() / CH).min(src.len() / (2 * CH)) * CH;
        for (d, sc) in dst[..whole].chunks_exact_mut(CH).zip(src.chunks_exact(2 * CH)) {
            let sc: &[u8; 2 * CH] = sc.try_into().expect("64 bytes");
            for t in 0..CH {
                d[t] = sc[2 * t];
            }
        }
        whole
    }
}

/// [`evens_bytes`] on AVX2: each word's low byte (`& 0x00ff`), packed
/// with unsigned saturation (exact: the words are below 256), the two
/// 128-bit lanes put back in order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn evens_bytes_avx2(dst: &mut [u8], src: &[u8]) -> usize {
    use std::arch::x86_64::*;
    let n = (dst.len() / 32).min(src.len() / 64);
    let low = _mm256_set1_epi16(0xff);
    for (d, sc) in dst.chunks_exact_mut(32).zip(src.chunks_exact(64)).take(n) {
        // SAFETY: d holds 32 bytes and sc 64, all the store and the two
        // loads touch; AVX2 is enabled on this function.
        unsafe {
            let a = _mm256_and_si256(_mm256_loadu_si256(sc.as_ptr() as *const __m256i), low);
            let b = _mm256_and_si256(
                _mm256_loadu_si256(sc.as_ptr().add(32) as *const __m256i),
                low,
            );
            let packed = _mm256_permute4x64_epi64::<0xD8>(_mm256_packus_epi16(a, b));
            _mm256_storeu_si256(d.as_mut_ptr() as *mut __m256i, packed);
        }
    }
    n * 32
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

    /// A depthwise conv whose sums could pass 2²⁴ stays on the integer
    /// path.
    #[test]
    fn exact_f32_path_needs_exact_sums() {
        let g = QConvGeometry {
            x: [1, 2, 5, 5],
            m: 2,
            kernel: [3, 3],
            strides: [1, 1],
            dilations: [1, 1],
            pads: [1, 1],
            out: [5, 5],
            group: 2,
        };
        let w = vec![0x80u8; 18]; // -128 each: 9 · 128 · 255 in all
        let plan = |bias: i32| {
            QConvPlan::new(
                g.clone(),
                Int8::U8,
                0,
                &w,
                Int8::I8,
                &[0],
                vec![bias; 2],
                QConvOut::I32,
            )
            .unwrap()
        };
        assert!(plan(1000).exact.is_some());
        assert!(plan((1 << 24) - 9 * 128 * 255).exact.is_none());
    }

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
            let planned = |out: QConvOut| {
                QConvPlan::new(
                    g.clone(),
                    Int8::U8,
                    xz,
                    &wv,
                    Int8::I8,
                    &[wz],
                    bias.clone(),
                    out,
                )
                .unwrap()
            };
            let plan = planned(QConvOut::I32);
            let mut got = vec![0i32; n * m * out[0] * out[1]];
            // SAFETY: `got` holds the result's i32s.
            unsafe { plan.run(&xv, None, got.as_mut_ptr() as *mut u8, 2) }.unwrap();
            assert_eq!(
                plan.exact.is_some(),
                cg == 1,
                "{x:?} g{group}: exact-f32 path"
            );
            // The integer direct path gives the same sums, and the same
            // requantized bytes as the exact-f32 path.
            let mut direct = vec![0i32; got.len()];
            let integer = plan.clone().integer_only();
            // SAFETY: as above.
            unsafe { integer.run(&xv, None, direct.as_mut_ptr() as *mut u8, 2) }.unwrap();
            assert_eq!(direct, got, "{x:?} g{group}: integer direct path");
            let mut on_plan = vec![0i32; got.len()];
            let routed = plan.clone().exact_on_conv_plan();
            // SAFETY: as above.
            unsafe { routed.run(&xv, None, on_plan.as_mut_ptr() as *mut u8, 2) }.unwrap();
            assert_eq!(
                on_plan, got,
                "{x:?} g{group}: exact path on the f32 conv plan"
            );
            // GEMM units of one column panel, starting and ending inside
            // output rows, give the same sums.
            let mut blocked = vec![0i32; got.len()];
            let small = plan.clone().smallest_blocks();
            // SAFETY: as above.
            unsafe { small.run(&xv, None, blocked.as_mut_ptr() as *mut u8, 2) }.unwrap();
            assert_eq!(blocked, got, "{x:?} g{group}: column blocks");
            let rq = QConvOut::Requant {
                mult: (0..m).map(|i| 0.0003 * (i + 1) as f32).collect(),
                zero: 9,
                lo: 0,
                hi: 255,
            };
            let rq_plan = planned(rq);
            let mut bytes_fast = vec![0u8; got.len()];
            let mut bytes_int = vec![0u8; got.len()];
            // SAFETY: the buffers hold the result's bytes.
            unsafe {
                rq_plan.run(&xv, None, bytes_fast.as_mut_ptr(), 1).unwrap();
                let slow = rq_plan.clone().integer_only();
                slow.run(&xv, None, bytes_int.as_mut_ptr(), 1).unwrap();
            }
            assert_eq!(bytes_fast, bytes_int, "{x:?} g{group}: requantized bytes");
            let mut bytes_plan = vec![0u8; got.len()];
            // SAFETY: as above.
            unsafe {
                let routed = rq_plan.clone().exact_on_conv_plan();
                routed.run(&xv, None, bytes_plan.as_mut_ptr(), 2).unwrap();
            }
            assert_eq!(
                bytes_plan, bytes_int,
                "{x:?} g{group}: requantized on the conv plan"
            );
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
