//! What every backend's lowering reads the same way: integer lists,
//! explicit pads (`auto_pad` resolved by `kiln_ir::ops::geometry`), a
//! convolution's and a pooling window's geometry, and a lone node as a
//! closed one-node region for the fusion code generators.

use kiln_ir::ElemType;
use kiln_ir::{Attr, Module, Node, Region};
use kiln_runtime::cpu::kernels::{ConvAttrs, ConvTransposeAttrs, PoolAttrs, PoolKind};
use kiln_runtime::cpu::rnn::{Cell, Recurrent};

/// A conv's `group` attribute (1 when absent).
pub(crate) fn group(n: &Node) -> usize {
    n.attrs
        .get("group")
        .and_then(Attr::as_int)
        .unwrap_or(1)
        .max(1) as usize
}

pub(crate) fn ints(n: &Node, name: &str) -> Option<Vec<usize>> {
    n.attrs
        .get(name)
        .and_then(Attr::as_ints)
        .map(|v| v.iter().map(|&x| x.max(0) as usize).collect())
}

/// Explicit pads (begins then ends), `auto_pad` resolved by ONNX's rule
/// ([`kiln_ir::ops::geometry`], the one place that knows it).
pub(crate) fn resolve_pads(
    n: &Node,
    spatial: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
) -> Result<Vec<usize>, String> {
    use kiln_ir::ops::geometry::{self, AutoPad, Window};
    let r = spatial.len();
    let auto = AutoPad::parse(n.attrs.get("auto_pad").and_then(Attr::as_str))?;
    let given: Vec<i64> = match n.attrs.get("pads").and_then(Attr::as_ints) {
        Some(p) if p.len() == 2 * r => p.to_vec(),
        Some(p) => return Err(format!("pads {p:?} for {r} spatial axes")),
        None => vec![0; 2 * r],
    };
    let mut pads = vec![0; 2 * r];
    for i in 0..r {
        let w = Window::new(kernel[i] as u64, strides[i] as u64, dilations[i] as u64);
        let [b, e] = geometry::resolve_pads(auto, spatial[i] as u64, w, [given[i], given[i + r]]);
        if b < 0 || e < 0 {
            return Err(format!("negative pads {given:?}"));
        }
        (pads[i], pads[i + r]) = (b as usize, e as usize);
    }
    Ok(pads)
}

/// A Conv's (or FusedConv's) attributes for the kernel library, pads
/// resolved, for an input of shape `x` and weights of shape `w`.
pub(crate) fn conv_attrs(n: &Node, x: &[usize], w: &[usize]) -> Result<ConvAttrs, String> {
    if x.len() < 3 || w.len() != x.len() {
        return Err("conv needs N, C and spatial dims".into());
    }
    let r = x.len() - 2;
    let kernel = &w[2..];
    let strides = ints(n, "strides").unwrap_or_else(|| vec![1; r]);
    let dilations = ints(n, "dilations").unwrap_or_else(|| vec![1; r]);
    if strides.len() != r || dilations.len() != r {
        return Err("strides/dilations rank".into());
    }
    let pads = resolve_pads(n, &x[2..], kernel, &strides, &dilations)?;
    let group = group(n);
    Ok(ConvAttrs {
        strides,
        dilations,
        pads,
        group,
    })
}

