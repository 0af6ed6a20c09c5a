//! The run-time half of every native step the CPU lowering builds: each
//! type here implements [`crate::cpu::NativeKernel`] over a plan the compiler made for
//! static shapes. The compiler decides (which kernel, which shapes, which
//! operands it holds); these only execute.
//!
//! - [`movement`]: reshape, transpose, gather, concat, expand, cast to f32,
//!   reductions over any axes.
//! - [`dense`]: MatMul/Gemm/Conv plans and pooling on the kernel library.
//! - [`fusion`]: `kiln.Fusion` regions: a dense anchor plus a generated
//!   loop, or producers plus a reduction.

pub mod dense;
pub mod fusion;
pub mod movement;

use crate::{Data, Tensor};

/// Operand `i`, which must be present.
fn operand<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, String> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| format!("operand {i} is missing"))
}

/// Operand `i`'s f32 data, which must be present.
fn f32s<'a>(ops: &[Option<&'a Tensor>], i: usize) -> Result<&'a [f32], String> {
    opt_f32s(ops, i)?.ok_or_else(|| format!("operand {i} is missing"))
}

/// Operand `i`'s f32 data, `None` where omitted or captured.
fn opt_f32s<'a>(ops: &[Option<&'a Tensor>], i: usize) -> Result<Option<&'a [f32]>, String> {
    match ops.get(i).copied().flatten().map(|t| &t.data) {
        Some(Data::F32(v)) => Ok(Some(v)),
        Some(_) => Err(format!("operand {i} is not f32")),
        None => Ok(None),
    }
}

/// A dense anchor's own operands, picked from its fusion's by `map`.
fn anchor_operands<'a>(
    map: &[Option<usize>],
    inputs: &[Option<&'a Tensor>],
) -> Vec<Option<&'a Tensor>> {
    map.iter()
        .map(|k| k.and_then(|k| inputs.get(k).copied().flatten()))
        .collect()
}
