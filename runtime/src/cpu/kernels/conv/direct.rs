//! The Depthwise and Direct strategies: one work unit per (image, group),
//! a direct loop over output rows with the W taps fused into vectorized
//! row passes (`rows.rs`, with AVX2/FMA dispatch), summed over the group's
//! input channels (one for depthwise; up to 4 for direct, the first convs
//! on RGB).
//!
//! Depthwise convs on small maps (the late stages of mobile nets: 5x5
//! taps over 7x7 or 14x14 planes) go channels-in-the-lanes instead: a
//! plane's rows are too short to fill a vector and the per-row calls
//! dominate. A slab of channels is transposed to [H*W, channels], each
//! output position sums its taps as whole channel vectors, and the result
//! is transposed back.

use rayon::prelude::*;

use super::super::common::{transpose, with_scratch, Axis, PAR_FLOPS};
use super::super::rows::{self, Isa, MulAdd, RowGeom};
use super::plan::ConvPlan;
use super::planes;

impl ConvPlan {
    /// The Depthwise and Direct strategies' run: `out` from `x` and the
    /// weights `w`, calling `epi(lo, hi)` on each (image, group)'s output
    /// planes as they are done.
    pub(super) fn run_direct(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        threads: usize,
        epi: &(impl Fn(usize, usize) + Sync),
    ) {
        let (cg, mg) = (self.c / self.group, self.m / self.group);
        let (ivol, ovol, kvol) = (self.in_vol(), self.out_vol(), self.kvol());
        if takes_lanes(&self.axes, cg, mg, self.group) {
            return self.run_depthwise_lanes(x, w, bias, out, threads, epi);
        }
        // One unit per (image, group): its mg output planes from its cg
        // input planes.
        let planes = cg == 1 && planes::applies(&self.axes);
        let unit = |(u, o): (usize, &mut [f32])| {
            let (n, g) = (u / self.group, u % self.group);
            let span = (u * o.len(), (u + 1) * o.len());
            if planes {
                planes::plane(
                    &self.axes,
                    planes::Plane::F32(&x[(n * self.c + g) * ivol..][..ivol]),
                    &w[g * mg * kvol..][..mg * kvol],
                    bias.map(|b| &b[g * mg..][..mg]),
                    o,
                );
                epi(span.0, span.1);
                return;
            }
            direct_unit(
                self.isa,
                cg,
                &self.axes,
                &self.row_geom,
                &x[(n * self.c + g * cg) * ivol..][..cg * ivol],
                &w[g * mg * cg * kvol..][..mg * cg * kvol],
                bias.map(|b| &b[g * mg..][..mg]),
                o,
            );
            epi(span.0, span.1);
        };
        // Small convs stay on one thread: forking costs microseconds.
        if threads > 1 && self.flops() >= PAR_FLOPS_DIRECT {
            out.par_chunks_mut(mg * ovol).enumerate().for_each(unit);
        } else {
            out.chunks_mut(mg * ovol).enumerate().for_each(unit);
        }
    }
}

/// Whether a conv of `group` groups of `cg` input and `mg` output
/// channels on these axes runs channels-in-lanes: depthwise, 2-D, small
/// maps with short rows, enough channels for a slab.
pub(crate) fn takes_lanes(axes: &[Axis; 3], cg: usize, mg: usize, group: usize) -> bool {
    let ovol: usize = axes.iter().map(|a| a.output).product();
    cg == 1
        && mg == 1
        && axes[0].kernel == 1
        && axes[0].input == 1
        && (ovol <= LANES_MAX_MAP && axes[2].output <= LANES_MAX_ROW || small_taps_mid_rows(axes))
        && group >= LANES_SLAB / 2
}

/// Stride-1 3x3 (or smaller) kernels over rows of up to 32: the row
/// kernel pays a call and an accumulator pass per kernel row for a few
/// vectors of work (mobilenet's 3x3 over 88x28x28: 6 GFLOP/s, in lanes 13
/// on Zen 3); wider rows (PP-OCR's 48-96) and 5x5 kernels amortize them
/// (there lanes measured 30 % slower).
fn small_taps_mid_rows(axes: &[Axis; 3]) -> bool {
    axes[1..]
        .iter()
        .all(|a| a.stride == 1 && a.dilation == 1 && a.kernel <= 3)
        && axes[2].output <= 2 * LANES_MAX_ROW
}

