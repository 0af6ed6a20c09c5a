//! Convolution as an implicit GEMM over padded, phase-split input planes:
//! no im2col buffer, and the weights read in place.
//!
//! A 1-D or 2-D conv with stride `(sh, sw)` reads input pixel `(oh·sh +
//! kh·dh − pad_t, ow·sw + kw·dw − pad_l)` for output `(oh, ow)` and tap
//! `(kh, kw)`. Split the zero-padded input into `sh x sw` phase planes
//! (plane `(ph, pw)` holds padded rows `i·sh + ph` and columns `j·sw + pw`),
//! each `hq x wq` with `wq = OW + (KW−1)·dw / sw`; then tap `(kh, kw)`
//! reads plane `(kh·dh % sh, kw·dw % sw)` at row `oh + kh·dh / sh`, column
//! `ow + kw·dw / sw`. With `q(oh, ow) = oh·wq + ow` the whole conv is one
//! shifted product
//!
//! ```text
//! out[m, (oh, ow)] = bias[m] + Σ_k w[m, k] · src[koff[k] + q(oh, ow)]
//! ```
//!
//! with `k = (c, kh, kw)` the weights' own row-major reduction index and
//! `koff[k]` the offset of that channel's tap plane. Stride-1 convs without
//! padding need no planes at all (`src` is the input, `wq = W`); pointwise
//! convs are the special case `koff[c] = c·H·W`.
//!
//! The product runs the small-k kernel's register tiles
//! ([`super::smallk::sweep`]: 6x16 on AVX2, 12x16 over two strips at once
//! on AVX-512) over k
//! blocks of at most [`KC`]: 16 consecutive output positions (one copy per
//! output row they touch) are gathered from `src` into a dense panel that
//! every row block of weights passes over, and the tile writes the output
//! in place. This is
//! what onnxruntime's NCHWc direct convolutions buy over im2col: the input
//! is read once per tap from the (cache-resident) planes instead of being
//! unfolded nine-fold through memory, and nothing packs the weights per
//! call (the `gemm` crate repacks them for every call, 100 MB a ResNet-50
//! run). Strips follow output positions, not q, so no lane is spent on
//! the `wq − OW` columns past a row (they were 10-20 % of the lanes on
//! 13x13 and 14x14 maps).
//!
//! AVX2 + FMA only ([`super::smallk::available`]).

use std::cell::Cell;

use rayon::prelude::*;

use super::common::{for_each_unit, line_aligned, with_scratch, Axis, PAR_FLOPS};
use super::smallk::Clamp;

/// Largest block of the reduction per pass (72 KiB of panel, in L2).
/// Measured against 256 (a panel in L1) and 576 on 3x3 convs over 64-512
/// channels: blocks of 256 were 5-10 % slower (each block reloads and
/// stores the output tile), 576 and 1152 even, no blocking (4608) no
/// better.
pub(super) const KC: usize = 1152;

/// Output floats per work unit (256 KiB), so a unit's result is still in
/// L2 when the next k block adds onto it and when the epilogue reads it.
const UNIT_OUT_FLOATS: usize = 1 << 16;

/// Panel floats per strip group (256 KiB, a quarter of L2): up to 16
/// strips at a k block of 256, 3 at 1152.
const PANEL_GROUP_FLOATS: usize = 1 << 16;

/// Most strips per group.
const MAX_GROUP: usize = 16;

/// Floats past the planes that a panel copy may read (16-wide copies of a
/// strip's last positions).
const SLACK: usize = 16;

/// A conv's geometry as a shifted product (see the module comment).
#[derive(Debug, Clone)]
pub(super) struct Shifted {
    ih: usize,
    iw: usize,
    oh: usize,
    ow: usize,
    sh: usize,
    sw: usize,
    pad_t: usize,
    pad_l: usize,
    hq: usize,
    wq: usize,
    /// The (row, column) phases some tap reads, in plane order; empty when
    /// `src` is the input itself (stride 1, no padding).
    phases: Vec<(usize, usize)>,
    /// Source floats per input channel.
    chan: usize,
    /// Source offset of reduction index k = (c, kh, kw).
    koff: Vec<usize>,
    /// The largest of `koff`.
    kmax: usize,
    /// Reduction block (tests shrink it to cover block edges).
    pub(super) kc: usize,
    /// Strips per work unit, when set (tests: units that split rows).
    pub(super) unit_strips: Option<usize>,
}

