//! ONNX `Conv` (1-D, 2-D and 3-D spatial, NC + spatial layout, groups,
//! strides, dilations, asymmetric pads, optional bias), planned once for
//! static shapes.
//!
//! Every conv is normalised to 3 spatial dims (missing leading dims become
//! size 1 with kernel 1), so one code path serves all ranks. Strategies,
//! picked at plan time:
//! - shifted (1-D and 2-D convs that are not depthwise, on an AVX2/FMA
//!   host): an implicit GEMM over padded, phase-split input planes
//!   (`implicit.rs`), with no im2col buffer and no per-call weight
//!   packing. Measured on this project's AVX2 EPYC VM, 1 thread, against
//!   im2col + small-k / `gemm` crate: ResNet-50's 3x3 64->64 at 56x56 3.2 ->
//!   2.8 ms, 3x3 512->512 at 7x7 3.5 -> 3.2 ms, SqueezeNet's stride-2 first
//!   conv 1.16 -> 0.86 ms; pointwise convs even;
//! - depthwise (one input channel per group): a direct loop over output
//!   rows with the W taps fused into vectorized row passes (`rows.rs`, with
//!   AVX2/FMA dispatch); a gemm with K = 9 would mostly pack;
//! - direct (group 1, at most 4 input and 16 output channels, batch >= 2:
//!   first convs on RGB): the depthwise row loop summed over input
//!   channels, one unit per image;
//! - pointwise (1x1, stride 1, no pad) and im2col, where shifted does not
//!   apply (3-D convs, hosts without AVX2): a gemm per image and group,
//!   `W[M,C] x X[C,HW]`, reading the input in place or an im2col block
//!   unfolded into per-thread scratch; the small-k kernel for short
//!   reductions, the `gemm` crate otherwise.
//!
//! Threading: gemm work is cut into (image, group, block of output
//! positions) units run side by side single-threaded, so a batch-1 conv
//! splits its positions across threads rather than relying on gemm's
//! internal threading; depthwise and direct split (image, group) units.
//!
//! The bias starts each output tile (small-k, shifted) or is written into
//! the output first for the `gemm` crate to accumulate onto, so it costs
//! no separate pass over the result.

use rayon::prelude::*;

use gemm::Parallelism;

use super::common::{for_each_unit, with_scratch, Axis, Epilogue, PAR_FLOPS};
use super::implicit::Shifted;
use super::packed::PackedB;
use super::rows::{self, Isa, MulAdd, RowGeom};
use super::smallk;

/// Convolution attributes, pads in ONNX order (all begins, then all ends).
/// Empty `strides` / `dilations` / `pads` mean the ONNX defaults (1, 1, 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvAttrs {
    pub strides: Vec<usize>,
    pub dilations: Vec<usize>,
    pub pads: Vec<usize>,
    pub group: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Pointwise,
    Depthwise,
    /// Few input and output channels (first convs on RGB): the depthwise
    /// row loop summed over input channels; gemm with M <= 16 and K <= 36
    /// spends its time packing and the im2col pass.
    Direct,
    Im2col,
    /// Pointwise or im2col convs of 1-D and 2-D on an AVX2/FMA host: the
    /// implicit GEMM over phase planes (`implicit.rs`).
    Shifted,
    /// Small maps with constant weights: output channels in the tile's
    /// lanes instead of positions (see [`Transposed`]).
    Transposed,
}

/// Convs whose maps are too small to fill 16-position strips (a 7x7 map
/// is 49 positions: four strips, a quarter of the lanes idle), run with
/// the roles swapped: `out^T[p, m] = Σ_k x^T[p, k] · W^T[k, m]`, the
/// weights packed once into 16-channel panels ([`PackedB`]), the input
/// gathered into rows of taps per output position, the product
/// transposed back into the output with the bias and clamp. On ResNet-50's
/// 7x7 stage (Zen 4) the implicit GEMM ran these convs at 67-79 GFLOP/s;
/// transposed, the stage takes 4 % less time on 1 thread and 3-9 % less
/// on 2 (weights streamed from memory, 2-9 MB a conv, bound it more than
/// the idle lanes did).
#[derive(Debug, Clone)]
struct Transposed {
    weights: PackedB,
    /// Per output position, the flat input offset of each tap (kernel
    /// volume entries, `usize::MAX` in padding) within one channel.
    taps: Vec<usize>,
}

impl Transposed {
    /// Maps smaller than this many positions, and not a multiple of 16,
    /// take the transposed product.
    const MAX_POSITIONS: usize = 64;

    fn new(axes: &[Axis; 3], m: usize, kdim: usize, w: &[f32]) -> Transposed {
        let [ad, ah, aw] = axes;
        let mut taps = vec![];
        for od in 0..ad.output {
            for oh in 0..ah.output {
                for ow in 0..aw.output {
                    for kd in 0..ad.kernel {
                        for kh in 0..ah.kernel {
                            for kw in 0..aw.kernel {
                                let at = match (
                                    ad.input_index(od, kd),
                                    ah.input_index(oh, kh),
                                    aw.input_index(ow, kw),
                                ) {
                                    (Some(d), Some(h), Some(w)) => {
                                        (d * ah.input + h) * aw.input + w
                                    }
                                    _ => usize::MAX,
                                };
                                taps.push(at);
                            }
                        }
                    }
                }
            }
        }
        Transposed {
            weights: PackedB::new(kdim, m, w, 1, kdim),
            taps,
        }
    }

