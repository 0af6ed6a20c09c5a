//! Planning the data-movement and reduction steps: check the node's
//! element types and attributes, compute the static shapes, and build the
//! runtime's step ([`kiln_runtime::cpu::steps::movement`]).

use kiln_ir::{Attr, Module, Node, ValueId};
use kiln_runtime::cpu::steps::movement::{
    ArgBest, CastAny, CastToF32, Concat, CumSum, Expand, Fill, Gather, GatherElements, GatherNd,
    GroupNorm, IntReduce, NonZero, OneHot, Pad, Reduce, Reshape, Resize, RoiAlign, ScatterElements,
    ScatterNd, Slice, SoftmaxAxis, Split, TensorScatter, Tile, TopK, Transpose, Trilu,
};
use kiln_runtime::cpu::NativeStep;

pub(super) fn reshape(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let out = n.outputs.first().ok_or("no result")?;
    let x = n.input(0).ok_or("no operand")?;
    let (elem_in, elem_out) = (
        m.ty(x).as_tensor().map(|t| t.elem),
        m.ty(*out).as_tensor().map(|t| t.elem),
    );
    if elem_in != elem_out {
        return Err("element types differ".into());
    }
    match elem_out {
        Some(e) if kiln_runtime::cpu::view::is_viewable(e) => {}
        _ => return Err(format!("no native copy of {elem_out:?}")),
    }
    m.static_shape(*out)?;
    // A view where the memory plan put the result on its operand's
    // bytes, else a copy: the profile's GB/s say which.
    Ok(NativeStep::new(Box::new(Reshape), n.op.clone(), 0.0))
}

/// Dropout whose `training_mode` is absent or a constant false: the
/// identity, its mask all true.
pub(super) fn dropout(m: &Module, n: &Node) -> Result<NativeStep, String> {
    if let Some(t) = n.input(2) {
        let off = m
            .constant(t)
            .and_then(|d| d.to_i64_vec())
            .is_some_and(|v| v.iter().all(|&v| v == 0));
        if !off {
            return Err("Dropout in training mode (random masks)".into());
        }
    }
    let x = n.input(0).ok_or("no operand")?;
    let out = *n.outputs.first().ok_or("no result")?;
    if elem_of(m, x) != elem_of(m, out)
        || !elem_of(m, x).is_some_and(kiln_runtime::cpu::view::is_viewable)
    {
        return Err("Dropout of other than one viewable type".into());
    }
    for &v in &n.outputs {
        m.static_shape(v)?;
    }
    Ok(NativeStep::new(
        Box::new(kiln_runtime::cpu::steps::movement::InferenceDropout),
        "Dropout (inference: a copy)",
        0.0,
    ))
}

fn movable_elem(m: &Module, v: ValueId) -> Result<(), String> {
    match m.ty(v).as_tensor().map(|t| t.elem) {
        Some(
            kiln_ir::ElemType::F32
            | kiln_ir::ElemType::I64
            | kiln_ir::ElemType::I32
            | kiln_ir::ElemType::U8
            | kiln_ir::ElemType::I8
            | kiln_ir::ElemType::Bool,
        ) => Ok(()),
        Some(e) => Err(format!("no native movement of {e}")),
        None => Err("not a tensor".into()),
    }
}

pub(super) fn transpose(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    let r = shape.len();
    let perm: Vec<usize> = match n.attrs.get("perm").and_then(kiln_ir::Attr::as_ints) {
        Some(p) => p
            .iter()
            .map(|&a| usize::try_from(a).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
        None => (0..r).rev().collect(),
    };
    let mut seen = vec![false; r];
    if perm.len() != r
        || perm
            .iter()
            .any(|&a| a >= r || std::mem::replace(&mut seen[a], true))
    {
        return Err(format!("perm {perm:?} is not a permutation of {r} axes"));
    }
    m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let what = format!("Transpose {perm:?}");
    Ok(NativeStep::new(
        Box::new(Transpose { shape, perm }),
        what,
        0.0,
    ))
}

/// The node's `axis` attribute (default 0), made non-negative for rank `r`.
fn axis_attr(n: &Node, r: i64) -> Result<usize, String> {
    let axis = n
        .attrs
        .get("axis")
        .and_then(kiln_ir::Attr::as_int)
        .unwrap_or(0);
    let axis = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&axis) {
        return Err(format!("axis {axis} out of range"));
    }
    Ok(axis as usize)
}

pub(super) fn gather(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no data operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    let r = shape.len() as i64;
    let a = axis_attr(n, r)?;
    m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let k = Gather {
        outer: shape[..a].iter().product(),
        rows: shape[a],
        row_len: shape[a + 1..].iter().product(),
    };
    Ok(NativeStep::new(
        Box::new(k),
        format!("Gather axis {a}"),
        0.0,
    ))
}

/// Slice with constant starts, ends, axes and steps: per axis the first
/// index and step by ONNX's clamping rule
/// ([`kiln_ir::ops::geometry::slice_range`], as inference and the
/// interpreter), then a strided copy.
pub(super) fn slice(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    let out = m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let ints = |i: usize| -> Result<Option<Vec<i64>>, String> {
        n.input(i)
            .map(|v| {
                m.constant(v)
                    .and_then(|d| d.to_i64_vec())
                    .ok_or_else(|| format!("operand {i} is not constant"))
            })
            .transpose()
    };
    let starts = ints(1)?.ok_or("no starts")?;
    let ends = ints(2)?.ok_or("no ends")?;
    let k = starts.len();
    let axes = ints(3)?.unwrap_or_else(|| (0..k as i64).collect());
    let steps = ints(4)?.unwrap_or_else(|| vec![1; k]);
    if ends.len() != k || axes.len() != k || steps.len() != k {
        return Err("starts, ends, axes and steps differ in length".into());
    }
    let r = shape.len();
    let (mut first, mut step, mut got) = (vec![0usize; r], vec![1isize; r], shape.clone());
    for j in 0..k {
        let a = if axes[j] < 0 {
            axes[j] + r as i64
        } else {
            axes[j]
        };
        let a = usize::try_from(a)
            .ok()
            .filter(|&a| a < r)
            .ok_or_else(|| format!("axis {} out of range", axes[j]))?;
        if steps[j] == 0 {
            return Err("step 0".into());
        }
        let (b, len) =
            kiln_ir::ops::geometry::slice_range(starts[j], ends[j], steps[j], shape[a] as u64);
        got[a] = len as usize;
        // With fewer than two results the step is never applied (and may
        // be i64::MIN); with two or more, |step| < the axis size.
        step[a] = if len >= 2 { steps[j] as isize } else { 1 };
        first[a] = if len == 0 { 0 } else { b as usize };
    }
    if got != out {
        return Err(format!("slices to {got:?}, the result is {out:?}"));
    }
    let block = view_block(&shape, &first, &out, &step);
    Ok(NativeStep::new(
        Box::new(Slice {
            shape,
            first,
            step,
            out,
            block,
        }),
        "Slice",
        0.0,
    ))
}

