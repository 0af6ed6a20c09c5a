//! Native steps for the compute-heavy nodes: MatMul, Gemm and Conv on the
//! kernel library (constant weights packed at compile time), pooling, and
//! `kiln.Fusion` regions compiled by Cranelift — an epilogue region runs its
//! matmul/conv first, then the generated loop over the result in place.

use kiln_ir::{Attr, Module, Node, Region, ValueId};
use kiln_runtime::cpu::jit::{compile_region_for, JitKernel, TargetCpu};
use kiln_runtime::cpu::kernels::{
    ConvAttrs, ConvPlan, Epilogue, GemmPlan, MatMulPlan, PoolAttrs, PoolKind, PoolPlan,
};
use kiln_runtime::cpu::{buffers, NativeKernel};
use kiln_runtime::{Data, Tensor};

use super::cpu::{static_shape, Lowered};

/// A planned dense op.
enum Dense {
    MatMul(MatMulPlan),
    Gemm(GemmPlan),
    Conv(ConvPlan),
}

/// A dense op's plan and the operand indices whose data it holds itself
/// (constant weights, packed once).
struct Planned {
    plan: Dense,
    captured: Vec<usize>,
    what: String,
}

impl Dense {
    /// A buffer for this op's result: recycled for convs and packed
    /// matmuls (they write every element, whatever the path), zeroed for
    /// the gemm-crate products.
    fn out_buffer(&self) -> Vec<f32> {
        let n = self.out_shape().iter().product();
        match self {
            Dense::Conv(_) => buffers::output(n),
            Dense::MatMul(p) if p.overwrites_output() => buffers::output(n),
            _ => vec![0f32; n],
        }
    }

    fn out_shape(&self) -> &[usize] {
        match self {
            Dense::MatMul(p) => p.out_shape(),
            Dense::Gemm(p) => p.out_shape(),
            Dense::Conv(p) => p.out_shape(),
        }
    }

    fn flops(&self) -> f64 {
        match self {
            Dense::MatMul(p) => p.flops(),
            Dense::Gemm(p) => p.flops(),
            Dense::Conv(p) => p.flops(),
        }
    }

    /// Run on the op's own operands (`ops[i]` for its operand i; `None`
    /// where captured or omitted).
    fn run(&self, ops: &[Option<&Tensor>], out: &mut [f32], threads: usize) -> Result<(), String> {
        self.run_with_epilogue(ops, out, threads, None)
    }

    /// [`Dense::run`], applying `epilogue` to ranges of `out` as they are
    /// finished: tile by tile for convs and packed matmuls, over the whole
    /// result otherwise.
    fn run_with_epilogue(
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

fn f32s<'a>(ops: &[Option<&'a Tensor>], i: usize) -> Result<&'a [f32], String> {
    opt_f32s(ops, i)?.ok_or_else(|| format!("operand {i} is missing"))
}

fn opt_f32s<'a>(ops: &[Option<&'a Tensor>], i: usize) -> Result<Option<&'a [f32]>, String> {
    match ops.get(i).copied().flatten().map(|t| &t.data) {
        Some(Data::F32(v)) => Ok(Some(v)),
        Some(_) => Err(format!("operand {i} is not f32")),
        None => Ok(None),
    }
}

fn is_f32(m: &Module, v: ValueId) -> bool {
    m.ty(v).as_tensor().map(|t| t.elem) == Some(kiln_ir::ElemType::F32)
}

