//! Kernels of the reference interpreter, one file per op family. Each
//! family exposes `lookup(op) -> Option<KernelFn>`; [`lookup`] asks them in
//! turn. This file only dispatches and re-exports: what the families
//! share is in modules of their own, below them: the calling convention and
//! operand accessors in `ctx.rs` ([`Ctx`], [`KernelHost`]), axes and
//! broadcasting in `shape.rs`, the seeded random source in `rng.rs`.

pub mod control;
pub mod ctx;
pub mod elementwise;
pub mod fusion;
pub mod movement;
pub mod nn;
pub mod rng;
pub mod shape;

pub use ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelError, KernelFn, KernelHost};
pub use rng::Rng;
pub use shape::{broadcast_indices, broadcast_shape, norm_axis};

/// The kernel for an op, if the interpreter has one.
pub fn lookup(op: &str) -> Option<KernelFn> {
    elementwise::lookup(op)
        .or_else(|| movement::lookup(op))
        .or_else(|| nn::lookup(op))
        .or_else(|| control::lookup(op))
        .or_else(|| fusion::lookup(op))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every op the traits table says something about has a kernel, so the
    /// interpreter can run anything a pass derives from a trait (a fused
    /// body of pointwise ops, a folded weight).
    #[test]
    fn ops_with_traits_have_kernels() {
        let missing: Vec<&str> = kiln_ir::ops::all()
            .filter(|s| s.traits != kiln_ir::ops::OpTraits::NONE)
            .filter(|s| lookup(s.name).is_none())
            .map(|s| s.name)
            .collect();
        assert!(missing.is_empty(), "no kernel for {missing:?}");
    }
}