impl Shifted {
    /// Whether a conv with these normalised axes has a shifted form: not
    /// for 3-D convs (the leading axis is not a unit).
    pub(super) fn fits(axes: &[Axis; 3]) -> bool {
        let ad = &axes[0];
        (ad.input, ad.kernel, ad.output, ad.pad_begin) == (1, 1, 1, 0)
    }

    /// The geometry for a conv over `cg` channels per group, or None where
    /// it does not [`fit`](Shifted::fits).
    pub(super) fn new(axes: &[Axis; 3], cg: usize) -> Option<Shifted> {
        if !Self::fits(axes) {
            return None;
        }
        let [_, ah, aw] = axes;
        let (rh, rw) = (ah.dilation * (ah.kernel - 1), aw.dilation * (aw.kernel - 1));
        let (sh, sw) = (ah.stride, aw.stride);
        let direct = sh == 1 && sw == 1 && ah.output + rh == ah.input && aw.output + rw == aw.input;
        let direct = direct && ah.pad_begin == 0 && aw.pad_begin == 0;
        let (hq, wq) = (ah.output + rh / sh, aw.output + rw / sw);
        let mut phases = Vec::new();
        if !direct {
            for kh in 0..ah.kernel {
                for kw in 0..aw.kernel {
                    let p = ((kh * ah.dilation) % sh, (kw * aw.dilation) % sw);
                    if !phases.contains(&p) {
                        phases.push(p);
                    }
                }
            }
            phases.sort_unstable();
        }
        let plane = hq * wq;
        let chan = if direct { plane } else { phases.len() * plane };
        let mut koff = Vec::with_capacity(cg * ah.kernel * aw.kernel);
        for c in 0..cg {
            for kh in 0..ah.kernel {
                for kw in 0..aw.kernel {
                    let (r, s) = (kh * ah.dilation, kw * aw.dilation);
                    let p = phases.iter().position(|&p| p == (r % sh, s % sw));
                    koff.push(c * chan + p.unwrap_or(0) * plane + (r / sh) * wq + s / sw);
                }
            }
        }
        Some(Shifted {
            kmax: koff.iter().copied().max().unwrap_or(0),
            ih: ah.input,
            iw: aw.input,
            oh: ah.output,
            ow: aw.output,
            sh,
            sw,
            pad_t: ah.pad_begin,
            pad_l: aw.pad_begin,
            hq,
            wq,
            phases,
            chan,
            koff,
            kc: KC,
            unit_strips: None,
        })
    }

    /// Writes the phase planes of `x` (`[cg, ih, iw]`) into `dst`
    /// (`cg · chan` floats).
    fn fill_planes(&self, x: &[f32], dst: &mut [f32]) {
        let plane = self.hq * self.wq;
        if self.ih * self.iw == 0 || plane == 0 || self.chan == 0 {
            // An empty input (its pads make the outputs): all padding.
            dst.fill(0.0);
            return;
        }
        for (xc, dc) in x
            .chunks_exact(self.ih * self.iw)
            .zip(dst.chunks_exact_mut(self.chan))
        {
            for (&(ph, pw), dp) in self.phases.iter().zip(dc.chunks_exact_mut(plane)) {
                for (i, row) in dp.chunks_exact_mut(self.wq).enumerate() {
                    let r = (i * self.sh + ph).checked_sub(self.pad_t);
                    match r.filter(|&r| r < self.ih) {
                        Some(r) => {
                            let off = pw as isize - self.pad_l as isize;
                            gather_row(row, &xc[r * self.iw..][..self.iw], self.sw, off);
                        }
                        None => row.fill(0.0),
                    }
                }
            }
        }
    }

