//! The conv plan: a conv's shapes and attributes checked and normalised
//! to 3 spatial axes, the strategy chosen for them ([`choose_strategy`], a
//! pure function of shapes, attributes and host features), and the
//! epilogues it takes into its tiles. How each strategy runs is in a file
//! of its own (`direct.rs`, `im2col.rs`, `shifted.rs`, `transposed.rs`),
//! above this one; `mod.rs` dispatches a run to them.

use super::super::common::Axis;
use super::super::implicit::Shifted;
use super::super::packed::PackedB;
use super::super::rows::{Isa, RowGeom};
use super::super::smallk;
use super::super::weights::ConstWeights;
use super::transposed::Transposed;

/// Largest im2col block (floats; 16 MiB), which bounds the per-thread
/// scratch of very large convs. Measured on Zen 4 (ResNet-50 3x3, 64
/// channels at 56x56): L2-sized blocks (128K-256K floats) were 5-10% slower
/// on one thread than a whole-image unfold, since gemm already blocks for
/// the caches and small blocks re-pack the weights per block; every
/// ResNet-50 conv (at most 1.8M floats unfolded) fits in one block.
pub(super) const IM2COL_BLOCK_FLOATS: usize = 1 << 22;

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
pub(super) enum Strategy {
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

/// Checks a conv's shapes and attributes and normalises its spatial axes
/// to 3 (D, H, W; missing leading ones size 1 with kernel 1), with their
/// output sizes; `Err` says what is wrong.
pub(super) fn normalise(
    x_shape: &[usize],
    w_shape: &[usize],
    attrs: &ConvAttrs,
    w_const: Option<&[f32]>,
) -> Result<[Axis; 3], &'static str> {
    let sd = x_shape.len().wrapping_sub(2);
    if !(1..=3).contains(&sd) || w_shape.len() != x_shape.len() {
        return Err("need 1 to 3 spatial dims and matching ranks");
    }
    let pick = |v: &[usize], i: usize, dflt: usize| if v.is_empty() { dflt } else { v[i] };
    if !(attrs.strides.is_empty() || attrs.strides.len() == sd)
        || !(attrs.dilations.is_empty() || attrs.dilations.len() == sd)
        || !(attrs.pads.is_empty() || attrs.pads.len() == 2 * sd)
    {
        return Err("attribute lengths do not match the spatial rank");
    }
    let (c, m, group) = (x_shape[1], w_shape[0], attrs.group);
    if group == 0 || c % group != 0 || m % group != 0 || w_shape[1] * group != c {
        return Err("channels do not divide into groups");
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
            return Err("zero kernel, stride or dilation");
        }
        let span = ax.dilation * (ax.kernel - 1) + 1;
        let padded = ax.input + ax.pad_begin + pad_end;
        if padded < span {
            return Err("kernel larger than the padded input");
        }
        axes[3 - sd + i] = Axis {
            output: (padded - span) / ax.stride + 1,
            ..ax
        };
    }
    let kvol: usize = axes.iter().map(|a| a.kernel).product();
    if let Some(w) = w_const {
        if w.len() != m * (c / group) * kvol {
            return Err("constant weight length does not match its shape");
        }
    }
    Ok(axes)
}

/// The host features the strategy choice depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Host {
    /// The small-k kernel and the implicit GEMM run
    /// ([`smallk::available`]).
    pub(super) small_k: bool,
    /// Products with packed weights run ([`PackedB::available`]).
    pub(super) packed_b: bool,
}

impl Host {
    fn detect() -> Host {
        Host {
            small_k: smallk::available(),
            packed_b: PackedB::available(),
        }
    }
}

/// The strategy a conv's shape alone calls for (normalised `axes`; `c`
/// input and `m` output channels in `group` groups), before a tile
/// kernel stands in for it: what a plan falls back to.
fn base_strategy(batch: usize, c: usize, m: usize, group: usize, axes: &[Axis; 3]) -> Strategy {
    if axes
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
    }
}

/// The strategy a conv runs with: [`base_strategy`], except that a
/// pointwise or im2col conv takes the transposed product (small maps,
/// constant weights, on a host with packed-B products) or else the
/// implicit GEMM (1-D and 2-D convs on an AVX2/FMA host) where they
/// apply. A pure function of the shapes, attributes (as normalised
/// `axes`), whether the weights are constant, and the host's features;
/// building the plan is [`ConvPlan::new`]'s.
pub(super) fn choose_strategy(
    batch: usize,
    c: usize,
    m: usize,
    group: usize,
    axes: &[Axis; 3],
    const_weights: bool,
    host: Host,
) -> Strategy {
    let base = base_strategy(batch, c, m, group, axes);
    if !matches!(base, Strategy::Pointwise | Strategy::Im2col) {
        return base;
    }
    let ovol: usize = axes.iter().map(|a| a.output).product();
    if const_weights
        && group == 1
        && c > 0
        && m >= 32
        && ovol < Transposed::MAX_POSITIONS
        && !ovol.is_multiple_of(16)
        && host.packed_b
    {
        Strategy::Transposed
    } else if Shifted::fits(axes) && host.small_k {
        Strategy::Shifted
    } else {
        base
    }
}