/// Pad with constant pads (and axes, and fill value, when given), in any
/// mode: a table per axis of where each result element reads.
pub(super) fn pad(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    let out = m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let r = shape.len();
    let constant = |i: usize| -> Result<Option<&kiln_ir::TensorData>, String> {
        n.input(i)
            .map(|v| {
                m.constant(v)
                    .map(|d| &**d)
                    .ok_or(format!("operand {i} is not constant"))
            })
            .transpose()
    };
    let pads = constant(1)?
        .and_then(|d| d.to_i64_vec())
        .ok_or("no constant pads")?;
    let fill = match constant(2)? {
        None => 0.0,
        Some(d) if d.numel() == 0 => 0.0,
        Some(d) => *d
            .to_f64_vec()
            .ok_or("fill value")?
            .first()
            .ok_or("fill value")?,
    };
    if fill.abs() > 9_007_199_254_740_992.0 {
        return Err("fill value beyond 2^53".into());
    }
    let axes: Vec<usize> = match constant(3)? {
        None => (0..r).collect(),
        Some(d) => d
            .to_i64_vec()
            .ok_or("axes")?
            .iter()
            .map(|&a| {
                let a = if a < 0 { a + r as i64 } else { a };
                usize::try_from(a)
                    .ok()
                    .filter(|&a| a < r)
                    .ok_or(format!("axis {a}"))
            })
            .collect::<Result<_, _>>()?,
    };
    if pads.len() != 2 * axes.len() {
        return Err(format!("{} pads for {} axes", pads.len(), axes.len()));
    }
    let mode = n.attr("mode").and_then(Attr::as_str).unwrap_or("constant");
    let mut begin = vec![0i64; r];
    for (k, &a) in axes.iter().enumerate() {
        begin[a] = pads[k];
    }
    let mut src = Vec::with_capacity(r);
    for d in 0..r {
        let table = (0..out[d])
            .map(|o| {
                let s =
                    kiln_ir::ops::geometry::pad_source(mode, o as i64 - begin[d], shape[d] as i64)?;
                Ok(s.map(|s| s as usize))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if mode != "constant" && shape[d] == 0 && out[d] > 0 {
            return Err(format!("cannot pad an empty axis in {mode} mode"));
        }
        src.push(table);
    }
    let mut step = NativeStep::new(
        Box::new(Pad { shape, src, fill }),
        format!("Pad {mode}"),
        0.0,
    );
    step.captured = (1..n.inputs.len()).collect();
    Ok(step)
}

/// The element offset of a slice (`len[d]` elements from `first[d]` in
/// steps of `step[d]`) in its operand of `shape`, where it is one
/// contiguous block (the memory plan may then put it there).
fn view_block(shape: &[usize], first: &[usize], len: &[usize], step: &[isize]) -> Option<usize> {
    let u = |v: &[usize]| v.iter().map(|&d| d as u64).collect::<Vec<u64>>();
    let step: Vec<i64> = step.iter().map(|&s| s as i64).collect();
    kiln_ir::ops::geometry::contiguous_block(&u(shape), &u(first), &u(len), &step)
        .and_then(|e| usize::try_from(e).ok())
}

/// Split: the results' static shapes give each part's size along the
/// axis (inference applied the split sizes or `num_outputs`).
pub(super) fn split(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    let a = axis_attr(n, shape.len() as i64)?;
    let mut sizes = vec![];
    for &o in &n.outputs {
        let s = m.static_shape(o)?;
        let others_match =
            s.len() == shape.len() && (0..s.len()).all(|d| d == a || s[d] == shape[d]);
        if !others_match {
            return Err(format!("result of shape {s:?} from {shape:?}"));
        }
        sizes.push(s[a]);
    }
    if sizes.iter().sum::<usize>() != shape[a] {
        return Err(format!("sizes {sizes:?} do not add up to {}", shape[a]));
    }
    let mut first = vec![0; shape.len()];
    let blocks = sizes
        .iter()
        .map(|&n| {
            let mut len = shape.clone();
            len[a] = n;
            let b = view_block(&shape, &first, &len, &vec![1; shape.len()]);
            first[a] += n;
            b
        })
        .collect();
    Ok(NativeStep::new(
        Box::new(Split {
            shape,
            axis: a,
            sizes,
            blocks,
        }),
        format!("Split axis {a}"),
        0.0,
    ))
}

/// Resize of f32 data with constant roi, scales and sizes: the
/// interpreter's plan (every mode and coordinate rule), run natively.
pub(super) fn resize(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let (shape, plan) = crate::lower::common::resize_plan_of(m, n)?;
    let k = kiln_runtime::cpu::resize::Resize::new(&shape, &plan)?;
    Ok(NativeStep::new(Box::new(Resize(k)), "Resize", 0.0))
}

/// ScatterElements over movable data (any reduction on f32, replacement
/// on the other types).
pub(super) fn scatter_elements(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no data operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    let indices = m.static_shape(n.input(1).ok_or("no indices")?)?;
    let updates = m.static_shape(n.input(2).ok_or("no updates")?)?;
    if indices != updates || indices.len() != shape.len() {
        return Err("indices and updates differ in shape".into());
    }
    let axis = axis_attr(n, shape.len() as i64)?;
    let (reduction, spelled) = scatter_reduction(m, n, x)?;
    let k = ScatterElements {
        shape,
        indices,
        axis,
        reduction,
    };
    Ok(NativeStep::new(
        Box::new(k),
        format!("ScatterElements axis {axis} ({spelled})"),
        0.0,
    ))
}

/// An elementwise op on integer or bool tensors (or a comparison of
/// f32 ones): integer Add/Sub/Mul/Div, comparisons, And/Or/Xor/Not,
/// Where. The generated loops take f32 only.
pub(super) fn typed(m: &Module, n: &Node) -> Result<NativeStep, String> {
    use kiln_ir::ElemType as E;
    use kiln_runtime::cpu::steps::typed::{Typed, TypedOp};
    use kiln_runtime::interp::kernels::elementwise::{int_binary, COMPARE, UNARY};
    let elem =
        |i: usize| -> Option<E> { n.input(i).and_then(|v| m.ty(v).as_tensor().map(|t| t.elem)) };
    let op = n.op.as_str();
    // Integer elements the views hold (not the packed 4-bit types).
    let int = |e: Option<E>| e.is_some_and(|e| e.is_int() && !matches!(e, E::I4 | E::U4));
    let fmod = n.attrs.get("fmod").and_then(Attr::as_int).unwrap_or(0) != 0;
    let left = n.attrs.get("direction").and_then(Attr::as_str) == Some("LEFT");
    let int_unary = UNARY.iter().find(|u| u.0 == op).and_then(|u| u.2);
    let (kind, arity) = if let (true, Some(fi)) = (int(elem(0)), int_binary(op, fmod, left)) {
        if op == "BitShift" && !elem(0).is_some_and(E::is_unsigned_int) {
            return Err("BitShift of signed integers".into());
        }
        (TypedOp::Arith(fi), 2)
    } else if let (true, Some(fi)) = (int(elem(0)), int_unary) {
        (TypedOp::IntUnary(fi), 1)
    } else if int(elem(0)) && op == "BitwiseNot" {
        (TypedOp::IntUnary(|x| !x), 1)
    } else if let Some(&(_, f)) = COMPARE.iter().find(|c| c.0 == op) {
        if !matches!(elem(0), Some(E::F32 | E::I64 | E::I32)) {
            return Err(format!("{op} of {:?}", elem(0)));
        }
        (TypedOp::Compare(f), 2)
    } else {
        match op {
            "And" => (TypedOp::Logic(|a, b| a && b), 2),
            "Or" => (TypedOp::Logic(|a, b| a || b), 2),
            "Xor" => (TypedOp::Logic(|a, b| a != b), 2),
            "Not" => (TypedOp::Not, 1),
            "Where"
                if elem(1)
                    .and_then(kiln_runtime::cpu::steps::typed::where_width)
                    .is_some() =>
            {
                (TypedOp::Where, 3)
            }
            "IsNaN" if elem(0) == Some(E::F32) => (TypedOp::IsNaN, 1),
            "IsInf" if elem(0) == Some(E::F32) => {
                let flag = |k: &str| n.attrs.get(k).and_then(Attr::as_int).unwrap_or(1) != 0;
                (
                    TypedOp::IsInf(flag("detect_negative"), flag("detect_positive")),
                    1,
                )
            }
            _ => return Err(format!("no typed kernel for {op}")),
        }
    };
    if n.inputs.len() != arity || n.inputs.iter().any(Option::is_none) {
        return Err(format!("{op} with {} operands", n.inputs.len()));
    }
    if arity > 1 && elem(arity - 2) != elem(arity - 1) {
        return Err(format!("{op} of mixed element types"));
    }
    let out = m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let shapes = n
        .inputs
        .iter()
        .flatten()
        .map(|&v| m.static_shape(v))
        .collect::<Result<Vec<_>, _>>()?;
    if shapes.iter().any(|s| s.len() > out.len()) {
        return Err(format!("{op}: an operand of higher rank than the result"));
    }
    Ok(NativeStep::new(
        Box::new(Typed {
            op: kind,
            shapes,
            out,
        }),
        format!("{op} (typed)"),
        0.0,
    ))
}

/// ConstantOfShape of a static result shape.
pub(super) fn constant_of_shape(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let out = *n.outputs.first().ok_or("no result")?;
    m.static_shape(out)?;
    let elem = m.ty(out).as_tensor().ok_or("not a tensor")?.elem;
    let value = match n.attrs.get("value").and_then(Attr::as_tensor) {
        Some(d) => d.bytes().ok_or("a value without bytes")?.to_vec(),
        None => vec![0; 4],
    };
    let width = elem
        .storage_bytes(1)
        .ok_or("a value type without a width")? as usize;
    if !kiln_runtime::cpu::view::is_viewable(elem) || value.len() != width {
        return Err(format!("ConstantOfShape of {elem}"));
    }
    Ok(NativeStep::new(
        Box::new(Fill { value }),
        "ConstantOfShape",
        0.0,
    ))
}

/// GatherND of movable data.
pub(super) fn gather_nd(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no data operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    m.static_shape(n.input(1).ok_or("no indices")?)?;
    m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let batch_dims = n
        .attrs
        .get("batch_dims")
        .and_then(Attr::as_int)
        .unwrap_or(0);
    let batch_dims = usize::try_from(batch_dims).map_err(|_| "negative batch_dims")?;
    Ok(NativeStep::new(
        Box::new(GatherNd { shape, batch_dims }),
        "GatherND",
        0.0,
    ))
}

/// RoiAlign of f32 maps.
/// GridSample of an f32 image at f32 grid points, static shapes.
pub(super) fn grid_sample(m: &Module, n: &Node) -> Result<NativeStep, String> {
    use kiln_runtime::cpu::steps::movement::GridSample;
    use kiln_runtime::interp::kernels::movement::resample::GridSpec;
    let x = n.input(0).ok_or("no image")?;
    let grid = n.input(1).ok_or("no grid")?;
    for v in [x, grid] {
        if elem_of(m, v) != Some(kiln_ir::ElemType::F32) {
            return Err("GridSample of non-f32".into());
        }
    }
    let text = |k: &str, d: &'static str| n.attrs.get(k).and_then(Attr::as_str).unwrap_or(d);
    let spec = GridSpec::parse(
        n.attrs
            .get("align_corners")
            .and_then(Attr::as_int)
            .unwrap_or(0),
        text("mode", "linear"),
        text("padding_mode", "zeros"),
    )
    .map_err(|e| e.to_string())?;
    let (xs, gs) = (m.static_shape(x)?, m.static_shape(grid)?);
    spec.result_shape(&xs, &gs).map_err(|e| e.to_string())?;
    let what = format!("GridSample {xs:?} at {gs:?}");
    Ok(NativeStep::new(
        Box::new(GridSample {
            spec,
            x: xs,
            grid: gs,
        }),
        what,
        0.0,
    ))
}

pub(super) fn roi_align(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    let rois = n.input(1).ok_or("no rois")?;
    for v in [x, rois] {
        if m.ty(v).as_tensor().map(|t| t.elem) != Some(kiln_ir::ElemType::F32) {
            return Err("RoiAlign of non-f32".into());
        }
    }
    let xs = m.static_shape(x)?;
    let rs = m.static_shape(rois)?;
    let bs = m.static_shape(n.input(2).ok_or("no batch indices")?)?;
    if xs.len() != 4 || rs.len() != 2 || rs[1] != 4 || bs != [rs[0]] || xs[2] == 0 || xs[3] == 0 {
        return Err(format!(
            "RoiAlign of X {xs:?}, rois {rs:?}, batch indices {bs:?}"
        ));
    }
    let int = |k: &str, d: i64| n.attrs.get(k).and_then(Attr::as_int).unwrap_or(d);
    let text = |k: &str, d: &str| {
        n.attrs
            .get(k)
            .and_then(Attr::as_str)
            .unwrap_or(d)
            .to_ascii_lowercase()
    };
    let grid = kiln_runtime::interp::kernels::nn::vision::RoiGrid {
        h: xs[2],
        w: xs[3],
        out_h: int("output_height", 1).max(1) as usize,
        out_w: int("output_width", 1).max(1) as usize,
        sampling_ratio: int("sampling_ratio", 0).max(0) as usize,
        spatial_scale: n
            .attrs
            .get("spatial_scale")
            .and_then(Attr::as_float)
            .unwrap_or(1.0) as f64,
        half_pixel: text("coordinate_transformation_mode", "half_pixel") == "half_pixel",
    };
    let max = text("mode", "avg") == "max";
    let what = format!(
        "RoiAlign {}x{} {}",
        grid.out_h,
        grid.out_w,
        if max { "max" } else { "avg" }
    );
    let k = kiln_runtime::cpu::roi_align::RoiAlign {
        n: xs[0],
        c: xs[1],
        grid,
        max,
    };
    Ok(NativeStep::new(Box::new(RoiAlign(k)), what, 0.0))
}

/// Softmax or LogSoftmax over any axis of f32 data (the generated loops
/// take the last one; this the others, as in yolov8's DFL head).
pub(super) fn softmax_axis(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    if m.ty(x).as_tensor().map(|t| t.elem) != Some(kiln_ir::ElemType::F32) {
        return Err("softmax of non-f32".into());
    }
    let shape = m.static_shape(x)?;
    let r = shape.len() as i64;
    let axis = n
        .attrs
        .get("axis")
        .and_then(kiln_ir::Attr::as_int)
        .unwrap_or(-1);
    let a = usize::try_from(if axis < 0 { axis + r } else { axis })
        .ok()
        .filter(|&a| a < shape.len())
        .ok_or_else(|| format!("axis {axis} out of range"))?;
    let k = SoftmaxAxis {
        outer: shape[..a].iter().product(),
        n: shape[a],
        inner: shape[a + 1..].iter().product(),
        log: n.op == "LogSoftmax",
    };
    Ok(NativeStep::new(
        Box::new(k),
        format!("{} axis {a}", n.op),
        0.0,
    ))
}

pub(super) fn concat(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let out_v = *n.outputs.first().ok_or("no result")?;
    movable_elem(m, out_v)?;
    let out = m.static_shape(out_v)?;
    let r = out.len() as i64;
    let a = axis_attr(n, r)?;
    let mut inner = vec![];
    for v in &n.inputs {
        let v = v.ok_or("omitted operand")?;
        let s = m.static_shape(v)?;
        inner.push(s[a..].iter().product());
    }
    let k = Concat {
        outer: out[..a].iter().product(),
        inner,
    };
    Ok(NativeStep::new(
        Box::new(k),
        format!("Concat axis {a}"),
        0.0,
    ))
}

pub(super) fn cast(m: &Module, n: &Node) -> Result<NativeStep, String> {
    use kiln_ir::ElemType as E;
    let x = n.input(0).ok_or("no operand")?;
    let out_v = *n.outputs.first().ok_or("no result")?;
    let from = m.ty(x).as_tensor().map(|t| t.elem).ok_or("not a tensor")?;
    let to = m
        .ty(out_v)
        .as_tensor()
        .map(|t| t.elem)
        .ok_or("not a tensor")?;
    m.static_shape(out_v)?;
    if matches!(from, E::F32 | E::I64 | E::I32 | E::Bool | E::U8 | E::I8) && to == E::F32 {
        return Ok(NativeStep::new(Box::new(CastToF32), "Cast to f32", 0.0));
    }
    let viewable = kiln_runtime::cpu::view::is_viewable;
    if !viewable(from) || !viewable(to) {
        return Err(format!("no native cast {from} -> {to}"));
    }
    let saturate = n.attrs.get("saturate").and_then(Attr::as_int).unwrap_or(1) != 0;
    Ok(NativeStep::new(
        Box::new(CastAny { to, saturate }),
        format!("Cast {from} -> {to}"),
        0.0,
    ))
}

pub(super) fn expand(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    if m.ty(x).as_tensor().map(|t| t.elem) != Some(kiln_ir::ElemType::Bool) {
        movable_elem(m, x)?;
    }
    let in_shape = m.static_shape(x)?;
    let out = m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    if in_shape.len() > out.len() {
        return Err("expand to a lower rank".into());
    }
    Ok(NativeStep::new(
        Box::new(Expand { in_shape, out }),
        "Expand",
        0.0,
    ))
}

pub(super) fn reduce(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    let shape = m.static_shape(x)?;
    let out = m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    match m.ty(x).as_tensor().map(|t| t.elem) {
        Some(kiln_ir::ElemType::F32) => reduce_of_shape(m, n, shape, out),
        Some(kiln_ir::ElemType::I64 | kiln_ir::ElemType::I32) => int_reduce(m, n, shape),
        _ => Err("reduction of other than f32, i64 or i32".into()),
    }
}

/// A scatter's `reduction` attribute, and its spelling: any on f32 data,
/// replacement only on other types.
fn scatter_reduction<'n>(
    m: &Module,
    n: &'n Node,
    data: ValueId,
) -> Result<(kiln_runtime::cpu::movement::Combine, &'n str), String> {
    use kiln_runtime::cpu::movement::Combine;
    let spelled = n
        .attrs
        .get("reduction")
        .and_then(Attr::as_str)
        .unwrap_or("none");
    let reduction =
        Combine::parse(spelled).ok_or_else(|| format!("unknown reduction {spelled}"))?;
    if reduction != Combine::Replace && elem_of(m, data) != Some(kiln_ir::ElemType::F32) {
        return Err(format!("reduction {spelled} of non-f32 data"));
    }
    Ok((reduction, spelled))
}

/// An exact integer reduction ([`IntReduce`]).
fn int_reduce(m: &Module, n: &Node, shape: Vec<usize>) -> Result<NativeStep, String> {
    const EXACT: [&str; 7] = [
        "ReduceSum",
        "ReduceMean",
        "ReduceProd",
        "ReduceMax",
        "ReduceMin",
        "ReduceL1",
        "ReduceSumSquare",
    ];
    if !EXACT.contains(&n.op.as_str()) {
        return Err(format!(
            "{} of integers is not exact in the integer type",
            n.op
        ));
    }
    let axes = reduce_axes(m, n, shape.len())?;
    Ok(NativeStep::new(
        Box::new(IntReduce {
            op: n.op.clone(),
            shape,
            axes: axes.clone(),
        }),
        format!("{} over axes {axes:?} (integer)", n.op),
        0.0,
    ))
}

/// A reduction node's axes, made non-negative and deduplicated: its
/// constant `axes` operand or attribute, else every axis; a no-op
/// reduction (`noop_with_empty_axes` with none) is refused.
fn reduce_axes(m: &Module, n: &Node, rank: usize) -> Result<Vec<usize>, String> {
    let r = rank as i64;
    let axes: Option<Vec<i64>> = match n.input(1) {
        Some(a) => Some(
            m.constant(a)
                .and_then(|d| d.to_i64_vec())
                .ok_or("axes are not constant")?,
        ),
        None => n
            .attrs
            .get("axes")
            .and_then(kiln_ir::Attr::as_ints)
            .map(<[i64]>::to_vec),
    };
    let noop = n
        .attrs
        .get("noop_with_empty_axes")
        .and_then(kiln_ir::Attr::as_int)
        .unwrap_or(0)
        != 0;
    match axes {
        Some(a) if !a.is_empty() => {
            let mut v = vec![];
            for x in a {
                let x = if x < 0 { x + r } else { x };
                if !(0..r).contains(&x) {
                    return Err(format!("axis {x} out of range"));
                }
                if !v.contains(&(x as usize)) {
                    v.push(x as usize);
                }
            }
            Ok(v)
        }
        _ if noop => Err("noop reduction".into()),
        _ => Ok((0..rank).collect()),
    }
}

/// The odometer reduction of node `n` over an f32 operand of `shape` (static,
/// given by the caller: inside a fusion body the node's own types may be
/// symbolic), giving `out`.
pub(super) fn reduce_of_shape(
    m: &Module,
    n: &Node,
    shape: Vec<usize>,
    out: Vec<usize>,
) -> Result<NativeStep, String> {
    use kiln_runtime::cpu::reduce::ReduceOp;
    let axes = reduce_axes(m, n, shape.len())?;
    let op = ReduceOp::of_onnx(&n.op).ok_or_else(|| format!("{} is not a reduction", n.op))?;
    let kept: usize = (0..shape.len())
        .filter(|a| !axes.contains(a))
        .map(|a| shape[a])
        .product();
    if out.iter().product::<usize>() != kept {
        return Err(format!(
            "reduction of {shape:?} over {axes:?} cannot give {out:?}"
        ));
    }
    let what = format!("{} over axes {axes:?}", n.op);
    let k = Reduce { shape, axes, op };
    Ok(NativeStep::new(Box::new(k), what, 0.0))
}

/// TopK of f32, i64 or i32 data whose result shapes are static (K a
/// constant, or baked in by a per-shape lowering).
pub(super) fn top_k(m: &Module, n: &Node) -> Result<NativeStep, String> {
    use kiln_ir::ElemType as E;
    let x = n.input(0).ok_or("no operand")?;
    if !matches!(
        m.ty(x).as_tensor().map(|t| t.elem),
        Some(E::F32 | E::I64 | E::I32)
    ) {
        return Err("TopK of other than f32, i64 or i32".into());
    }
    let shape = m.static_shape(x)?;
    let axis = n.attrs.get("axis").and_then(Attr::as_int).unwrap_or(-1);
    let r = shape.len() as i64;
    let axis = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&axis) {
        return Err(format!("axis {axis} out of range"));
    }
    let axis = axis as usize;
    let [values, indices] = n.outputs[..] else {
        return Err("TopK: two results".into());
    };
    let out = m.static_shape(values)?;
    if m.static_shape(indices)? != out || out.len() != shape.len() {
        return Err("result shapes differ".into());
    }
    let k = out[axis];
    let largest = n.attrs.get("largest").and_then(Attr::as_int).unwrap_or(1) != 0;
    let dims = (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    );
    Ok(NativeStep::new(
        Box::new(TopK { dims, k, largest }),
        format!("TopK k {k} of {} along axis {axis}", dims.1),
        0.0,
    ))
}