    /// `out[n, g·mg + m, p]` for every image n and group g: `x` is
    /// `[batch, group·cg, ih, iw]`, `w` `[group·mg, cg·kh·kw]`, and
    /// `out_addr` the exposed address of the `[batch, group·mg, oh, ow]`
    /// output (`out_len` floats), which the caller holds mutably borrowed.
    /// `epi(lo, hi)` is called once per finished flat range of the output.
    ///
    /// Panics if the host lacks AVX2/FMA or a slice is shorter than its
    /// shape.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        &self,
        (batch, group, cg, mg): (usize, usize, usize, usize),
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out_addr: usize,
        out_len: usize,
        threads: usize,
        clamp: Option<Clamp>,
        epi: &(dyn Fn(usize, usize) + Sync),
    ) {
        assert!(
            super::smallk::available(),
            "implicit conv: host lacks AVX2/FMA"
        );
        let (ivol, ovol, kdim) = (self.ih * self.iw, self.oh * self.ow, self.koff.len());
        let items = batch * group;
        assert!(x.len() >= items * cg * ivol && w.len() >= group * mg * kdim);
        assert!(out_len >= items * mg * ovol && bias.is_none_or(|b| b.len() >= group * mg));
        assert!(residual.is_none_or(|r| r.len() >= items * mg * ovol));
        if items == 0 || mg == 0 || ovol == 0 {
            return;
        }
        let flops = 2.0 * (items * mg * ovol * kdim) as f64;
        let parallel = threads > 1 && flops >= PAR_FLOPS;

        // Units: (item, run of 16-position strips, block of weight rows).
        // Strip-aligned, so only the last strip can be partial.
        let strips = ovol.div_ceil(16);
        let target = if parallel {
            threads * crate::cpu::UNITS_PER_THREAD
        } else {
            1
        };
        let mut msplit = 1;
        let mut per_unit = self
            .unit_strips
            .unwrap_or(if ovol <= 256 {
                strips
            } else {
                UNIT_OUT_FLOATS / (16 * mg)
            })
            .clamp(1, strips);
        if items * strips.div_ceil(per_unit) < target {
            if ovol < 256 && mg >= 32 {
                // Small images with many channels: split the weights
                // (output channels) across threads too, so that no thread
                // streams all of them for a few positions. Every weight
                // block gathers its own panels, so blocks stay large: a
                // short reduction (cheap to gather) splits into blocks of
                // at least 128 channels, up to the unit target (48-64
                // channel convs split 3-4 ways ran no faster on 2 threads
                // than on 1, as halves in 10 % less time); a long one
                // only per thread (a split 8 ways spent a quarter of a
                // 14x14 1x1 conv gathering) and with whole maps per unit:
                // each thread's weight block (1-2.4 MB on ResNet-50's
                // 14x14 stage) then streams from L3 once per strip group
                // instead of once per strip chunk (that stage scaled 1.56x
                // on 2 threads with chunks, 1.77x without).
                let fine = target.min(mg / 128).max(threads);
                msplit = if kdim <= 512 { fine } else { threads }.min(mg.div_ceil(16));
                if kdim <= 512 {
                    per_unit = per_unit.min(strips.div_ceil(target.div_ceil(items * msplit)));
                }
            } else {
                per_unit = per_unit.min(strips.div_ceil(target.div_ceil(items)));
            }
        }
        let mut nsb = strips.div_ceil(per_unit);
        // Weight-row blocks: whole 6-row tiles, as even as they come.
        let tiles = mg.div_ceil(6);
        let msplit = msplit.min(tiles);
        // Images (and groups) one at a time where each has enough units
        // for the threads: its planes are filled and then read by its
        // units while they are still in L2. Filling every item's planes
        // first evicted the first item's before its units ran (a 3x3 conv
        // over 64 channels at 56x56 on one Zen 3 thread: 88 GFLOP/s at
        // batch 1, 58-61 at batch 2, now 83).
        let by_item =
            items > 1 && !self.phases.is_empty() && (!parallel || nsb * msplit >= threads);
        let batch_items = if by_item { 1 } else { items };
        if parallel {
            // Whole rounds of units, split evenly below: 7 units of 7
            // strips on 2 threads (every 28x28 conv of ResNet-50) left
            // one thread a unit behind (that stage scaled 1.54-1.67x,
            // now 1.84-1.91x; the model 4 % faster on 2 threads).
            while !(batch_items * nsb * msplit).is_multiple_of(threads) && nsb < strips {
                nsb += 1;
            }
        }
        let m_range = |mb: usize| {
            (
                (mb * tiles / msplit * 6).min(mg),
                ((mb + 1) * tiles / msplit * 6).min(mg),
            )
        };

        let units_per_item = nsb * msplit;
        let per_item = cg * self.chan;
        let item_src = if self.phases.is_empty() {
            cg * ivol
        } else {
            per_item
        };
        // Items first..first + count: their planes (when the conv has
        // them) into `planes`, then their units.
        let run_items = |first: usize, count: usize, planes: &mut [f32]| {
            let src: &[f32] = if self.phases.is_empty() {
                &x[first * item_src..]
            } else {
                let (body, slack) = planes.split_at_mut(count * per_item);
                slack.fill(0.0);
                let x = &x[first * cg * ivol..][..count * cg * ivol];
                if parallel && count * cg > 1 && self.chan > 0 && ivol > 0 {
                    // One chunk per (item, channel).
                    body.par_chunks_mut(self.chan)
                        .zip(x.par_chunks_exact(ivol))
                        .for_each(|(d, xc)| self.fill_planes(xc, d));
                } else {
                    // (`fill_planes` pads an empty input's planes.)
                    for i in 0..count {
                        self.fill_planes(
                            &x[i * cg * ivol..][..cg * ivol],
                            &mut body[i * per_item..][..per_item],
                        );
                    }
                }
                planes
            };
            let unit = |u: usize| {
                let (local, rest) = (u / units_per_item, u % units_per_item);
                let item = first + local;
                let (sb, mb) = (rest / msplit, rest % msplit);
                let g = item % group;
                // Strip-aligned, as even as they come.
                let (pa, pb) = (
                    sb * strips / nsb * 16,
                    ((sb + 1) * strips / nsb * 16).min(ovol),
                );
                let (m0, m1) = m_range(mb);
                let out_base = (item * mg + m0) * ovol;
                let w_rows = &w[(g * mg + m0) * kdim..][..(m1 - m0) * kdim];
                let b_rows = bias.map(|b| &b[g * mg + m0..g * mg + m1]);
                // SAFETY: rows m0..m1 of item `item` are inside the output
                // (out_len >= items·mg·ovol, asserted) and of the residual
                // (asserted as long); units write pairwise disjoint (item,
                // rows m0..m1, positions pa..pb) regions of the output,
                // which the caller holds mutably borrowed for the whole
                // run; AVX2/FMA are asserted above.
                unsafe {
                    self.unit(
                        &src[local * item_src..],
                        w_rows,
                        b_rows,
                        (pa, pb),
                        m1 - m0,
                        std::ptr::with_exposed_provenance_mut::<f32>(out_addr).add(out_base),
                        residual.map(|r| r[out_base..].as_ptr()),
                        clamp,
                    );
                }
                if (pa, pb) == (0, ovol) {
                    epi(out_base, out_base + (m1 - m0) * ovol);
                } else {
                    for m in 0..m1 - m0 {
                        epi(out_base + m * ovol + pa, out_base + m * ovol + pb);
                    }
                }
            };
            for_each_unit(parallel, count * units_per_item, unit);
        };
        let planes_len = if self.phases.is_empty() {
            0
        } else {
            batch_items * per_item + SLACK
        };
        with_planes(planes_len, |planes| {
            for first in (0..items).step_by(batch_items) {
                run_items(first, batch_items, planes);
            }
        });
    }

    /// Output positions `p0..p1` (a whole number of 16-position strips,
    /// but for the last) for `mrows` channels: `src` starts at the item's
    /// planes (or input channels), `w` holds the channels' weight rows,
    /// `out` points at the first channel's output plane, `residual` (added
    /// to the result before the clamp) at the same place of a tensor laid
    /// out like the output.
    ///
    /// # Safety
    /// `out` is valid for writes of `mrows` planes of `oh·ow` floats, and
    /// nothing else accesses their positions `p0..p1` during the call;
    /// `residual` is valid for reads of as many.
    #[allow(clippy::too_many_arguments)]
    unsafe fn unit(
        &self,
        src: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        (p0, p1): (usize, usize),
        mrows: usize,
        out: *mut f32,
        residual: Option<*const f32>,
        clamp: Option<Clamp>,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            use super::smallk::avx2::{tail_masks, Addend, Dest, Init, NR};
            use super::smallk::sweep;
            let np = p1 - p0;
            let kdim = self.koff.len();
            let ovol = self.oh * self.ow;
            // A partial last strip's tiles go to a 16-column side buffer,
            // copied out at the end (masked loads and stores are
            // microcoded on AMD).
            let tail = np % NR;
            let blocks = kdim.div_ceil(self.kc).max(1);
            let kc_even = kdim.div_ceil(blocks);
            // Strips per group: the group's panels stay in L2 while each
            // row block of weights (in L1) sweeps all of them, so the
            // weights stream from memory once per group, not per strip.
            // Groups also help short reductions whatever their weights'
            // size: each row block then writes runs of up to 256
            // positions per output row instead of 16, and the output
            // streams (one per row, often 64+) stall less when memory is
            // busy (SqueezeNet's first conv and squeeze convs 10 % faster,
            // the model 9 % on a noisy host). Weights that stay in L2
            // with a long reduction keep one panel at a time (3x3 over 64
            // channels at 56x56 measured 5 % slower grouped once, even
            // another time).
            // At least the strips a tile covers (two on AVX-512, sharing
            // each broadcast of the weights).
            let min_group = super::smallk::strips_per_tile();
            let group = if mrows * kc_even <= PANEL_GROUP_FLOATS && kc_even > 256 {
                min_group
            } else {
                (PANEL_GROUP_FLOATS / (kc_even * NR).max(1)).clamp(min_group, MAX_GROUP)
            };
            let panel_len = kc_even * NR;
            // The panels, 16 floats of slack for segment copies that run
            // past a row, then the side buffer.
            with_scratch(group * panel_len + NR + mrows * NR, |buf| {
                let (panels, side) = buf.split_at_mut(group * panel_len + NR);
                for blk in 0..blocks {
                    let k0 = blk * kc_even;
                    let kc = kc_even.min(kdim - k0.min(kdim));
                    let last = blk + 1 == blocks;
                    let offs = &self.koff[k0..k0 + kc];
                    let init = match (blk, bias) {
                        (0, Some(b)) => Init::Bias(b.as_ptr()),
                        (0, None) => Init::Zero,
                        _ => Init::Load,
                    };
                    let mut j = 0;
                    while j < np {
                        // (destination, its row stride) per strip.
                        let mut dests = [Dest {
                            out: std::ptr::null_mut(),
                            ld: 0,
                            masks: None,
                            add: None,
                        }; MAX_GROUP];
                        let mut n = 0;
                        while n < group && j < np {
                            let len = (np - j).min(NR);
                            self.fill_panel(src, offs, p0 + j, len, &mut panels[n * panel_len..]);
                            let (to, ld) = if len < NR {
                                (side.as_mut_ptr(), NR)
                            } else {
                                // SAFETY: p0 + j < p1 <= oh·ow: a position
                                // of the first output plane `out` is valid
                                // for (the caller's contract).
                                (unsafe { out.add(p0 + j) }, ovol)
                            };
                            // The residual joins the first block of k: the
                            // strip's own positions, masked in a partial
                            // strip (the rest may lie past the tensor).
                            let add = residual.filter(|_| blk == 0).map(|r| Addend {
                                src: r.wrapping_add(p0 + j),
                                ld: ovol,
                                // SAFETY: `run`, this function's only
                                // caller, asserts AVX2/FMA first.
                                masks: (len < NR).then(|| unsafe { tail_masks(len) }),
                            });
                            dests[n] = Dest {
                                out: to,
                                ld,
                                masks: None,
                                add,
                            };
                            n += 1;
                            j += len;
                        }
                        // SAFETY: AVX2/FMA asserted by `run`; tiles read
                        // rows 0..mrows of `w` (k0..k0 + kc of kdim each,
                        // inside `w`'s mrows x kdim), each panel's kc x 16
                        // floats (inside `panels`), and in the first block
                        // the residual at the strip's own positions
                        // (masked in a partial strip; valid by the
                        // caller's contract), and write 16 columns of the
                        // output rows (a whole strip of this unit's
                        // positions) or of the side buffer (mrows x 16,
                        // scratch apart from the output).
                        unsafe {
                            sweep(
                                mrows,
                                kc,
                                w.as_ptr().add(k0),
                                kdim,
                                (panels.as_ptr(), panel_len),
                                &dests[..n],
                                init,
                                if last { clamp } else { None },
                                None,
                            )
                        };
                    }
                }
                if tail > 0 {
                    for (m, srow) in side.chunks_exact(NR).enumerate() {
                        // SAFETY: positions p1 - tail..p1 of row m <
                        // mrows are this unit's (the caller's contract);
                        // `side` is scratch, apart from the output.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                srow.as_ptr(),
                                out.add(m * ovol + p1 - tail),
                                tail,
                            )
                        };
                    }
                }
            });
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (src, w, bias, p0, p1, mrows, out, clamp);
    }

    /// Panel row r = the `len` source values of output positions `p ..
    /// p + len` for reduction index `offs[r]`: one 16-wide copy per row of
    /// the output the strip touches (position (oh, ow) is q-space `oh·wq +
    /// ow`; a copy that runs past its row's end is overwritten by the next
    /// segment's, or is past `len`). The panel has 16 floats of slack.
    #[cfg(target_arch = "x86_64")]
    fn fill_panel(&self, src: &[f32], offs: &[usize], p: usize, len: usize, panel: &mut [f32]) {
        // (lane, q) of each segment.
        let mut segs = [(0usize, 0usize); 16];
        let mut n = 0;
        let mut lane = 0;
        while lane < len {
            let (r, c) = ((p + lane) / self.ow, (p + lane) % self.ow);
            segs[n] = (lane, r * self.wq + c);
            n += 1;
            lane += (self.ow - c).min(len - lane);
        }
        let segs = &segs[..n];
        let qmax = segs[n - 1].1;
        assert!(panel.len() >= 16 * offs.len() + 16);
        if self.kmax + qmax + 16 <= src.len() {
            // SAFETY: AVX2 asserted by `run`; every read ends at or before
            // kmax + qmax + 16, inside `src` (checked); every write at or
            // before 16·offs.len() + 16, inside the panel (asserted).
            unsafe { copy_panel(offs, segs, src.as_ptr(), panel.as_mut_ptr()) };
        } else {
            // The input's last positions (no slack): exact copies.
            for (row, &o) in panel.chunks_exact_mut(16).zip(offs) {
                for (i, &(lane, q)) in segs.iter().enumerate() {
                    let end = segs.get(i + 1).map_or(len, |s| s.0);
                    let s = o + q;
                    row[lane..end].copy_from_slice(&src[s..s + end - lane]);
                }
            }
        }
    }
}