/// A ConvTranspose's geometry for input shape `x` and weights `w`: per
/// spatial axis its stride, dilation, the pad cut from the beginning and
/// the output extent, by ONNX's rule for transposed windows
/// ([`kiln_ir::ops::geometry::Transposed`], the interpreter's).
pub(crate) fn conv_transpose_attrs(
    n: &Node,
    x: &[usize],
    w: &[usize],
) -> Result<ConvTransposeAttrs, String> {
    use kiln_ir::ops::geometry::{AutoPad, Transposed, Window};
    if x.len() < 3 || w.len() != x.len() {
        return Err("ConvTranspose needs N, C and spatial dims".into());
    }
    let r = x.len() - 2;
    let list = |name: &str, d: usize| ints(n, name).unwrap_or_else(|| vec![d; r]);
    let (strides, dilations, opad) = (
        list("strides", 1),
        list("dilations", 1),
        list("output_padding", 0),
    );
    let pads: Option<Vec<i64>> = n
        .attrs
        .get("pads")
        .and_then(Attr::as_ints)
        .filter(|p| !p.is_empty())
        .map(|p| p.to_vec());
    let out_attr: Option<Vec<i64>> = n
        .attrs
        .get("output_shape")
        .and_then(Attr::as_ints)
        .map(|v| v[v.len().saturating_sub(r)..].to_vec());
    if strides.len() != r
        || dilations.len() != r
        || opad.len() != r
        || pads.as_ref().is_some_and(|p| p.len() != 2 * r)
        || out_attr.as_ref().is_some_and(|o| o.len() != r)
    {
        return Err("ConvTranspose attributes of another rank".into());
    }
    let auto_pad = AutoPad::parse(n.attrs.get("auto_pad").and_then(Attr::as_str))?;
    let (mut pad_begin, mut out_spatial) = (vec![0i64; r], vec![0usize; r]);
    for i in 0..r {
        let axis = Transposed {
            auto_pad,
            window: Window::new(w[2 + i] as u64, strides[i] as u64, dilations[i] as u64),
            pads: pads.as_ref().map(|p| [p[i], p[i + r]]),
            output_padding: opad[i] as u64,
            output_shape: out_attr
                .as_ref()
                .and_then(|v| v.get(i))
                .map(|&o| o.max(0) as u64),
        };
        pad_begin[i] = axis.resolve_pads(x[2 + i] as u64)[0];
        out_spatial[i] = usize::try_from(axis.output_size(x[2 + i] as u64))
            .map_err(|_| "ConvTranspose output too large")?;
    }
    let group = group(n);
    Ok(ConvTransposeAttrs {
        strides,
        dilations,
        pad_begin,
        out_spatial,
        group,
    })
}

/// A pooling node's kind and window (pads resolved), for an input of
/// shape `xs` (N, C, spatial...); the forms no kernel follows are refused.
pub(crate) fn pool_attrs(n: &Node, xs: &[usize]) -> Result<(PoolKind, PoolAttrs), String> {
    if xs.len() < 3 {
        return Err("pooling needs spatial dims".into());
    }
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
    Ok((kind, pool_window(n, xs, global)?))
}

/// A pooling node's window over an input of shape `xs`: the whole map for
/// a global pool, else its attributes with pads resolved.
pub(crate) fn pool_window(n: &Node, xs: &[usize], global: bool) -> Result<PoolAttrs, String> {
    if xs.len() < 3 {
        return Err("pooling needs spatial dims".into());
    }
    let r = xs.len() - 2;
    let ceil_mode = n.attrs.get("ceil_mode").and_then(Attr::as_int).unwrap_or(0) != 0;
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
    Ok(PoolAttrs {
        kernel,
        strides,
        dilations,
        pads,
        ceil_mode,
    })
}

/// A lone node as a closed region the fusion code generators compile: its
/// non-constant operands become the region's inputs (each once), its
/// constant operands (bounds, exponents, axes, constant tensors) stay
/// constants the plan embeds.
pub(crate) fn one_node_region(m: &Module, n: &Node) -> Result<OneNode, String> {
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
            if !constants.contains(&v) {
                constants.push(v);
            }
        } else if !inputs.contains(&v) {
            inputs.push(v);
            shapes.push(m.static_shape(v)?);
            operands.push(k);
        }
    }
    let region = Region {
        inputs,
        constants,
        nodes: vec![n.clone()],
        outputs: n.outputs.clone(),
    };
    Ok(OneNode {
        region,
        shapes,
        operands,
    })
}