/// NonZero of a movable operand of static shape and rank at least 1: its
/// result is sized at run time ([`NonZero`]), so this lowers only per
/// shape.
pub(super) fn non_zero(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    if shape.is_empty() {
        return Err("NonZero of a scalar".into());
    }
    let what = format!("NonZero of {shape:?} (sized by its count)");
    Ok(NativeStep::new(Box::new(NonZero { shape }), what, 0.0))
}

/// NonMaxSuppression of f32 boxes and scores of static shapes, its
/// limits (i64 count, f32 thresholds) read at run time.
pub(super) fn non_max_suppression(m: &Module, n: &Node) -> Result<NativeStep, String> {
    use kiln_ir::ElemType as E;
    use kiln_runtime::cpu::steps::movement::NonMaxSuppression;
    let boxes = n.input(0).ok_or("no boxes")?;
    let scores = n.input(1).ok_or("no scores")?;
    for (i, want) in [
        (0, E::F32),
        (1, E::F32),
        (2, E::I64),
        (3, E::F32),
        (4, E::F32),
    ] {
        if let Some(v) = n.input(i) {
            if elem_of(m, v) != Some(want) {
                return Err(format!("NonMaxSuppression operand {i} is not {want}"));
            }
        }
    }
    let (bs, ss) = (m.static_shape(boxes)?, m.static_shape(scores)?);
    if bs.len() != 3 || bs[2] != 4 || ss.len() != 3 || ss[0] != bs[0] || ss[2] != bs[1] {
        return Err(format!("NonMaxSuppression of boxes {bs:?}, scores {ss:?}"));
    }
    let center = n
        .attrs
        .get("center_point_box")
        .and_then(Attr::as_int)
        .unwrap_or(0)
        != 0;
    let what = format!("NonMaxSuppression of {bs:?} by {ss:?} (sized by its count)");
    Ok(NativeStep::new(
        Box::new(NonMaxSuppression {
            dims: (bs[0], bs[1], ss[1]),
            center,
        }),
        what,
        0.0,
    ))
}

