//! The GPU backend's lowering: from a specialized module that went through
//! the gpu pipeline, one step per top-level node of a [`GpuExecutable`]:
//! generated WGSL shaders (every one validated by naga here, before a
//! device sees it) or, for what the generators do not cover, a CPU step
//! (the interpreter's kernel) with the transfers it needs. This module
//! plans; the runtime executes.
//!
//! The lowering table is [`lower_node`]: fusion regions and lone pointwise,
//! reduction and softmax nodes through the shared fusion plan; MatMul,
//! Gemm and Conv (with a fusion's epilogue applied in their store) on the
//! tiled GEMM; pooling; data movement as strided copies (8- and 16-bit
//! data packed in words); Gather; Cast; the quantized path:
//! (de)quantization, 8-bit lookups and pooling, and QLinearConv,
//! ConvInteger, QLinearMatMul and MatMulInteger on `dot4I8Packed`.

use std::collections::HashSet;

use kiln_ir::{Attr, ElemType, Module, Node, Region, ValueId};
use kiln_runtime::gpu::kernels::dense::{self, ConvGeom, Epilogue, PoolOp, Store};
use kiln_runtime::gpu::kernels::quant::{self, IntOperands, IntOut, ParamSplit};
use kiln_runtime::gpu::kernels::reduce::{self, ReduceOp};
use kiln_runtime::gpu::kernels::{fusion, movement, recurrent, typed};
use kiln_runtime::gpu::wgsl::{self, Bind, GpuKernel};
use kiln_runtime::gpu::{BranchStep, Gpu, GpuExecutable, GpuLayout, GpuStep, GpuStepKind};

use kiln_runtime::cpu::kernels::PoolKind;

use crate::lower::common::{
    conv_attrs, conv_transpose_attrs, ints, one_node_region, pool_attrs, pool_window,
    recurrent_layer, resize_plan_of, OneNode,
};
use crate::passes::memory_plan;

/// How to compile for the GPU.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// The pass pipeline's level (0, 1 or 2).
    pub opt_level: u8,
    /// What CPU steps may allocate and loop.
    pub limits: kiln_ir::Limits,
}

impl Default for GpuOptions {
    fn default() -> GpuOptions {
        GpuOptions {
            opt_level: 2,
            limits: Default::default(),
        }
    }
}

/// Build the executable of a module already specialized to static shapes
/// and through the gpu pipeline, on a device of its own.
pub fn build(s: Module, opts: &GpuOptions, align: u64) -> Result<GpuExecutable, String> {
    crate::lower::common::check_static_sizes(&s, &opts.limits)?;
    let gpu = Gpu::open()?;
    let max_bindings = gpu.limits.max_storage_buffers_per_shader_stage as usize;
    let max_binding_bytes = gpu.limits.max_storage_buffer_binding_size;
    let mut steps = Vec::with_capacity(s.body.nodes.len());
    for (i, n) in s.body.nodes.iter().enumerate() {
        let kind = if n.op == "If" {
            match lower_if(&s, n, max_bindings, max_binding_bytes) {
                Ok((then_branch, else_branch)) => GpuStepKind::If {
                    then_branch,
                    else_branch,
                },
                Err(why) => GpuStepKind::Cpu { why },
            }
        } else {
            match lower_checked(&s, n, max_bindings, max_binding_bytes) {
                Ok(k) => GpuStepKind::Gpu(k),
                Err(why) => GpuStepKind::Cpu { why },
            }
        };
        steps.push(GpuStep { node: i, kind });
    }
    let layout = layout(
        &s,
        &steps,
        align.max(gpu.limits.min_storage_buffer_offset_alignment as u64),
    )?;
    opts.limits
        .total(|| "the executable's arena".to_string(), layout.arena_bytes)
        .map_err(|e| e.to_string())?;
    Ok(GpuExecutable::new(gpu, s, steps, layout)?.with_limits(opts.limits))
}

/// `If` on the device: each branch's nodes lowered like top-level ones
/// (no nested control flow), then copies of the branch's outputs into the
/// node's results; the host reads only the condition.
fn lower_if(
    m: &Module,
    n: &Node,
    max_bindings: usize,
    max_bytes: u64,
) -> Result<(Vec<BranchStep>, Vec<BranchStep>), String> {
    let cond = operand(n, 0)?;
    if m.static_shape(cond)?.iter().product::<usize>() != 1 {
        return Err("a condition that is not one value".into());
    }
    let mut branches = vec![];
    for name in ["then_branch", "else_branch"] {
        let Some(Attr::Graph(region)) = n.attrs.get(name) else {
            return Err(format!("no {name}"));
        };
        if region.outputs.len() != n.outputs.len() {
            return Err(format!(
                "{name} has {} outputs for {} results",
                region.outputs.len(),
                n.outputs.len()
            ));
        }
        let mut steps = vec![];
        for node in &region.nodes {
            if node.op != "kiln.Fusion" && node.regions().next().is_some() {
                return Err(format!("nested control flow in {name} ({})", node.op));
            }
            let kernel = lower_checked(m, node, max_bindings, max_bytes)
                .map_err(|e| format!("{name}: {} ({e})", node.describe()))?;
            steps.push(BranchStep {
                node: node.clone(),
                kernel,
            });
        }
        for (&out, &res) in region.outputs.iter().zip(&n.outputs) {
            let count = |v: ValueId| m.static_shape(v).map(|s| s.iter().product::<usize>());
            if count(out)? != count(res)? {
                return Err(format!(
                    "{name}'s output %{} has another size than %{}",
                    m.name(out),
                    m.name(res)
                ));
            }
            let copy = Node::new("Identity", vec![Some(out)], vec![res]);
            let kernel = lower_checked(m, &copy, max_bindings, max_bytes)?;
            steps.push(BranchStep { node: copy, kernel });
        }
        branches.push(steps);
    }
    let else_branch = branches.pop().unwrap_or_default();
    let then_branch = branches.pop().unwrap_or_default();
    Ok((then_branch, else_branch))
}

/// The lowering table, then the checks every GPU step must pass: static
/// shapes, a naga-valid shader, within the device's binding limits.
fn lower_checked(
    m: &Module,
    n: &Node,
    max_bindings: usize,
    max_bytes: u64,
) -> Result<GpuKernel, String> {
    for v in n.inputs.iter().flatten().chain(&n.outputs) {
        let t = m
            .ty(*v)
            .as_tensor()
            .ok_or_else(|| format!("%{} is not a tensor", m.name(*v)))?;
        let shape = m.static_shape(*v)?;
        let n_el: u64 = shape.iter().map(|&d| d as u64).product();
        let bytes = t
            .elem
            .storage_bytes(n_el)
            .ok_or_else(|| format!("%{} has no fixed size", m.name(*v)))?;
        if bytes > max_bytes {
            return Err(format!(
                "%{} ({bytes} bytes) exceeds the device's binding size",
                m.name(*v)
            ));
        }
    }
    let k = kernel_for(m, n)?;
    for d in &k.dispatches {
        if d.bindings.len() > max_bindings {
            return Err(format!(
                "{} bindings, the device allows {max_bindings}",
                d.bindings.len()
            ));
        }
        wgsl::validate(&d.wgsl).map_err(|e| format!("internal: generated WGSL is invalid: {e}"))?;
    }
    Ok(k)
}

