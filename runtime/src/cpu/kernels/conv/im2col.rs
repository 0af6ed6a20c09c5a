//! The gemm strategies, Pointwise and Im2col: a gemm per (image, group,
//! block of output positions), `W[M,C] x X[C,HW]`, reading the input in
//! place (pointwise: 1x1, stride 1, no pad) or from an im2col block
//! unfolded into per-thread scratch; the small-k kernel for short
//! reductions, the `gemm` crate otherwise. Also what a plan whose tile
//! strategy cannot run (a Shifted conv without input channels) falls
//! back to.

use gemm::Parallelism;

use super::super::common::{for_each_unit, with_scratch, Axis, PAR_FLOPS};
use super::super::smallk;
use super::plan::{ConvPlan, Strategy};

/// Output floats per work unit of the small-k path (256 KiB): a quarter of
/// Zen 4's L2, so the unit's result is still there when the epilogue runs.
const UNIT_OUT_FLOATS: usize = 1 << 16;

impl ConvPlan {
    /// The gemm strategies' run: `out` from `x` and the weights `w`.
    /// `out_addr` is `out`'s exposed address, which the units (and `epi`)
    /// write through; `epi(lo, hi)` is called on each finished range of
    /// `out` when `has_epilogue`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_gemm(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        out_addr: usize,
        threads: usize,
        has_epilogue: bool,
        epi: &(impl Fn(usize, usize) + Sync),
    ) {
        let (cg, mg) = (self.c / self.group, self.m / self.group);
        let (ivol, ovol, kvol) = (self.in_vol(), self.out_vol(), self.kvol());
        // Gemm strategies: out[n][g*mg..(g+1)*mg][p] = W_g x (input columns
        // of image n, group g). Work is cut into units of (image, group,
        // block of output positions) so that (a) an im2col block stays in
        // L2 while gemm packs it, instead of a whole-image unfold going to
        // memory and back, and (b) batch-1 convs still give every thread
        // independent work without gemm's internal synchronisation.
        let kdim = cg * kvol;
        let items = self.batch * self.group;
        // 1x1 convs on small images with many channels (ResNet's 14x14 and
        // 7x7 stages) split output channels across threads instead of
        // positions: a position split has every thread stream all the
        // weights (up to 8 MB) for a few dozen positions. (Not im2col
        // convs: every channel block would unfold the image again;
        // measured slower.)
        let msplit = if self.strategy == Strategy::Pointwise
            && threads > 1
            && items < threads
            && ovol < 256
            && mg >= 32
        {
            (threads * crate::cpu::UNITS_PER_THREAD).min(mg / 16)
        } else {
            1
        };
        let blk = if msplit > 1 {
            ovol
        } else {
            self.block_len(kdim, ovol, items, threads)
        };
        let nblk = ovol.div_ceil(blk);
        // The bias goes into out first; gemm then accumulates onto it (the
        // small-k kernel starts its tiles from the bias instead).
        let accumulate = match bias {
            Some(_) if self.small_k && kdim > 0 => false,
            Some(b) => {
                for (r, row) in out.chunks_mut(ovol).enumerate() {
                    row.fill(b[r % self.m]);
                }
                true
            }
            None => false,
        };
        if kdim == 0 {
            // No input channels: the output is just the bias (or zeros).
            if !accumulate {
                out.fill(0.0);
            }
            if let Some(c) = self.clamp {
                for v in out.iter_mut() {
                    *v = v.clamp(c.lo, c.hi);
                }
            }
            epi(0, out.len());
            return;
        }
        let out_len = out.len();
        let mg_all = mg;
        let unit = |u: usize| {
            let (i, r) = (u / (nblk * msplit), u % (nblk * msplit));
            let (b, mb) = (r / msplit, r % msplit);
            let (n, g) = (i / self.group, i % self.group);
            let (p0, p1) = (b * blk, ((b + 1) * blk).min(ovol));
            // This unit's output channels of the group: m0..m0 + mg.
            let m0 = mb * mg_all / msplit;
            let mg = (mb + 1) * mg_all / msplit - m0;
            let xg = &x[(n * self.c + g * cg) * ivol..][..cg * ivol];
            let wg = &w[(g * mg_all + m0) * kdim..][..mg * kdim];
            let dst_off = (n * self.m + g * mg_all + m0) * ovol + p0;
            let gemm = |rhs: &[f32], rhs_rs: usize| {
                let blen = p1 - p0;
                if self.small_k {
                    assert!(dst_off + (mg - 1) * ovol + blen <= out_len);
                    // SAFETY: the assert keeps the mg x blen destination
                    // view inside `out`; disjointness across units as for
                    // the gemm call below.
                    unsafe {
                        smallk::gemm_small_k_raw(
                            mg,
                            blen,
                            kdim,
                            wg,
                            rhs,
                            rhs_rs,
                            std::ptr::with_exposed_provenance_mut::<f32>(out_addr).add(dst_off),
                            ovol,
                            bias.map(|b| &b[g * mg_all + m0..][..mg]),
                            self.clamp,
                        );
                    }
                    return;
                }
                assert!(dst_off + (mg - 1) * ovol + blen <= out_len);
                assert!((kdim - 1) * rhs_rs + blen <= rhs.len());
                // SAFETY: the asserts keep the mg x blen destination view
                // (row stride ovol) inside `out`, and the rhs view inside
                // `rhs`; wg is exactly mg x kdim. Units write pairwise
                // disjoint (image, channel rows, position range) regions of
                // `out`, which this call holds mutably borrowed and touches
                // only through these gemm calls until they all return.
                unsafe {
                    gemm::gemm(
                        mg,
                        blen,
                        kdim,
                        std::ptr::with_exposed_provenance_mut::<f32>(out_addr).add(dst_off),
                        1,
                        ovol as isize,
                        accumulate,
                        wg.as_ptr(),
                        1,
                        kdim as isize,
                        rhs.as_ptr(),
                        1,
                        rhs_rs as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            };
            match self.strategy {
                Strategy::Pointwise => gemm(&xg[p0..], ovol),
                _ => with_scratch(kdim * (p1 - p0), |col| {
                    im2col(&self.axes, xg, col, p0, p1);
                    gemm(col, p1 - p0);
                }),
            }
            if has_epilogue {
                if p1 - p0 == ovol {
                    // Whole rows: one contiguous range.
                    epi(dst_off, dst_off + mg * ovol);
                } else {
                    for r in 0..mg {
                        let lo = dst_off + r * ovol;
                        epi(lo, lo + (p1 - p0));
                    }
                }
            }
        };
        let units = items * nblk * msplit;
        for_each_unit(threads > 1 && self.flops() >= PAR_FLOPS, units, unit);
    }

    /// Output positions per work unit: an im2col block of at most
    /// `block_floats`, small enough that every thread gets a share, rounded
    /// up to a multiple of 48 (gemm's f32 micro-tile on AVX-512 once it
    /// transposes to column-major) when that large.
    fn block_len(&self, kdim: usize, ovol: usize, items: usize, threads: usize) -> usize {
        let budget = if self.strategy == Strategy::Pointwise {
            // Nothing to unfold: only split for threads.
            ovol
        } else {
            self.block_floats / kdim.max(1)
        };
        // A few units per thread for load balance, but not below one
        // 48-position gemm tile each: small images (7x7) with big weights
        // would re-pack the weights per unit for nothing.
        let split = |parts: usize| {
            if items >= parts {
                ovol
            } else {
                ovol.div_ceil(parts.div_ceil(items))
            }
        };
        let fine = split(threads * crate::cpu::UNITS_PER_THREAD);
        let per_thread = if threads > 1 && fine >= 48 {
            fine
        } else {
            split(threads)
        };
        let mut blk = budget.min(per_thread);
        if self.small_k {
            // Nothing is packed per unit, so small units cost nothing and
            // keep each unit's result (mg x blk) in L2 for the epilogue.
            // At least 256 positions, so the per-row epilogue calls of a
            // wide layer (1000 channels) stay long.
            blk = blk.min((UNIT_OUT_FLOATS / (self.m / self.group).max(1)).max(256));
        }
        let blk = if blk >= 48 {
            blk.div_ceil(48) * 48
        } else {
            blk
        };
        blk.clamp(1, ovol.max(1))
    }
}

/// Unfolds output positions `p0..p1` of `x` ([cg, D, H, W]) into `col`
/// ([cg * kvol, p1 - p0]): row (c, kd, kh, kw) holds, for each of those
/// output positions, the input value that tap multiplies (0 in padding).
fn im2col(axes: &[Axis; 3], x: &[f32], col: &mut [f32], p0: usize, p1: usize) {
    let [ad, ah, aw] = axes;
    let ivol = ad.input * ah.input * aw.input;
    let len = p1 - p0;
    let mut rows = col.chunks_mut(len.max(1));
    for xc in x.chunks(ivol.max(1)) {
        for kd in 0..ad.kernel {
            for kh in 0..ah.kernel {
                for kw in 0..aw.kernel {
                    let Some(row) = rows.next() else { return };
                    let (lo, hi, off) = aw.valid_range(kw);
                    // Walk the block one output row (fixed od, oh) at a time.
                    let mut p = p0;
                    while p < p1 {
                        let (line, ow0) = (p / aw.output, p % aw.output);
                        let ow1 = (ow0 + (p1 - p)).min(aw.output);
                        let seg = &mut row[p - p0..p - p0 + (ow1 - ow0)];
                        p += ow1 - ow0;
                        let (od, oh) = (line / ah.output, line % ah.output);
                        let (Some(id), Some(ih)) = (ad.input_index(od, kd), ah.input_index(oh, kh))
                        else {
                            seg.fill(0.0);
                            continue;
                        };
                        let xrow = &xc[(id * ah.input + ih) * aw.input..][..aw.input];
                        // In-bounds taps of this segment: [lo, hi) clipped
                        // to [ow0, ow1), shifted to segment indices.
                        let (a, b) = (lo.clamp(ow0, ow1), hi.clamp(ow0, ow1));
                        seg[..a - ow0].fill(0.0);
                        seg[b - ow0..].fill(0.0);
                        let dst = &mut seg[a - ow0..b - ow0];
                        // Here o*stride + off is in [0, input) for o in a..b
                        // (when a == b, a + off may be negative: skip).
                        if a == b {
                        } else if aw.stride == 1 {
                            let start = (a as isize + off) as usize;
                            dst.copy_from_slice(&xrow[start..start + (b - a)]);
                        } else {
                            // A strided walk without per-element index
                            // arithmetic or bounds checks (this loop was a
                            // quarter of a stride-2 first conv).
                            // Whole stride-sized chunks let LLVM vectorize
                            // the walk as an interleaved load.
                            let st = aw.stride;
                            let start = (a as isize * st as isize + off) as usize;
                            let (last, body) = dst.split_last_mut().expect("a < b");
                            let src = &xrow[start..start + body.len() * st];
                            for (v, c) in body.iter_mut().zip(src.chunks_exact(st)) {
                                *v = c[0];
                            }
                            *last = xrow[start + body.len() * st];
                        }
                    }
                }
            }
        }
    }
}