/// Einsum of one or two f32 operands with static shapes (per shape at
/// run time when the model's are symbolic; the `einsum` pass rewrites
/// those static at compile time), planned as the pass decomposes it.
pub(super) fn einsum(m: &Module, n: &Node) -> Result<NativeStep, String> {
    use kiln_runtime::cpu::einsum::{Einsum, EinsumOperand};
    let eq = n
        .attrs
        .get("equation")
        .and_then(Attr::as_str)
        .ok_or("no equation")?;
    let inputs: Vec<ValueId> = n
        .inputs
        .iter()
        .copied()
        .collect::<Option<_>>()
        .ok_or("an omitted operand")?;
    if !(1..=2).contains(&inputs.len()) {
        return Err(format!("Einsum of {} operands", inputs.len()));
    }
    for &v in inputs.iter().chain(&n.outputs) {
        if elem_of(m, v) != Some(kiln_ir::ElemType::F32) {
            return Err("Einsum of non-f32 values".into());
        }
    }
    let shapes = inputs
        .iter()
        .map(|&v| m.static_shape(v))
        .collect::<Result<Vec<_>, _>>()?;
    let ranks: Vec<usize> = shapes.iter().map(Vec::len).collect();
    let e = crate::passes::einsum::parse(eq, &ranks)
        .ok_or("an equation with a diagonal or a rank that does not fit")?;
    let mut size = std::collections::HashMap::new();
    for (letters, shape) in e.operands.iter().zip(&shapes) {
        for (&c, &d) in letters.iter().zip(shape) {
            if *size.entry(c).or_insert(d) != d {
                return Err(format!("letter {c} of two sizes"));
            }
        }
    }
    let other = |i: usize| -> Vec<char> {
        let mut v = e.output.clone();
        for (j, l) in e.operands.iter().enumerate() {
            if j != i {
                v.extend(l);
            }
        }
        v
    };
    // Each operand loses the letters nothing else has; `to` is the order
    // of the rest.
    let prepare = |i: usize, to: &[char]| -> EinsumOperand {
        let keep = other(i);
        let l = &e.operands[i];
        let sum_axes: Vec<usize> = (0..l.len()).filter(|&a| !keep.contains(&l[a])).collect();
        let kept: Vec<char> = l.iter().copied().filter(|c| keep.contains(c)).collect();
        let perm = to
            .iter()
            .map(|c| kept.iter().position(|d| d == c).unwrap_or(0))
            .collect();
        EinsumOperand {
            shape: shapes[i].clone(),
            sum_axes,
            perm,
        }
    };
    let dims = |l: &[char]| l.iter().map(|c| size[c]).collect::<Vec<usize>>();
    let plan = if inputs.len() == 1 {
        Einsum {
            operands: vec![prepare(0, &e.output)],
            batch: 1,
            m: 0,
            k: 0,
            n: 0,
            product_dims: vec![],
            out_perm: vec![],
        }
    } else {
        let out = &e.output;
        let crate::passes::einsum::Letters {
            batch,
            summed,
            a_free,
            b_free,
        } = crate::passes::einsum::Letters::of(&e.operands[0], &e.operands[1], out);
        let a = prepare(0, &[&batch[..], &a_free, &summed].concat());
        let b = prepare(1, &[&batch[..], &summed, &b_free].concat());
        let prod: Vec<char> = [&batch[..], &a_free, &b_free].concat();
        let out_perm = out
            .iter()
            .map(|c| prod.iter().position(|d| d == c).unwrap_or(0))
            .collect();
        let p = |l: &[char]| dims(l).iter().product::<usize>();
        Einsum {
            operands: vec![a, b],
            batch: p(&batch),
            m: p(&a_free),
            k: p(&summed),
            n: p(&b_free),
            product_dims: dims(&prod),
            out_perm,
        }
    };
    let out = m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    if out != dims(&e.output) {
        return Err(format!("Einsum result {out:?} differs from the equation's"));
    }
    Ok(NativeStep::new(
        Box::new(kiln_runtime::cpu::steps::dense::Einsum(plan)),
        format!("Einsum \"{eq}\""),
        0.0,
    ))
}