/// A constant's f32 values.
fn const_f32(m: &Module, v: ValueId) -> Option<Vec<f32>> {
    let d = m.constant(v)?;
    if d.elem != kiln_ir::ElemType::F32 {
        return None;
    }
    Some(
        d.bytes()?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

fn ints(n: &Node, name: &str) -> Option<Vec<usize>> {
    n.attrs
        .get(name)
        .and_then(Attr::as_ints)
        .map(|v| v.iter().map(|&x| x.max(0) as usize).collect())
}

/// Explicit pads (begins then ends) for `auto_pad`, ONNX's rule.
fn resolve_pads(
    n: &Node,
    spatial: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
) -> Result<Vec<usize>, String> {
    let r = spatial.len();
    let auto = n
        .attrs
        .get("auto_pad")
        .and_then(Attr::as_str)
        .unwrap_or("NOTSET");
    match auto {
        "NOTSET" => Ok(ints(n, "pads").unwrap_or_else(|| vec![0; 2 * r])),
        "VALID" => Ok(vec![0; 2 * r]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut pads = vec![0; 2 * r];
            for i in 0..r {
                let out = spatial[i].div_ceil(strides[i]);
                let span = dilations[i] * (kernel[i] - 1) + 1;
                let total = ((out - 1) * strides[i] + span).saturating_sub(spatial[i]);
                let (small, big) = (total / 2, total - total / 2);
                if auto == "SAME_UPPER" {
                    pads[i] = small;
                    pads[i + r] = big;
                } else {
                    pads[i] = big;
                    pads[i + r] = small;
                }
            }
            Ok(pads)
        }
        other => Err(format!("auto_pad `{other}`")),
    }
}

/// Plan a MatMul/Gemm/Conv whose operands are `inputs` (values of the
/// outer scope, so constants are visible) and whose result is `out`.
fn plan_dense(m: &Module, n: &Node, inputs: &[Option<ValueId>]) -> Result<Planned, String> {
    let shape_of = |i: usize| -> Result<Vec<usize>, String> {
        let v = inputs
            .get(i)
            .copied()
            .flatten()
            .ok_or_else(|| format!("operand {i} is missing"))?;
        if !is_f32(m, v) {
            return Err(format!("operand {i} is not f32"));
        }
        static_shape(m, v)
    };
    let konst = |i: usize| {
        inputs
            .get(i)
            .copied()
            .flatten()
            .and_then(|v| const_f32(m, v))
    };
    match n.op.as_str() {
        "MatMul" => {
            let (a, b) = (shape_of(0)?, shape_of(1)?);
            let bc = konst(1);
            let captured = if bc.is_some() { vec![1] } else { vec![] };
            let p = MatMulPlan::new(&a, &b, bc.as_deref())?;
            let what = format!(
                "matmul {a:?} x {b:?}{}",
                if bc.is_some() { " (packed)" } else { "" }
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
            let p = GemmPlan::new(
                &a,
                &b,
                c.as_deref(),
                int("transA"),
                int("transB"),
                float("alpha"),
                float("beta"),
                bc.as_deref(),
            )?;
            Ok(Planned {
                plan: Dense::Gemm(p),
                captured,
                what: format!("gemm {a:?} x {b:?}"),
            })
        }
        "Conv" => {
            let (x, w) = (shape_of(0)?, shape_of(1)?);
            if x.len() < 3 || w.len() != x.len() {
                return Err("conv needs N, C and spatial dims".into());
            }
            let r = x.len() - 2;
            let kernel = w[2..].to_vec();
            let strides = ints(n, "strides").unwrap_or_else(|| vec![1; r]);
            let dilations = ints(n, "dilations").unwrap_or_else(|| vec![1; r]);
            if strides.len() != r || dilations.len() != r {
                return Err("strides/dilations rank".into());
            }
            let pads = resolve_pads(n, &x[2..], &kernel, &strides, &dilations)?;
            let group = n
                .attrs
                .get("group")
                .and_then(Attr::as_int)
                .unwrap_or(1)
                .max(1) as usize;
            let has_bias = inputs.get(2).copied().flatten().is_some();
            let wc = konst(1);
            let captured = if wc.is_some() { vec![1] } else { vec![] };
            let attrs = ConvAttrs {
                strides,
                dilations,
                pads,
                group,
            };
            let p = ConvPlan::new(&x, &w, has_bias, &attrs, wc.as_deref())?;
            let what = format!(
                "conv {}x{} {}→{} ch{}",
                kernel.first().unwrap_or(&1),
                kernel.get(1).unwrap_or(&1),
                x[1],
                w[0],
                if group > 1 {
                    format!(" group {group}")
                } else {
                    String::new()
                }
            );
            Ok(Planned {
                plan: Dense::Conv(p),
                captured,
                what,
            })
        }
        op => Err(format!("no dense kernel for {op}")),
    }
}

struct DenseKernel {
    plan: Dense,
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

/// MatMul, Gemm, Conv.
pub(super) fn dense(m: &Module, n: &Node) -> Result<(Lowered, Vec<usize>), String> {
    let p = plan_dense(m, n, &n.inputs)?;
    let flops = p.plan.flops();
    Ok((
        (Box::new(DenseKernel { plan: p.plan }), p.what, flops),
        p.captured,
    ))
}

struct Pool {
    plan: PoolPlan,
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

/// MaxPool (one result), AveragePool, GlobalAveragePool, GlobalMaxPool.
pub(super) fn pool(m: &Module, n: &Node) -> Result<Lowered, String> {
    let x = n.input(0).ok_or("no operand")?;
    if !is_f32(m, x) {
        return Err("pooling of non-f32".into());
    }
    if n.op == "MaxPool" && n.outputs.len() > 1 {
        return Err("MaxPool with indices".into());
    }
    let xs = static_shape(m, x)?;
    if xs.len() < 3 {
        return Err("pooling needs spatial dims".into());
    }
    let r = xs.len() - 2;
    let kind = match n.op.as_str() {
        "MaxPool" => PoolKind::Max,
        "AveragePool" => PoolKind::Average {
            count_include_pad: n
                .attrs
                .get("count_include_pad")
                .and_then(Attr::as_int)
                .unwrap_or(0)
                != 0,
        },
        "GlobalAveragePool" => PoolKind::GlobalAverage,
        "GlobalMaxPool" => PoolKind::GlobalMax,
        op => return Err(format!("no pooling kernel for {op}")),
    };
    let ceil_mode = n.attrs.get("ceil_mode").and_then(Attr::as_int).unwrap_or(0) != 0;
    if ceil_mode
        && matches!(
            kind,
            PoolKind::Average {
                count_include_pad: true
            }
        )
    {
        // ONNX's reference (and its tests) spread ceil mode's extra cells
        // into the padding count; the interpreter follows it, the kernel
        // follows onnxruntime/PyTorch. Take the reference's answer.
        return Err(
            "AveragePool with ceil_mode and count_include_pad follows ONNX's reference".into(),
        );
    }
    let global = matches!(kind, PoolKind::GlobalAverage | PoolKind::GlobalMax);
    let kernel = if global {
        xs[2..].to_vec()
    } else {
        ints(n, "kernel_shape").ok_or("kernel_shape is required")?
    };
    let strides = ints(n, "strides").unwrap_or_else(|| vec![1; r]);
    let dilations = ints(n, "dilations").unwrap_or_else(|| vec![1; r]);
    let pads = if global {
        vec![0; 2 * r]
    } else {
        if n.attrs
            .get("storage_order")
            .and_then(Attr::as_int)
            .unwrap_or(0)
            != 0
        {
            return Err("storage_order 1".into());
        }
        resolve_pads(n, &xs[2..], &kernel, &strides, &dilations)?
    };
    let attrs = PoolAttrs {
        kernel,
        strides,
        dilations,
        pads,
        ceil_mode,
    };
    let plan = PoolPlan::new(kind, &xs, &attrs)?;
    let out = static_shape(m, *n.outputs.first().ok_or("no result")?)?;
    if plan.out_shape() != out.as_slice() {
        return Err(format!(
            "pool plan gives {:?}, the node {out:?}",
            plan.out_shape()
        ));
    }
    Ok((
        Box::new(Pool { plan }),
        format!("{} {:?}", n.op, attrs.kernel),
        0.0,
    ))
}

/// A fusion region: optionally a dense anchor, then a generated loop.
struct Fusion {
    /// The anchor, with the fusion operand feeding each of its operands.
    anchor: Option<(Dense, Vec<Option<usize>>)>,
    jit: JitKernel,
    /// For each input of the generated loop after the anchor's result
    /// (or of all of them without an anchor): the fusion operand.
    jit_operands: Vec<usize>,
    /// The loop writes its one output over the anchor's result.
    in_place: bool,
    /// Fusion operands (integer or bool) converted to f32 before the
    /// kernel runs: see [`precast`].
    cast_operands: Vec<usize>,
}

impl NativeKernel for Fusion {
    fn run(&self, inputs: &[Option<&Tensor>], threads: usize) -> Result<Vec<Tensor>, String> {
        if !self.cast_operands.is_empty() {
            let converted: Vec<(usize, Tensor)> = self
                .cast_operands
                .iter()
                .map(|&k| {
                    Ok((
                        k,
                        to_f32(inputs.get(k).copied().flatten().ok_or("missing operand")?)?,
                    ))
                })
                .collect::<Result<_, String>>()?;
            let mut patched = inputs.to_vec();
            for (k, t) in &converted {
                patched[*k] = Some(t);
            }
            return self.run_f32(&patched, threads);
        }
        self.run_f32(inputs, threads)
    }
}

/// The anchor's own operands, picked from the fusion's by `map`.
fn anchor_operands<'a>(
    map: &[Option<usize>],
    inputs: &[Option<&'a Tensor>],
) -> Vec<Option<&'a Tensor>> {
    map.iter()
        .map(|k| k.and_then(|k| inputs.get(k).copied().flatten()))
        .collect()
}

/// An integer or bool tensor converted as ONNX Cast to f32 does.
fn to_f32(t: &Tensor) -> Result<Tensor, String> {
    let v: Vec<f32> = match &t.data {
        Data::I64(v) => v.iter().map(|&a| a as f32).collect(),
        Data::I32(v) => v.iter().map(|&a| a as f32).collect(),
        Data::Bool(v) => v.iter().map(|&a| a as u8 as f32).collect(),
        _ => return Err("operand cast: unsupported element type".into()),
    };
    Tensor::new(t.shape.clone(), Data::F32(v)).map_err(|e| e.to_string())
}

/// A fusion body with its integer/bool inputs cast to f32 outside it: an
/// input of i64, i32 or bool whose only use is one `Cast(to = f32)` is
/// replaced by that Cast's result, and the Cast dropped, so the rest is
/// all f32 and can be generated (MiniLM's attention mask, `(1 - mask) *
/// -big`). Returns the new body and the inputs to convert.
fn precast(m: &Module, body: &Region) -> (Region, Vec<usize>) {
    use kiln_ir::ElemType as E;
    let mut body = body.clone();
    let mut converted = vec![];
    for k in 0..body.inputs.len() {
        let v = body.inputs[k];
        if !matches!(
            m.ty(v).as_tensor().map(|t| t.elem),
            Some(E::I64 | E::I32 | E::Bool)
        ) {
            continue;
        }
        let users: Vec<usize> = (0..body.nodes.len())
            .filter(|&i| body.nodes[i].inputs.iter().flatten().any(|&x| x == v))
            .collect();
        let [i] = users[..] else { continue };
        let c = &body.nodes[i];
        let out = c.outputs.first().copied();
        let to_f32 = out.and_then(|o| m.ty(o).as_tensor().map(|t| t.elem)) == Some(E::F32);
        if c.op != "Cast" || c.inputs.len() != 1 || !to_f32 || body.outputs.contains(&v) {
            continue;
        }
        body.inputs[k] = out.expect("checked above");
        body.nodes.remove(i);
        converted.push(k);
    }
    (body, converted)
}

impl Fusion {
    fn run_f32(&self, inputs: &[Option<&Tensor>], threads: usize) -> Result<Vec<Tensor>, String> {
        let outs = self.jit.output_shapes().to_vec();
        let mut ins: Vec<&[f32]> = vec![];
        if let (true, true, Some((plan, map))) = (self.in_place, self.jit.is_flat(), &self.anchor) {
            return self.run_tiled(plan, map, inputs, threads);
        }
        let anchor_out = match &self.anchor {
            Some((plan, map)) => {
                let ops = anchor_operands(map, inputs);
                let shape = plan.out_shape().to_vec();
                let mut buf = plan.out_buffer();
                plan.run(&ops, &mut buf, threads)?;
                Some((shape, buf))
            }
            None => None,
        };
        for &k in &self.jit_operands {
            ins.push(f32s(inputs, k)?);
        }
        let anchor_out = match (self.in_place, anchor_out) {
            (true, Some((shape, mut buf))) => {
                let mut ptrs: Vec<*const f32> = vec![buf.as_ptr()];
                ptrs.extend(ins.iter().map(|s| s.as_ptr()));
                // SAFETY: every pointer covers the shape the kernel was
                // compiled for (operands have their static shapes, the
                // executable checked the graph inputs; the buffer was sized
                // above), and the one output aliases input 0 of the same
                // shape, which the generated loop allows.
                unsafe { self.jit.run_raw(&ptrs, &[buf.as_mut_ptr()], threads) };
                return Ok(vec![
                    Tensor::new(shape, Data::F32(buf)).map_err(|e| e.to_string())?
                ]);
            }
            (_, a) => a,
        };
        // Generated loops write every element of every output.
        let mut bufs: Vec<Vec<f32>> = outs
            .iter()
            .map(|s| buffers::output(s.iter().product()))
            .collect();
        {
            let mut all: Vec<&[f32]> = vec![];
            if let Some((_, b)) = &anchor_out {
                all.push(b);
            }
            all.extend(ins);
            let mut outs_mut: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            self.jit.run(&all, &mut outs_mut, threads)?;
        }
        outs.into_iter()
            .zip(bufs)
            .map(|(s, b)| Tensor::new(s, Data::F32(b)).map_err(|e| e.to_string()))
            .collect()
    }
}

impl Fusion {
    /// An in-place elementwise epilogue, applied to each tile of the
    /// anchor's result by the thread that computed it, while it is in
    /// cache (one pass over memory instead of two).
    fn run_tiled(
        &self,
        plan: &Dense,
        map: &[Option<usize>],
        inputs: &[Option<&Tensor>],
        threads: usize,
    ) -> Result<Vec<Tensor>, String> {
        let ops = anchor_operands(map, inputs);
        let shape = plan.out_shape().to_vec();
        let mut buf = plan.out_buffer();
        let mut operands: Vec<usize> = vec![];
        for &k in &self.jit_operands {
            operands.push(f32s(inputs, k)?.as_ptr() as usize);
        }
        let epilogue = |out: *mut f32, lo: usize, hi: usize| {
            // On the stack: this runs once per tile row.
            let mut stack = [std::ptr::null::<f32>(); 8];
            let mut heap = vec![];
            let ins: &mut [*const f32] = if operands.len() < stack.len() {
                &mut stack[..operands.len() + 1]
            } else {
                heap.resize(operands.len() + 1, std::ptr::null());
                &mut heap
            };
            ins[0] = out;
            for (d, &p) in ins[1..].iter_mut().zip(&operands) {
                *d = p as *const f32;
            }
            // SAFETY: every pointer covers the shape the kernel was compiled
            // for (operands have their static shapes, the executable checked
            // the graph inputs; `out` is the anchor's result); the output
            // aliases input 0 of the same shape, which the generated loop
            // allows; the anchor hands each range over once, finished, to
            // the one thread that touches it.
            unsafe { self.jit.run_range_raw(ins, &[out], lo, hi) };
        };
        plan.run_with_epilogue(&ops, &mut buf, threads, Some(&epilogue))?;
        Ok(vec![
            Tensor::new(shape, Data::F32(buf)).map_err(|e| e.to_string())?
        ])
    }
}

/// `kiln.Fusion`: the body compiled by Cranelift; an epilogue's anchor
/// (its first node, a MatMul/Gemm/Conv) planned on the kernel library.
pub(super) fn fusion(
    m: &Module,
    n: &Node,
    target: TargetCpu,
) -> Result<(Lowered, Vec<usize>), String> {
    let Some(Attr::Graph(body)) = n.attrs.get("body") else {
        return Err("fusion without a body".into());
    };
    let (body, cast_operands) = precast(m, body);
    let body = &body;
    let operand_of = |v: ValueId| body.inputs.iter().position(|&b| b == v);
    let outer = |v: ValueId| operand_of(v).and_then(|k| n.inputs.get(k).copied().flatten());
    let first = body.nodes.first().ok_or("empty fusion body")?;
    let is_anchor = matches!(first.op.as_str(), "MatMul" | "Gemm" | "Conv");
    // The Relu folded into the anchor, if any: its result is then the
    // anchor's.
    let mut folded = None;
    let (anchor, tail_nodes, mut captured) = if is_anchor {
        let outer_inputs: Vec<Option<ValueId>> =
            first.inputs.iter().map(|v| v.and_then(outer)).collect();
        if first
            .inputs
            .iter()
            .flatten()
            .any(|&v| operand_of(v).is_none())
        {
            return Err("anchor reads a value of its body".into());
        }
        let mut p = plan_dense(m, first, &outer_inputs)?;
        let map: Vec<Option<usize>> = first
            .inputs
            .iter()
            .map(|v| v.and_then(operand_of))
            .collect();
        let captured: Vec<usize> = p
            .captured
            .iter()
            .filter_map(|&i| map.get(i).copied().flatten())
            .collect();
        let mut map = map;
        let mut tail = &body.nodes[1..];
        let mut result = first.outputs.first().copied();
        if let Some((v, k)) = fold_residual(m, result, tail, &body.outputs, &mut p, operand_of) {
            map.resize(RESIDUAL, None);
            map.push(Some(k));
            folded = Some(v);
            result = Some(v);
            tail = &tail[1..];
        }
        if let Some(v) = fold_relu(result, tail, &body.outputs, &mut p) {
            folded = Some(v);
            tail = &tail[1..];
        }
        (Some((p, map)), tail, captured)
    } else {
        (None, &body.nodes[..], vec![])
    };
    // The generated loop's region: the anchor's result (if any), then the
    // body inputs the remaining nodes read.
    let mut used: Vec<ValueId> = tail_nodes
        .iter()
        .flat_map(|x| x.inputs.iter().flatten().copied())
        .collect();
    used.extend(&body.outputs);
    let mut inputs = vec![];
    let mut shapes = vec![];
    let mut jit_operands = vec![];
    let anchor_value = if is_anchor {
        folded.or(first.outputs.first().copied())
    } else {
        None
    };
    if tail_nodes.is_empty() && folded.is_some() {
        if let Some((p, map)) = anchor {
            // Conv + Relu and nothing else: the conv alone.
            let flops = p.plan.flops();
            let k = AnchorOnly {
                anchor: DenseKernel { plan: p.plan },
                map,
            };
            return Ok(((Box::new(k), p.what, flops), captured));
        }
    }
    if let (Some(v), Some((p, _))) = (anchor_value, &anchor) {
        inputs.push(v);
        shapes.push(p.plan.out_shape().to_vec());
    }
    for (k, &b) in body.inputs.iter().enumerate() {
        if used.contains(&b) {
            inputs.push(b);
            let v = n
                .inputs
                .get(k)
                .copied()
                .flatten()
                .ok_or("omitted fusion operand")?;
            shapes.push(static_shape(m, v)?);
            jit_operands.push(k);
        }
    }
    captured.retain(|k| !jit_operands.contains(k));
    if tail_nodes.is_empty() {
        return Err("fusion of a lone matmul/conv".into());
    }
    let region = Region {
        inputs,
        constants: body.constants.clone(),
        nodes: tail_nodes.to_vec(),
        outputs: body.outputs.clone(),
    };
    let jit = match compile_region_for(m, &region, &shapes, target) {
        Ok(j) => j,
        Err(why) if anchor.is_none() => {
            return split_reduction(
                m,
                n,
                &region,
                &shapes,
                &jit_operands,
                &cast_operands,
                target,
            )
            .map(|l| (l, captured))
            .map_err(|_| why)
        }
        Err(why) => return Err(why),
    };
    let in_place = match (anchor_value, &anchor) {
        (Some(v), Some((p, _))) => {
            jit.output_shapes().len() == 1
                && jit.output_shapes()[0].as_slice() == p.plan.out_shape()
                && !body.outputs.contains(&v)
        }
        _ => false,
    };
    let (what, flops) = match &anchor {
        Some((p, _)) => (format!("{} + {}", p.what, jit.describe()), p.plan.flops()),
        None => (jit.describe().to_string(), 0.0),
    };
    let k = Fusion {
        anchor: anchor.map(|(p, map)| (p.plan, map)),
        jit,
        jit_operands,
        in_place,
        cast_operands,
    };
    Ok(((Box::new(k), what, flops), captured))
}

/// The conv anchor's operand index of a folded residual.
const RESIDUAL: usize = 3;

/// Folds a residual Add into the conv anchor when `tail` starts with
/// `Add(v, r)` or `Sum(v, r)` (either order) of the anchor's result `v`,
/// which nothing else reads, and a fusion operand `r` of exactly the
/// result's shape, and the conv can add it as its tiles start
/// ([`ConvPlan::fuse_residual`]).
/// Returns the Add's result, which the anchor now produces, and `r`'s
/// fusion operand index.
fn fold_residual(
    m: &Module,
    v: Option<ValueId>,
    tail: &[Node],
    outputs: &[ValueId],
    p: &mut Planned,
    operand_of: impl Fn(ValueId) -> Option<usize>,
) -> Option<(ValueId, usize)> {
    let v = v?;
    let (add, rest) = tail.split_first()?;
    let is_add = add.op == "Add" || add.op == "Sum";
    if !is_add || add.inputs.len() != 2 || outputs.contains(&v) {
        return None;
    }
    let r = match (add.input(0), add.input(1)) {
        (Some(a), Some(b)) if a == v && b != v => b,
        (Some(a), Some(b)) if b == v && a != v => a,
        _ => return None,
    };
    let reads_v = |n: &Node| n.inputs.iter().flatten().any(|&x| x == v);
    if rest.iter().any(reads_v) || !is_f32(m, r) {
        return None;
    }
    let out = *add.outputs.first()?;
    // With more of the tail left, the sum becomes the generated loop's
    // input; it must not also be a result of the fusion (as for a Relu).
    if !rest.is_empty() && outputs.contains(&out) {
        return None;
    }
    let k = operand_of(r)?;
    let Dense::Conv(c) = &mut p.plan else {
        return None;
    };
    if static_shape(m, r).ok()?.as_slice() != c.out_shape() || !c.fuse_residual() {
        return None;
    }
    p.what.push_str(&format!(" + {}", add.op));
    Some((out, k))
}

/// Folds the anchor's Relu into the anchor when `tail` starts with a Relu
/// of the anchor's result `v` that nothing else reads and the anchor can
/// clamp in its kernel (an implicit-GEMM or small-k conv: the clamp rides
/// on the tile store instead of another pass over the output). Returns
/// the Relu's result, which the anchor now produces.
fn fold_relu(
    v: Option<ValueId>,
    tail: &[Node],
    outputs: &[ValueId],
    p: &mut Planned,
) -> Option<ValueId> {
    let v = v?;
    let (relu, rest) = tail.split_first()?;
    let reads_v = |n: &Node| n.inputs.iter().flatten().any(|&x| x == v);
    if relu.op != "Relu" || relu.input(0) != Some(v) || relu.inputs.len() != 1 {
        return None;
    }
    if rest.iter().any(reads_v) || outputs.contains(&v) {
        return None;
    }
    let out = relu.outputs.first().copied()?;
    // With more of the tail left, the Relu's result becomes the generated
    // loop's input; it must not also be a result of the fusion.
    if !rest.is_empty() && outputs.contains(&out) {
        return None;
    }
    let Dense::Conv(c) = &mut p.plan else {
        return None;
    };
    if !c.fuse_clamp(0.0, f32::INFINITY) {
        return None;
    }
    p.what.push_str(" + Relu");
    Some(out)
}

/// A fusion whose tail was folded into its anchor entirely (Conv + Relu):
/// the anchor alone, on the fusion's operands.
struct AnchorOnly {
    anchor: DenseKernel,
    map: Vec<Option<usize>>,
}

impl NativeKernel for AnchorOnly {
    fn run(&self, inputs: &[Option<&Tensor>], threads: usize) -> Result<Vec<Tensor>, String> {
        self.anchor
            .run(&anchor_operands(&self.map, inputs), threads)
    }
}

/// A reduction fusion whose reduction the generated loops cannot express
/// (a sum over a middle axis: mean pooling over a sequence): the
/// elementwise producers still run as one generated loop, and the
/// reduction on the odometer kernel, instead of the whole region on the
/// interpreter.
fn split_reduction(
    m: &Module,
    n: &Node,
    region: &Region,
    shapes: &[Vec<usize>],
    jit_operands: &[usize],
    cast_operands: &[usize],
    target: TargetCpu,
) -> Result<Lowered, String> {
    let (last, producers) = region.nodes.split_last().ok_or("empty body")?;
    let x = last.input(0).ok_or("reduction without operand")?;
    if producers.is_empty()
        || !last.op.starts_with("Reduce")
        || region.outputs != last.outputs
        || region.inputs.contains(&x)
    {
        return Err("not a producers + reduction region".into());
    }
    let prefix = Region {
        inputs: region.inputs.clone(),
        constants: region.constants.clone(),
        nodes: producers.to_vec(),
        outputs: vec![x],
    };
    let jit = compile_region_for(m, &prefix, shapes, target)?;
    let out = static_shape(m, *n.outputs.first().ok_or("no result")?)?;
    let (reduce, what, _) =
        super::cpu::reduce_of_shape(m, last, jit.output_shapes()[0].clone(), out)?;
    let what = format!("{} then {what}", jit.describe());
    let producers = Fusion {
        anchor: None,
        jit,
        jit_operands: jit_operands.to_vec(),
        in_place: false,
        cast_operands: cast_operands.to_vec(),
    };
    Ok((Box::new(SplitReduction { producers, reduce }), what, 0.0))
}

/// See [`split_reduction`].
struct SplitReduction {
    producers: Fusion,
    reduce: Box<dyn NativeKernel>,
}

impl NativeKernel for SplitReduction {
    fn run(&self, inputs: &[Option<&Tensor>], threads: usize) -> Result<Vec<Tensor>, String> {
        let x = self.producers.run(inputs, threads)?;
        self.reduce.run(&[x.first()], threads)
    }
}

/// Any other node the generated loops can express (a lone Softmax, Relu,
/// ...): compiled as a one-node region.
pub(super) fn single_node_loop(m: &Module, n: &Node, target: TargetCpu) -> Result<Lowered, String> {
    if n.regions().next().is_some() {
        return Err("node with regions".into());
    }
    let mut inputs = vec![];
    let mut shapes = vec![];
    let mut operands = vec![];
    let mut constants = vec![];
    for (k, v) in n.inputs.iter().enumerate() {
        let Some(v) = *v else { continue };
        if m.constant(v).is_some() {
            // Axes, bounds, exponents: the generator reads them as data.
            if !constants.contains(&v) {
                constants.push(v);
            }
        } else if !inputs.contains(&v) {
            inputs.push(v);
            shapes.push(static_shape(m, v)?);
            operands.push(k);
        }
    }
    let region = Region {
        inputs,
        constants,
        nodes: vec![n.clone()],
        outputs: n.outputs.clone(),
    };
    let jit = compile_region_for(m, &region, &shapes, target)?;
    let what = jit.describe().to_string();
    let k = Fusion {
        anchor: None,
        jit,
        jit_operands: operands,
        in_place: false,
        cast_operands: vec![],
    };
    Ok((Box::new(k), what, 0.0))
}