/// Below this many flops a depthwise or direct conv runs on one thread.
/// A product's threshold ([`PAR_FLOPS`]) assumes dense-kernel speed; these
/// convs do a few flops per byte and run 5-10x slower per flop, so a
/// mobile net's 1-MFLOP depthwise convs (70-150 us) stayed on one thread
/// and its 2-thread run barely beat the 1-thread one.
const PAR_FLOPS_DIRECT: f64 = PAR_FLOPS / 8.0;

/// Output maps up to this many positions, with rows up to this long,
/// take the channels-in-lanes path. Longer rows fill the row kernel's
/// vectors: PP-OCR's 5x5 convs over 3x48 maps ran at 48 GFLOP/s there
/// and 20 in lanes, mobilenet's over 7x7 maps at 6 there and 17 in lanes.
const LANES_MAX_MAP: usize = 256;
const LANES_MAX_ROW: usize = 16;
/// Channels per slab: a few vectors wide, and a unit of threading; with
/// 8-lane vectors half as many ([`AVX2_SLAB`]).
const LANES_SLAB: usize = 64;
/// The slab on AVX2: two outputs' accumulators of 64 channels would be
/// all 16 ymm registers.
const AVX2_SLAB: usize = 32;

/// The padded map a lanes conv reads: rows and columns covering every
/// tap of every output, pads included.
fn padded_map(axes: &[Axis; 3]) -> (usize, usize) {
    (axes[1].padded_extent(), axes[2].padded_extent())
}