/// OneHot of static shapes with a constant depth (per value at run time
/// otherwise), indices integer or f32, values of any viewable type.
pub(super) fn one_hot(m: &Module, n: &Node) -> Result<NativeStep, String> {
    use kiln_ir::ElemType as E;
    let ind = n.input(0).ok_or("no indices")?;
    let values = n.input(2).ok_or("no values")?;
    let e = elem_of(m, ind).ok_or("indices are not a tensor")?;
    if !(e == E::F32 || (e.is_int() && !matches!(e, E::I4 | E::U4))) {
        return Err(format!("OneHot indices of {e}"));
    }
    if !elem_of(m, values).is_some_and(kiln_runtime::cpu::view::is_viewable) {
        return Err("OneHot values without a native layout".into());
    }
    let shape = m.static_shape(ind)?;
    let out = m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let r = out.len() as i64;
    let axis = n.attrs.get("axis").and_then(Attr::as_int).unwrap_or(-1);
    let axis = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&axis) || out.len() != shape.len() + 1 {
        return Err(format!("OneHot axis {axis} of a result of rank {r}"));
    }
    let axis = axis as usize;
    let k = OneHot {
        outer: shape[..axis].iter().product(),
        depth: out[axis],
        inner: shape[axis..].iter().product(),
    };
    Ok(NativeStep::new(
        Box::new(k),
        format!("OneHot of depth {}", out[axis]),
        0.0,
    ))
}

