//! Planning the kernel-library steps: MatMul, Gemm, Conv, ConvTranspose (constant
//! weights packed once, at compile time) and pooling. The plans come from
//! [`kiln_runtime::cpu::kernels`]; the steps that run them from
//! [`kiln_runtime::cpu::steps::dense`].

use std::collections::HashMap;
use std::sync::Arc;

use kiln_ir::{Attr, Module, Node, ValueId};

use crate::lower::common::{conv_attrs, conv_transpose_attrs, group, pool_attrs};
use kiln_runtime::cpu::kernels::{
    ConstWeights, ConvPlan, ConvTransposePlan, DequantMatMulPlan, GemmPlan, MatMulPlan, PoolPlan,
    QuantB, QuantBits, QuantGrid,
};
use kiln_runtime::cpu::steps::dense::{Dense, DenseKernel, Pool, RESIDUAL};
use kiln_runtime::cpu::NativeStep;

/// The ops [`plan_dense`] plans, alone or as a fusion's anchor.
pub(super) const DENSE_OPS: &[&str] = &[
    "MatMul",
    "Gemm",
    "Conv",
    "kiln.FusedConv",
    "ConvTranspose",
    "kiln.DequantMatMul",
];

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
    pub(super) fn get(&mut self, m: &Module, v: ValueId) -> Option<ConstWeights> {
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
            let mut captured = if bc.is_some() { vec![1] } else { vec![] };
            let mut p = GemmPlan::new_shared(
                &a,
                &b,
                c.as_deref(),
                int("transA"),
                int("transB"),
                float("alpha"),
                float("beta"),
                bc,
            )?;
            let mut packed = if p.overwrites_output() {
                " (packed)"
            } else {
                ""
            };
            // A constant layer bias rides on the tiles too.
            if konst(2).is_some_and(|c| p.hold_bias(&c)) {
                captured.push(2);
                packed = " (packed) + bias";
            }
            Ok(Planned {
                plan: Dense::Gemm(p),
                captured,
                what: format!("gemm {a:?} x {b:?}{packed}"),
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
            let bound =
                |k: &str, none: f32| n.attrs.get(k).and_then(Attr::as_float).unwrap_or(none);
            match n.attrs.get("activation").and_then(Attr::as_str) {
                None => {}
                Some("Relu") if p.fuse_clamp(0.0, f32::INFINITY) => what.push_str(" + Relu"),
                Some("Swish") if p.fuse_swish() => what.push_str(" + Swish"),
                Some("HardSwish") if p.fuse_hardswish() => what.push_str(" + HardSwish"),
                Some("Clip")
                    if p.fuse_clamp(
                        bound("min", f32::NEG_INFINITY),
                        bound("max", f32::INFINITY),
                    ) =>
                {
                    what.push_str(" + Clip")
                }
                Some(a) => return Err(format!("the conv cannot apply {a} in its tiles")),
            }
            Ok(Planned {
                plan: Dense::Conv(p),
                captured,
                what,
            })
        }
        "ConvTranspose" => {
            let (x, w) = (shape_of(0)?, shape_of(1)?);
            let has_bias = inputs.get(2).copied().flatten().is_some();
            if has_bias && shape_of(2)?.as_slice() != [w[1] * group(n)] {
                return Err("ConvTranspose bias of another length than the channels".into());
            }
            let attrs = conv_transpose_attrs(n, &x, &w)?;
            let p = ConvTransposePlan::new(&x, &w, has_bias, &attrs)?;
            let what = format!(
                "conv-transpose {:?} {}→{} stride {:?}",
                &w[2..],
                x[1],
                p.out_shape()[1],
                attrs.strides
            );
            Ok(Planned {
                plan: Dense::ConvTranspose(p),
                captured: vec![],
                what,
            })
        }
        "kiln.DequantMatMul" => {
            let a = shape_of(0)?;
            let operand = |i: usize| inputs.get(i).copied().flatten();
            let w = operand(1).ok_or("operand W is missing")?;
            let scale = operand(2).ok_or("operand W_scale is missing")?;
            let q = quant_weights(m, n, w, scale, operand(3))?;
            let what = format!(
                "matmul {a:?} x {:?} ({}, {} KiB packed)",
                m.static_shape(w)?,
                m.ty(w)
                    .as_tensor()
                    .map(|t| t.elem.to_string())
                    .unwrap_or_default(),
                q.bytes() >> 10
            );
            Ok(Planned {
                plan: Dense::DequantMatMul(DequantMatMulPlan::new(&a, q)?),
                captured: vec![1, 2, 3],
                what,
            })
        }
        op => Err(format!("no dense kernel for {op}")),
    }
}