/// A lone node as a region: the region, its input shapes, and the node
/// operand behind each region input.
pub(crate) struct OneNode {
    pub region: Region,
    pub shapes: Vec<Vec<usize>>,
    pub operands: Vec<usize>,
}

/// A Resize of f32 data planned by the interpreter's rules (constant
/// roi/scales/sizes): the input shape and the plan, checked against the
/// result's shape.
pub(crate) fn resize_plan_of(
    m: &Module,
    n: &Node,
) -> Result<
    (
        Vec<usize>,
        kiln_runtime::interp::kernels::movement::resample::ResizePlan,
    ),
    String,
> {
    use kiln_runtime::interp::kernels::movement::resample::resize_plan;
    use kiln_runtime::interp::kernels::KernelError;
    let x = n.input(0).ok_or("no operand")?;
    if m.ty(x).as_tensor().map(|t| t.elem) != Some(kiln_ir::ElemType::F32) {
        return Err("resize of non-f32".into());
    }
    let shape = m.static_shape(x)?;
    let out = m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let operand = |i: usize| -> Result<Option<std::sync::Arc<kiln_ir::TensorData>>, String> {
        match n.input(i) {
            None => Ok(None),
            Some(v) => match m.constant(v) {
                Some(d) if d.numel() == 0 => Ok(None),
                Some(d) => Ok(Some(d.clone())),
                None => Err(format!("operand {i} is not constant")),
            },
        }
    };
    let f64s = |i| -> Result<Option<Vec<f64>>, String> {
        operand(i)?
            .map(|d| {
                d.to_f64_vec()
                    .ok_or_else(|| format!("operand {i} is not numeric"))
            })
            .transpose()
    };
    let sizes = operand(3)?
        .map(|d| d.to_i64_vec().ok_or("sizes are not integers"))
        .transpose()?;
    let plan = resize_plan(n, &shape, f64s(1)?, f64s(2)?, sizes).map_err(|e| match e {
        KernelError::Msg(m) => m,
        KernelError::Nested(e) => e.to_string(),
    })?;
    if plan.shape != out {
        return Err(format!(
            "resizes to {:?}, the result is {out:?}",
            plan.shape
        ));
    }
    Ok((shape, plan))
}

/// A recurrent node (`RNN`, `GRU`, `LSTM`) in the common form both
/// backends run natively: default activations, no clip, no coupled gates,
/// no peepholes, every sequence full length, f32, static shapes; anything
/// else is refused (the interpreter's driver covers it all).
pub(crate) fn recurrent_layer(m: &Module, n: &Node) -> Result<Recurrent, String> {
    let int = |k: &str| n.attrs.get(k).and_then(Attr::as_int).unwrap_or(0);
    for a in ["activations", "activation_alpha", "activation_beta", "clip"] {
        if n.attrs.contains_key(a) {
            return Err(format!("attribute {a}"));
        }
    }
    if int("input_forget") != 0 {
        return Err("coupled input and forget gates".into());
    }
    if n.input(4).is_some() {
        return Err("sequence_lens given".into());
    }
    let quantized = n.op == "kiln.DequantLSTM";
    if (n.op == "LSTM" || quantized) && n.input(7).is_some() {
        return Err("peepholes".into());
    }
    let cell = match n.op.as_str() {
        "RNN" => Cell::Rnn,
        "GRU" => Cell::Gru {
            linear_before_reset: int("linear_before_reset") != 0,
        },
        "LSTM" | "kiln.DequantLSTM" => Cell::Lstm,
        op => return Err(format!("not a recurrent op: {op}")),
    };
    // Every value f32 but a kiln.DequantLSTM's 8-bit weights and their
    // parameters (operands 1, 2 and 8 on).
    let f32_operands = n
        .inputs
        .iter()
        .enumerate()
        .filter(|&(k, _)| !quantized || !(k == 1 || k == 2 || k >= 8))
        .filter_map(|(_, v)| *v);
    for v in f32_operands.chain(n.outputs.iter().copied()) {
        if m.ty(v).as_tensor().map(|t| t.elem) != Some(ElemType::F32) {
            return Err("not f32".into());
        }
    }
    let x = m.static_shape(n.input(0).ok_or("no X")?)?;
    let w = m.static_shape(n.input(1).ok_or("no W")?)?;
    let batch_major = int("layout") != 0;
    let (direction, dirs) = match n.attrs.get("direction").and_then(Attr::as_str) {
        None | Some("forward") => ("forward", 1),
        Some("reverse") => ("reverse", 1),
        Some("bidirectional") => ("bidirectional", 2),
        Some(d) => return Err(format!("direction {d}")),
    };
    let (&[a0, a1, input], &[wd, wg, wi]) = (&x[..], &w[..]) else {
        return Err("X and W must have rank 3".into());
    };
    let (seq, batch) = if batch_major { (a1, a0) } else { (a0, a1) };
    let g = match cell {
        Cell::Rnn => 1,
        Cell::Gru { .. } => 3,
        Cell::Lstm => 4,
    };
    if wd != dirs || wi != input || wg % g != 0 {
        return Err(format!("W {w:?} does not fit X {x:?}"));
    }
    for v in n.outputs.iter() {
        m.static_shape(*v)?;
    }
    let layer = Recurrent {
        cell,
        seq,
        batch,
        input,
        hidden: wg / g,
        dirs,
        reverse: direction == "reverse",
        batch_major,
    };
    Ok(layer)
}

