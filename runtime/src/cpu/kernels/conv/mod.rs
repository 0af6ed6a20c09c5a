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
//!
//! Files, each above the ones it uses: `plan.rs` holds the plan, its
//! attributes and the strategy choice ([`plan::choose_strategy`], a pure
//! function of shapes, attributes and host features); each strategy's run
//! has a file of its own (`direct.rs`: depthwise and direct; `im2col.rs`:
//! pointwise and im2col through a gemm; `shifted.rs`: the implicit GEMM's
//! glue; `transposed.rs`); this one dispatches a run to them. The tests
//! are in `tests.rs`.

mod direct;
mod im2col;
mod plan;
pub(crate) mod planes;
mod shifted;
#[cfg(test)]
mod tests;
mod transposed;

use super::common::Epilogue;
use plan::Strategy;

pub(crate) use direct::takes_lanes;
pub use plan::{ConvAttrs, ConvEpilogues, ConvPlan};

impl ConvPlan {
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
            residual.is_none() || matches!(self.strategy, Strategy::Shifted | Strategy::Transposed),
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
        let cg = self.c / self.group;
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
            self.run_direct(x, w, bias, out, threads, &epi);
        } else if let (Strategy::Transposed, Some(t)) = (self.strategy, &self.transposed) {
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
        } else if let (Strategy::Shifted, Some(sh), true) =
            (self.strategy, &self.shifted, cg * kvol > 0)
        {
            self.run_shifted(sh, x, w, bias, residual, out_addr, out.len(), threads, &epi);
        } else {
            self.run_gemm(x, w, bias, out, out_addr, threads, epilogue.is_some(), &epi);
        }
    }
}