/// Hardmax of f32 along one axis, static shape.
pub(super) fn hardmax(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    if elem_of(m, x) != Some(kiln_ir::ElemType::F32) {
        return Err("Hardmax of non-f32".into());
    }
    let mut shape = m.static_shape(x)?;
    if shape.is_empty() {
        shape = vec![1];
    }
    let r = shape.len() as i64;
    let axis = n.attrs.get("axis").and_then(Attr::as_int).unwrap_or(-1);
    let axis = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&axis) {
        return Err(format!("Hardmax axis {axis} of rank {r}"));
    }
    let k = kiln_runtime::cpu::steps::movement::Hardmax {
        shape,
        axis: axis as usize,
    };
    Ok(NativeStep::new(Box::new(k), "Hardmax", 0.0))
}

/// An operand's element type, if it is a tensor.
fn elem_of(m: &Module, v: ValueId) -> Option<kiln_ir::ElemType> {
    m.ty(v).as_tensor().map(|t| t.elem)
}

/// Whether `v` is f32, i64 or i32: what the numeric movers take.
fn numeric(m: &Module, v: ValueId) -> Result<(), String> {
    use kiln_ir::ElemType as E;
    match elem_of(m, v) {
        Some(E::F32 | E::I64 | E::I32) => Ok(()),
        e => Err(format!("{e:?} is not f32, i64 or i32")),
    }
}