/// Sizes are static once a module is specialized: a value past the limits
/// is an error when compiling, not an allocation failure (an abort) when
/// it runs.
pub(crate) fn check_static_sizes(s: &Module, limits: &kiln_ir::Limits) -> Result<(), String> {
    for n in &s.body.nodes {
        for &o in &n.outputs {
            let (Some(t), Ok(shape)) = (s.ty(o).as_tensor(), s.static_shape(o)) else {
                continue;
            };
            let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
            limits
                .tensor(|| format!("%{} ({})", s.name(o), n.op), t.elem, &dims)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// An InstanceNormalization (a group per channel) or GroupNormalization
/// over f32 data of static shape `[N, C, ...]`: its groups, epsilon, and
/// whether scale and bias come per group (GroupNormalization-18's form,
/// where import could not convert them) rather than per channel.
pub(crate) struct GroupNorm {
    pub shape: Vec<usize>,
    pub groups: usize,
    pub eps: f32,
    pub per_group: bool,
}

pub(crate) fn group_norm_attrs(m: &Module, n: &Node) -> Result<GroupNorm, String> {
    let operand = |i: usize| n.input(i).ok_or_else(|| format!("no operand {i}"));
    let shape = m.static_shape(operand(0)?)?;
    if shape.len() < 2 {
        return Err("needs N and C dims".into());
    }
    let params: usize = m.static_shape(operand(1)?)?.iter().product();
    let bias: usize = m.static_shape(operand(2)?)?.iter().product();
    let eps = n
        .attrs
        .get("epsilon")
        .and_then(Attr::as_float)
        .unwrap_or(1e-5);
    let groups = if n.op == "InstanceNormalization" {
        shape[1]
    } else {
        let g = n
            .attrs
            .get("num_groups")
            .and_then(Attr::as_int)
            .ok_or("no num_groups")?;
        usize::try_from(g).map_err(|e| e.to_string())?
    };
    if groups == 0 || shape[1] % groups != 0 {
        return Err(format!("{} channels in {groups} groups", shape[1]));
    }
    if params != bias || (params != shape[1] && params != groups) {
        return Err(format!("scale of {params} and bias of {bias} values"));
    }
    Ok(GroupNorm {
        per_group: params != shape[1],
        shape,
        groups,
        eps,
    })
}
