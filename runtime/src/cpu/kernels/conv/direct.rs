//! The Depthwise and Direct strategies: one work unit per (image, group),
//! a direct loop over output rows with the W taps fused into vectorized
//! row passes (`rows.rs`, with AVX2/FMA dispatch), summed over the group's
//! input channels (one for depthwise; up to 4 for direct, the first convs
//! on RGB).

use rayon::prelude::*;

use super::super::common::{with_scratch, Axis, PAR_FLOPS};
use super::super::rows::{self, Isa, MulAdd, RowGeom};
use super::plan::ConvPlan;

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
        // One unit per (image, group): its mg output planes from its cg
        // input planes.
        let unit = |(u, o): (usize, &mut [f32])| {
            let (n, g) = (u / self.group, u % self.group);
            let span = (u * o.len(), (u + 1) * o.len());
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
        if threads > 1 && self.flops() >= PAR_FLOPS {
            out.par_chunks_mut(mg * ovol).enumerate().for_each(unit);
        } else {
            out.chunks_mut(mg * ovol).enumerate().for_each(unit);
        }
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