/// An integer attribute read as a flag (absent: false).
fn flag_attr(n: &Node, name: &str) -> bool {
    n.attrs.get(name).and_then(Attr::as_int).unwrap_or(0) != 0
}

/// `[outer, n, inner]` around `axis` of `shape`.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// ArgMax and ArgMin of f32, i64 or i32 data.
pub(super) fn arg_best(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    numeric(m, x)?;
    let shape = m.static_shape(x)?;
    if shape.is_empty() {
        return Err("of a scalar".into());
    }
    m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let axis = axis_attr(n, shape.len() as i64)?;
    let dims = around(&shape, axis);
    if dims.1 == 0 {
        return Err("over an empty axis".into());
    }
    let last = flag_attr(n, "select_last_index");
    let is_max = n.op == "ArgMax";
    Ok(NativeStep::new(
        Box::new(ArgBest { dims, is_max, last }),
        format!("{} along axis {axis}", n.op),
        0.0,
    ))
}

/// GatherElements of movable data.
pub(super) fn gather_elements(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no data operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    let indices = m.static_shape(n.input(1).ok_or("no indices")?)?;
    if indices.len() != shape.len() {
        return Err("indices and data differ in rank".into());
    }
    m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let axis = axis_attr(n, shape.len() as i64)?;
    Ok(NativeStep::new(
        Box::new(GatherElements {
            shape,
            indices,
            axis,
        }),
        format!("GatherElements axis {axis}"),
        0.0,
    ))
}

/// Tile of movable data: the repeats a constant, or what the static
/// shapes say they are.
pub(super) fn tile(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    let out = m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let r = n.input(1).ok_or("no repeats")?;
    let reps: Vec<usize> = match m.constant(r).and_then(|d| d.to_i64_vec()) {
        Some(v) => v
            .iter()
            .map(|&k| usize::try_from(k).map_err(|_| format!("repeat {k}")))
            .collect::<Result<_, _>>()?,
        None if shape.iter().all(|&d| d > 0) && out.len() == shape.len() => {
            shape.iter().zip(&out).map(|(s, o)| o / s).collect()
        }
        None => return Err("repeats are not constant".into()),
    };
    let tiled: Vec<usize> = shape.iter().zip(&reps).map(|(s, k)| s * k).collect();
    if reps.len() != shape.len() || tiled != out {
        return Err(format!("tiling {shape:?} by {reps:?} cannot give {out:?}"));
    }
    Ok(NativeStep::new(
        Box::new(Tile {
            shape,
            reps: reps.clone(),
        }),
        format!("Tile {reps:?}"),
        0.0,
    ))
}

/// CumSum of f32, i64 or i32 data along a constant axis.
pub(super) fn cumsum(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    numeric(m, x)?;
    let shape = m.static_shape(x)?;
    m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let given = m
        .constant(n.input(1).ok_or("no axis")?)
        .and_then(|d| d.to_i64_vec())
        .ok_or("axis is not constant")?;
    let &[given] = given.as_slice() else {
        return Err("axis of more than one value".into());
    };
    let r = shape.len() as i64;
    let axis = if given < 0 { given + r } else { given };
    if !(0..r).contains(&axis) {
        return Err(format!("axis {given} out of range"));
    }
    Ok(NativeStep::new(
        Box::new(CumSum {
            dims: around(&shape, axis as usize),
            axis: given,
            exclusive: flag_attr(n, "exclusive"),
            reverse: flag_attr(n, "reverse"),
        }),
        format!("CumSum axis {axis}"),
        0.0,
    ))
}