/// The kernel of `n`: the lowering table's, or nothing for results with
/// no elements (their generated index arithmetic would divide by a zero
/// extent, and there is nothing to write).
fn kernel_for(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    // The table first: an op it does not take goes to the cpu even with
    // an empty result (the interpreter's kernel may reject the node).
    let k = lower_node(m, n)?;
    let empty = n.outputs.iter().all(|&o| {
        m.static_shape(o)
            .is_ok_and(|s| s.iter().product::<usize>() == 0)
    });
    // (Gather checks its indices even then.)
    if empty && n.op != "Gather" {
        return Ok(GpuKernel {
            describe: "nothing (empty result)".into(),
            ..Default::default()
        });
    }
    Ok(k)
}

/// The memory plan as the executable runs it: intermediates that a GPU
/// step reads or writes live in the arena; values only CPU steps touch
/// stay on the host. No result overwrites an operand: a shader binding the
/// same bytes twice, one of them writable, is not allowed.
fn layout(s: &Module, steps: &[GpuStep], align: u64) -> Result<GpuLayout, String> {
    let mut on_device: HashSet<ValueId> = HashSet::new();
    for st in steps {
        let n = &s.body.nodes[st.node];
        match &st.kind {
            GpuStepKind::Gpu(_) => {
                on_device.extend(n.inputs.iter().flatten());
                on_device.extend(&n.outputs);
            }
            GpuStepKind::If {
                then_branch,
                else_branch,
            } => {
                on_device.extend(n.input(0));
                for b in then_branch.iter().chain(else_branch) {
                    on_device.extend(b.node.inputs.iter().flatten());
                    on_device.extend(&b.node.outputs);
                }
            }
            GpuStepKind::Cpu { .. } => {}
        }
    }
    let keep_out = |v: ValueId| !on_device.contains(&v);
    let never = |_: usize| false;
    let opts = memory_plan::PlanOptions {
        align,
        in_place: Some(&never),
        skip_unsized: true,
        keep_out: Some(&keep_out),
        // A shader may not read and write overlapping ranges of one
        // buffer, so the concat shader copies every operand.
        concat_in_place: false,
        slice_in_place: false,
    };
    let plan = memory_plan::plan_with(s, &Default::default(), &opts)
        .map_err(|e| format!("memory plan: {e}"))?;
    Ok(GpuLayout {
        schedule: plan.schedule,
        offsets: plan
            .buffers
            .iter()
            .filter(|b| s.static_shape(b.value).is_ok())
            .map(|b| (b.value, b.offset))
            .collect(),
        arena_bytes: plan.arena_bytes,
    })
}

fn elem(m: &Module, v: ValueId) -> Result<ElemType, String> {
    m.ty(v)
        .as_tensor()
        .map(|t| t.elem)
        .ok_or_else(|| format!("%{} is not a tensor", m.name(v)))
}

/// Every operand and result of `n` is f32 (the kernels that read floats
/// only).
fn all_f32(m: &Module, n: &Node) -> Result<(), String> {
    for v in n.inputs.iter().flatten().chain(&n.outputs) {
        if elem(m, *v)? != ElemType::F32 {
            return Err(format!("{} of non-f32 data", n.op));
        }
    }
    Ok(())
}

/// The `axis` attribute (`default` when absent) within `rank`.
fn axis_attr(n: &Node, default: i64, rank: usize) -> Result<usize, String> {
    norm_axis(
        n.attrs
            .get("axis")
            .and_then(Attr::as_int)
            .unwrap_or(default),
        rank,
    )
}

fn operand(n: &Node, i: usize) -> Result<ValueId, String> {
    n.input(i)
        .ok_or_else(|| format!("{}: operand {i} is missing", n.describe()))
}

fn result(n: &Node) -> Result<ValueId, String> {
    n.outputs
        .first()
        .copied()
        .ok_or_else(|| "no result".to_string())
}

fn const_ints(m: &Module, n: &Node, i: usize) -> Result<Option<Vec<i64>>, String> {
    let Some(v) = n.input(i) else { return Ok(None) };
    let d = m
        .constant(v)
        .ok_or_else(|| format!("operand {i} is not a constant"))?;
    d.to_i64_vec()
        .map(Some)
        .ok_or_else(|| format!("operand {i} is not integers"))
}

fn norm_axis(a: i64, rank: usize) -> Result<usize, String> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if v < 0 || v >= r.max(1) {
        return Err(format!("axis {a} for rank {rank}"));
    }
    Ok(v as usize)
}

/// The lowering table: the kernel of `n`, or why there is none.
fn lower_node(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    if kiln_ir::ops::traits(&n.op).view || matches!(n.op.as_str(), "Identity") {
        return view(m, n);
    }
    match n.op.as_str() {
        "Transpose" => transpose(m, n),
        "Slice" => slice(m, n),
        "Expand" => expand(m, n),
        "Concat" => concat(m, n),
        "Split" => split(m, n),
        "Gather" => gather(m, n),
        "Resize" => resize(m, n),
        "DepthToSpace" | "SpaceToDepth" => depth_space(m, n),
        "ConvTranspose" => conv_transpose(m, n),
        "InstanceNormalization" | "GroupNormalization" => group_norm(m, n),
        // Inference: the identity (a mask result or a training flag stays
        // on the host's kernel).
        "Dropout" if n.outputs.len() == 1 && n.input(2).is_none() => view(m, n),
        "Softmax" | "LogSoftmax" => single_node(m, n).or_else(|_| softmax(m, n)),
        "ArgMax" | "ArgMin" => arg_extreme(m, n),
        op if ReduceOp::of_onnx(op).is_some() => {
            single_node(m, n).or_else(|_| reduce_node(m, n, Bind::Operand(0)))
        }
        "Cast" => {
            let (from, to) = (elem(m, operand(n, 0)?)?, elem(m, result(n)?)?);
            let total: usize = m.static_shape(result(n)?)?.iter().product();
            if from == to {
                return view(m, n);
            }
            movement::cast(n, from, to, total).or_else(|e| typed_single(m, n).map_err(|_| e))
        }
        "kiln.Fusion" => fusion_node(m, n),
        "MatMul" | "Gemm" | "Conv" | "kiln.FusedConv" | "kiln.DequantMatMul" => {
            let binds: Vec<Option<Bind>> = (0..n.inputs.len())
                .map(|i| n.input(i).map(|_| Bind::Operand(i)))
                .collect();
            anchor(m, n, &binds, Store::To(Bind::Result(0)))
        }
        "MaxPool" if wgsl::packed_bytes(elem(m, operand(n, 0)?)?).is_some() => int_max_pool(m, n),
        "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" => pool(m, n),
        "QuantizeLinear" => quantize(m, n),
        "DequantizeLinear" => dequantize(m, n),
        "DynamicQuantizeLinear" => {
            if elem(m, operand(n, 0)?)? != ElemType::F32 || n.outputs.len() != 3 {
                return Err("DynamicQuantizeLinear of non-f32".into());
            }
            quant::dynamic_quantize(n, m.static_shape(operand(n, 0)?)?.iter().product())
        }
        "QLinearConv" | "ConvInteger" => int_conv(m, n),
        "kiln.Lookup" => {
            let x = operand(n, 0)?;
            if count(m, n, 1)? != 256 || wgsl::packed_bytes(elem(m, operand(n, 1)?)?) != Some(1) {
                return Err("a table that is not 256 bytes".into());
            }
            quant::lookup(n, m.static_shape(x)?.iter().product(), elem(m, x)?)
        }
        "QLinearMatMul" | "MatMulInteger" => int_matmul(m, n),
        "LpPool" | "GlobalLpPool" => lp_pool(m, n),
        "Hardmax" => hardmax(m, n),
        "BatchNormalization" => single_node(m, n).or_else(|_| batch_norm(m, n)),
        "LRN" => lrn(m, n),
        "GridSample" => grid_sample(m, n),
        "OneHot" => one_hot(m, n),
        "DeformConv" => deform_conv(m, n),
        "MeanVarianceNormalization" | "Det" | "Range" => f32_misc(m, n),
        "RNN" | "GRU" | "LSTM" => recurrent::recurrent(n, &recurrent_layer(m, n)?, None),
        "kiln.DequantLSTM" => {
            let q = (
                dequant_lstm_weights(m, n, 1, 8)?,
                dequant_lstm_weights(m, n, 2, 10)?,
            );
            recurrent::recurrent(n, &recurrent_layer(m, n)?, Some(q))
        }
        "LayerNormalization" => single_node(m, n).or_else(|_| layer_norm(m, n)),
        _ => single_node(m, n)
            .or_else(|e| typed_single(m, n).map_err(|_| e))
            .map_err(|e| format!("no gpu kernel for {} ({e})", n.op)),
    }
}