/// How far ahead of a panel row's read [`copy_panel`] prefetches: four
/// 16-position strips.
const PREFETCH_FLOATS: usize = 256;

/// Panel row r, from each segment's lane on: the 16 floats at
/// `src + offs[r] + q`, segments in lane order (a later one overwrites
/// what an earlier one wrote past its end).
///
/// # Safety
/// AVX2 present; each `src + offs[r] + q` is valid for 16 reads and
/// `panel` for `16 · offs.len() + 16` writes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_panel(offs: &[usize], segs: &[(usize, usize)], src: *const f32, panel: *mut f32) {
    use std::arch::x86_64::*;
    for (r, &o) in offs.iter().enumerate() {
        for &(lane, q) in segs {
            // SAFETY: AVX2 is enabled on this function; the caller vouches
            // that src + o + q is valid for 16 reads, and r < offs.len(),
            // lane < 16 keep the 16 writes at panel + r·16 + lane inside
            // the panel's 16·offs.len() + 16 floats.
            unsafe {
                let s = src.add(o + q);
                let d = panel.add(r * 16 + lane);
                _mm256_storeu_ps(d, _mm256_loadu_ps(s));
                _mm256_storeu_ps(d.add(8), _mm256_loadu_ps(s.add(8)));
                // The same rows' lines a few strips on: the rows are many
                // streams far apart (one per input channel and tap), more
                // than the hardware prefetchers follow.
                _mm_prefetch::<_MM_HINT_T0>(s.wrapping_add(PREFETCH_FLOATS) as *const i8);
            }
        }
    }
}

