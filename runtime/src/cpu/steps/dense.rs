//! Steps on the kernel library: a planned MatMul, Gemm or Conv
//! ([`Dense`]), pooling, and a dense op alone standing for a fusion whose
//! whole tail it absorbed. The compiler plans them (shapes, packed
//! weights, folded residual and clamp); these run them.

use crate::cpu::buffers;
use crate::cpu::kernels::{ConvPlan, Epilogue, GemmPlan, MatMulPlan, PoolPlan};
use crate::cpu::NativeKernel;
use crate::{Data, Tensor};

use super::{anchor_operands, f32s, opt_f32s};

/// A planned dense op.
pub enum Dense {
    MatMul(MatMulPlan),
    Gemm(GemmPlan),
    Conv(ConvPlan),
}

impl Dense {
    /// A buffer for this op's result: recycled for convs and packed
    /// matmuls (they write every element, whatever the path), zeroed for
    /// the gemm-crate products.
    pub fn out_buffer(&self) -> Vec<f32> {
        let n = self.out_shape().iter().product();
        match self {
            Dense::Conv(_) => buffers::output(n),
            Dense::MatMul(p) if p.overwrites_output() => buffers::output(n),
            _ => vec![0f32; n],
        }
    }

    pub fn out_shape(&self) -> &[usize] {
        match self {
            Dense::MatMul(p) => p.out_shape(),
            Dense::Gemm(p) => p.out_shape(),
            Dense::Conv(p) => p.out_shape(),
        }
    }

    pub fn flops(&self) -> f64 {
        match self {
            Dense::MatMul(p) => p.flops(),
            Dense::Gemm(p) => p.flops(),
            Dense::Conv(p) => p.flops(),
        }
    }

    /// Run on the op's own operands (`ops[i]` for its operand i; `None`
    /// where captured or omitted).
    pub fn run(
        &self,
        ops: &[Option<&Tensor>],
        out: &mut [f32],
        threads: usize,
    ) -> Result<(), String> {
        self.run_with_epilogue(ops, out, threads, None)
    }

    /// [`Dense::run`], applying `epilogue` to ranges of `out` as they are
    /// finished: tile by tile for convs and packed matmuls, over the whole
    /// result otherwise.
    pub fn run_with_epilogue(
        &self,
        ops: &[Option<&Tensor>],
        out: &mut [f32],
        threads: usize,
        epilogue: Option<&Epilogue>,
    ) -> Result<(), String> {
        match self {
            Dense::MatMul(p) => {
                let b = opt_f32s(ops, 1)?.unwrap_or(&[]);
                p.run_with_epilogue(f32s(ops, 0)?, b, out, threads, epilogue);
                // The product applied the epilogue.
                return Ok(());
            }
            Dense::Gemm(p) => {
                let b = opt_f32s(ops, 1)?.unwrap_or(&[]);
                p.run(f32s(ops, 0)?, b, opt_f32s(ops, 2)?, out, threads);
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
    fn run(&self, inputs: &[Option<&Tensor>], threads: usize) -> Result<Vec<Tensor>, String> {
        let shape = self.plan.out_shape().to_vec();
        let mut out = self.plan.out_buffer();
        self.plan.run(inputs, &mut out, threads)?;
        Ok(vec![
            Tensor::new(shape, Data::F32(out)).map_err(|e| e.to_string())?
        ])
    }
}

/// A pooling op.
pub struct Pool {
    pub plan: PoolPlan,
}

impl NativeKernel for Pool {
    fn run(&self, inputs: &[Option<&Tensor>], threads: usize) -> Result<Vec<Tensor>, String> {
        let shape = self.plan.out_shape().to_vec();
        // Pools write every output element.
        let mut out = buffers::output(shape.iter().product());
        self.plan.run(f32s(inputs, 0)?, &mut out, threads);
        Ok(vec![
            Tensor::new(shape, Data::F32(out)).map_err(|e| e.to_string())?
        ])
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
    fn run(&self, inputs: &[Option<&Tensor>], threads: usize) -> Result<Vec<Tensor>, String> {
        self.anchor
            .run(&anchor_operands(&self.map, inputs), threads)
    }
}