/// How the scale operand `scale` of a (de)quantization spreads over
/// `x` (the `axis` and `block_size` attributes).
fn param_split(m: &Module, n: &Node, x: ValueId, scale: ValueId) -> Result<ParamSplit, String> {
    let xs = m.static_shape(x)?;
    let params: usize = m.static_shape(scale)?.iter().product();
    let block = n
        .attrs
        .get("block_size")
        .and_then(Attr::as_int)
        .unwrap_or(0)
        .max(0) as usize;
    let total: usize = xs.iter().product();
    if block == 0 && m.static_shape(scale)?.len() <= 1 && params == 1 {
        return Ok(ParamSplit {
            outer: 1,
            axis: 1,
            inner: total,
            block: 0,
        });
    }
    let a = axis_attr(n, 1, xs.len())?;
    let split = ParamSplit {
        outer: xs[..a].iter().product(),
        axis: xs[a],
        inner: xs[a + 1..].iter().product(),
        block: block.max(1),
    };
    let expect = split.outer * split.axis.div_ceil(split.block) * split.inner;
    let expect = if block == 0 { split.axis } else { expect };
    if params != expect {
        return Err(format!("{params} scales for {expect} groups"));
    }
    Ok(split)
}

/// A `kiln.DequantLSTM`'s W or R (operand `wi`, [D, gates·H, K]) with its
/// scale at `si` and zero point after it: one scale, one per direction,
/// or one per row.
fn dequant_lstm_weights(
    m: &Module,
    n: &Node,
    wi: usize,
    si: usize,
) -> Result<quant::QuantWeights, String> {
    let w = operand(n, wi)?;
    let ws = m.static_shape(w)?;
    if ws.len() != 3 || elem(m, operand(n, si)?)? != ElemType::F32 {
        return Err("quantized recurrent weights of another form".into());
    }
    let params = count(m, n, si)?;
    let (axis, inner) = if params == 1 {
        (1, ws.iter().product())
    } else if params == ws[0] {
        (ws[0], ws[1] * ws[2])
    } else if params == ws[0] * ws[1] {
        (ws[0] * ws[1], ws[2])
    } else {
        return Err(format!("{params} scales for weights {ws:?}"));
    };
    let block = usize::from(params > 1);
    let zp = match n.input(si + 1) {
        Some(z) if count(m, n, si + 1)? == params => Some((Bind::Operand(si + 1), elem(m, z)?)),
        Some(_) => return Err("a zero point of another shape than its scale".into()),
        None => None,
    };
    Ok(quant::QuantWeights {
        w: Bind::Operand(wi),
        elem: elem(m, w)?,
        scale: Bind::Operand(si),
        zp,
        split: ParamSplit {
            outer: 1,
            axis,
            inner,
            block,
        },
    })
}

/// The type of an optional zero-point operand.
fn zp_type(m: &Module, n: &Node, i: usize) -> Result<Option<ElemType>, String> {
    n.input(i).map(|v| elem(m, v)).transpose()
}

fn quantize(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    if elem(m, x)? != ElemType::F32 || elem(m, operand(n, 1)?)? != ElemType::F32 {
        return Err("QuantizeLinear of non-f32".into());
    }
    let split = param_split(m, n, x, operand(n, 1)?)?;
    let total = m.static_shape(x)?.iter().product();
    quant::quantize(n, total, split, zp_type(m, n, 2)?, elem(m, result(n)?)?)
}

fn dequantize(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    if elem(m, result(n)?)? != ElemType::F32 || elem(m, operand(n, 1)?)? != ElemType::F32 {
        return Err("DequantizeLinear to non-f32".into());
    }
    let split = param_split(m, n, x, operand(n, 1)?)?;
    let total = m.static_shape(x)?.iter().product();
    quant::dequantize(n, total, split, elem(m, x)?, zp_type(m, n, 2)?)
}

fn int_max_pool(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    if n.outputs.len() > 1 {
        return Err("MaxPool with indices".into());
    }
    let x = operand(n, 0)?;
    let xs = m.static_shape(x)?;
    let (_, a) = pool_attrs(n, &xs)?;
    quant::max_pool(
        n,
        elem(m, x)?,
        &xs,
        &m.static_shape(result(n)?)?,
        &a.kernel,
        &a.strides,
        &a.dilations,
        &a.pads,
    )
}

/// The number of values of operand `i` (1 when absent).
fn count(m: &Module, n: &Node, i: usize) -> Result<usize, String> {
    n.input(i)
        .map_or(Ok(1), |v| Ok(m.static_shape(v)?.iter().product()))
}

/// A zero point read whole (one value) or per channel (`per` values).
fn zero_point(
    m: &Module,
    n: &Node,
    i: usize,
    per: usize,
) -> Result<Option<(Bind, ElemType, bool)>, String> {
    let Some(v) = n.input(i) else { return Ok(None) };
    let c = count(m, n, i)?;
    if c != 1 && c != per {
        return Err(format!("a zero point of {c} values for {per} channels"));
    }
    Ok(Some((Bind::Operand(i), elem(m, v)?, c > 1 && per > 1)))
}

/// The operand types and zero points of an integer product (zero points
/// at `xz` and `wz`; `per` output channels/columns).
fn int_operands(
    m: &Module,
    n: &Node,
    (xi, wi, xz, wz): (usize, usize, usize, usize),
    per: usize,
) -> Result<IntOperands, String> {
    let x_zp = zero_point(m, n, xz, 1)?.map(|(b, t, _)| (b, t));
    Ok(IntOperands {
        x: elem(m, operand(n, xi)?)?,
        w: elem(m, operand(n, wi)?)?,
        x_zp,
        w_zp: zero_point(m, n, wz, per)?,
    })
}