/// ONNX Conv for 1-D, 2-D and 3-D spatial dims (NC + spatial). auto_pad is
/// resolved by the caller into explicit pads.
#[derive(Debug, Clone)]
pub struct ConvPlan {
    pub(super) batch: usize,
    pub(super) c: usize,
    pub(super) m: usize,
    pub(super) group: usize,
    /// Axes D, H, W (leading ones size 1 for 1-D and 2-D convs).
    pub(super) axes: [Axis; 3],
    pub(super) out_shape: Vec<usize>,
    pub(super) has_bias: bool,
    pub(super) strategy: Strategy,
    /// Im2col block cap, `IM2COL_BLOCK_FLOATS` (tests shrink it to cover
    /// block edges).
    pub(super) block_floats: usize,
    pub(super) w_const: Option<ConstWeights>,
    /// Gemm strategies with a short reduction (`C/group · kernel volume`
    /// at most `smallk::MAX_K`) on an AVX2/FMA host use the unpacked
    /// small-k kernel instead of the `gemm` crate.
    pub(super) small_k: bool,
    /// Bounds the small-k kernel clamps each output to as it stores it (a
    /// fused Relu): see [`ConvPlan::fuse_clamp`].
    pub(super) clamp: Option<smallk::Clamp>,
    /// Whether runs take a residual added before the clamp: see
    /// [`ConvPlan::fuse_residual`].
    pub(super) residual: bool,
    /// The implicit-GEMM geometry, for the Shifted strategy.
    pub(super) shifted: Option<Box<Shifted>>,
    /// Packed weights and tap offsets, for the Transposed strategy.
    pub(super) transposed: Option<Box<Transposed>>,
    /// The strategy Shifted stands in for (Pointwise or Im2col), which
    /// tests and benchmarks can switch back to.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fallback: Strategy,
    /// Depthwise: the W axis's row geometry and the detected row ISA.
    pub(super) row_geom: RowGeom,
    pub(super) isa: Isa,
}

/// Which epilogues a conv takes into its own tiles: see
/// [`ConvPlan::epilogues`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvEpilogues {
    /// A residual added as each tile starts ([`ConvPlan::fuse_residual`]).
    pub residual: bool,
    /// A clamp (Relu) as each tile is stored ([`ConvPlan::fuse_clamp`]).
    pub clamp: bool,
}

/// Whether a conv of this strategy adds a residual in its tiles: the
/// implicit-GEMM and transposed strategies start their tiles from an
/// addend.
fn takes_residual(strategy: Strategy, c: usize) -> bool {
    matches!(strategy, Strategy::Shifted | Strategy::Transposed) && c > 0
}

/// Whether a conv clamps in its tile store: the small-k kernel, the
/// implicit-GEMM and the transposed strategies.
fn takes_clamp(strategy: Strategy, small_k: bool) -> bool {
    small_k || matches!(strategy, Strategy::Shifted | Strategy::Transposed)
}