/// `dst[j] = row[j·stride + off]`, 0 where that index is outside `row`.
fn gather_row(dst: &mut [f32], row: &[f32], stride: usize, off: isize) {
    let n = row.len() as isize;
    let s = stride as isize;
    // Valid j: 0 <= j·s + off < n.
    let lo = if off >= 0 { 0 } else { (-off + s - 1) / s };
    let hi = if n - off <= 0 {
        0
    } else {
        (n - off + s - 1) / s
    };
    let (lo, hi) = (
        lo.min(dst.len() as isize) as usize,
        hi.min(dst.len() as isize) as usize,
    );
    let hi = hi.max(lo);
    dst[..lo].fill(0.0);
    dst[hi..].fill(0.0);
    if lo == hi {
        return;
    }
    let start = (lo as isize * s + off) as usize;
    let body = &mut dst[lo..hi];
    if stride == 1 {
        body.copy_from_slice(&row[start..start + body.len()]);
    } else {
        let (last, init) = body.split_last_mut().expect("lo < hi");
        let src = &row[start..start + init.len() * stride];
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if stride == 2 && is_x86_feature_detected!("avx2") {
            // SAFETY: AVX2 detected.
            done = unsafe { evens_avx2(init, src) };
        }
        for (v, c) in init[done..]
            .iter_mut()
            .zip(src[done * stride..].chunks_exact(stride))
        {
            *v = c[0];
        }
        *last = row[start + init.len() * stride];
    }
}