/// ScatterND of movable data (reductions on f32 only).
pub(super) fn scatter_nd(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no data operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    m.static_shape(n.input(1).ok_or("no indices")?)?;
    m.static_shape(n.input(2).ok_or("no updates")?)?;
    m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let (reduction, spelled) = scatter_reduction(m, n, x)?;
    Ok(NativeStep::new(
        Box::new(ScatterNd { shape, reduction }),
        format!("ScatterND ({spelled})"),
        0.0,
    ))
}

/// TensorScatter (a key/value cache update) of static shapes.
pub(super) fn tensor_scatter(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let past = n.input(0).ok_or("no cache operand")?;
    movable_elem(m, past)?;
    let shape = m.static_shape(past)?;
    let upd = m.static_shape(n.input(1).ok_or("no update operand")?)?;
    let rank = shape.len();
    let r = rank as i64;
    let axis = n.attrs.get("axis").and_then(Attr::as_int).unwrap_or(-2);
    let axis = if axis < 0 { axis + r } else { axis };
    if !(1..r).contains(&axis) {
        return Err(format!("axis {axis} out of range"));
    }
    let axis = axis as usize;
    let fits = upd.len() == rank
        && (0..rank).all(|i| {
            if i == axis {
                upd[i] <= shape[i]
            } else {
                upd[i] == shape[i]
            }
        });
    if !fits {
        return Err(format!("update {upd:?} does not fit the cache {shape:?}"));
    }
    let circular = match n
        .attrs
        .get("mode")
        .and_then(Attr::as_str)
        .unwrap_or("linear")
    {
        "linear" => false,
        "circular" => true,
        m => return Err(format!("mode `{m}`")),
    };
    let plan = TensorScatter {
        outer: shape[..axis].iter().product(),
        per_sample: shape[1..axis].iter().product(),
        max: shape[axis],
        seq: upd[axis],
        inner: shape[axis + 1..].iter().product(),
        circular,
    };
    let what = format!("TensorScatter {} of {} positions", plan.seq, plan.max);
    Ok(NativeStep::new(Box::new(plan), what, 0.0))
}

/// GroupNormalization and InstanceNormalization of f32 data.
pub(super) fn group_norm(m: &Module, n: &Node) -> Result<NativeStep, String> {
    for v in n.inputs.iter().flatten().chain(&n.outputs) {
        if elem_of(m, *v) != Some(kiln_ir::ElemType::F32) {
            return Err("of non-f32 values".into());
        }
    }
    let g = crate::lower::common::group_norm_attrs(m, n)?;
    m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let plan = kiln_runtime::cpu::norm::GroupNorm {
        n: g.shape[0],
        c: g.shape[1],
        spatial: g.shape[2..].iter().product(),
        groups: g.groups,
        eps: g.eps,
    };
    let what = format!("{} in {} groups", n.op, g.groups);
    Ok(NativeStep::new(
        Box::new(GroupNorm {
            plan,
            per_group: g.per_group,
        }),
        what,
        0.0,
    ))
}

/// LayerNormalization whose Mean or InvStdDev result is used (the
/// generated row loop gives `Y` alone): f32 throughout, static shapes,
/// scale and bias broadcasting over the normalized dims.
pub(super) fn layer_norm_stats(m: &Module, n: &Node) -> Result<NativeStep, String> {
    use kiln_runtime::cpu::steps::movement::LayerNormStats;
    for v in n.inputs.iter().flatten().chain(&n.outputs) {
        if elem_of(m, *v) != Some(kiln_ir::ElemType::F32) {
            return Err("LayerNormalization of non-f32 values".into());
        }
    }
    let x = m.static_shape(n.input(0).ok_or("no operand")?)?;
    let rank = x.len() as i64;
    let axis = n.attrs.get("axis").and_then(Attr::as_int).unwrap_or(-1);
    let axis = if axis < 0 { axis + rank } else { axis };
    if !(0..rank).contains(&axis) {
        return Err(format!("axis {axis} out of range"));
    }
    let norm = x[axis as usize..].to_vec();
    let fits = |v: ValueId| -> Result<Vec<usize>, String> {
        let s = m.static_shape(v)?;
        let ok = s.len() <= norm.len()
            && s.iter()
                .rev()
                .zip(norm.iter().rev())
                .all(|(&a, &b)| a == b || a == 1);
        if ok {
            Ok(s)
        } else {
            Err(format!("{s:?} does not broadcast over {norm:?}"))
        }
    };
    let scale = fits(n.input(1).ok_or("no scale")?)?;
    let bias = n.input(2).map(fits).transpose()?;
    let eps = n
        .attrs
        .get("epsilon")
        .and_then(Attr::as_float)
        .unwrap_or(1e-5) as f64;
    Ok(NativeStep::new(
        Box::new(LayerNormStats {
            norm,
            scale,
            bias,
            eps,
        }),
        "LayerNormalization with statistics",
        0.0,
    ))
}

/// Trilu of movable data of rank at least 2.
pub(super) fn trilu(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = n.input(0).ok_or("no operand")?;
    movable_elem(m, x)?;
    let shape = m.static_shape(x)?;
    let r = shape.len();
    if r < 2 {
        return Err("of rank below 2".into());
    }
    m.static_shape(*n.outputs.first().ok_or("no result")?)?;
    let upper = n.attrs.get("upper").and_then(Attr::as_int).unwrap_or(1) != 0;
    let dims = (shape[..r - 2].iter().product(), shape[r - 2], shape[r - 1]);
    Ok(NativeStep::new(
        Box::new(Trilu { dims, upper }),
        format!("Trilu ({})", if upper { "upper" } else { "lower" }),
        0.0,
    ))
}