    /// `out` (batch x m x ovol) from `x` (batch x c x ivol).
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        (batch, c, m): (usize, usize, usize),
        (ivol, ovol, kvol): (usize, usize, usize),
        x: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: &mut [f32],
        clamp: Option<smallk::Clamp>,
        threads: usize,
        epi: &(dyn Fn(usize, usize) + Sync),
    ) {
        let kdim = c * kvol;
        // Rows a multiple of 4 KiB apart would share L1 sets in the tile.
        let ld = if kdim.is_multiple_of(1024) {
            kdim + 16
        } else {
            kdim
        };
        let rows = batch * ovol;
        with_scratch(rows * ld + rows * m, |buf| {
            let (xt, prod) = buf.split_at_mut(rows * ld);
            // x^T: row (image, position) holds every channel's taps.
            for (r, row) in xt.chunks_exact_mut(ld.max(1)).enumerate() {
                let (n, p) = (r / ovol, r % ovol);
                let taps = &self.taps[p * kvol..][..kvol];
                let xn = &x[n * c * ivol..][..c * ivol];
                for (ch, dst) in row[..kdim].chunks_exact_mut(kvol.max(1)).enumerate() {
                    let plane = &xn[ch * ivol..][..ivol];
                    for (d, &t) in dst.iter_mut().zip(taps) {
                        *d = if t == usize::MAX { 0.0 } else { plane[t] };
                    }
                }
            }
            self.weights.product(rows, xt, ld, prod, threads, None);
            // Back to channels-major, 16 channels at a time, with the bias
            // and the clamp; the epilogue gets each image's block of
            // channels as it is done.
            let prod = &*prod;
            let out_addr = out.as_mut_ptr().expose_provenance();
            let blocks = m.div_ceil(16);
            let unit = |u: usize| {
                let (n, b) = (u / blocks, u % blocks);
                let (j0, j1) = (b * 16, ((b + 1) * 16).min(m));
                let base = std::ptr::with_exposed_provenance_mut::<f32>(out_addr);
                for j in j0..j1 {
                    let add = bias.map_or(0.0, |b| b[j]);
                    // SAFETY: unit (n, b) alone writes channels j0..j1 of
                    // image n, inside `out` (batch x m x ovol).
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(base.add((n * m + j) * ovol), ovol)
                    };
                    let res = residual.map(|r| &r[(n * m + j) * ovol..][..ovol]);
                    for (p, d) in dst.iter_mut().enumerate() {
                        let v = prod[(n * ovol + p) * m + j] + add + res.map_or(0.0, |r| r[p]);
                        // (f32::clamp keeps a NaN.)
                        *d = clamp.map_or(v, |c| v.clamp(c.lo, c.hi));
                    }
                }
                epi((n * m + j0) * ovol, (n * m + j1) * ovol);
            };
            for_each_unit(threads > 1, batch * blocks, unit);
        });
    }
}

/// ONNX Conv for 1-D, 2-D and 3-D spatial dims (NC + spatial). auto_pad is
/// resolved by the caller into explicit pads.
#[derive(Debug, Clone)]
pub struct ConvPlan {
    batch: usize,
    c: usize,
    m: usize,
    group: usize,
    /// Axes D, H, W (leading ones size 1 for 1-D and 2-D convs).
    axes: [Axis; 3],
    out_shape: Vec<usize>,
    has_bias: bool,
    strategy: Strategy,
    /// Im2col block cap, `IM2COL_BLOCK_FLOATS` (tests shrink it to cover
    /// block edges).
    block_floats: usize,
    w_const: Option<Vec<f32>>,
    /// Gemm strategies with a short reduction (`C/group · kernel volume`
    /// at most `smallk::MAX_K`) on an AVX2/FMA host use the unpacked
    /// small-k kernel instead of the `gemm` crate.
    small_k: bool,
    /// Bounds the small-k kernel clamps each output to as it stores it (a
    /// fused Relu): see [`ConvPlan::fuse_clamp`].
    clamp: Option<smallk::Clamp>,
    /// Whether runs take a residual added before the clamp: see
    /// [`ConvPlan::fuse_residual`].
    residual: bool,
    /// The implicit-GEMM geometry, for the Shifted strategy.
    shifted: Option<Box<Shifted>>,
    /// Packed weights and tap offsets, for the Transposed strategy.
    transposed: Option<Box<Transposed>>,
    /// The strategy Shifted stands in for (Pointwise or Im2col), which
    /// tests and benchmarks can switch back to.
    #[cfg_attr(not(test), allow(dead_code))]
    fallback: Strategy,
    /// Depthwise: the W axis's row geometry and the detected row ISA.
    row_geom: RowGeom,
    isa: Isa,
}