/// How a QLinear op requantizes (scales at 1, 4, 6; zero point 7; bias 8
/// for QLinearConv), or the exact i32 sums of the Integer ops.
fn int_out(m: &Module, n: &Node, per: usize) -> Result<IntOut, String> {
    if !n.op.starts_with("QLinear") {
        if elem(m, result(n)?)? != ElemType::I32 {
            return Err("integer sums of another type than i32".into());
        }
        return Ok(IntOut::I32);
    }
    let scale_type = elem(m, operand(n, 1)?)?;
    for i in [1, 4, 6] {
        let t = elem(m, operand(n, i)?)?;
        if t != scale_type || !matches!(t, ElemType::F32 | ElemType::F16) {
            return Err("scales that are not all f32 or all f16".into());
        }
    }
    if count(m, n, 1)? != 1 || count(m, n, 6)? != 1 || count(m, n, 7)? != 1 {
        return Err("per-row scales or zero points of the input or result".into());
    }
    let ws = count(m, n, 4)?;
    if ws != 1 && ws != per {
        return Err(format!("{ws} weight scales for {per} channels"));
    }
    let bias = match n.input(8) {
        Some(b) if n.op == "QLinearConv" => {
            if elem(m, b)? != ElemType::I32 || count(m, n, 8)? != per {
                return Err("a bias that is not i32 per channel".into());
            }
            Some(Bind::Operand(8))
        }
        _ => None,
    };
    Ok(IntOut::Requantize {
        y: elem(m, result(n)?)?,
        scale_type,
        x_scale: Bind::Operand(1),
        w_scale: (Bind::Operand(4), ws > 1 && per > 1),
        y_scale: Bind::Operand(6),
        y_zp: zp_type(m, n, 7)?.map(|t| (Bind::Operand(7), t)),
        bias,
    })
}

/// QLinearConv (x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias)
/// and ConvInteger (x, w, x_zp, w_zp).
fn int_conv(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let q = n.op == "QLinearConv";
    let idx = if q { (0, 3, 2, 5) } else { (0, 1, 2, 3) };
    let xs = m.static_shape(operand(n, idx.0)?)?;
    let ws = m.static_shape(operand(n, idx.1)?)?;
    let ys = m.static_shape(result(n)?)?;
    let a = conv_attrs(n, &xs, &ws)?;
    let per = ws[0];
    let g = ConvGeom {
        x: xs,
        w: ws,
        y: ys,
        strides: a.strides,
        dilations: a.dilations,
        pads: a.pads,
        group: a.group,
    };
    quant::conv(n, &g, int_operands(m, n, idx, per)?, int_out(m, n, per)?)
}

/// QLinearMatMul (a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp) and
/// MatMulInteger (a, b, a_zp, b_zp).
fn int_matmul(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let q = n.op == "QLinearMatMul";
    let idx = if q { (0, 3, 2, 5) } else { (0, 1, 2, 3) };
    let a = m.static_shape(operand(n, idx.0)?)?;
    let b = m.static_shape(operand(n, idx.1)?)?;
    let per = *b.last().ok_or("a scalar operand")?;
    quant::matmul(
        n,
        &a,
        &b,
        &m.static_shape(result(n)?)?,
        int_operands(m, n, idx, per)?,
        int_out(m, n, per)?,
    )
}

/// Bytes per element of `v`, for the types the GPU moves.
fn bytes_of(m: &Module, v: ValueId) -> Result<usize, String> {
    let e = elem(m, v)?;
    movement::elem_bytes(e).ok_or_else(|| format!("{e} data does not move on the gpu"))
}

/// Reshape, Flatten, Squeeze, Unsqueeze, Identity, a Cast to the same
/// type: the bytes copied under the result's shape.
fn view(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    let y = result(n)?;
    let w = bytes_of(m, x)?;
    let total: usize = m.static_shape(y)?.iter().product();
    let side = |bind| movement::Side {
        bind,
        base: 0,
        strides: vec![1],
    };
    let d = movement::strided_copy(
        n,
        w,
        &[total],
        &side(Bind::Operand(0)),
        &side(Bind::Result(0)),
    )?;
    Ok(movement::copies(vec![d], "copy".into()))
}

/// The result, contiguous, walked in order with `src` read at each
/// element.
fn walk_into_result(
    m: &Module,
    n: &Node,
    ys: &[usize],
    src: &movement::Side,
    what: String,
) -> Result<GpuKernel, String> {
    let dst = movement::Side {
        bind: Bind::Result(0),
        base: 0,
        strides: movement::strides_of(ys),
    };
    let d = movement::strided_copy(n, bytes_of(m, operand(n, 0)?)?, ys, src, &dst)?;
    Ok(movement::copies(vec![d], what))
}

fn transpose(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    let xs = m.static_shape(x)?;
    let ys = m.static_shape(result(n)?)?;
    let r = xs.len();
    let perm: Vec<usize> = match n.attrs.get("perm").and_then(Attr::as_ints) {
        Some(p) => p
            .iter()
            .map(|&a| norm_axis(a, r))
            .collect::<Result<_, _>>()?,
        None => (0..r).rev().collect(),
    };
    let xst = movement::strides_of(&xs);
    let src = movement::Side {
        bind: Bind::Operand(0),
        base: 0,
        strides: perm.iter().map(|&p| xst[p]).collect(),
    };
    walk_into_result(m, n, &ys, &src, format!("transpose {perm:?}"))
}

fn slice(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    let xs = m.static_shape(x)?;
    let ys = m.static_shape(result(n)?)?;
    let r = xs.len();
    let starts = const_ints(m, n, 1)?.ok_or("no starts")?;
    let ends = const_ints(m, n, 2)?.ok_or("no ends")?;
    let axes = const_ints(m, n, 3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = const_ints(m, n, 4)?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err("starts, ends, axes and steps of different lengths".into());
    }
    let xst = movement::strides_of(&xs);
    let mut base = 0i64;
    let mut strides = xst.clone();
    for k in 0..starts.len() {
        let a = norm_axis(axes[k], r)?;
        let (first, count) =
            kiln_ir::ops::geometry::slice_range(starts[k], ends[k], steps[k], xs[a] as u64);
        if count as usize != ys[a] {
            return Err("slice extent differs from the result's".into());
        }
        base += first * xst[a];
        strides[a] = steps[k] * xst[a];
    }
    let src = movement::Side {
        bind: Bind::Operand(0),
        base,
        strides,
    };
    walk_into_result(m, n, &ys, &src, "slice".into())
}

fn expand(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    let xs = m.static_shape(x)?;
    let ys = m.static_shape(result(n)?)?;
    if xs.len() > ys.len() {
        return Err("Expand to a lower rank".into());
    }
    let off = ys.len() - xs.len();
    let xst = movement::strides_of(&xs);
    let strides: Vec<i64> = (0..ys.len())
        .map(|d| {
            if d < off || xs[d - off] == 1 {
                0
            } else {
                xst[d - off]
            }
        })
        .collect();
    let src = movement::Side {
        bind: Bind::Operand(0),
        base: 0,
        strides,
    };
    walk_into_result(m, n, &ys, &src, "expand".into())
}

fn concat(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let y = result(n)?;
    let ys = m.static_shape(y)?;
    let axis = norm_axis(
        n.attrs
            .get("axis")
            .and_then(Attr::as_int)
            .ok_or("no axis")?,
        ys.len(),
    )?;
    let yst = movement::strides_of(&ys);
    let w = bytes_of(m, y)?;
    if w < 4 {
        let parts = (0..n.inputs.len())
            .map(|i| Ok(m.static_shape(operand(n, i)?)?[axis]))
            .collect::<Result<Vec<usize>, String>>()?;
        return movement::packed_concat(n, w as u32, &ys, axis, &parts);
    }
    let mut at = 0i64;
    let mut ds = vec![];
    for i in 0..n.inputs.len() {
        let x = operand(n, i)?;
        let xs = m.static_shape(x)?;
        let src = movement::Side {
            bind: Bind::Operand(i),
            base: 0,
            strides: movement::strides_of(&xs),
        };
        let dst = movement::Side {
            bind: Bind::Result(0),
            base: at * yst[axis],
            strides: yst.clone(),
        };
        if xs.iter().product::<usize>() > 0 {
            ds.push(movement::strided_copy(n, w, &xs, &src, &dst)?);
        }
        at += xs[axis] as i64;
    }
    Ok(movement::copies(
        ds,
        format!("concat of {} on axis {axis}", n.inputs.len()),
    ))
}

