//! Planning the kernel-library steps: MatMul, Gemm and Conv (constant
//! weights packed once, at compile time) and pooling. The plans come from
//! [`kiln_runtime::cpu::kernels`]; the steps that run them from
//! [`kiln_runtime::cpu::steps::dense`].

use std::collections::HashMap;
use std::sync::Arc;

use kiln_ir::{Attr, Module, Node, ValueId};

use crate::lower::common::{conv_attrs, pool_attrs};
use kiln_runtime::cpu::kernels::{ConstWeights, ConvPlan, GemmPlan, MatMulPlan, PoolPlan};
use kiln_runtime::cpu::steps::dense::{Dense, DenseKernel, Pool, RESIDUAL};
use kiln_runtime::cpu::NativeStep;

/// A dense op's plan and the operand indices whose data it holds itself
/// (constant weights, packed once).
pub(super) struct Planned {
    pub plan: Dense,
    pub captured: Vec<usize>,
    pub what: String,
}

pub(super) fn is_f32(m: &Module, v: ValueId) -> bool {
    m.ty(v).as_tensor().map(|t| t.elem) == Some(kiln_ir::ElemType::F32)
}

/// Constant f32 weights as plans hold them, converted once per constant
/// buffer and shared by every plan that reads it (equal constants share a
/// buffer: [`kiln_ir::ConstantPool`]), packings included.
#[derive(Default)]
pub(super) struct Weights {
    /// By the address of the constant's data, which the module keeps
    /// alive until [`Weights::forget`].
    by_buffer: HashMap<usize, ConstWeights>,
}

impl Weights {
    /// The f32 constant `v`'s values, shared.
    fn get(&mut self, m: &Module, v: ValueId) -> Option<ConstWeights> {
        let d = m.constant(v)?;
        if d.elem != kiln_ir::ElemType::F32 {
            return None;
        }
        let key = Arc::as_ptr(d) as usize;
        if let Some(w) = self.by_buffer.get(&key) {
            return Some(w.clone());
        }
        let kiln_ir::Payload::Bytes(bytes) = &d.payload else {
            return None;
        };
        let w = ConstWeights::from_le_bytes(bytes.clone());
        self.by_buffer.insert(key, w.clone());
        Some(w)
    }

    /// The constant `d` is about to leave the module: plans hold what they
    /// need of it, and its address may be reused.
    pub fn forget(&mut self, d: &Arc<kiln_ir::TensorData>) {
        self.by_buffer.remove(&(Arc::as_ptr(d) as usize));
    }
}

