//! The run-time half of every native step the CPU lowering builds: each
//! type here implements [`crate::cpu::NativeKernel`] over a plan the compiler made for
//! static shapes. The compiler decides (which kernel, which shapes, which
//! operands it holds); these only execute.
//!
//! - [`movement`]: reshape, transpose, gather, concat, expand, cast to f32,
//!   reductions over any axes.
//! - [`dense`]: MatMul/Gemm/Conv plans and pooling on the kernel library.
//! - [`quant`]: QuantizeLinear/DequantizeLinear/DynamicQuantizeLinear and
//!   the integer products (QLinearConv, ConvInteger, QLinearMatMul,
//!   MatMulInteger) on the integer GEMM.
//! - [`fusion`]: `kiln.Fusion` regions: a dense anchor plus a generated
//!   loop, or producers plus a reduction.

pub mod dense;
pub mod fusion;
pub mod movement;
pub mod quant;
pub mod recurrent;
pub mod typed;

use crate::cpu::view::{In, Out};

/// Operand `i`, which must be present.
fn operand<'a>(inputs: &[Option<In<'a>>], i: usize) -> Result<In<'a>, String> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| format!("operand {i} is missing"))
}

/// Result `i`.
fn result<'o, 'a>(outputs: &'o mut [Out<'a>], i: usize) -> Result<&'o mut Out<'a>, String> {
    outputs
        .get_mut(i)
        .ok_or_else(|| format!("result {i} is missing"))
}

/// Operand `i`'s f32 data, which must be present.
fn f32s<'a>(ops: &[Option<In<'a>>], i: usize) -> Result<&'a [f32], String> {
    opt_f32s(ops, i)?.ok_or_else(|| format!("operand {i} is missing"))
}

/// Operand `i`'s f32 data, `None` where omitted or captured.
fn opt_f32s<'a>(ops: &[Option<In<'a>>], i: usize) -> Result<Option<&'a [f32]>, String> {
    ops.get(i).copied().flatten().map(|x| x.f32s()).transpose()
}

/// A dense anchor's own operands, picked from its fusion's by `map`.
fn anchor_operands<'a>(map: &[Option<usize>], inputs: &[Option<In<'a>>]) -> Vec<Option<In<'a>>> {
    map.iter()
        .map(|k| k.and_then(|k| inputs.get(k).copied().flatten()))
        .collect()
}