fn split(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    let xs = m.static_shape(x)?;
    let axis = axis_attr(n, 0, xs.len())?;
    let xst = movement::strides_of(&xs);
    let w = bytes_of(m, x)?;
    let mut at = 0i64;
    let mut ds = vec![];
    for (j, &o) in n.outputs.iter().enumerate() {
        let os = m.static_shape(o)?;
        let src = movement::Side {
            bind: Bind::Operand(0),
            base: at * xst[axis],
            strides: xst.clone(),
        };
        let dst = movement::Side {
            bind: Bind::Result(j),
            base: 0,
            strides: movement::strides_of(&os),
        };
        if os.iter().product::<usize>() > 0 {
            ds.push(movement::strided_copy(n, w, &os, &src, &dst)?);
        }
        at += os[axis] as i64;
    }
    if at as usize != xs[axis] {
        return Err("split parts do not cover the axis".into());
    }
    Ok(movement::copies(
        ds,
        format!("split in {} on axis {axis}", n.outputs.len()),
    ))
}

/// InstanceNormalization (a group per channel) and GroupNormalization.
fn group_norm(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    all_f32(m, n)?;
    let g = crate::lower::common::group_norm_attrs(m, n)?;
    reduce::group_norm(n, &g.shape, g.groups, g.eps, g.per_group)
}

/// ConvTranspose: pads and output size by `kiln_ir::ops::geometry`'s
/// rule for transposed windows (the interpreter's).
fn conv_transpose(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    let w = operand(n, 1)?;
    for v in [x, w, result(n)?] {
        if elem(m, v)? != ElemType::F32 {
            return Err("ConvTranspose of non-f32 data".into());
        }
    }
    let (xs, ws, ys) = (
        m.static_shape(x)?,
        m.static_shape(w)?,
        m.static_shape(result(n)?)?,
    );
    let a = conv_transpose_attrs(n, &xs, &ws)?;
    if ys.get(2..) != Some(a.out_spatial.as_slice()) {
        return Err("output size differs from the result's".into());
    }
    dense::conv_transpose(
        n,
        &xs,
        &ws,
        &ys,
        &a.strides,
        &a.dilations,
        &a.pad_begin,
        a.group,
        n.input(2).is_some(),
    )
}

/// DepthToSpace (DCR or CRD) and SpaceToDepth: reshapes around a
/// transpose, so one strided walk over the result viewed in 6-D.
fn depth_space(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    let xs = m.static_shape(x)?;
    let ys = m.static_shape(result(n)?)?;
    let b = n
        .attrs
        .get("blocksize")
        .and_then(Attr::as_int)
        .ok_or("no blocksize")?;
    let b = usize::try_from(b).map_err(|e| e.to_string())?;
    if xs.len() != 4 || b == 0 {
        return Err("needs NCHW data and a block size".into());
    }
    let (nb, c, h, w) = (xs[0], xs[1], xs[2], xs[3]);
    // (the input viewed in 6-D, the permutation from it to the result's
    // 6-D view)
    let (view6, perm): (Vec<usize>, [usize; 6]) = if n.op == "DepthToSpace" {
        if c % (b * b) != 0 {
            return Err("channels not a multiple of blocksize²".into());
        }
        let cb = c / (b * b);
        match n.attrs.get("mode").and_then(Attr::as_str).unwrap_or("DCR") {
            "DCR" => (vec![nb, b, b, cb, h, w], [0, 3, 4, 1, 5, 2]),
            "CRD" => (vec![nb, cb, b, b, h, w], [0, 1, 4, 2, 5, 3]),
            other => return Err(format!("mode {other}")),
        }
    } else {
        if h % b != 0 || w % b != 0 {
            return Err("spatial dims not multiples of blocksize".into());
        }
        (vec![nb, c, h / b, b, w / b, b], [0, 3, 5, 1, 2, 4])
    };
    let st = movement::strides_of(&view6);
    let walk: Vec<usize> = perm.iter().map(|&p| view6[p]).collect();
    if walk.iter().product::<usize>() != ys.iter().product::<usize>() {
        return Err("depth/space result of another size".into());
    }
    let src = movement::Side {
        bind: Bind::Operand(0),
        base: 0,
        strides: perm.iter().map(|&p| st[p]).collect(),
    };
    walk_into_result(m, n, &walk, &src, format!("{} {b}", n.op))
}

fn gather(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    let ix = operand(n, 1)?;
    let xs = m.static_shape(x)?;
    if xs.is_empty() {
        return Err("Gather from a scalar".into());
    }
    let axis = axis_attr(n, 0, xs.len())?;
    let ni: usize = m.static_shape(ix)?.iter().product();
    let iw = match elem(m, ix)? {
        ElemType::I32 => 1,
        ElemType::I64 => 2,
        e => return Err(format!("Gather indices of {e}")),
    };
    // Constant indices are checked now: out of range is an error of the
    // model, which the interpreter reports.
    if let Some(d) = m.constant(ix) {
        let a = xs[axis] as i64;
        if d.to_i64_vec()
            .is_some_and(|v| v.iter().any(|&q| q < -a || q >= a))
        {
            return Err("constant index out of range".into());
        }
    }
    movement::gather(n, bytes_of(m, x)?, &xs, axis, ni, iw)
}

/// Resize: the interpreter's plan, tabulated per dim (identity dims
/// read straight through).
fn resize(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let (shape, plan) = resize_plan_of(m, n)?;
    let dims: Vec<movement::ResizeDim> =
        plan.taps
            .iter()
            .enumerate()
            .map(|(d, coords)| {
                let identity = plan.shape[d] == shape[d]
                    && coords.iter().enumerate().all(
                        |(o, c)| matches!(c.as_deref(), Some([(i, w)]) if *i == o && *w == 1.0),
                    );
                (!identity).then(|| {
                    coords
                        .iter()
                        .map(|c| {
                            c.as_ref()
                                .map(|t| t.iter().map(|&(i, w)| (i, w as f32)).collect())
                        })
                        .collect()
                })
            })
            .collect();
    movement::resize(n, &shape, &plan.shape, &dims, plan.extrapolation as f32)
}

/// LpPool and GlobalLpPool (`p` an integer attribute, 2 by default).
fn lp_pool(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    if elem(m, x)? != ElemType::F32 {
        return Err("pooling of non-f32".into());
    }
    let xs = m.static_shape(x)?;
    let ys = m.static_shape(result(n)?)?;
    let a = pool_window(n, &xs, n.op == "GlobalLpPool")?;
    let p = n.attrs.get("p").and_then(Attr::as_int).unwrap_or(2);
    if p < 1 {
        return Err(format!("p = {p}"));
    }
    dense::pool(
        n,
        PoolOp::Lp(p as f32),
        &xs,
        &ys,
        &a.kernel,
        &a.strides,
        &a.dilations,
        &a.pads,
    )
}