/// Plan a MatMul/Gemm/Conv whose operands are `inputs` (values of the
/// outer scope, so constants are visible) and whose result is `out`.
pub(super) fn plan_dense(
    m: &Module,
    n: &Node,
    inputs: &[Option<ValueId>],
    weights: &mut Weights,
) -> Result<Planned, String> {
    let shape_of = |i: usize| -> Result<Vec<usize>, String> {
        let v = inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("operand {i} is missing"))?;
        if !is_f32(m, v) {
            return Err(format!("operand {i} is not f32"));
        }
        m.static_shape(v)
    };
    let mut konst = |i: usize| {
        inputs
            .get(i)
            .copied()
            .flatten()
            .and_then(|v| weights.get(m, v))
    };
    match n.op.as_str() {
        "MatMul" => {
            let (a, b) = (shape_of(0)?, shape_of(1)?);
            let bc = konst(1);
            let captured = if bc.is_some() { vec![1] } else { vec![] };
            let packed = bc.is_some();
            let p = MatMulPlan::new_shared(&a, &b, bc)?;
            let what = format!(
                "matmul {a:?} x {b:?}{}",
                if packed { " (packed)" } else { "" }
            );
            Ok(Planned {
                plan: Dense::MatMul(p),
                captured,
                what,
            })
        }
        "Gemm" => {
            let (a, b) = (shape_of(0)?, shape_of(1)?);
            let c = if inputs.get(2).copied().flatten().is_some() {
                Some(shape_of(2)?)
            } else {
                None
            };
            let int = |k: &str| n.attrs.get(k).and_then(Attr::as_int).unwrap_or(0) != 0;
            let float = |k: &str| n.attrs.get(k).and_then(Attr::as_float).unwrap_or(1.0);
            let bc = konst(1);
            let captured = if bc.is_some() { vec![1] } else { vec![] };
            let p = GemmPlan::new_shared(
                &a,
                &b,
                c.as_deref(),
                int("transA"),
                int("transB"),
                float("alpha"),
                float("beta"),
                bc,
            )?;
            Ok(Planned {
                plan: Dense::Gemm(p),
                captured,
                what: format!("gemm {a:?} x {b:?}"),
            })
        }
        "Conv" | "kiln.FusedConv" => {
            let (x, w) = (shape_of(0)?, shape_of(1)?);
            let attrs = conv_attrs(n, &x, &w)?;
            let has_bias = inputs.get(2).copied().flatten().is_some();
            let wc = konst(1);
            let captured = if wc.is_some() { vec![1] } else { vec![] };
            let mut p = ConvPlan::new_shared(&x, &w, has_bias, &attrs, wc)?;
            let kernel = &w[2..];
            let mut what = format!(
                "conv {}x{} {}→{} ch{}",
                kernel.first().unwrap_or(&1),
                kernel.get(1).unwrap_or(&1),
                x[1],
                w[0],
                if attrs.group > 1 {
                    format!(" group {}", attrs.group)
                } else {
                    String::new()
                }
            );
            // The epilogue pass made a FusedConv only where the plan takes
            // its residual and activation into its tiles.
            if inputs.get(RESIDUAL).copied().flatten().is_some() {
                if shape_of(RESIDUAL)?.as_slice() != p.out_shape() || !p.fuse_residual() {
                    return Err("the conv cannot add this residual in its tiles".into());
                }
                what.push_str(" + Add");
            }
            match n.attrs.get("activation").and_then(Attr::as_str) {
                None => {}
                Some("Relu") if p.fuse_clamp(0.0, f32::INFINITY) => what.push_str(" + Relu"),
                Some(a) => return Err(format!("the conv cannot apply {a} in its tiles")),
            }
            Ok(Planned {
                plan: Dense::Conv(p),
                captured,
                what,
            })
        }
        op => Err(format!("no dense kernel for {op}")),
    }
}

/// MatMul, Gemm, Conv, FusedConv.
pub(super) fn dense(m: &Module, n: &Node, weights: &mut Weights) -> Result<NativeStep, String> {
    let p = plan_dense(m, n, &n.inputs, weights)?;
    Ok(NativeStep {
        flops: p.plan.flops(),
        kernel: Box::new(DenseKernel { plan: p.plan }),
        what: p.what,
        captured: p.captured,
    })
}

/// MaxPool (one result), AveragePool, GlobalAveragePool, GlobalMaxPool.
pub(super) fn pool(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    if !is_f32(m, x) {
        return Err("pooling of non-f32".into());
    }
    if n.op == "MaxPool" && n.outputs.len() > 1 {
        return Err("MaxPool with indices".into());
    }
    let xs = m.static_shape(x)?;
    if xs.len() < 3 {
        return Err("pooling needs spatial dims".into());
    }
    let (kind, attrs) = pool_attrs(n, &xs)?;
    let plan = PoolPlan::new(kind, &xs, &attrs)?;
    let out = m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    if plan.out_shape() != out.as_slice() {
        return Err(format!(
            "pool plan gives {:?}, the node {out:?}",
            plan.out_shape()
        ));
    }
    let what = format!("{} {:?}", n.op, attrs.kernel);
    Ok(NativeStep::new(Box::new(Pool { plan }), what, 0.0))
}