impl ConvPlan {
    /// Depthwise on a small 2-D map, channels in the lanes (module doc).
    fn run_depthwise_lanes(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        threads: usize,
        epi: &(impl Fn(usize, usize) + Sync),
    ) {
        let c = self.c;
        let (ivol, ovol, kvol) = (self.in_vol(), self.out_vol(), self.kvol());
        let (hp, wp) = padded_map(&self.axes);
        // 16-lane FMAs halve the instructions of a tap: on Zen 4 (512 bits
        // in two halves) too, where the loads bound the loop.
        #[cfg(target_arch = "x86_64")]
        let avx512 = is_x86_feature_detected!("avx512f");
        #[cfg(not(target_arch = "x86_64"))]
        let avx512 = false;
        let slab = if self.isa != Isa::Portable && !avx512 {
            AVX2_SLAB
        } else {
            LANES_SLAB
        };
        let slabs = c.div_ceil(slab);
        // One unit per (image, slab of channels): its output planes are
        // contiguous, so the epilogue sees them as one finished range.
        let unit = |u: usize, o: &mut [f32]| {
            let (n, s) = (u / slabs, u % slabs);
            let c0 = s * slab;
            let cs = slab.min(c - c0);
            let xs = &x[(n * c + c0) * ivol..][..cs * ivol];
            let ws = &w[c0 * kvol..][..cs * kvol];
            let bs = bias.map(|b| &b[c0..][..cs]);
            with_scratch((hp * wp + ivol + ovol + kvol) * slab, |buf| {
                let slab = Slab {
                    cs,
                    x: xs,
                    w: ws,
                    bias: bs,
                };
                match self.isa {
                    Isa::Portable => lanes_body::<false, LANES_SLAB>(&self.axes, &slab, o, buf),
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: Isa::Avx2Fma is only picked when avx2 and fma
                    // were detected on this CPU.
                    Isa::Avx2Fma if avx512 => unsafe { lanes_avx512(&self.axes, &slab, o, buf) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above.
                    Isa::Avx2Fma => unsafe { lanes_avx2(&self.axes, &slab, o, buf) },
                }
            });
            let lo = (n * c + c0) * ovol;
            epi(lo, lo + cs * ovol);
        };
        // Units own disjoint output ranges: split `out` by them.
        let mut parts: Vec<(usize, &mut [f32])> = Vec::with_capacity(self.batch * slabs);
        let mut rest = out;
        for u in 0..self.batch * slabs {
            let cs = slab.min(c - (u % slabs) * slab);
            let (head, tail) = rest.split_at_mut(cs * ovol);
            parts.push((u, head));
            rest = tail;
        }
        if threads > 1 && self.flops() >= PAR_FLOPS_DIRECT && parts.len() > 1 {
            parts.into_par_iter().for_each(|(u, o)| unit(u, o));
        } else {
            parts.into_iter().for_each(|(u, o)| unit(u, o));
        }
    }
}

/// One slab of `cs` channels: `x` [cs, H, W], `w` [cs, KH, KW], their
/// bias.
struct Slab<'a> {
    cs: usize,
    x: &'a [f32],
    w: &'a [f32],
    bias: Option<&'a [f32]>,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn lanes_avx512(axes: &[Axis; 3], slab: &Slab, out: &mut [f32], scratch: &mut [f32]) {
    lanes_body::<true, LANES_SLAB>(axes, slab, out, scratch)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn lanes_avx2(axes: &[Axis; 3], slab: &Slab, out: &mut [f32], scratch: &mut [f32]) {
    lanes_body::<true, AVX2_SLAB>(axes, slab, out, scratch)
}

/// One slab into `out` [cs, OH, OW], `L` channels wide. The input is
/// transposed to [H·W, L], then copied into a zero-bordered map [HP·WP,
/// L] ([`padded_map`]), so every tap of every output reads a whole
/// channel vector at a fixed offset, with no bounds test (per tap, those
/// tests and their address arithmetic cost more than the FMAs).
#[inline(always)]
fn lanes_body<const FMA: bool, const L: usize>(
    axes: &[Axis; 3],
    slab: &Slab,
    out: &mut [f32],
    scratch: &mut [f32],
) {
    let [_, ah, aw] = axes;
    let cs = slab.cs;
    let (hp, wp) = padded_map(axes);
    let (ivol, ovol) = (ah.input * aw.input, ah.output * aw.output);
    let kvol = ah.kernel * aw.kernel;
    let (xp, rest) = scratch.split_at_mut(hp * wp * L);
    let (xt, rest) = rest.split_at_mut(ivol * L);
    let (ot, rest) = rest.split_at_mut(ovol * L);
    let wt = &mut rest[..kvol * L];
    // A partial slab's missing channels are zeros, computed and dropped.
    // (The tiled transpose of movement.rs measured slower at these sizes:
    // everything is in L1.)
    if cs < L {
        xt.fill(0.0);
        wt.fill(0.0);
    }
    // [cs, ivol] -> [ivol, L], then its rows into the padded map.
    transpose::<FMA>(slab.x, ivol, cs, ivol, xt, L);
    let (pt, pl) = (ah.pad_begin, aw.pad_begin);
    xp[..pt * wp * L].fill(0.0);
    for r in 0..ah.input {
        let row = &mut xp[(pt + r) * wp * L..(pt + r + 1) * wp * L];
        row[..pl * L].fill(0.0);
        row[pl * L..(pl + aw.input) * L].copy_from_slice(&xt[r * aw.input * L..][..aw.input * L]);
        row[(pl + aw.input) * L..].fill(0.0);
    }
    xp[(pt + ah.input) * wp * L..].fill(0.0);
    for c in 0..cs {
        for t in 0..kvol {
            wt[t * L + c] = slab.w[c * kvol + t];
        }
    }
    // Each tap's offset in the padded map from its output's first tap.
    let taps: Vec<usize> = (0..kvol)
        .map(|t| ((t / aw.kernel) * ah.dilation * wp + (t % aw.kernel) * aw.dilation) * L)
        .collect();
    let step = aw.stride * L;
    // The accumulators are fixed-size arrays, which the compiler keeps in
    // vector registers across the taps.
    let mut start = [0f32; L];
    if let Some(b) = slab.bias {
        start[..cs].copy_from_slice(b);
    }
    // Every read below lies inside the padded map: the last output's last
    // tap is its last position (`padded_map`). Checked once here, not per
    // tap (the per-tap checks and their address arithmetic were half the
    // taps loop).
    let last = ((ah.output - 1) * ah.stride * wp + (aw.output - 1) * aw.stride) * L;
    assert!(last + taps.iter().max().copied().unwrap_or(0) + L <= xp.len());
    assert!(kvol * L <= wt.len());
    let (xp, wt) = (&*xp, &*wt);
    for oh in 0..ah.output {
        let row = oh * ah.stride * wp * L;
        // Two outputs of a row at a time: each tap's weights are loaded
        // once for both, and twice the accumulator chains hide the FMA
        // latency.
        let mut ow = 0;
        while ow < aw.output {
            let base = row + ow * step;
            let pair = ow + 1 < aw.output;
            let (mut a0, mut a1) = (start, start);
            for (t, &off) in taps.iter().enumerate() {
                // SAFETY: t < kvol, and base + off + step + L ≤ xp.len()
                // for every pair of this map (asserted above).
                let (wr, x0, x1) = unsafe {
                    (
                        &*(wt.as_ptr().add(t * L) as *const [f32; L]),
                        &*(xp.as_ptr().add(base + off) as *const [f32; L]),
                        &*(xp.as_ptr().add(base + off + if pair { step } else { 0 })
                            as *const [f32; L]),
                    )
                };
                fma_slab::<FMA, L>(&mut a0, x0, wr);
                if pair {
                    fma_slab::<FMA, L>(&mut a1, x1, wr);
                }
            }
            ot[(oh * aw.output + ow) * L..][..L].copy_from_slice(&a0);
            if pair {
                ot[(oh * aw.output + ow + 1) * L..][..L].copy_from_slice(&a1);
            }
            ow += 2;
        }
    }
    // [ovol, L] -> [cs, ovol].
    transpose::<FMA>(ot, L, ovol, cs, out, ovol);
}

/// `a += x·w` over a slab of channels.
#[inline(always)]
fn fma_slab<const FMA: bool, const CS: usize>(a: &mut [f32; CS], x: &[f32; CS], w: &[f32; CS]) {
    for c in 0..CS {
        a[c] = if FMA {
            x[c].mul_add(w[c], a[c])
        } else {
            a[c] + x[c] * w[c]
        };
    }
}

/// One unit of a depthwise or direct conv: `x` holds the group's cg input
/// planes [cg, D, H, W], `w` its kernels [mg, cg, kvol], `out` its mg
/// output planes [mg, OD, OH, OW].
#[allow(clippy::too_many_arguments)]
fn direct_unit(
    isa: Isa,
    cg: usize,
    axes: &[Axis; 3],
    g: &RowGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    // Scratch: the padded, phase-split planes, then one output row.
    let split = cg * axes[0].input * axes[1].input * g.split_len();
    with_scratch(split + g.padded_out, |buf| {
        let (ph, acc) = buf.split_at_mut(split);
        match isa {
            Isa::Portable => direct_body::<false>(axes, cg, g, x, w, bias, out, ph, acc),
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::Avx2Fma is only picked when avx2 and fma were
            // detected on this CPU.
            Isa::Avx2Fma => unsafe { direct_avx2(axes, cg, g, x, w, bias, out, ph, acc) },
        }
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn direct_avx2(
    axes: &[Axis; 3],
    cg: usize,
    g: &RowGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    ph: &mut [f32],
    acc: &mut [f32],
) {
    direct_body::<true>(axes, cg, g, x, w, bias, out, ph, acc)
}

/// The unit, generic so it is compiled once per ISA (`FMA` only where the
/// CPU has it). `ph` receives the padded, phase-split planes, `acc`
/// (`g.padded_out` long) accumulates one output row.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn direct_body<const FMA: bool>(
    axes: &[Axis; 3],
    cg: usize,
    g: &RowGeom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    ph: &mut [f32],
    acc: &mut [f32],
) {
    let [ad, ah, aw] = axes;
    rows::pad_split(g, x, 0.0, ph);
    let rl = g.split_len();
    let (ivol, ovol) = (ad.input * ah.input * rl, ad.output * ah.output * aw.output);
    let kvol = ad.kernel * ah.kernel * aw.kernel;
    for (j, oplane) in out.chunks_exact_mut(ovol).enumerate() {
        let b = bias.map_or(0.0, |b| b[j]);
        for (p, orow) in oplane.chunks_exact_mut(aw.output).enumerate() {
            let (od, oh) = (p / ah.output, p % ah.output);
            acc.fill(b);
            for c in 0..cg {
                let wc = &w[(j * cg + c) * kvol..][..kvol];
                let pc = &ph[c * ivol..][..ivol];
                for kd in 0..ad.kernel {
                    let Some(id) = ad.input_index(od, kd) else {
                        continue;
                    };
                    for kh in 0..ah.kernel {
                        let Some(ih) = ah.input_index(oh, kh) else {
                            continue;
                        };
                        // One row per call: fusing the H taps too measured
                        // slower on Zen 4 (the 9 or 25 tap pointers spill).
                        let src = &pc[(id * ah.input + ih) * rl..][..rl];
                        let wr = &wc[(kd * ah.kernel + kh) * aw.kernel..][..aw.kernel];
                        rows::rows::<MulAdd<FMA>>(g, &[src], wr, acc);
                    }
                }
            }
            orow.copy_from_slice(&acc[..aw.output]);
        }
    }
}