/// LayerNormalization with its Mean and InvStdDev results, or a scale
/// the plan does not take.
fn layer_norm(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    all_f32(m, n)?;
    let xs = m.static_shape(operand(n, 0)?)?;
    if xs.is_empty() {
        return Err("LayerNormalization of a scalar".into());
    }
    let axis = axis_attr(n, -1, xs.len())?;
    let rows: usize = xs[..axis].iter().product();
    let inner: usize = xs[axis..].iter().product();
    let len = |i: usize| -> Result<usize, String> {
        Ok(m.static_shape(operand(n, i)?)?.iter().product())
    };
    let scale = len(1)?;
    let bias = n.input(2).map(|_| len(2)).transpose()?;
    if [Some(scale), bias]
        .into_iter()
        .flatten()
        .any(|l| l != 1 && l != inner)
    {
        return Err("scale or bias that broadcasts inside the row".into());
    }
    let eps = n
        .attrs
        .get("epsilon")
        .and_then(Attr::as_float)
        .unwrap_or(1e-5);
    reduce::layer_norm(n, rows, inner, eps, scale, bias)
}

/// BatchNormalization in inference whose statistics are values.
fn batch_norm(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    if n.attrs
        .get("training_mode")
        .and_then(Attr::as_int)
        .unwrap_or(0)
        != 0
        || n.outputs.len() > 1
    {
        return Err("training-mode BatchNormalization".into());
    }
    let xs = m.static_shape(operand(n, 0)?)?;
    for i in 0..5 {
        let v = operand(n, i)?;
        if elem(m, v)? != ElemType::F32 {
            return Err("BatchNormalization of non-f32 data".into());
        }
        if i > 0 && m.static_shape(v)?.iter().product::<usize>() != xs.get(1).copied().unwrap_or(0)
        {
            return Err("statistics that are not one per channel".into());
        }
    }
    let eps = n
        .attrs
        .get("epsilon")
        .and_then(Attr::as_float)
        .unwrap_or(1e-5);
    reduce::batch_norm(n, &xs, eps)
}

/// MeanVarianceNormalization, Det and Range of f32 data.
fn f32_misc(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    all_f32(m, n)?;
    let xs = m.static_shape(operand(n, 0)?)?;
    let ys = m.static_shape(result(n)?)?;
    match n.op.as_str() {
        "MeanVarianceNormalization" => {
            let rank = xs.len();
            let axes: Vec<i64> = match n.attrs.get("axes").and_then(Attr::as_ints) {
                Some(a) => a.to_vec(),
                None => [0i64, 2, 3]
                    .into_iter()
                    .filter(|&a| (a as usize) < rank)
                    .collect(),
            };
            let mut reduced = vec![false; rank];
            for a in axes {
                reduced[norm_axis(a, rank)?] = true;
            }
            reduce::mvn(n, &xs, &reduced)
        }
        "Det" => {
            let r = xs.len();
            if r < 2 || xs[r - 1] != xs[r - 2] {
                return Err("Det of matrices that are not square".into());
            }
            reduce::det(n, xs[..r - 2].iter().product(), xs[r - 1])
        }
        _ => reduce::range(n, ys.iter().product()),
    }
}

fn deform_conv(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    all_f32(m, n)?;
    let (xs, ws) = (
        m.static_shape(operand(n, 0)?)?,
        m.static_shape(operand(n, 1)?)?,
    );
    let os = m.static_shape(operand(n, 2)?)?;
    let ys = m.static_shape(result(n)?)?;
    if xs.len() != 4 || ws.len() != 4 || os.len() != 4 || ys.len() != 4 {
        return Err("DeformConv of other than 2-D data".into());
    }
    let two = |k: &str, d: usize| -> Result<Vec<usize>, String> {
        let v = ints(n, k).unwrap_or_else(|| vec![d; 2]);
        if v.len() < 2 {
            return Err(format!("{k} of {} values", v.len()));
        }
        Ok(v)
    };
    let (st, dl, pd) = (two("strides", 1)?, two("dilations", 1)?, two("pads", 0)?);
    let int = |k: &str| n.attrs.get(k).and_then(Attr::as_int).unwrap_or(1).max(1) as usize;
    let k_n = ws[2] * ws[3];
    if os[0] != xs[0] || os[1] != int("offset_group") * 2 * k_n || ys[2] != os[2] || ys[3] != os[3]
    {
        return Err("offsets that do not fit".into());
    }
    if let Some(mk) = n.input(4) {
        if m.static_shape(mk)? != [xs[0], int("offset_group") * k_n, os[2], os[3]] {
            return Err("a mask that does not fit".into());
        }
    }
    dense::deform_conv(
        n,
        &xs,
        &ws,
        (os[2], os[3]),
        [st[0], st[1]],
        [dl[0], dl[1]],
        [pd[0], pd[1]],
        int("group"),
        int("offset_group"),
        n.input(3).is_some(),
        n.input(4).is_some(),
    )
}

fn one_hot(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let ix = operand(n, 0)?;
    let y = result(n)?;
    if elem(m, y)? != ElemType::F32 || elem(m, operand(n, 2)?)? != ElemType::F32 {
        return Err("OneHot of non-f32 values".into());
    }
    let is = m.static_shape(ix)?;
    let ys = m.static_shape(y)?;
    if ys.len() != is.len() + 1 {
        return Err("OneHot result of another rank".into());
    }
    let axis = axis_attr(n, -1, ys.len())?;
    movement::one_hot(n, &is, elem(m, ix)?, axis, ys[axis])
}

fn grid_sample(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    use movement::{GridMode, GridPadding};
    let (x, g) = (operand(n, 0)?, operand(n, 1)?);
    for v in [x, g, result(n)?] {
        if elem(m, v)? != ElemType::F32 {
            return Err("GridSample of non-f32 data".into());
        }
    }
    let (xs, gs) = (m.static_shape(x)?, m.static_shape(g)?);
    let r = xs.len();
    if r < 3 || gs.len() != r || gs[0] != xs[0] || gs[r - 1] != r - 2 {
        return Err(format!("input {xs:?} and grid {gs:?} do not fit"));
    }
    let mode = match n
        .attrs
        .get("mode")
        .and_then(Attr::as_str)
        .unwrap_or("linear")
    {
        "nearest" => GridMode::Nearest,
        "linear" | "bilinear" => GridMode::Linear,
        "cubic" | "bicubic" => GridMode::Cubic,
        other => return Err(format!("mode {other}")),
    };
    let padding = match n
        .attrs
        .get("padding_mode")
        .and_then(Attr::as_str)
        .unwrap_or("zeros")
    {
        "zeros" => GridPadding::Zeros,
        "border" => GridPadding::Border,
        "reflection" => GridPadding::Reflection,
        other => return Err(format!("padding_mode {other}")),
    };
    let align = n
        .attrs
        .get("align_corners")
        .and_then(Attr::as_int)
        .unwrap_or(0)
        != 0;
    let points: usize = gs[1..r - 1].iter().product();
    movement::grid_sample(n, &xs, points, mode, padding, align)
}

fn lrn(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    if elem(m, x)? != ElemType::F32 {
        return Err("LRN of non-f32 data".into());
    }
    let f = |k: &str, d: f32| n.attrs.get(k).and_then(Attr::as_float).unwrap_or(d);
    let size = n
        .attrs
        .get("size")
        .and_then(Attr::as_int)
        .ok_or("no size")?;
    let size = usize::try_from(size).map_err(|e| e.to_string())?;
    reduce::lrn(
        n,
        &m.static_shape(x)?,
        size,
        f("alpha", 1e-4),
        f("beta", 0.75),
        f("bias", 1.0),
    )
}