impl ConvPlan {
    /// `w_const`: the weights when they are constant; copied into the plan
    /// (their [M, C/group, k...] layout is already the row-major gemm lhs),
    /// and `run` then ignores its `w` argument.
    pub fn new(
        x_shape: &[usize],
        w_shape: &[usize],
        has_bias: bool,
        attrs: &ConvAttrs,
        w_const: Option<&[f32]>,
    ) -> Result<ConvPlan, String> {
        let err = |why: &str| {
            Err(format!(
                "Conv: {why} (x {x_shape:?}, w {w_shape:?}, {attrs:?})"
            ))
        };
        let sd = x_shape.len().wrapping_sub(2);
        if !(1..=3).contains(&sd) || w_shape.len() != x_shape.len() {
            return err("need 1 to 3 spatial dims and matching ranks");
        }
        let pick = |v: &[usize], i: usize, dflt: usize| if v.is_empty() { dflt } else { v[i] };
        if !(attrs.strides.is_empty() || attrs.strides.len() == sd)
            || !(attrs.dilations.is_empty() || attrs.dilations.len() == sd)
            || !(attrs.pads.is_empty() || attrs.pads.len() == 2 * sd)
        {
            return err("attribute lengths do not match the spatial rank");
        }
        let (batch, c, m, group) = (x_shape[0], x_shape[1], w_shape[0], attrs.group);
        if group == 0 || c % group != 0 || m % group != 0 || w_shape[1] * group != c {
            return err("channels do not divide into groups");
        }
        let mut axes = [Axis::UNIT; 3];
        for i in 0..sd {
            let ax = Axis {
                input: x_shape[2 + i],
                kernel: w_shape[2 + i],
                stride: pick(&attrs.strides, i, 1),
                dilation: pick(&attrs.dilations, i, 1),
                pad_begin: pick(&attrs.pads, i, 0),
                output: 0,
            };
            let pad_end = pick(&attrs.pads, sd + i, 0);
            if ax.kernel == 0 || ax.stride == 0 || ax.dilation == 0 {
                return err("zero kernel, stride or dilation");
            }
            let span = ax.dilation * (ax.kernel - 1) + 1;
            let padded = ax.input + ax.pad_begin + pad_end;
            if padded < span {
                return err("kernel larger than the padded input");
            }
            axes[3 - sd + i] = Axis {
                output: (padded - span) / ax.stride + 1,
                ..ax
            };
        }
        let kvol: usize = axes.iter().map(|a| a.kernel).product();
        if let Some(w) = w_const {
            if w.len() != m * (c / group) * kvol {
                return err("constant weight length does not match its shape");
            }
        }
        let mut out_shape = vec![batch, m];
        out_shape.extend(axes[3 - sd..].iter().map(|a| a.output));
        let strategy = if axes
            .iter()
            .all(|a| a.kernel == 1 && a.stride == 1 && a.pad_begin == 0 && a.output == a.input)
        {
            Strategy::Pointwise
        } else if c / group == 1 && group > 1 {
            Strategy::Depthwise
        } else if group == 1 && c <= 4 && m <= 16 && batch >= 2 {
            // Batch >= 2 so that images give threads independent work.
            Strategy::Direct
        } else {
            Strategy::Im2col
        };
        let ovol: usize = axes.iter().map(|a| a.output).product();
        let transposed = match w_const {
            Some(w)
                if matches!(strategy, Strategy::Pointwise | Strategy::Im2col)
                    && group == 1
                    && c > 0
                    && m >= 32
                    && ovol < Transposed::MAX_POSITIONS
                    && !ovol.is_multiple_of(16)
                    && PackedB::available() =>
            {
                Some(Box::new(Transposed::new(&axes, m, c * kvol, w)))
            }
            _ => None,
        };
        let shifted = matches!(strategy, Strategy::Pointwise | Strategy::Im2col)
            .then(|| Shifted::new(&axes, c / group).map(Box::new))
            .flatten()
            .filter(|_| smallk::available() && transposed.is_none());
        Ok(ConvPlan {
            batch,
            c,
            m,
            group,
            axes,
            out_shape,
            has_bias,
            strategy: if transposed.is_some() {
                Strategy::Transposed
            } else if shifted.is_some() {
                Strategy::Shifted
            } else {
                strategy
            },
            fallback: strategy,
            shifted,
            block_floats: IM2COL_BLOCK_FLOATS,
            // The transposed plan keeps only its packed copy.
            w_const: w_const
                .filter(|_| transposed.is_none())
                .map(<[f32]>::to_vec),
            transposed,
            small_k: matches!(strategy, Strategy::Pointwise | Strategy::Im2col)
                && (c / group) * kvol <= smallk::MAX_K
                && smallk::available(),
            clamp: None,
            residual: false,
            row_geom: RowGeom::new(
                axes[2].input,
                axes[2].output,
                axes[2].kernel,
                axes[2].stride,
                axes[2].dilation,
                axes[2].pad_begin,
            ),
            isa: Isa::detect(),
        })
    }

    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    /// Turns the small-k kernel off, for benchmarks against the `gemm` path.
    #[cfg(test)]
    pub(super) fn without_small_k(mut self) -> ConvPlan {
        assert!(
            self.clamp.is_none(),
            "the clamp lives in the small-k kernel"
        );
        self.small_k = false;
        self.strategy = self.fallback;
        self
    }

    /// Turns the implicit GEMM off (keeping the small-k kernel where it
    /// applies), for benchmarks.
    #[cfg(test)]
    pub(super) fn without_shifted(mut self) -> ConvPlan {
        self.strategy = self.fallback;
        self
    }

    /// Makes every output `min(hi, max(lo, v))` (NaN kept): a Relu
    /// (`0, inf`) or Clip folded into the conv. Only where the clamp costs
    /// nothing, inside the small-k kernel's tile store; returns whether it
    /// was taken (otherwise the plan is unchanged and the caller keeps the
    /// op as an epilogue).
    pub fn fuse_clamp(&mut self, lo: f32, hi: f32) -> bool {
        let in_tile =
            self.small_k || matches!(self.strategy, Strategy::Shifted | Strategy::Transposed);
        if !in_tile || self.clamp.is_some() || lo.is_nan() || hi.is_nan() || lo > hi {
            return false;
        }
        self.clamp = Some(smallk::Clamp { lo, hi });
        true
    }

    /// Makes every output `conv + residual` (before any clamp): the skip
    /// connection of a residual block, added as each tile starts instead
    /// of in a pass over the output after it (which read the residual and
    /// the output back from memory: 15-30 % of ResNet-50's residual
    /// convs). Only for the implicit-GEMM and transposed strategies, and
    /// before a clamp is fused; returns whether it was taken. Runs then
    /// need the residual ([`ConvPlan::run_fused`]).
    pub fn fuse_residual(&mut self) -> bool {
        let in_tile = matches!(self.strategy, Strategy::Shifted | Strategy::Transposed);
        if !in_tile || self.clamp.is_some() || self.residual || self.c == 0 {
            return false;
        }
        self.residual = true;
        true
    }

    /// Whether runs need a residual ([`ConvPlan::fuse_residual`]).
    pub fn has_residual(&self) -> bool {
        self.residual
    }