/// Whether a pointwise or im2col conv with reduction length `k` runs on
/// the small-k kernel.
fn runs_small_k(fallback: Strategy, k: usize) -> bool {
    matches!(fallback, Strategy::Pointwise | Strategy::Im2col)
        && k <= smallk::MAX_K
        && smallk::available()
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
        let w_const = w_const.map(ConstWeights::from_slice);
        Self::new_shared(x_shape, w_shape, has_bias, attrs, w_const)
    }

    /// [`ConvPlan::new`] with the weights (and their packing) shared with
    /// every other plan that reads the same constant.
    pub fn new_shared(
        x_shape: &[usize],
        w_shape: &[usize],
        has_bias: bool,
        attrs: &ConvAttrs,
        w_const: Option<ConstWeights>,
    ) -> Result<ConvPlan, String> {
        let axes = normalise(x_shape, w_shape, attrs, w_const.as_deref())
            .map_err(|why| format!("Conv: {why} (x {x_shape:?}, w {w_shape:?}, {attrs:?})"))?;
        let (batch, c, m, group) = (x_shape[0], x_shape[1], w_shape[0], attrs.group);
        let sd = x_shape.len() - 2;
        let kvol: usize = axes.iter().map(|a| a.kernel).product();
        let mut out_shape = vec![batch, m];
        out_shape.extend(axes[3 - sd..].iter().map(|a| a.output));
        let fallback = base_strategy(batch, c, m, group, &axes);
        let strategy =
            choose_strategy(batch, c, m, group, &axes, w_const.is_some(), Host::detect());
        let transposed = match (strategy, &w_const) {
            (Strategy::Transposed, Some(w)) => {
                Some(Box::new(Transposed::new(&axes, m, c * kvol, w)))
            }
            _ => None,
        };
        let shifted = (strategy == Strategy::Shifted)
            .then(|| Shifted::new(&axes, c / group).map(Box::new))
            .flatten();
        Ok(ConvPlan {
            batch,
            c,
            m,
            group,
            axes,
            out_shape,
            has_bias,
            strategy,
            fallback,
            shifted,
            block_floats: IM2COL_BLOCK_FLOATS,
            // The transposed plan keeps only its packed copy.
            w_const: w_const.filter(|_| transposed.is_none()),
            transposed,
            small_k: runs_small_k(fallback, c / group * kvol),
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

    /// Which epilogues a conv of these shapes and attributes would take
    /// into its tiles on this host (`const_weights`: its weights are a
    /// constant), without building the plan: the compiler's lowering
    /// passes ask before they rewrite a Conv and its Add/Relu into one
    /// `kiln.FusedConv`. A plan built for the same conv accepts exactly
    /// these in [`ConvPlan::fuse_residual`] and [`ConvPlan::fuse_clamp`].
    pub fn epilogues(
        x_shape: &[usize],
        w_shape: &[usize],
        attrs: &ConvAttrs,
        const_weights: bool,
    ) -> Result<ConvEpilogues, String> {
        let axes = normalise(x_shape, w_shape, attrs, None)
            .map_err(|why| format!("Conv: {why} (x {x_shape:?}, w {w_shape:?}, {attrs:?})"))?;
        let (batch, c, m, group) = (x_shape[0], x_shape[1], w_shape[0], attrs.group);
        let kvol: usize = axes.iter().map(|a| a.kernel).product();
        let fallback = base_strategy(batch, c, m, group, &axes);
        let strategy = choose_strategy(batch, c, m, group, &axes, const_weights, Host::detect());
        Ok(ConvEpilogues {
            residual: takes_residual(strategy, c),
            clamp: takes_clamp(strategy, runs_small_k(fallback, c / group * kvol)),
        })
    }

    pub fn out_shape(&self) -> &[usize] {
        &self.out_shape
    }

    /// Turns the small-k kernel off, for benchmarks against the `gemm` path.
    #[cfg(test)]
    pub(in crate::cpu::kernels) fn without_small_k(mut self) -> ConvPlan {
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
    pub(in crate::cpu::kernels) fn without_shifted(mut self) -> ConvPlan {
        self.strategy = self.fallback;
        self
    }

    /// Makes every output `min(hi, max(lo, v))` (NaN kept): a Relu
    /// (`0, inf`) or Clip folded into the conv. Only where the clamp costs
    /// nothing, inside the small-k kernel's tile store; returns whether it
    /// was taken (otherwise the plan is unchanged and the caller keeps the
    /// op as an epilogue).
    pub fn fuse_clamp(&mut self, lo: f32, hi: f32) -> bool {
        let in_tile = takes_clamp(self.strategy, self.small_k);
        if !in_tile || self.clamp.is_some() || lo.is_nan() || hi.is_nan() || lo > hi {
            return false;
        }
        self.clamp = Some(smallk::Clamp::bounds(lo, hi));
        true
    }

    /// Makes every output `v · sigmoid(v)` (SiLU, a Swish of alpha 1),
    /// applied in the tile store where [`ConvPlan::fuse_clamp`] would
    /// clamp; returns whether it was taken.
    pub fn fuse_swish(&mut self) -> bool {
        self.fuse_unbounded(smallk::Nonlinearity::Swish)
    }

    /// Makes every output `v · max(0, min(1, v/6 + 1/2))` (HardSwish) as
    /// [`ConvPlan::fuse_swish`] does its SiLU.
    pub fn fuse_hardswish(&mut self) -> bool {
        self.fuse_unbounded(smallk::Nonlinearity::HardSwish)
    }

    fn fuse_unbounded(&mut self, f: smallk::Nonlinearity) -> bool {
        if !takes_clamp(self.strategy, self.small_k) || self.clamp.is_some() {
            return false;
        }
        self.clamp = Some(smallk::Clamp::unbounded(f));
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
        if !takes_residual(self.strategy, self.c) || self.clamp.is_some() || self.residual {
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

    pub(super) fn in_vol(&self) -> usize {
        self.axes.iter().map(|a| a.input).product()
    }
    pub(super) fn out_vol(&self) -> usize {
        self.axes.iter().map(|a| a.output).product()
    }
    pub(super) fn kvol(&self) -> usize {
        self.axes.iter().map(|a| a.kernel).product()
    }
}