/// Hardmax: 1 at the first maximum along the axis, 0 elsewhere.
fn hardmax(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    if elem(m, x)? != ElemType::F32 {
        return Err("Hardmax of non-f32".into());
    }
    let xs = m.static_shape(x)?;
    if xs.is_empty() || xs.contains(&0) {
        return Err("Hardmax of an empty or scalar tensor".into());
    }
    let axis = axis_attr(n, -1, xs.len())?;
    reduce::hardmax(n, &xs, axis)
}

fn pool(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    if elem(m, x)? != ElemType::F32 {
        return Err("pooling of non-f32".into());
    }
    if n.outputs.len() > 1 {
        return Err("MaxPool with indices".into());
    }
    let xs = m.static_shape(x)?;
    let ys = m.static_shape(result(n)?)?;
    let (kind, a) = pool_attrs(n, &xs)?;
    let op = match kind {
        PoolKind::Max | PoolKind::GlobalMax => PoolOp::Max,
        PoolKind::Average { count_include_pad } => PoolOp::Average { count_include_pad },
        PoolKind::GlobalAverage => PoolOp::Average {
            count_include_pad: false,
        },
    };
    dense::pool(
        n,
        op,
        &xs,
        &ys,
        &a.kernel,
        &a.strides,
        &a.dilations,
        &a.pads,
    )
}

/// MatMul, Gemm, Conv or FusedConv `a` reading the given bindings for its
/// operands, storing its result as `store` says.
fn anchor(m: &Module, a: &Node, binds: &[Option<Bind>], store: Store) -> Result<GpuKernel, String> {
    // (`kiln.DequantMatMul`'s weights and zero point are integers.)
    let dequant = a.op == "kiln.DequantMatMul";
    for (i, v) in a.inputs.iter().enumerate() {
        if let Some(v) = v {
            if elem(m, *v)? != ElemType::F32 && !(dequant && (i == 1 || i == 3)) {
                return Err(format!("{} of non-f32 data", a.op));
            }
        }
    }
    if elem(m, result(a)?)? != ElemType::F32 {
        return Err(format!("{} of non-f32 data", a.op));
    }
    let shape = |i: usize| m.static_shape(operand(a, i)?);
    let b = |i: usize| binds.get(i).copied().flatten();
    let ys = m.static_shape(result(a)?)?;
    match a.op.as_str() {
        "kiln.DequantMatMul" => {
            let w = operand(a, 1)?;
            let split = param_split(m, a, w, operand(a, 2)?)?;
            let zp = match a.input(3) {
                Some(z) => Some((b(3).ok_or("no zero point")?, elem(m, z)?)),
                None => None,
            };
            let q = quant::QuantWeights {
                w: b(1).ok_or("no W")?,
                elem: elem(m, w)?,
                scale: b(2).ok_or("no scale")?,
                zp,
                split,
            };
            quant::dequant_matmul(
                a,
                &shape(0)?,
                &shape(1)?,
                &ys,
                b(0).ok_or("no A")?,
                q,
                store,
            )
        }
        "MatMul" => dense::matmul(
            a,
            &shape(0)?,
            &shape(1)?,
            &ys,
            [b(0).ok_or("no A")?, b(1).ok_or("no B")?],
            store,
        ),
        "Gemm" => {
            let f = |k: &str, d: f32| a.attrs.get(k).and_then(Attr::as_float).unwrap_or(d);
            let t = |k: &str| a.attrs.get(k).and_then(Attr::as_int).unwrap_or(0) != 0;
            let cs = match a.input(2) {
                Some(c) => Some(m.static_shape(c)?),
                None => None,
            };
            dense::gemm(
                a,
                &shape(0)?,
                &shape(1)?,
                cs.as_deref(),
                [b(0), b(1), b(2)],
                (t("transA"), t("transB")),
                f("alpha", 1.0),
                f("beta", 1.0),
                store,
            )
        }
        "Conv" | "kiln.FusedConv" => {
            let xs = shape(0)?;
            let ws = shape(1)?;
            let c = conv_attrs(a, &xs, &ws)?;
            let relu = match a.attrs.get("activation").and_then(Attr::as_str) {
                None | Some("") => false,
                Some("Relu") => true,
                Some(other) => return Err(format!("activation {other}")),
            };
            let g = ConvGeom {
                x: xs,
                w: ws,
                y: ys,
                strides: c.strides,
                dilations: c.dilations,
                pads: c.pads,
                group: c.group,
            };
            dense::conv(a, &g, [b(0), b(1), b(2), b(3)], relu, store)
        }
        op => Err(format!("{op} is not a matmul or conv")),
    }
}

/// `kiln.Fusion`: an anchor with its epilogue in the store, or the body as
/// one region kernel.
fn fusion_node(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let Some(Attr::Graph(body)) = n.attrs.get("body") else {
        return Err("fusion without a body".into());
    };
    let operand_of = |v: ValueId| body.inputs.iter().position(|&b| b == v);
    let first = body.nodes.first().ok_or("empty fusion body")?;
    let shapes: Vec<Vec<usize>> = n
        .inputs
        .iter()
        .map(|v| m.static_shape(v.ok_or("omitted fusion operand")?))
        .collect::<Result<_, _>>()?;
    if !matches!(
        first.op.as_str(),
        "MatMul" | "Gemm" | "Conv" | "kiln.FusedConv" | "kiln.DequantMatMul"
    ) {
        let binds: Vec<Bind> = (0..body.inputs.len()).map(Bind::Operand).collect();
        return fusion::region_kernel(m, n, body, &shapes, &binds)
            .or_else(|why| split_reduction(m, n, body, &shapes).map_err(|_| why))
            .or_else(|why| typed::typed_region(m, n, body, &binds).map_err(|_| why));
    }
    // The anchor reads body inputs only; its kernel binds the node's
    // operands behind them.
    let anchor_binds: Vec<Option<Bind>> = first
        .inputs
        .iter()
        .map(|v| {
            v.map(|v| {
                operand_of(v)
                    .map(Bind::Operand)
                    .ok_or("anchor reads a value of its body")
            })
            .transpose()
        })
        .collect::<Result<_, _>>()?;
    // The anchor as a node of the outer module (its operands the node's).
    let mut outer = first.clone();
    for v in outer.inputs.iter_mut().flatten() {
        *v = n.inputs[operand_of(*v).unwrap_or(0)].ok_or("omitted fusion operand")?;
    }
    let anchor_out = result(first)?;
    let tail = &body.nodes[1..];
    if tail.is_empty() {
        let mut k = anchor(m, &outer, &anchor_binds, Store::To(Bind::Result(0)))?;
        k.describe.push_str(" (alone)");
        return Ok(k);
    }
    // The epilogue region: the anchor's result, then the body inputs the
    // tail reads.
    let mut used: Vec<ValueId> = tail
        .iter()
        .flat_map(|x| x.inputs.iter().flatten().copied())
        .collect();
    used.extend(&body.outputs);
    let mut inputs = vec![anchor_out];
    let mut in_shapes = vec![m.static_shape(anchor_out)?];
    let mut binds = vec![Bind::Result(0)];
    for (k, &bv) in body.inputs.iter().enumerate() {
        if used.contains(&bv) {
            inputs.push(bv);
            in_shapes.push(shapes[k].clone());
            binds.push(Bind::Operand(k));
        }
    }
    let region = Region {
        inputs,
        constants: body.constants.clone(),
        nodes: tail.to_vec(),
        outputs: body.outputs.clone(),
    };
    let epi = Epilogue {
        m,
        region: &region,
        shapes: &in_shapes,
        binds: &binds,
        anchor_input: 0,
    };
    match anchor(m, &outer, &anchor_binds, Store::Epilogue(&epi)) {
        Ok(k) => Ok(k),
        // An epilogue that broadcasts the anchor's result to a larger
        // shape (a squeeze-excite scale times its feature map) or makes
        // several results: the anchor into scratch, then the region as a
        // second shader reading it.
        Err(e) if e.starts_with("unsupported: an epilogue") => {
            let mut first = anchor(m, &outer, &anchor_binds, Store::To(Bind::Scratch(0)))?;
            let mut binds = binds.clone();
            binds[0] = Bind::Scratch(0);
            let second = fusion::region_kernel(m, n, &region, &in_shapes, &binds)?;
            first
                .scratch
                .push(4 * in_shapes[0].iter().product::<usize>() as u64);
            Ok(then(first, second))
        }
        Err(e) => Err(e),
    }
}