    /// 2 * N * M * output positions * (C/group) * kernel volume.
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.out_vol() * (self.c / self.group) * self.kvol()) as f64
    }

    fn in_vol(&self) -> usize {
        self.axes.iter().map(|a| a.input).product()
    }
    fn out_vol(&self) -> usize {
        self.axes.iter().map(|a| a.output).product()
    }
    fn kvol(&self) -> usize {
        self.axes.iter().map(|a| a.kernel).product()
    }

    /// `x`, `w`, `bias` and `out` must have the planned lengths
    /// (debug-asserted); `bias` is used iff the plan has one; `w` is ignored
    /// when the weights were constant. `out` is fully overwritten.
    pub fn run(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, out: &mut [f32], threads: usize) {
        self.run_with_epilogue(x, w, bias, out, threads, None);
    }

    /// [`ConvPlan::run`], calling `epilogue(out, lo, hi)` on flat ranges of
    /// `out` as soon as they are final, on the thread that computed them,
    /// while they are still in cache. The ranges cover `out` exactly once;
    /// calls for different ranges may run concurrently.
    pub fn run_with_epilogue(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        out: &mut [f32],
        threads: usize,
        epilogue: Option<&Epilogue>,
    ) {
        self.run_fused(x, w, bias, None, out, threads, epilogue);
    }

    /// [`ConvPlan::run_with_epilogue`] with the residual of a plan that
    /// fused one (laid out like `out`).
    ///
    /// Panics if `residual` is given to a plan without one or missing from
    /// a plan with one, or is shorter than `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn run_fused(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out: &mut [f32],
        threads: usize,
        epilogue: Option<&Epilogue>,
    ) {
        assert_eq!(residual.is_some(), self.residual, "Conv: residual operand");
        // Only the tile strategies add it (tests may switch strategies).
        assert!(
            residual.is_none()
                || matches!(self.strategy, Strategy::Shifted | Strategy::Transposed),
            "Conv: residual on a strategy that cannot add it"
        );
        assert!(
            residual.is_none_or(|r| r.len() >= out.len()),
            "Conv: short residual"
        );
        // Epilogues get `out`'s base pointer re-derived from this borrow
        // (units write through it too), so their writes are as valid as
        // the kernel's own.
        let out_addr = out.as_mut_ptr().expose_provenance();
        let epi = |lo: usize, hi: usize| {
            if let Some(e) = epilogue {
                e(
                    std::ptr::with_exposed_provenance_mut::<f32>(out_addr),
                    lo,
                    hi,
                )
            }
        };
        let w = self.w_const.as_deref().unwrap_or(w);
        let bias = if self.has_bias { bias } else { None };
        let (cg, mg) = (self.c / self.group, self.m / self.group);
        let (ivol, ovol, kvol) = (self.in_vol(), self.out_vol(), self.kvol());
        debug_assert_eq!(x.len(), self.batch * self.c * ivol);
        debug_assert!(self.transposed.is_some() || w.len() == self.m * cg * kvol);
        debug_assert_eq!(out.len(), self.batch * self.m * ovol);
        debug_assert_eq!(bias.is_some(), self.has_bias);
        debug_assert!(bias.is_none_or(|b| b.len() == self.m));
        if out.is_empty() {
            return;
        }
        if matches!(self.strategy, Strategy::Depthwise | Strategy::Direct) {
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
            return;
        }

        if let (Strategy::Transposed, Some(t)) = (self.strategy, &self.transposed) {
            t.run(
                (self.batch, self.c, self.m),
                (ivol, ovol, kvol),
                x,
                bias,
                residual,
                out,
                self.clamp,
                threads,
                &epi,
            );
            return;
        }
        if let (Strategy::Shifted, Some(sh)) = (self.strategy, &self.shifted) {
            if cg * kvol > 0 {
                sh.run(
                    (self.batch, self.group, cg, mg),
                    x,
                    w,
                    bias,
                    residual,
                    out_addr,
                    out.len(),
                    threads,
                    self.clamp,
                    &epi,
                );
                return;
            }
        }

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
            if epilogue.is_some() {
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

/// Output floats per work unit of the small-k path (256 KiB): a quarter of
/// Zen 4's L2, so the unit's result is still there when the epilogue runs.
const UNIT_OUT_FLOATS: usize = 1 << 16;

/// Largest im2col block (floats; 16 MiB), which bounds the per-thread
/// scratch of very large convs. Measured on Zen 4 (ResNet-50 3x3, 64
/// channels at 56x56): L2-sized blocks (128K-256K floats) were 5-10% slower
/// on one thread than a whole-image unfold, since gemm already blocks for
/// the caches and small blocks re-pack the weights per block; every
/// ResNet-50 conv (at most 1.8M floats unfolded) fits in one block.
const IM2COL_BLOCK_FLOATS: usize = 1 << 22;

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

#[cfg(test)]
mod tests {
    //! Plans against a naive direct convolution on LCG data. Tolerance:
    //! relative 1e-4 of the sum of |terms| of each output's accumulation.
    use super::super::common::testing::{check, lcg};
    use super::*;

    /// Naive N-D conv: returns (values, sum of |terms|).
    fn reference(
        xs: &[usize],
        ws: &[usize],
        a: &ConvAttrs,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
    ) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
        let sd = xs.len() - 2;
        let (n, c, m, g) = (xs[0], xs[1], ws[0], a.group);
        let (cg, mg) = (c / g, m / g);
        let osz: Vec<usize> = (0..sd)
            .map(|i| {
                (xs[2 + i] + a.pads[i] + a.pads[sd + i] - a.dilations[i] * (ws[2 + i] - 1) - 1)
                    / a.strides[i]
                    + 1
            })
            .collect();
        let ovol: usize = osz.iter().product();
        let ivol: usize = xs[2..].iter().product();
        let kvol: usize = ws[2..].iter().product();
        let mut shape = vec![n, m];
        shape.extend(&osz);
        let (mut out, mut sc) = (vec![0.0; n * m * ovol], vec![0.0; n * m * ovol]);
        for ni in 0..n {
            for oc in 0..m {
                let gi = oc / mg;
                for op in 0..ovol {
                    // Unravel the output position.
                    let mut o = vec![0; sd];
                    let mut r = op;
                    for d in (0..sd).rev() {
                        o[d] = r % osz[d];
                        r /= osz[d];
                    }
                    let b = bias.map_or(0.0, |b| b[oc] as f64);
                    let (mut s, mut t) = (b, b.abs());
                    for ci in 0..cg {
                        'tap: for kp in 0..kvol {
                            let mut kk = vec![0; sd];
                            let mut r = kp;
                            for d in (0..sd).rev() {
                                kk[d] = r % ws[2 + d];
                                r /= ws[2 + d];
                            }
                            let mut ii = 0;
                            for d in 0..sd {
                                let i = (o[d] * a.strides[d] + kk[d] * a.dilations[d]) as isize
                                    - a.pads[d] as isize;
                                if i < 0 || i >= xs[2 + d] as isize {
                                    continue 'tap;
                                }
                                ii = ii * xs[2 + d] + i as usize;
                            }
                            let xv = x[((ni * c) + gi * cg + ci) * ivol + ii] as f64;
                            let wv = w[(oc * cg + ci) * kvol + kp] as f64;
                            s += xv * wv;
                            t += (xv * wv).abs();
                        }
                    }
                    out[(ni * m + oc) * ovol + op] = s as f32;
                    sc[(ni * m + oc) * ovol + op] = t as f32;
                }
            }
        }
        (shape, out, sc)
    }

    #[allow(clippy::too_many_arguments)]
    fn case(
        xs: &[usize],
        ws: &[usize],
        strides: &[usize],
        dil: &[usize],
        pads: &[usize],
        group: usize,
        with_bias: bool,
        want_strategy: Strategy,
    ) {
        let attrs = ConvAttrs {
            strides: strides.to_vec(),
            dilations: dil.to_vec(),
            pads: pads.to_vec(),
            group,
        };
        let x = lcg(11, xs.iter().product());
        let w = lcg(12, ws.iter().product());
        let b = lcg(13, ws[0]);
        let bias = with_bias.then_some(&b[..]);
        let (shape, want, sc) = reference(xs, ws, &attrs, &x, &w, bias);
        for (konst, block_floats) in [
            (false, IM2COL_BLOCK_FLOATS),
            (true, IM2COL_BLOCK_FLOATS),
            (false, 1),
            (true, 7 * ws[1..].iter().product::<usize>()),
        ] {
            let mut plan =
                ConvPlan::new(xs, ws, with_bias, &attrs, konst.then_some(&w[..])).unwrap();
            // Tiny blocks: one output position, or 7 positions that straddle
            // output rows.
            plan.block_floats = block_floats.min(IM2COL_BLOCK_FLOATS);
            // With them, the implicit GEMM takes k blocks of 5 and units
            // of one 16-position strip.
            if block_floats < IM2COL_BLOCK_FLOATS {
                if let Some(sh) = plan.shifted.as_mut() {
                    sh.kc = 5;
                    sh.unit_strips = Some(1);
                }
            }
            // Half the runs take the portable row kernels and the `gemm`
            // crate, half the detected ISA's row kernels and the
            // small-k kernel where eligible, the `gemm` crate otherwise.
            if !konst {
                plan.isa = Isa::Portable;
                plan.small_k = false;
            }
            assert_eq!(plan.out_shape(), &shape[..]);
            // Small-channel shapes expected as Im2col may plan Direct; both
            // strategies are then checked.
            let chosen = plan.strategy;
            if chosen == Transposed {
                assert!(konst && matches!(want_strategy, Pointwise | Im2col));
            } else if chosen == Shifted {
                assert!(smallk::available(), "Shifted without AVX2/FMA");
                assert!(matches!(want_strategy, Pointwise | Im2col));
            } else if !(want_strategy == Im2col && chosen == Direct) {
                assert_eq!(chosen, want_strategy, "{xs:?} {ws:?} {attrs:?}");
            }
            // (A transposed plan keeps no unpacked weights to fall back on.)
            let strategies = if chosen == Transposed {
                vec![chosen]
            } else {
                vec![chosen, want_strategy]
            };
            for strategy in strategies {
                plan.strategy = strategy;
                for threads in [1, 2] {
                    let mut out = vec![f32::NAN; want.len()];
                    let w_arg: &[f32] = if konst { &[] } else { &w };
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    pool.install(|| plan.run(&x, w_arg, bias, &mut out, threads));
                    let what =
                        format!("conv x{xs:?} w{ws:?} {attrs:?} t{threads} c{konst} {strategy:?}");
                    check(&out, &want, &sc, &what);
                    // An epilogue sees every element exactly once, finished.
                    let seen: Vec<AtomicU32> = (0..want.len()).map(|_| AtomicU32::new(0)).collect();
                    let epilogue = |o: *mut f32, lo: usize, hi: usize| {
                        for (i, s) in seen.iter().enumerate().take(hi).skip(lo) {
                            s.fetch_add(1, Ordering::Relaxed);
                            // SAFETY: o is valid for the whole output; the
                            // range is this call's alone.
                            unsafe { *o.add(i) = 2.0 * *o.add(i) };
                        }
                    };
                    let mut out = vec![f32::NAN; want.len()];
                    pool.install(|| {
                        plan.run_with_epilogue(&x, w_arg, bias, &mut out, threads, Some(&epilogue))
                    });
                    assert!(
                        seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                        "{what}"
                    );
                    let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
                    let sc2: Vec<f32> = sc.iter().map(|v| 2.0 * v).collect();
                    check(&out, &twice, &sc2, &format!("{what} with epilogue"));
                }
            }
        }
    }

    use std::sync::atomic::{AtomicU32, Ordering};
    use Strategy::*;

    /// Batch 1, small image, many output channels: at 2 threads the
    /// units split output channels (uneven blocks: 40 = 13 + 13 + 14).
    #[test]
    fn conv_channel_split() {
        case(
            &[1, 40, 5, 6],
            &[40, 40, 1, 1],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            1,
            true,
            Pointwise,
        );
        case(
            &[1, 16, 4, 4],
            &[48, 16, 1, 1],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            1,
            false,
            Pointwise,
        );
        case(
            &[1, 600, 7, 7],
            &[64, 600, 1, 1],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            1,
            true,
            Pointwise,
        );
    }

    /// Small maps (fewer than 64 positions, not a multiple of 16) with
    /// constant weights and 32+ output channels: channels in the lanes.
    /// Padded 3x3, pointwise, strided, dilated and batched.
    #[test]
    fn conv_small_maps_transposed() {
        type S = &'static [usize];
        #[rustfmt::skip]
        let shapes: [(S, S, S, S, S, Strategy); 5] = [
            (&[1, 40, 7, 7], &[48, 40, 3, 3], &[1, 1], &[1, 1], &[1, 1, 1, 1], Im2col),
            (&[1, 64, 5, 5], &[40, 64, 1, 1], &[1, 1], &[1, 1], &[0, 0, 0, 0], Pointwise),
            (&[1, 24, 13, 13], &[32, 24, 1, 1], &[2, 2], &[1, 1], &[0, 0, 0, 0], Im2col),
            (&[2, 8, 12, 12], &[33, 8, 3, 3], &[2, 2], &[2, 2], &[2, 1, 1, 2], Im2col),
            (&[1, 5, 9], &[70, 5, 3], &[1], &[1], &[1, 1], Im2col),
        ];
        for (xs, ws, st, dil, pads, want) in shapes {
            for bias in [false, true] {
                case(xs, ws, st, dil, pads, 1, bias, want);
            }
            if !PackedB::available() {
                continue;
            }
            // The plan is the transposed one, and it clamps (a folded Relu).
            let attrs = ConvAttrs {
                strides: st.to_vec(),
                dilations: dil.to_vec(),
                pads: pads.to_vec(),
                group: 1,
            };
            let x = lcg(11, xs.iter().product());
            let w = lcg(12, ws.iter().product());
            let b = lcg(13, ws[0]);
            let mut plan = ConvPlan::new(xs, ws, true, &attrs, Some(&w)).unwrap();
            assert_eq!(plan.strategy, Strategy::Transposed, "{xs:?} {ws:?}");
            assert!(plan.fuse_clamp(0.0, f32::INFINITY));
            let (_, want, sc) = reference(xs, ws, &attrs, &x, &w, Some(&b));
            let want: Vec<f32> = want.iter().map(|v| v.max(0.0)).collect();
            let mut out = vec![f32::NAN; want.len()];
            plan.run(&x, &[], Some(&b), &mut out, 1);
            check(&out, &want, &sc, &format!("{xs:?} {ws:?} + Relu"));
        }
    }

    /// A fused residual (then a fused Relu) on the implicit GEMM and the
    /// transposed product: partial strips, several k blocks, batch 2, one
    /// and two threads; the plan refuses it on other strategies and after
    /// a clamp.
    #[test]
    fn conv_fused_residual() {
        if !smallk::available() {
            return;
        }
        type S = &'static [usize];
        #[rustfmt::skip]
        let shapes: [(S, S, S, S, Strategy); 4] = [
            (&[1, 8, 9, 11], &[24, 8, 3, 3], &[1, 1], &[1, 1, 1, 1], Strategy::Shifted),
            (&[2, 16, 6, 7], &[20, 16, 1, 1], &[1, 1], &[0, 0, 0, 0], Strategy::Shifted),
            (&[1, 12, 11, 11], &[40, 12, 3, 3], &[2, 2], &[1, 1, 1, 1], Strategy::Transposed),
            (&[2, 40, 7, 7], &[64, 40, 1, 1], &[1, 1], &[0, 0, 0, 0], Strategy::Transposed),
        ];
        for (xs, ws, st, pads, strategy) in shapes {
            let attrs = ConvAttrs {
                strides: st.to_vec(),
                dilations: vec![1, 1],
                pads: pads.to_vec(),
                group: 1,
            };
            let x = lcg(11, xs.iter().product());
            let w = lcg(12, ws.iter().product());
            let b = lcg(13, ws[0]);
            let (_, conv, sc) = reference(xs, ws, &attrs, &x, &w, Some(&b));
            let res = lcg(14, conv.len());
            for relu in [false, true] {
                for kc in [None, Some(5)] {
                    let mut plan = ConvPlan::new(xs, ws, true, &attrs, Some(&w)).unwrap();
                    assert_eq!(plan.strategy, strategy, "{xs:?} {ws:?}");
                    if let (Some(kc), Some(sh)) = (kc, plan.shifted.as_mut()) {
                        sh.kc = kc;
                    }
                    assert!(plan.fuse_residual() && plan.has_residual());
                    assert!(!plan.fuse_residual());
                    if relu {
                        assert!(plan.fuse_clamp(0.0, f32::INFINITY));
                    }
                    let want: Vec<f32> = conv
                        .iter()
                        .zip(&res)
                        .map(|(c, r)| if relu { (c + r).max(0.0) } else { c + r })
                        .collect();
                    let sc: Vec<f32> = sc.iter().zip(&res).map(|(s, r)| s + r.abs()).collect();
                    for threads in [1, 2] {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap();
                        let mut out = vec![f32::NAN; want.len()];
                        pool.install(|| {
                            plan.run_fused(&x, &[], Some(&b), Some(&res), &mut out, threads, None)
                        });
                        let what = format!("{xs:?} {ws:?} relu {relu} kc {kc:?} t{threads}");
                        check(&out, &want, &sc, &what);
                    }
                }
            }
        }
        // Not on other strategies, nor after a clamp.
        let a = ConvAttrs {
            group: 4,
            ..Default::default()
        };
        let mut depthwise = ConvPlan::new(&[1, 4, 5, 5], &[4, 1, 3, 3], false, &a, None).unwrap();
        assert!(!depthwise.fuse_residual());
        let a = ConvAttrs {
            group: 1,
            ..Default::default()
        };
        let mut clamped = ConvPlan::new(&[1, 8, 9, 9], &[24, 8, 1, 1], false, &a, None).unwrap();
        if clamped.fuse_clamp(0.0, 1.0) {
            assert!(!clamped.fuse_residual());
        }
    }

    #[test]
    fn conv_2d() {
        case(
            &[1, 3, 7, 9],
            &[4, 3, 3, 3],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            1,
            false,
            Im2col,
        );
        case(
            &[2, 3, 7, 9],
            &[5, 3, 3, 3],
            &[1, 1],
            &[1, 1],
            &[1, 1, 1, 1],
            1,
            true,
            Im2col,
        );
        case(
            &[1, 4, 11, 10],
            &[6, 4, 3, 2],
            &[2, 3],
            &[1, 1],
            &[1, 0, 2, 1],
            1,
            true,
            Im2col,
        );
        case(
            &[2, 4, 12, 13],
            &[6, 2, 3, 3],
            &[1, 2],
            &[2, 1],
            &[2, 1, 0, 3],
            2,
            true,
            Im2col,
        );
        case(
            &[1, 6, 9, 9],
            &[3, 2, 1, 1],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            3,
            true,
            Pointwise,
        );
        case(
            &[3, 5, 4, 6],
            &[7, 5, 1, 1],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            1,
            false,
            Pointwise,
        );
        case(
            &[1, 5, 8, 6],
            &[7, 5, 1, 1],
            &[2, 2],
            &[1, 1],
            &[0, 0, 0, 0],
            1,
            true,
            Im2col,
        );
        case(
            &[1, 5, 8, 6],
            &[7, 5, 1, 1],
            &[1, 1],
            &[1, 1],
            &[1, 0, 0, 1],
            1,
            true,
            Im2col,
        );
        case(
            &[1, 1, 1, 1],
            &[1, 1, 1, 1],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            1,
            true,
            Pointwise,
        );
        case(
            &[1, 2, 1, 5],
            &[3, 2, 1, 3],
            &[1, 1],
            &[1, 1],
            &[0, 1, 0, 1],
            1,
            false,
            Im2col,
        );
        // Kernel bigger than the input, covered by padding.
        case(
            &[1, 2, 2, 2],
            &[3, 2, 5, 5],
            &[1, 1],
            &[1, 1],
            &[2, 2, 2, 2],
            1,
            true,
            Im2col,
        );
        // Big enough for threaded gemm and threaded im2col at batch 1.
        case(
            &[1, 16, 20, 20],
            &[32, 16, 3, 3],
            &[1, 1],
            &[1, 1],
            &[1, 1, 1, 1],
            1,
            true,
            Im2col,
        );
        case(
            &[1, 64, 20, 20],
            &[64, 64, 1, 1],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 0],
            1,
            true,
            Pointwise,
        );
    }

    #[test]
    fn conv_depthwise() {
        case(
            &[1, 8, 9, 11],
            &[8, 1, 3, 3],
            &[1, 1],
            &[1, 1],
            &[1, 1, 1, 1],
            8,
            true,
            Depthwise,
        );
        case(
            &[2, 4, 10, 9],
            &[4, 1, 3, 5],
            &[2, 2],
            &[1, 2],
            &[0, 2, 1, 3],
            4,
            false,
            Depthwise,
        );
        case(
            &[1, 3, 7, 7],
            &[6, 1, 3, 3],
            &[1, 3],
            &[2, 1],
            &[2, 0, 1, 1],
            3,
            true,
            Depthwise,
        );
        case(
            &[1, 5, 12],
            &[5, 1, 4],
            &[3],
            &[1],
            &[2, 1],
            5,
            true,
            Depthwise,
        );
        case(
            &[1, 3, 4, 5, 6],
            &[3, 1, 2, 3, 2],
            &[1, 2, 1],
            &[2, 1, 1],
            &[1, 0, 1, 0, 1, 1],
            3,
            true,
            Depthwise,
        );
        // Taps that never land in the input (all padding).
        case(
            &[1, 2, 3, 2],
            &[2, 1, 1, 4],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 2],
            2,
            true,
            Depthwise,
        );
        case(
            &[1, 2, 3, 2],
            &[2, 1, 3, 3],
            &[1, 1],
            &[1, 3],
            &[0, 4, 0, 4],
            2,
            true,
            Depthwise,
        );
        case(
            &[1, 2, 3, 2],
            &[3, 2, 1, 4],
            &[1, 1],
            &[1, 1],
            &[0, 0, 0, 2],
            1,
            true,
            Im2col,
        );
        case(
            &[1, 2, 3, 2],
            &[3, 2, 3, 3],
            &[1, 2],
            &[1, 3],
            &[1, 4, 0, 4],
            1,
            true,
            Im2col,
        );
        case(
            &[1, 32, 17, 17],
            &[32, 1, 3, 3],
            &[2, 2],
            &[1, 1],
            &[1, 1, 1, 1],
            32,
            true,
            Depthwise,
        );
    }

    /// The row kernels' fast paths: widths not a multiple of the 8-float
    /// chunk, fused tap counts and the tap-by-tap fallback (11 taps),
    /// strides 2 and 3 (phase split, odd and even pads), dilation 2,
    /// asymmetric pads, channel multipliers, and a plane set big enough to
    /// thread.
    #[test]
    fn conv_depthwise_rows() {
        type S = &'static [usize];
        #[rustfmt::skip]
        let cases: &[(S, S, S, S, S, usize)] = &[
            (&[1, 2, 5, 29], &[2, 1, 2, 11], &[1, 2], &[1, 1], &[1, 5, 0, 6], 2),
            (&[1, 4, 9, 37], &[4, 1, 3, 3], &[1, 1], &[1, 1], &[1, 1, 1, 1], 4),
            (&[2, 3, 11, 53], &[3, 1, 5, 5], &[2, 2], &[1, 1], &[2, 2, 2, 2], 3),
            (&[1, 2, 8, 41], &[2, 1, 3, 7], &[2, 2], &[1, 2], &[1, 3, 0, 5], 2),
            (&[1, 3, 6, 35], &[6, 1, 2, 9], &[1, 3], &[1, 1], &[0, 4, 1, 4], 3),
            (&[1, 2, 5, 19], &[2, 1, 1, 4], &[1, 1], &[1, 2], &[0, 2, 0, 1], 2),
            (&[1, 2, 4, 17], &[2, 1, 2, 2], &[2, 2], &[2, 1], &[1, 0, 1, 1], 2),
            (&[1, 2, 3, 16], &[2, 1, 3, 1], &[1, 2], &[1, 1], &[1, 0, 1, 0], 2),
            (&[6, 5, 3, 12], &[5, 1, 5, 5], &[1, 1], &[1, 1], &[2, 2, 2, 2], 5),
            (&[1, 64, 40, 41], &[64, 1, 5, 5], &[1, 1], &[1, 1], &[2, 2, 2, 2], 64),
            (&[1, 64, 40, 41], &[64, 1, 3, 3], &[2, 2], &[1, 1], &[1, 1, 1, 1], 64),
        ];
        for &(xs, ws, st, dil, pads, g) in cases {
            case(xs, ws, st, dil, pads, g, true, Depthwise);
        }
    }

    /// Small-channel convs (first convs on RGB) take the direct row loop.
    #[test]
    fn conv_direct() {
        type S = &'static [usize];
        #[rustfmt::skip]
        let cases: &[(S, S, S, S, S)] = &[
            (&[6, 3, 48, 37], &[8, 3, 3, 3], &[2, 2], &[1, 1], &[1, 1, 1, 1]),
            (&[2, 3, 30, 29], &[16, 3, 7, 7], &[2, 2], &[1, 1], &[3, 3, 3, 3]),
            (&[2, 4, 9, 21], &[5, 4, 3, 2], &[1, 3], &[2, 2], &[2, 0, 1, 1]),
            (&[3, 2, 11], &[3, 2, 5], &[2], &[1], &[2, 1]),
        ];
        for &(xs, ws, st, dil, pads) in cases {
            case(xs, ws, st, dil, pads, 1, true, Direct);
        }
        // Zero-width input, all padding: rows exist but hold no data.
        case(
            &[2, 3, 3, 0],
            &[4, 3, 2, 2],
            &[1, 1],
            &[1, 1],
            &[0, 1, 0, 1],
            1,
            true,
            Direct,
        );
        case(
            &[1, 2, 3, 0],
            &[2, 1, 1, 2],
            &[1, 2],
            &[1, 1],
            &[0, 1, 0, 1],
            2,
            true,
            Depthwise,
        );
    }

    #[test]
    fn conv_1d_3d() {
        case(
            &[2, 3, 17],
            &[4, 3, 3],
            &[2],
            &[2],
            &[1, 3],
            1,
            true,
            Im2col,
        );
        case(
            &[1, 4, 9],
            &[6, 2, 1],
            &[1],
            &[1],
            &[0, 0],
            2,
            false,
            Pointwise,
        );
        case(
            &[1, 2, 5, 6, 7],
            &[3, 2, 3, 2, 3],
            &[1, 2, 1],
            &[1, 1, 2],
            &[1, 0, 2, 0, 1, 1],
            1,
            true,
            Im2col,
        );
        case(
            &[2, 4, 3, 4, 5],
            &[4, 2, 2, 2, 2],
            &[2, 1, 2],
            &[1, 2, 1],
            &[0, 1, 1, 1, 0, 0],
            2,
            false,
            Im2col,
        );
        case(
            &[1, 3, 2, 3, 4],
            &[5, 3, 1, 1, 1],
            &[1, 1, 1],
            &[1, 1, 1],
            &[0, 0, 0, 0, 0, 0],
            1,
            true,
            Pointwise,
        );
    }

    #[test]
    fn conv_no_input_channels() {
        let a = ConvAttrs {
            group: 1,
            ..Default::default()
        };
        let plan = ConvPlan::new(&[1, 0, 3, 3], &[2, 0, 2, 2], true, &a, None).unwrap();
        let mut out = vec![f32::NAN; 8];
        plan.run(&[], &[], Some(&[1.5, -2.0]), &mut out, 2);
        assert_eq!(out, [1.5, 1.5, 1.5, 1.5, -2.0, -2.0, -2.0, -2.0]);
    }

    #[test]
    fn conv_errors() {
        let a = ConvAttrs {
            group: 1,
            ..Default::default()
        };
        assert!(ConvPlan::new(&[1, 3, 5, 5], &[4, 2, 3, 3], false, &a, None).is_err());
        assert!(ConvPlan::new(&[1, 3, 2, 2], &[4, 3, 3, 3], false, &a, None).is_err());
        assert!(ConvPlan::new(&[1, 3], &[4, 3], false, &a, None).is_err());
        assert!(ConvPlan::new(&[1, 3, 5, 5], &[4, 3, 3, 3], false, &a, Some(&[0.0; 5])).is_err());
        let g0 = ConvAttrs {
            group: 0,
            ..Default::default()
        };
        assert!(ConvPlan::new(&[1, 3, 5, 5], &[4, 3, 3, 3], false, &g0, None).is_err());
        let bad = ConvAttrs {
            strides: vec![1],
            group: 1,
            ..Default::default()
        };
        assert!(ConvPlan::new(&[1, 3, 5, 5], &[4, 3, 3, 3], false, &bad, None).is_err());
        assert!(ConvPlan::new(&[1, 3, 5, 5], &[4, 3, 3, 3], true, &a, None).is_ok());
    }
}
