//! The Shifted strategy's glue: how a plan runs its implicit-GEMM
//! geometry ([`Shifted`]; the kernel itself, over padded, phase-split
//! input planes, is `kernels/implicit.rs`).

use super::super::implicit::Shifted;
use super::plan::ConvPlan;

impl ConvPlan {
    /// The Shifted strategy's run, for a plan with a reduction (`C/group ·
    /// kernel volume > 0`): `out_addr` is the exposed address of the
    /// `out_len`-float output, which the caller holds mutably borrowed;
    /// `epi(lo, hi)` is called on each finished range of it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run_shifted(
        &self,
        sh: &Shifted,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        residual: Option<&[f32]>,
        out_addr: usize,
        out_len: usize,
        threads: usize,
        epi: &(dyn Fn(usize, usize) + Sync),
    ) {
        let (cg, mg) = (self.c / self.group, self.m / self.group);
        sh.run(
            (self.batch, self.group, cg, mg),
            x,
            w,
            bias,
            residual,
            out_addr,
            out_len,
            threads,
            self.clamp,
            epi,
        );
    }
}