/// The constant quantized weights `w [K, N]` of a `kiln.DequantMatMul`
/// with constant `scale` and `zero` (per tensor, per column with axis 1,
/// per row with axis 0, or per block of rows with axis 0 and a block
/// size), packed.
fn quant_weights(
    m: &Module,
    n: &Node,
    w: ValueId,
    scale: ValueId,
    zero: Option<ValueId>,
) -> Result<QuantB, String> {
    use kiln_ir::ElemType;
    let shape = m.static_shape(w)?;
    let [k, cols] = shape[..] else {
        return Err(format!("W is {shape:?}, not a matrix"));
    };
    let konst = |v: ValueId| {
        m.constant(v)
            .ok_or_else(|| format!("%{} is not a constant", m.name(v)))
    };
    let wd = konst(w)?;
    let bytes = wd.bytes().ok_or("the weights are elided")?;
    let (bits, four) = match wd.elem {
        ElemType::I8 => (QuantBits::I8, false),
        ElemType::U8 => (QuantBits::U8, false),
        ElemType::I4 => (QuantBits::I4, true),
        ElemType::U4 => (QuantBits::U4, true),
        e => return Err(format!("no kernel for {e} weights")),
    };
    let signed = matches!(bits, QuantBits::I8 | QuantBits::I4);
    // 4-bit values are packed two per byte, the first in the low nibble.
    let value = |i: usize| -> i32 {
        let b = if four {
            (bytes[i / 2] >> (4 * (i % 2))) & 15
        } else {
            bytes[i]
        };
        match (signed, four) {
            (true, true) => ((b as i32) ^ 8) - 8,
            (true, false) => b as i8 as i32,
            _ => b as i32,
        }
    };
    let need = if four {
        (k * cols).div_ceil(2)
    } else {
        k * cols
    };
    if bytes.len() < need {
        return Err("the weights are shorter than their shape".into());
    }
    let scales: Vec<f32> = konst(scale)?
        .to_f64_vec()
        .ok_or("the scale is not float")?
        .into_iter()
        .map(|x| x as f32)
        .collect();
    let zeros: Vec<i32> = match zero {
        None => vec![0; scales.len()],
        Some(z) => {
            let zd = konst(z)?;
            let zb = zd.bytes().ok_or("the zero point is elided")?;
            if zd.elem != wd.elem {
                return Err("the zero point's type differs from W's".into());
            }
            (0..scales.len())
                .map(|i| {
                    let b = if four {
                        zb.get(i / 2).map(|b| (b >> (4 * (i % 2))) & 15)
                    } else {
                        zb.get(i).copied()
                    };
                    let b = b.ok_or("too few zero points")? as i32;
                    Ok(match (signed, four) {
                        (true, true) => (b ^ 8) - 8,
                        (true, false) => b as u8 as i8 as i32,
                        _ => b,
                    })
                })
                .collect::<Result<_, String>>()?
        }
    };
    let axis = n.attrs.get("axis").and_then(Attr::as_int).unwrap_or(1);
    let block = n
        .attrs
        .get("block_size")
        .and_then(Attr::as_int)
        .unwrap_or(0);
    let grid = match (scales.len(), axis, block) {
        (1, _, 0) => QuantGrid {
            group: k,
            per_column: false,
        },
        (_, 1 | -1, 0) => QuantGrid {
            group: k,
            per_column: true,
        },
        (_, 0 | -2, 0) => QuantGrid {
            group: 1,
            per_column: false,
        },
        (_, 0 | -2, b) if b > 0 => QuantGrid {
            group: b as usize,
            per_column: true,
        },
        _ => {
            return Err(format!(
                "no kernel for {} scales on axis {axis} with block size {block}",
                scales.len()
            ))
        }
    };
    QuantB::new(k, cols, bits, value, &scales, &zeros, grid)
}

/// One of [`DENSE_OPS`] on its own.
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
