//! Steps on the kernel library: a planned MatMul, Gemm, Conv or ConvTranspose
//! ([`Dense`]), pooling, and a dense op alone standing for a fusion whose
//! whole tail it absorbed. The compiler plans them (shapes, packed
//! weights, folded residual and clamp); these run them.

use crate::cpu::kernels::{
    ConvPlan, ConvTransposePlan, DequantMatMulPlan, Epilogue, GemmPlan, MatMulPlan, PoolPlan,
};
use crate::cpu::view::{In, Out};
use crate::cpu::NativeKernel;

use super::{anchor_operands, f32s, opt_f32s, result};

/// A planned dense op.
pub enum Dense {
    MatMul(MatMulPlan),
    Gemm(GemmPlan),
    Conv(ConvPlan),
    ConvTranspose(ConvTransposePlan),
    /// `kiln.DequantMatMul`: the quantized weights are the plan's.
    DequantMatMul(DequantMatMulPlan),
}

impl Dense {
    /// Whether the product writes every element of its result whatever
    /// it held (convs, packed matmuls and gemms); the gemm-crate products
    /// accumulate into it, so their result must start zeroed.
    pub fn overwrites_output(&self) -> bool {
        match self {
            Dense::Conv(_) | Dense::ConvTranspose(_) | Dense::DequantMatMul(_) => true,
            Dense::MatMul(p) => p.overwrites_output(),
            Dense::Gemm(p) => p.overwrites_output(),
        }
    }

    pub fn out_shape(&self) -> &[usize] {
        match self {
            Dense::MatMul(p) => p.out_shape(),
            Dense::Gemm(p) => p.out_shape(),
            Dense::Conv(p) => p.out_shape(),
            Dense::ConvTranspose(p) => p.out_shape(),
            Dense::DequantMatMul(p) => p.out_shape(),
        }
    }

    pub fn flops(&self) -> f64 {
        match self {
            Dense::MatMul(p) => p.flops(),
            Dense::Gemm(p) => p.flops(),
            Dense::Conv(p) => p.flops(),
            Dense::ConvTranspose(p) => p.flops(),
            Dense::DequantMatMul(p) => p.flops(),
        }
    }

    /// Run on the op's own operands (`ops[i]` for its operand i; `None`
    /// where captured or omitted).
    pub fn run(&self, ops: &[Option<In>], out: &mut [f32], threads: usize) -> Result<(), String> {
        self.run_with_epilogue(ops, out, threads, None)
    }

    /// [`Dense::run`], applying `epilogue` to ranges of `out` as they are
    /// finished: tile by tile for convs and packed matmuls, over the whole
    /// result otherwise. `out`'s old contents do not matter.
    pub fn run_with_epilogue(
        &self,
        ops: &[Option<In>],
        out: &mut [f32],
        threads: usize,
        epilogue: Option<&Epilogue>,
    ) -> Result<(), String> {
        if !self.overwrites_output() {
            out.fill(0.0);
        }
        match self {
            Dense::MatMul(p) => {
                let b = opt_f32s(ops, 1)?.unwrap_or(&[]);
                p.run_with_epilogue(f32s(ops, 0)?, b, out, threads, epilogue);
                // The product applied the epilogue.
                return Ok(());
            }
            Dense::DequantMatMul(p) => {
                p.run(f32s(ops, 0)?, out, threads, epilogue);
                return Ok(());
            }
            Dense::Gemm(p) => {
                let b = opt_f32s(ops, 1)?.unwrap_or(&[]);
                p.run(f32s(ops, 0)?, b, opt_f32s(ops, 2)?, out, threads);
            }
            Dense::ConvTranspose(p) => {
                let bias = if p.has_bias() {
                    Some(f32s(ops, 2)?)
                } else {
                    None
                };
                if bias.is_some_and(|b| b.len() != p.out_shape()[1]) {
                    return Err("ConvTranspose: bias length differs from the channels".into());
                }
                p.run(f32s(ops, 0)?, f32s(ops, 1)?, bias, out, threads);
            }
            Dense::Conv(p) => {
                let w = opt_f32s(ops, 1)?.unwrap_or(&[]);
                // A fused residual rides as operand 3 (see `fold_residual`).
                let residual = if p.has_residual() {
                    let r = f32s(ops, RESIDUAL)?;
                    if r.len() != out.len() {
                        return Err("Conv: residual shape differs from the output".into());
                    }
                    Some(r)
                } else {
                    None
                };
                let (x, bias) = (f32s(ops, 0)?, opt_f32s(ops, 2)?);
                p.run_fused(x, w, bias, residual, out, threads, epilogue);
                // The conv applied the epilogue tile by tile.
                return Ok(());
            }
        }
        if let Some(e) = epilogue {
            e(out.as_mut_ptr(), 0, out.len());
        }
        Ok(())
    }
}

/// A MatMul, Gemm or Conv on its own.
pub struct DenseKernel {
    pub plan: Dense,
}

impl NativeKernel for DenseKernel {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let out = result(outputs, 0)?.f32s()?;
        self.plan.run(inputs, out, threads)
    }
}

/// A pooling op.
pub struct Pool {
    pub plan: PoolPlan,
}

impl NativeKernel for Pool {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        // Pools write every output element.
        let out = result(outputs, 0)?.f32s()?;
        self.plan.run(f32s(inputs, 0)?, out, threads);
        Ok(())
    }
}

/// The conv anchor's operand index of a folded residual.
pub const RESIDUAL: usize = 3;

/// A fusion whose tail was folded into its anchor entirely (Conv + Relu):
/// the anchor alone, on the fusion's operands.
pub struct AnchorOnly {
    pub anchor: DenseKernel,
    pub map: Vec<Option<usize>>,
}

impl NativeKernel for AnchorOnly {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        self.anchor
            .run(&anchor_operands(&self.map, inputs), outputs, threads)
    }
}

/// Einsum of one or two f32 operands: see [`crate::cpu::einsum`].
pub struct Einsum(pub crate::cpu::einsum::Einsum);

impl NativeKernel for Einsum {
    fn run(
        &self,
        inputs: &[Option<In>],
        outputs: &mut [Out],
        threads: usize,
    ) -> Result<(), String> {
        let xs = (0..self.0.operands.len())
            .map(|i| super::operand(inputs, i)?.f32s())
            .collect::<Result<Vec<_>, _>>()?;
        self.0.run(&xs, super::result(outputs, 0)?.f32s()?, threads)
    }
}