/// `dst[j] = src[2j]` for whole chunks of 8 (two shuffles per 16 inputs:
/// the scalar strided loop was a tenth of a stride-2 first conv); returns
/// how many were written.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn evens_avx2(dst: &mut [f32], src: &[f32]) -> usize {
    use std::arch::x86_64::*;
    let n = (dst.len() / 8).min(src.len() / 16);
    for (d, s) in dst.chunks_exact_mut(8).zip(src.chunks_exact(16)).take(n) {
        // SAFETY: d holds 8 floats and s 16, all the store and the two
        // loads touch; AVX2 is enabled on this function.
        unsafe {
            let (a, b) = (
                _mm256_loadu_ps(s.as_ptr()),
                _mm256_loadu_ps(s.as_ptr().add(8)),
            );
            let e = _mm256_castps_pd(_mm256_shuffle_ps::<0x88>(a, b));
            _mm256_storeu_ps(
                d.as_mut_ptr(),
                _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(e)),
            );
        }
    }
    n * 8
}

thread_local! {
    /// Per-thread plane buffer (kept at the largest size seen), apart from
    /// the units' scratch: units that run on the calling thread while the
    /// planes are out take their own.
    static PLANES: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

fn with_planes<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = PLANES.with(Cell::take);
    let r = f(line_aligned(&mut buf, len));
    PLANES.with(|s| s.set(buf));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_row_pads_with_zeros() {
        let row = [1.0, 2.0, 3.0, 4.0, 5.0];
        let mut d = [9.0; 5];
        gather_row(&mut d, &row, 2, -1);
        assert_eq!(d, [0.0, 2.0, 4.0, 0.0, 0.0]);
        gather_row(&mut d, &row, 1, 2);
        assert_eq!(d, [3.0, 4.0, 5.0, 0.0, 0.0]);
        gather_row(&mut d, &row, 3, -7);
        assert_eq!(d, [0.0, 0.0, 0.0, 3.0, 0.0]);
        gather_row(&mut d, &row, 1, 9);
        assert_eq!(d, [0.0; 5]);
        // Long enough for whole 8-float chunks of the stride-2 path.
        let row: Vec<f32> = (0..45).map(|i| i as f32).collect();
        let mut d = [9.0; 24];
        gather_row(&mut d, &row, 2, -3);
        let want: Vec<f32> = (0..24)
            .map(|j| match 2 * j as isize - 3 {
                i if (0..45).contains(&i) => i as f32,
                _ => 0.0,
            })
            .collect();
        assert_eq!(&d[..], &want[..]);
    }
}