/// `a` then `b`, one step: `b`'s own data renumbered after `a`'s; its
/// scratch bindings name `a`'s scratch (the buffers `a` fills for it).
fn then(mut a: GpuKernel, b: GpuKernel) -> GpuKernel {
    let shift = a.data.len();
    a.describe = format!("{} then {}", a.describe, b.describe);
    a.dispatches.extend(b.dispatches.into_iter().map(|mut d| {
        for bind in &mut d.bindings {
            if let Bind::Data(k) = bind {
                *k += shift;
            }
        }
        d
    }));
    a.data.extend(b.data);
    a.flops += b.flops;
    a
}

/// A reduction fusion the row kernels cannot express (a sum over a middle
/// axis: mean pooling over a sequence): its elementwise producers as one
/// shader into scratch, then the reduction over any axes reading it.
fn split_reduction(
    m: &Module,
    n: &Node,
    body: &Region,
    shapes: &[Vec<usize>],
) -> Result<GpuKernel, String> {
    let (last, producers) = body.nodes.split_last().ok_or("empty body")?;
    let x = operand(last, 0)?;
    if producers.is_empty()
        || ReduceOp::of_onnx(&last.op).is_none()
        || body.outputs != last.outputs
        || body.inputs.contains(&x)
    {
        return Err("not a producers + reduction region".into());
    }
    let prefix = Region {
        inputs: body.inputs.clone(),
        constants: body.constants.clone(),
        nodes: producers.to_vec(),
        outputs: vec![x],
    };
    let binds: Vec<Bind> = (0..body.inputs.len()).map(Bind::Operand).collect();
    let mut first = fusion::region_kernel_to(m, n, &prefix, shapes, &binds, &[Bind::Scratch(0)])?;
    let xs = m.static_shape(x)?;
    first.scratch.push(4 * xs.iter().product::<usize>() as u64);
    let second = reduce_node(m, last, Bind::Scratch(0))?;
    Ok(then(first, second))
}

/// The reduced dims of a Reduce node over `rank` dims (constant axes,
/// from its operand or attribute; none means all, or none at all with
/// `noop_with_empty_axes`, then `None`).
fn reduced_dims(m: &Module, n: &Node, rank: usize) -> Result<Option<Vec<bool>>, String> {
    let axes = match const_ints(m, n, 1)? {
        Some(a) => a,
        None => n
            .attrs
            .get("axes")
            .and_then(Attr::as_ints)
            .map(|a| a.to_vec())
            .unwrap_or_default(),
    };
    let mut dims = vec![axes.is_empty(); rank];
    if axes.is_empty()
        && n.attrs
            .get("noop_with_empty_axes")
            .and_then(Attr::as_int)
            .unwrap_or(0)
            != 0
    {
        return Ok(None);
    }
    for a in axes {
        dims[norm_axis(a, rank)?] = true;
    }
    Ok(Some(dims))
}

/// A Reduce node over any constant axes of f32 data read from `src`.
fn reduce_node(m: &Module, n: &Node, src: Bind) -> Result<GpuKernel, String> {
    let op = ReduceOp::of_onnx(&n.op).ok_or("not a reduction")?;
    let x = operand(n, 0)?;
    if elem(m, x)? != ElemType::F32 || elem(m, result(n)?)? != ElemType::F32 {
        return Err(format!("{} of non-f32 data", n.op));
    }
    let xs = m.static_shape(x)?;
    match reduced_dims(m, n, xs.len())? {
        Some(dims) => reduce::reduce(n, op, &xs, &dims, src),
        // `noop_with_empty_axes` and no axes: the identity (a sum of each
        // element alone), except that ReduceSumSquare squares, as its
        // reference (and the interpreter) does.
        None => {
            let op = if op == ReduceOp::SumSquare {
                op
            } else {
                ReduceOp::Sum
            };
            reduce::reduce(n, op, &xs, &vec![false; xs.len()], src)
        }
    }
}

fn softmax(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    if elem(m, x)? != ElemType::F32 {
        return Err("softmax of non-f32".into());
    }
    let xs = m.static_shape(x)?;
    if xs.is_empty() {
        return Err("softmax of a scalar".into());
    }
    let axis = axis_attr(n, -1, xs.len())?;
    reduce::softmax_axis(n, &xs, axis, n.op == "LogSoftmax")
}

fn arg_extreme(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let x = operand(n, 0)?;
    if elem(m, x)? != ElemType::F32 {
        return Err(format!("{} of non-f32 data", n.op));
    }
    let xs = m.static_shape(x)?;
    if xs.is_empty() || xs.contains(&0) {
        return Err(format!("{} of an empty or scalar tensor", n.op));
    }
    let axis = axis_attr(n, 0, xs.len())?;
    let last = n
        .attrs
        .get("select_last_index")
        .and_then(Attr::as_int)
        .unwrap_or(0)
        != 0;
    reduce::arg_extreme(n, &xs, axis, n.op == "ArgMax", last)
}

/// A lone node the fusion plan can express (Relu, Softmax, ReduceSum,
/// ...), as a one-node region.
fn single_node(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let OneNode {
        region,
        shapes,
        operands,
    } = one_node_region(m, n)?;
    let binds: Vec<Bind> = operands.into_iter().map(Bind::Operand).collect();
    fusion::region_kernel(m, n, &region, &shapes, &binds)
}

/// A lone node of mixed element types (a comparison, `Where`, logic, a
/// cast, integer arithmetic) as a one-node typed region.
fn typed_single(m: &Module, n: &Node) -> Result<GpuKernel, String> {
    let OneNode {
        region, operands, ..
    } = one_node_region(m, n)?;
    let binds: Vec<Bind> = operands.into_iter().map(Bind::Operand).collect();
    typed::typed_region(m, n, &region, &binds)
}

/// Every shader the gpu lowering makes for `m` (specialized, through the
/// gpu pipeline), without a device: what the naga tests validate.
pub fn shaders(m: &Module) -> Vec<(String, Result<Vec<String>, String>)> {
    let mut out = vec![];
    for n in &m.body.nodes {
        let r = kernel_for(m, n).map(|k| k.dispatches.into_iter().map(|d| d.wgsl).collect());
        out.push((n.describe(), r));
    }
    out
}
