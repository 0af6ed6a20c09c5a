//! Kernels: data-movement ops (shape manipulation, gathers and scatters,
//! padding, slicing, sorting-based selection, resampling).
//!
//! Almost every kernel here computes, for each output element, the linear
//! index of the input element it comes from, then calls [`Data::gather`],
//! so every element type (strings and float8 included) works at once.
//! Positions that take a fill value (padding, zeros of Trilu, ...) gather
//! from the input with one extra element appended (see [`gather_fill`]).
//! Only the ops that compute values (CumSum, scatter reductions, Col2Im,
//! Resize, GridSample, AffineGrid) convert to f64/i64 and back.
//!
//! The resampling kernels are in `movement/resample.rs`; the axis and
//! index helpers it shares with this file are in `movement/axes.rs`.

use std::cmp::Ordering;

use kiln_ir::ElemType;

use super::ctx::{bail, one, opt_tensor, tensor, Ctx, KResult, KernelFn};
use super::shape::{broadcast_indices, broadcast_shape, checked_numel};
use crate::tensor::{numel, strides, Data, Tensor};
use crate::value::Value;
use axes::{map_indices, norm_axes, norm_axis};

mod axes;
pub mod resample;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "Concat" => concat,
        "Constant" => constant,
        "ConstantOfShape" => constant_of_shape,
        "Compress" => compress,
        "CenterCropPad" => center_crop_pad,
        "Col2Im" => col2im,
        "CumSum" => cumsum,
        "DepthToSpace" => depth_to_space,
        "SpaceToDepth" => space_to_depth,
        "EyeLike" => eye_like,
        "Expand" => expand,
        "Flatten" => flatten,
        "Gather" => gather,
        "GatherElements" => gather_elements,
        "GatherND" => gather_nd,
        "NonZero" => non_zero,
        "OneHot" => one_hot,
        "Pad" => pad,
        "Range" => range,
        "Reshape" => reshape,
        "Resize" => resample::resize,
        "GridSample" => resample::grid_sample,
        "AffineGrid" => resample::affine_grid,
        "ReverseSequence" => reverse_sequence,
        "ScatterElements" | "Scatter" => scatter_elements,
        "ScatterND" => scatter_nd,
        "TensorScatter" => tensor_scatter,
        "Shape" => shape,
        "Size" => size,
        "Slice" => slice,
        "Split" => split,
        "Squeeze" => squeeze,
        "Unsqueeze" => unsqueeze,
        "Tile" => tile,
        "TopK" => top_k,
        "Transpose" => transpose,
        "Trilu" => trilu,
        "Unique" => unique,
        _ => return None,
    })
}

// ---------------------------------------------------------------- helpers

/// Gather where `None` positions take the single value of `fill`.
fn gather_fill(data: &Data, idx: &[Option<usize>], fill: &Data) -> KResult<Data> {
    if fill.len() != 1 {
        bail!("a fill value must hold one element, got {}", fill.len());
    }
    let n = data.len();
    let all = Data::concat(&[data, fill])
        .ok_or_else(|| format!("fill value is {}, data is {}", fill.elem(), data.elem()))?;
    let idx: Vec<usize> = idx.iter().map(|i| i.unwrap_or(n)).collect();
    Ok(all.gather(&idx))
}

/// Integer values of an operand (shapes, axes, indices).
fn ints(t: &Tensor) -> Vec<i64> {
    t.to_i64()
}

/// A dim count from data, checked.
fn dim_of(v: i64, what: &str) -> KResult<usize> {
    if v < 0 {
        bail!("{what} must not be negative, got {v}");
    }
    Ok(v as usize)
}

/// An index into a dim of size `n`, negative counting from the end.
pub fn wrap_index(i: i64, n: usize, what: &str) -> KResult<usize> {
    let n_i = n as i64;
    let j = if i < 0 { i + n_i } else { i };
    if j < 0 || j >= n_i {
        bail!("{what} index {i} is out of range for a dim of size {n}");
    }
    Ok(j as usize)
}

/// The order sorting kernels (TopK, Unique, ...) put floats in: NaN above
/// everything, NaNs equal among themselves, -0 equal to +0.
pub fn nan_greatest<T: PartialOrd>(a: &T, b: &T, a_nan: bool, b_nan: bool) -> Ordering {
    match (a_nan, b_nan) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(b).unwrap_or(Ordering::Equal),
    }
}

/// Compare elements `i` and `j` of `d` (numpy order: NaN last).
fn cmp_elems(d: &Data, i: usize, j: usize) -> Ordering {
    use nan_greatest as pc;
    match d {
        Data::F32(v) => pc(&v[i], &v[j], v[i].is_nan(), v[j].is_nan()),
        Data::F64(v) => pc(&v[i], &v[j], v[i].is_nan(), v[j].is_nan()),
        Data::F16(v) => pc(&v[i], &v[j], v[i].is_nan(), v[j].is_nan()),
        Data::BF16(v) => pc(&v[i], &v[j], v[i].is_nan(), v[j].is_nan()),
        Data::F8(k, v) => {
            let a = crate::f8::decode(*k, v[i]);
            let b = crate::f8::decode(*k, v[j]);
            pc(&a, &b, a.is_nan(), b.is_nan())
        }
        Data::I64(v) => v[i].cmp(&v[j]),
        Data::I32(v) => v[i].cmp(&v[j]),
        Data::I16(v) => v[i].cmp(&v[j]),
        Data::I8(v) | Data::I4(v) => v[i].cmp(&v[j]),
        Data::U64(v) => v[i].cmp(&v[j]),
        Data::U32(v) => v[i].cmp(&v[j]),
        Data::U16(v) => v[i].cmp(&v[j]),
        Data::U8(v) | Data::U4(v) => v[i].cmp(&v[j]),
        Data::Bool(v) => v[i].cmp(&v[j]),
        Data::Str(v) => v[i].cmp(&v[j]),
        Data::C64(v) => pc(&v[i], &v[j], false, false),
        Data::C128(v) => pc(&v[i], &v[j], false, false),
    }
}

/// Numbers to compute with: floats in f64, integers exactly in i64 (u64
/// keeps its bits; wrapping arithmetic gives the same bits back).
enum Num {
    F(Vec<f64>),
    I(Vec<i64>),
}

fn to_num(d: &Data) -> Num {
    if d.elem().is_float() || matches!(d.elem(), ElemType::C64 | ElemType::C128) {
        Num::F(d.to_f64())
    } else {
        Num::I(d.to_i64())
    }
}

fn from_num(elem: ElemType, n: &Num) -> Data {
    match n {
        Num::F(v) => Data::from_f64(elem, v),
        Num::I(v) => match elem {
            ElemType::U64 => Data::U64(v.iter().map(|&x| x as u64).collect()),
            _ => Data::from_i64(elem, v),
        },
    }
}

// ---------------------------------------------------------------- shapes

fn reshape(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let spec = ints(tensor(inputs, 1)?);
    let allowzero = cx.attr_int("allowzero", 0) != 0;
    let mut shape = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 => {
                if infer.replace(i).is_some() {
                    bail!("Reshape: more than one -1 in {spec:?}");
                }
                shape.push(1);
            }
            0 if !allowzero => {
                let Some(&s) = x.shape.get(i) else {
                    bail!("Reshape: 0 at {i} but the input has rank {}", x.rank())
                };
                shape.push(s);
            }
            d if d < 0 => bail!("Reshape: invalid dim {d}"),
            d => shape.push(d as usize),
        }
    }
    if let Some(i) = infer {
        let known = checked_numel(&shape)?;
        if known == 0 || x.len() % known != 0 {
            bail!(
                "Reshape: cannot infer -1 in {spec:?} for {} elements",
                x.len()
            );
        }
        shape[i] = x.len() / known;
    }
    if checked_numel(&shape)? != x.len() {
        bail!("Reshape: {:?} ({} elements) to {shape:?}", x.shape, x.len());
    }
    one(x.reshaped(shape)?)
}

fn flatten(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let r = x.rank() as i64;
    let a = cx.attr_int("axis", 1);
    let a = if a < 0 { a + r } else { a };
    if a < 0 || a > r {
        bail!("Flatten: axis out of range for rank {r}");
    }
    let outer: usize = x.shape[..a as usize].iter().product();
    let inner: usize = x.shape[a as usize..].iter().product();
    one(x.reshaped(vec![outer, inner])?)
}

fn squeeze(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let shape = match opt_tensor(inputs, 1)? {
        Some(a) => {
            let axes = norm_axes(&ints(a), x.rank())?;
            for &a in &axes {
                if x.shape[a] != 1 {
                    bail!("Squeeze: dim {a} of {:?} is not 1", x.shape);
                }
            }
            x.shape
                .iter()
                .enumerate()
                .filter(|(i, _)| !axes.contains(i))
                .map(|(_, &d)| d)
                .collect()
        }
        None => x.shape.iter().copied().filter(|&d| d != 1).collect(),
    };
    one(x.reshaped(shape)?)
}

fn unsqueeze(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let axes = ints(tensor(inputs, 1)?);
    let r = x.rank() + axes.len();
    let axes = norm_axes(&axes, r)?;
    let mut src = x.shape.iter();
    let shape = (0..r)
        .map(|i| {
            if axes.contains(&i) {
                1
            } else {
                *src.next().unwrap_or(&1)
            }
        })
        .collect();
    one(x.reshaped(shape)?)
}

fn shape(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let r = x.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let start = clamp(cx.attr_int("start", 0));
    let end = match cx.attr("end") {
        Some(_) => clamp(cx.attr_int("end", r)),
        None => r as usize,
    };
    let dims: Vec<i64> = x.shape[start..end.max(start)]
        .iter()
        .map(|&d| d as i64)
        .collect();
    one(Tensor::new(vec![dims.len()], Data::I64(dims))?)
}

fn size(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    one(Tensor::scalar(Data::I64(vec![x.len() as i64])))
}

/// A `Constant` node (the ONNX importer makes these region constants;
/// text IR and passes may keep them as nodes).
fn constant(cx: &mut Ctx, _: &[Option<Value>]) -> KResult<Vec<Value>> {
    match kiln_ir::verify::constant_node_data_attrs(&cx.node.attrs) {
        Some(d) => one(Tensor::from_data(&d)?),
        None => bail!("Constant: no value attribute"),
    }
}

fn constant_of_shape(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let s = ints(tensor(inputs, 0)?);
    let shape = s
        .iter()
        .map(|&d| dim_of(d, "ConstantOfShape dim"))
        .collect::<KResult<Vec<_>>>()?;
    let value = match cx.attr_tensor("value")? {
        Some(v) => v.data,
        None => Data::F32(vec![0.0]),
    };
    if value.len() != 1 {
        bail!("ConstantOfShape: value must hold one element");
    }
    let n = crate::limits::alloc(
        || format!("the result of shape {shape:?}"),
        value.elem(),
        &shape,
    )?;
    one(Tensor::new(shape, value.gather(&vec![0; n]))?)
}

fn eye_like(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    if x.rank() != 2 {
        bail!("EyeLike: input must be 2-D, got {:?}", x.shape);
    }
    let elem = cx.output_elem(0).unwrap_or(x.elem());
    let k = cx.attr_int("k", 0);
    let (r, c) = (x.shape[0], x.shape[1]);
    let mut v = vec![0.0; r * c];
    for i in 0..r {
        let j = i as i64 + k;
        if j >= 0 && (j as usize) < c {
            v[i * c + j as usize] = 1.0;
        }
    }
    one(Tensor::new(x.shape.clone(), Data::from_f64(elem, &v))?)
}

fn range(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let s = tensor(inputs, 0)?;
    let l = tensor(inputs, 1)?;
    let d = tensor(inputs, 2)?;
    let elem = s.elem();
    if elem.is_float() {
        let (s, l, d) = (s.to_f64()[0], l.to_f64()[0], d.to_f64()[0]);
        if d == 0.0 {
            bail!("Range: delta is zero");
        }
        let n = ((l - s) / d).ceil().max(0.0);
        if n.is_nan() {
            bail!("Range: its length is not a number");
        }
        // Saturating: an infinite or huge count fails the limit.
        crate::limits::alloc(|| format!("a result of {n} elements"), elem, &[n as usize])?;
        let v: Vec<f64> = (0..n as usize).map(|i| s + i as f64 * d).collect();
        one(Tensor::new(vec![v.len()], Data::from_f64(elem, &v))?)
    } else {
        let (s, l, d) = (s.to_i64()[0], l.to_i64()[0], d.to_i64()[0]);
        if d == 0 {
            bail!("Range: delta is zero");
        }
        let span = l as i128 - s as i128;
        let d128 = d as i128;
        let n = if (span > 0) == (d128 > 0) && span != 0 {
            (span + d128 - d128.signum()) / d128
        } else {
            0
        };
        let len = usize::try_from(n).unwrap_or(usize::MAX);
        crate::limits::alloc(|| format!("a result of {n} elements"), elem, &[len])?;
        let v: Vec<i64> = (0..n as i64)
            .map(|i| s.wrapping_add(i.wrapping_mul(d)))
            .collect();
        one(Tensor::new(vec![v.len()], from_num(elem, &Num::I(v)))?)
    }
}

// ---------------------------------------------------------------- rearrangements

fn transpose(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let r = x.rank();
    let perm: Vec<usize> = match cx.attr_ints("perm") {
        Some(p) => norm_axes(p, r)?,
        None => (0..r).rev().collect(),
    };
    if perm.len() != r {
        bail!("Transpose: perm {perm:?} for rank {r}");
    }
    let st = x.strides();
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let idx = map_indices(&shape, |o| {
        Ok(o.iter().zip(&perm).map(|(&i, &p)| i * st[p]).sum())
    })?;
    one(Tensor::new(shape, x.data.gather(&idx))?)
}

fn concat(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let ts: Vec<&Tensor> = (0..inputs.len())
        .map(|i| tensor(inputs, i))
        .collect::<KResult<_>>()?;
    let Some(first) = ts.first() else {
        bail!("Concat: no inputs")
    };
    let r = first.rank();
    let axis = norm_axis(cx.attr_int("axis", 0), r)?;
    let mut shape = first.shape.clone();
    shape[axis] = 0;
    for t in &ts {
        if t.rank() != r
            || t.shape
                .iter()
                .enumerate()
                .any(|(d, &s)| d != axis && s != first.shape[d])
        {
            bail!(
                "Concat: shapes {:?} and {:?} differ off axis {axis}",
                first.shape,
                t.shape
            );
        }
        shape[axis] += t.shape[axis];
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut offs = Vec::new();
    let mut off = 0;
    for t in &ts {
        offs.push(off);
        off += t.len();
    }
    let mut idx = Vec::with_capacity(off);
    for o in 0..outer {
        for (t, &base) in ts.iter().zip(&offs) {
            let blk = t.shape[axis] * inner;
            idx.extend(base + o * blk..base + (o + 1) * blk);
        }
    }
    let parts: Vec<&Data> = ts.iter().map(|t| &t.data).collect();
    let all = Data::concat(&parts).ok_or("Concat: inputs have different element types")?;
    one(Tensor::new(shape, all.gather(&idx))?)
}

fn split(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let axis = norm_axis(cx.attr_int("axis", 0), x.rank())?;
    let dim = x.shape[axis];
    let n_out = cx.node.outputs.len();
    let sizes: Vec<usize> = match opt_tensor(inputs, 1)? {
        Some(s) if !s.is_empty() => ints(s)
            .iter()
            .map(|&v| dim_of(v, "Split size"))
            .collect::<KResult<_>>()?,
        _ => {
            let n = match cx.attr("num_outputs") {
                Some(_) => cx.attr_int("num_outputs", 1) as usize,
                None => n_out,
            };
            if n == 0 {
                bail!("Split: zero outputs");
            }
            let chunk = dim.div_ceil(n);
            (0..n)
                .map(|i| chunk.min(dim.saturating_sub(i * chunk)))
                .collect()
        }
    };
    if sizes.iter().sum::<usize>() != dim {
        bail!("Split: sizes {sizes:?} do not add up to {dim}");
    }
    let mut out = Vec::new();
    let mut start = 0;
    for s in sizes {
        out.push(Value::tensor(slice_axis(x, axis, start, s)?));
        start += s;
    }
    Ok(out)
}

/// `x[..., start..start+len, ...]` along `axis`.
fn slice_axis(x: &Tensor, axis: usize, start: usize, len: usize) -> KResult<Tensor> {
    let mut shape = x.shape.clone();
    shape[axis] = len;
    let st = x.strides();
    let idx = map_indices(&shape, |o| {
        Ok(o.iter()
            .enumerate()
            .map(|(d, &i)| (if d == axis { i + start } else { i }) * st[d])
            .sum())
    })?;
    Ok(Tensor::new(shape, x.data.gather(&idx))?)
}

fn slice(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let r = x.rank();
    let starts = ints(tensor(inputs, 1)?);
    let ends = ints(tensor(inputs, 2)?);
    let axes = match opt_tensor(inputs, 3)? {
        Some(a) => norm_axes(&ints(a), r)?,
        None => (0..starts.len()).collect(),
    };
    let steps = match opt_tensor(inputs, 4)? {
        Some(s) => ints(s),
        None => vec![1; starts.len()],
    };
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        bail!("Slice: starts, ends, axes and steps differ in length");
    }
    let mut first: Vec<i64> = vec![0; r];
    let mut step: Vec<i64> = vec![1; r];
    let mut shape = x.shape.clone();
    for k in 0..starts.len() {
        let a = axes[k];
        let n = x.shape[a] as u64;
        let s = steps[k];
        if s == 0 {
            bail!("Slice: step is zero");
        }
        let (b, len) = kiln_ir::ops::geometry::slice_range(starts[k], ends[k], s, n);
        first[a] = b;
        step[a] = s;
        shape[a] = len as usize;
    }
    let st = x.strides();
    let idx = map_indices(&shape, |o| {
        Ok(o.iter()
            .enumerate()
            .map(|(d, &i)| (first[d] + i as i64 * step[d]) as usize * st[d])
            .sum())
    })?;
    one(Tensor::new(shape, x.data.gather(&idx))?)
}

fn expand(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let s = ints(tensor(inputs, 1)?);
    let s = s
        .iter()
        .map(|&d| dim_of(d, "Expand dim"))
        .collect::<KResult<Vec<_>>>()?;
    let shape = broadcast_shape(&x.shape, &s)?;
    crate::limits::alloc(
        || format!("the result of shape {shape:?}"),
        x.elem(),
        &shape,
    )?;
    let idx = broadcast_indices(&x.shape, &shape);
    one(Tensor::new(shape, x.data.gather(&idx))?)
}

fn tile(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let reps = ints(tensor(inputs, 1)?);
    if reps.len() != x.rank() {
        bail!("Tile: {} repeats for rank {}", reps.len(), x.rank());
    }
    let mut shape = Vec::new();
    for (&d, &r) in x.shape.iter().zip(&reps) {
        shape.push(
            d.checked_mul(dim_of(r, "Tile repeat")?)
                .ok_or("Tile: too large")?,
        );
    }
    crate::limits::alloc(
        || format!("the result of shape {shape:?}"),
        x.elem(),
        &shape,
    )?;
    let st = x.strides();
    let idx = map_indices(&shape, |o| {
        Ok(o.iter()
            .enumerate()
            .map(|(d, &i)| (i % x.shape[d]) * st[d])
            .sum())
    })?;
    one(Tensor::new(shape, x.data.gather(&idx))?)
}

fn depth_to_space(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let b = cx.attr_int("blocksize", 0);
    if b <= 0 || x.rank() != 4 {
        bail!("DepthToSpace: needs a 4-D input and a positive blocksize");
    }
    let b = b as usize;
    if b.checked_mul(b).is_none() {
        bail!("DepthToSpace: blocksize {b} too large");
    }
    let crd = cx.attr_str("mode") == Some("CRD");
    let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    if c % (b * b) != 0 {
        bail!(
            "DepthToSpace: {c} channels not divisible by blocksize² = {}",
            b * b
        );
    }
    let co = c / (b * b);
    let shape = vec![n, co, h * b, w * b];
    let st = x.strides();
    let idx = map_indices(&shape, |o| {
        let (bh, bw) = (o[2] % b, o[3] % b);
        let ic = if crd {
            o[1] * b * b + bh * b + bw
        } else {
            (bh * b + bw) * co + o[1]
        };
        Ok(o[0] * st[0] + ic * st[1] + (o[2] / b) * st[2] + (o[3] / b) * st[3])
    })?;
    one(Tensor::new(shape, x.data.gather(&idx))?)
}

fn space_to_depth(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let b = cx.attr_int("blocksize", 0);
    if b <= 0 || x.rank() != 4 {
        bail!("SpaceToDepth: needs a 4-D input and a positive blocksize");
    }
    let b = b as usize;
    let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
    if b.checked_mul(b).and_then(|bb| bb.checked_mul(c)).is_none() {
        bail!("SpaceToDepth: blocksize {b} too large");
    }
    if h % b != 0 || w % b != 0 {
        bail!("SpaceToDepth: spatial dims {h}x{w} not divisible by {b}");
    }
    let shape = vec![n, c * b * b, h / b, w / b];
    let st = x.strides();
    let idx = map_indices(&shape, |o| {
        let (ic, blk) = (o[1] % c, o[1] / c);
        let (bh, bw) = (blk / b, blk % b);
        Ok(o[0] * st[0] + ic * st[1] + (o[2] * b + bh) * st[2] + (o[3] * b + bw) * st[3])
    })?;
    one(Tensor::new(shape, x.data.gather(&idx))?)
}

fn trilu(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let k = match opt_tensor(inputs, 1)? {
        Some(k) => ints(k).first().copied().unwrap_or(0),
        None => 0,
    };
    let upper = cx.attr_int("upper", 1) != 0;
    let r = x.rank();
    if r < 2 {
        bail!("Trilu: input rank must be at least 2");
    }
    let mut lin = 0;
    let sel = map_indices(&x.shape, |o| {
        let diff = o[r - 1] as i64 - o[r - 2] as i64;
        let keep = if upper { diff >= k } else { diff <= k };
        lin += 1;
        Ok(keep.then_some(lin - 1))
    })?;
    let data = gather_fill(&x.data, &sel, &Data::zeros(x.elem(), 1))?;
    one(Tensor::new(x.shape.clone(), data)?)
}

fn pad(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let r = x.rank();
    let pads = ints(tensor(inputs, 1)?);
    let fill = match opt_tensor(inputs, 2)? {
        Some(v) if !v.is_empty() => v.data.gather(&[0]),
        _ => Data::zeros(x.elem(), 1),
    };
    let axes = match opt_tensor(inputs, 3)? {
        Some(a) => norm_axes(&ints(a), r)?,
        None => (0..r).collect(),
    };
    if pads.len() != 2 * axes.len() {
        bail!("Pad: {} pads for {} axes", pads.len(), axes.len());
    }
    let mode = cx.attr_str("mode").unwrap_or("constant").to_string();
    let mut begin = vec![0i64; r];
    let mut shape = x.shape.clone();
    for (k, &a) in axes.iter().enumerate() {
        let (b, e) = (pads[k], pads[k + axes.len()]);
        let n = (x.shape[a] as i64)
            .checked_add(b)
            .and_then(|n| n.checked_add(e))
            .ok_or_else(|| format!("Pad: pads {b},{e} overflow"))?;
        if n < 0 {
            bail!("Pad: pads {b},{e} remove more than dim {a} holds");
        }
        begin[a] = b;
        shape[a] = n as usize;
    }
    crate::limits::alloc(
        || format!("the result of shape {shape:?}"),
        x.elem(),
        &shape,
    )?;
    if mode != "constant" && x.shape.iter().zip(&shape).any(|(&i, &o)| i == 0 && o > 0) {
        bail!("Pad: cannot pad an empty dim in {mode} mode");
    }
    let st = x.strides();
    let sel = map_indices(&shape, |o| {
        let mut lin = 0;
        for d in 0..r {
            let n = x.shape[d] as i64;
            let i = o[d] as i64 - begin[d];
            let Some(i) = kiln_ir::ops::geometry::pad_source(&mode, i, n)? else {
                return Ok(None);
            };
            lin += i as usize * st[d];
        }
        Ok(Some(lin))
    })?;
    one(Tensor::new(shape, gather_fill(&x.data, &sel, &fill)?)?)
}

fn center_crop_pad(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let r = x.rank();
    let want = ints(tensor(inputs, 1)?);
    let axes = match cx.attr_ints("axes") {
        Some(a) => norm_axes(a, r)?,
        None => (0..r).collect(),
    };
    if want.len() != axes.len() {
        bail!(
            "CenterCropPad: {} sizes for {} axes",
            want.len(),
            axes.len()
        );
    }
    let mut shape = x.shape.clone();
    // Output index o along an axis reads input index o + shift[axis].
    let mut shift = vec![0i64; r];
    for (&a, &s) in axes.iter().zip(&want) {
        let s = dim_of(s, "CenterCropPad size")?;
        let dim = x.shape[a];
        shift[a] = if s < dim {
            ((dim - s) / 2) as i64
        } else {
            -(((s - dim) / 2) as i64)
        };
        shape[a] = s;
    }
    let st = x.strides();
    let sel = map_indices(&shape, |o| {
        let mut lin = 0;
        for d in 0..r {
            let i = o[d] as i64 + shift[d];
            if i < 0 || i >= x.shape[d] as i64 {
                return Ok(None);
            }
            lin += i as usize * st[d];
        }
        Ok(Some(lin))
    })?;
    one(Tensor::new(
        shape,
        gather_fill(&x.data, &sel, &Data::zeros(x.elem(), 1))?,
    )?)
}

fn reverse_sequence(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let lens = ints(tensor(inputs, 1)?);
    let r = x.rank();
    let ta = norm_axis(cx.attr_int("time_axis", 0), r)?;
    let ba = norm_axis(cx.attr_int("batch_axis", 1), r)?;
    if lens.len() != x.shape[ba] {
        bail!(
            "ReverseSequence: {} lengths for batch of {}",
            lens.len(),
            x.shape[ba]
        );
    }
    let st = x.strides();
    let idx = map_indices(&x.shape, |o| {
        let len = lens[o[ba]];
        if len < 0 || len as usize > x.shape[ta] {
            bail!("ReverseSequence: length {len} out of range");
        }
        let t = o[ta];
        let src_t = if (t as i64) < len {
            len as usize - 1 - t
        } else {
            t
        };
        Ok(o.iter()
            .enumerate()
            .map(|(d, &i)| (if d == ta { src_t } else { i }) * st[d])
            .sum())
    })?;
    one(Tensor::new(x.shape.clone(), x.data.gather(&idx))?)
}

// ---------------------------------------------------------------- gathers

fn gather(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let ind = tensor(inputs, 1)?;
    let axis = norm_axis(cx.attr_int("axis", 0), x.rank())?;
    let n = x.shape[axis];
    let iv = ints(ind)
        .iter()
        .map(|&i| wrap_index(i, n, "Gather"))
        .collect::<KResult<Vec<_>>>()?;
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let mut shape = x.shape[..axis].to_vec();
    shape.extend_from_slice(&ind.shape);
    shape.extend_from_slice(&x.shape[axis + 1..]);
    let mut idx = Vec::with_capacity(outer * iv.len() * inner);
    for o in 0..outer {
        for &i in &iv {
            let base = (o * n + i) * inner;
            idx.extend(base..base + inner);
        }
    }
    one(Tensor::new(shape, x.data.gather(&idx))?)
}

fn gather_elements(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let ind = tensor(inputs, 1)?;
    let r = x.rank();
    let axis = norm_axis(cx.attr_int("axis", 0), r)?;
    if ind.rank() != r {
        bail!(
            "GatherElements: indices rank {} differs from data rank {r}",
            ind.rank()
        );
    }
    let iv = ints(ind);
    let st = x.strides();
    let mut k = 0;
    let idx = map_indices(&ind.shape, |o| {
        let j = wrap_index(iv[k], x.shape[axis], "GatherElements")?;
        k += 1;
        let mut lin = 0;
        for d in 0..r {
            let i = if d == axis { j } else { o[d] };
            if i >= x.shape[d] {
                bail!(
                    "GatherElements: indices shape {:?} exceeds data {:?}",
                    ind.shape,
                    x.shape
                );
            }
            lin += i * st[d];
        }
        Ok(lin)
    })?;
    one(Tensor::new(ind.shape.clone(), x.data.gather(&idx))?)
}

/// For GatherND/ScatterND: the data offsets and slice size addressed by an
/// index tensor whose last dim indexes `data` after `batch_dims` batch dims.
/// Returns (for each index tuple, the linear offset of its slice; the
/// slice length).
pub fn nd_offsets(
    data_shape: &[usize],
    ind: &Tensor,
    batch_dims: usize,
    op: &str,
) -> KResult<(Vec<usize>, usize)> {
    let Some(&k) = ind.shape.last() else {
        bail!("{op}: indices must have rank >= 1")
    };
    if batch_dims + k > data_shape.len() || batch_dims >= ind.rank() {
        bail!(
            "{op}: index depth {k} with {batch_dims} batch dims exceeds data rank {}",
            data_shape.len()
        );
    }
    if ind.shape[..batch_dims] != data_shape[..batch_dims] {
        bail!(
            "{op}: batch dims of indices {:?} and data {data_shape:?} differ",
            ind.shape
        );
    }
    let st = strides(data_shape);
    let slice: usize = data_shape[batch_dims + k..].iter().product();
    let iv = ints(ind);
    let tuples = iv
        .len()
        .checked_div(k)
        .unwrap_or_else(|| numel(&ind.shape[..ind.rank() - 1]));
    let per_batch = tuples / numel(&ind.shape[..batch_dims]).max(1);
    let batch_stride: usize = data_shape[batch_dims..].iter().product();
    let mut offs = Vec::with_capacity(tuples);
    for t in 0..tuples {
        let b = t.checked_div(per_batch).unwrap_or(0);
        let mut lin = b * batch_stride;
        for j in 0..k {
            let d = batch_dims + j;
            lin += wrap_index(iv[t * k + j], data_shape[d], op)? * st[d];
        }
        offs.push(lin);
    }
    Ok((offs, slice))
}

fn gather_nd(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let ind = tensor(inputs, 1)?;
    let bd = dim_of(cx.attr_int("batch_dims", 0), "GatherND batch_dims")?;
    let (offs, slice) = nd_offsets(&x.shape, ind, bd, "GatherND")?;
    let k = ind.shape[ind.rank() - 1];
    let mut shape = ind.shape[..ind.rank() - 1].to_vec();
    shape.extend_from_slice(&x.shape[bd + k..]);
    let idx: Vec<usize> = offs.iter().flat_map(|&o| o..o + slice).collect();
    one(Tensor::new(shape, x.data.gather(&idx))?)
}

fn compress(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let cond: Vec<bool> = tensor(inputs, 1)?
        .to_f64()
        .iter()
        .map(|&v| v != 0.0)
        .collect();
    match cx.attr("axis") {
        None => {
            if cond.len() > x.len() && cond[x.len()..].iter().any(|&c| c) {
                bail!("Compress: condition longer than the input");
            }
            let idx: Vec<usize> = (0..x.len().min(cond.len())).filter(|&i| cond[i]).collect();
            one(Tensor::new(vec![idx.len()], x.data.gather(&idx))?)
        }
        Some(_) => {
            let axis = norm_axis(cx.attr_int("axis", 0), x.rank())?;
            let n = x.shape[axis];
            if cond.len() > n && cond[n..].iter().any(|&c| c) {
                bail!("Compress: condition longer than dim {axis}");
            }
            let keep: Vec<usize> = (0..n.min(cond.len())).filter(|&i| cond[i]).collect();
            let outer: usize = x.shape[..axis].iter().product();
            let inner: usize = x.shape[axis + 1..].iter().product();
            let mut idx = Vec::new();
            for o in 0..outer {
                for &i in &keep {
                    let base = (o * n + i) * inner;
                    idx.extend(base..base + inner);
                }
            }
            let mut shape = x.shape.clone();
            shape[axis] = keep.len();
            one(Tensor::new(shape, x.data.gather(&idx))?)
        }
    }
}

fn non_zero(_cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let nz: Vec<bool> = match &x.data {
        Data::Str(v) => v.iter().map(|s| !s.is_empty()).collect(),
        Data::C64(v) => v.iter().map(|c| c[0] != 0.0 || c[1] != 0.0).collect(),
        Data::C128(v) => v.iter().map(|c| c[0] != 0.0 || c[1] != 0.0).collect(),
        d => d.to_f64().iter().map(|&v| v != 0.0).collect(),
    };
    let r = x.rank();
    let count = nz.iter().filter(|&&b| b).count();
    let mut out = vec![0i64; r * count];
    let (mut lin, mut j) = (0, 0);
    map_indices(&x.shape, |o| {
        if nz[lin] {
            for d in 0..r {
                out[d * count + j] = o[d] as i64;
            }
            j += 1;
        }
        lin += 1;
        Ok(())
    })?;
    one(Tensor::new(vec![r, count], Data::I64(out))?)
}

fn one_hot(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let ind = tensor(inputs, 0)?;
    let depth = tensor(inputs, 1)?.to_f64();
    let values = tensor(inputs, 2)?;
    if values.len() != 2 || depth.len() != 1 {
        bail!("OneHot: depth must be a scalar and values hold two elements");
    }
    let depth = depth[0] as i64;
    if depth <= 0 {
        bail!("OneHot: depth {depth} must be positive");
    }
    let r = ind.rank() + 1;
    let axis = norm_axis(cx.attr_int("axis", -1), r)?;
    let mut shape = ind.shape.clone();
    shape.insert(axis, depth as usize);
    crate::limits::alloc(
        || format!("the result of shape {shape:?}"),
        values.elem(),
        &shape,
    )?;
    let iv: Vec<i64> = ind.to_f64().iter().map(|&v| v as i64).collect();
    let ist = ind.strides();
    let idx = map_indices(&shape, |o| {
        let mut lin = 0;
        let mut k = 0;
        for (d, &i) in o.iter().enumerate() {
            if d != axis {
                lin += i * ist[k];
                k += 1;
            }
        }
        let mut v = iv[lin];
        if v < 0 {
            v += depth;
        }
        Ok(usize::from(v == o[axis] as i64))
    })?;
    one(Tensor::new(shape, values.data.gather(&idx))?)
}

// ---------------------------------------------------------------- scatters

/// The shared end of the scatters: `targets[i]` receives `updates[i]`,
/// later ones winning (no reduction) or combined by `reduction`.
fn scatter_apply(
    data: &Tensor,
    updates: &Data,
    targets: &[usize],
    reduction: &str,
) -> KResult<Tensor> {
    if reduction == "none" {
        let n = data.len();
        let mut idx: Vec<usize> = (0..n).collect();
        for (u, &t) in targets.iter().enumerate() {
            idx[t] = n + u;
        }
        let all = Data::concat(&[&data.data, updates])
            .ok_or("updates and data differ in element type")?;
        return Ok(Tensor::new(data.shape.clone(), all.gather(&idx))?);
    }
    let elem = data.elem();
    let out = match (to_num(&data.data), to_num(updates)) {
        (Num::F(mut d), Num::F(u)) => {
            let f: fn(f64, f64) -> f64 = match reduction {
                "add" => |a, b| a + b,
                "mul" => |a, b| a * b,
                "max" => f64::max,
                "min" => f64::min,
                r => bail!("unknown reduction `{r}`"),
            };
            for (k, &t) in targets.iter().enumerate() {
                d[t] = f(d[t], u[k]);
            }
            Num::F(d)
        }
        (Num::I(mut d), Num::I(u)) => {
            let f: fn(i64, i64) -> i64 = match reduction {
                "add" => i64::wrapping_add,
                "mul" => i64::wrapping_mul,
                "max" => i64::max,
                "min" => i64::min,
                r => bail!("unknown reduction `{r}`"),
            };
            for (k, &t) in targets.iter().enumerate() {
                d[t] = f(d[t], u[k]);
            }
            Num::I(d)
        }
        _ => bail!("updates and data differ in element type"),
    };
    Ok(Tensor::new(data.shape.clone(), from_num(elem, &out))?)
}

fn scatter_elements(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let ind = tensor(inputs, 1)?;
    let upd = tensor(inputs, 2)?;
    let r = x.rank();
    let axis = norm_axis(cx.attr_int("axis", 0), r)?;
    if ind.shape != upd.shape || ind.rank() != r {
        bail!(
            "ScatterElements: indices {:?}, updates {:?}, data {:?}",
            ind.shape,
            upd.shape,
            x.shape
        );
    }
    let iv = ints(ind);
    let st = x.strides();
    let mut k = 0;
    let targets = map_indices(&ind.shape, |o| {
        let j = wrap_index(iv[k], x.shape[axis], "ScatterElements")?;
        k += 1;
        let mut lin = 0;
        for d in 0..r {
            let i = if d == axis { j } else { o[d] };
            if i >= x.shape[d] {
                bail!(
                    "ScatterElements: indices shape {:?} exceeds data {:?}",
                    ind.shape,
                    x.shape
                );
            }
            lin += i * st[d];
        }
        Ok(lin)
    })?;
    let red = cx.attr_str("reduction").unwrap_or("none").to_string();
    one(scatter_apply(x, &upd.data, &targets, &red)?)
}

fn scatter_nd(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let ind = tensor(inputs, 1)?;
    let upd = tensor(inputs, 2)?;
    let (offs, slice) = nd_offsets(&x.shape, ind, 0, "ScatterND")?;
    if offs.len() * slice != upd.len() {
        bail!(
            "ScatterND: updates {:?} do not match indices {:?} and data {:?}",
            upd.shape,
            ind.shape,
            x.shape
        );
    }
    let targets: Vec<usize> = offs.iter().flat_map(|&o| o..o + slice).collect();
    let red = cx.attr_str("reduction").unwrap_or("none").to_string();
    one(scatter_apply(x, &upd.data, &targets, &red)?)
}

/// TensorScatter (opset 24, a key/value cache update): `past_cache` with
/// `update`'s positions along `axis` written from `write_indices[b]` on
/// (0 without), wrapping around the axis in `circular` mode; in `linear`
/// mode a write past the end is an error.
fn tensor_scatter(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let past = tensor(inputs, 0)?;
    let upd = tensor(inputs, 1)?;
    let rank = past.rank();
    let axis = norm_axis(cx.attr_int("axis", -2), rank)?;
    if axis == 0 {
        bail!("TensorScatter: axis cannot be the batch axis");
    }
    let circular = match cx.attr_str("mode").unwrap_or("linear") {
        "linear" => false,
        "circular" => true,
        m => bail!("TensorScatter: unknown mode `{m}`"),
    };
    let fits = upd.rank() == rank
        && (0..rank).all(|i| {
            if i == axis {
                upd.shape[i] <= past.shape[i]
            } else {
                upd.shape[i] == past.shape[i]
            }
        });
    if !fits {
        bail!(
            "TensorScatter: update {:?} does not fit the cache {:?} along axis {axis}",
            upd.shape,
            past.shape
        );
    }
    let batch = past.shape[0];
    let starts = match opt_tensor(inputs, 2)? {
        Some(w) if w.len() == batch => ints(w),
        Some(w) => bail!("TensorScatter: {} write indices for batch {batch}", w.len()),
        None => vec![0; batch],
    };
    let (max, seq) = (past.shape[axis] as i64, upd.shape[axis]);
    let inner: usize = past.shape[axis + 1..].iter().product();
    let per_batch: usize = past.shape[1..axis].iter().product();
    let mut targets = Vec::with_capacity(upd.len());
    for (b, &start) in starts.iter().enumerate() {
        for p in 0..per_batch {
            let outer = b * per_batch + p;
            for s in 0..seq as i64 {
                let mut at = start + s;
                if circular {
                    at = at.rem_euclid(max.max(1));
                } else if at < 0 || at >= max {
                    bail!("TensorScatter: write index {at} outside the cache's {max} positions");
                }
                let base = (outer * max as usize + at as usize) * inner;
                targets.extend(base..base + inner);
            }
        }
    }
    one(scatter_apply(past, &upd.data, &targets, "none")?)
}

// ---------------------------------------------------------------- arithmetic movers

fn cumsum(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let a = ints(tensor(inputs, 1)?);
    let Some(&a) = a.first() else {
        bail!("CumSum: axis is empty")
    };
    let axis = norm_axis(a, x.rank())?;
    let exclusive = cx.attr_int("exclusive", 0) != 0;
    let reverse = cx.attr_int("reverse", 0) != 0;
    let n = x.shape.get(axis).copied().unwrap_or(1);
    let outer: usize = x.shape[..axis.min(x.rank())].iter().product();
    let inner: usize = x.shape.get(axis + 1..).map_or(1, |s| s.iter().product());
    // Positions along the axis in the order they accumulate.
    let order: Vec<usize> = if reverse {
        (0..n).rev().collect()
    } else {
        (0..n).collect()
    };
    macro_rules! scan {
        ($v:expr, $zero:expr, $add:expr) => {{
            let v = $v;
            let mut out = v.clone();
            for o in 0..outer {
                for i in 0..inner {
                    let mut acc = $zero;
                    for &k in &order {
                        let p = (o * n + k) * inner + i;
                        if exclusive {
                            out[p] = acc;
                            acc = $add(acc, v[p]);
                        } else {
                            acc = $add(acc, v[p]);
                            out[p] = acc;
                        }
                    }
                }
            }
            out
        }};
    }
    let out = match to_num(&x.data) {
        Num::F(v) => Num::F(scan!(v, 0.0, |a: f64, b: f64| a + b)),
        Num::I(v) => Num::I(scan!(v, 0i64, i64::wrapping_add)),
    };
    one(Tensor::new(x.shape.clone(), from_num(x.elem(), &out))?)
}

fn col2im(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let image: Vec<usize> = ints(tensor(inputs, 1)?)
        .iter()
        .map(|&d| dim_of(d, "Col2Im image dim"))
        .collect::<KResult<_>>()?;
    let block: Vec<usize> = ints(tensor(inputs, 2)?)
        .iter()
        .map(|&d| dim_of(d, "Col2Im block dim"))
        .collect::<KResult<_>>()?;
    let nd = image.len();
    if block.len() != nd || x.rank() != 3 {
        bail!("Col2Im: input must be 3-D and block_shape match image_shape");
    }
    let dil = cx
        .attr_ints("dilations")
        .map(<[i64]>::to_vec)
        .unwrap_or(vec![1; nd]);
    let strd = cx
        .attr_ints("strides")
        .map(<[i64]>::to_vec)
        .unwrap_or(vec![1; nd]);
    let pads = cx
        .attr_ints("pads")
        .map(<[i64]>::to_vec)
        .unwrap_or(vec![0; 2 * nd]);
    if dil.len() != nd || strd.len() != nd || pads.len() != 2 * nd || strd.iter().any(|&s| s <= 0) {
        bail!("Col2Im: bad dilations/strides/pads");
    }
    let bl = block
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .unwrap_or(0);
    if bl == 0 || x.shape[1] % bl != 0 {
        bail!(
            "Col2Im: dim 1 ({}) not divisible by the block size {bl}",
            x.shape[1]
        );
    }
    let c = x.shape[1] / bl;
    let mut cols = Vec::new();
    for i in 0..nd {
        // In i128: pads, dilations and sizes come from the model.
        let span = image[i] as i128 + pads[i] as i128 + pads[i + nd] as i128
            - dil[i] as i128 * (block[i] as i128 - 1)
            - 1;
        if span < 0 {
            bail!("Col2Im: block does not fit the image");
        }
        cols.push(usize::try_from(span / strd[i] as i128 + 1).unwrap_or(usize::MAX));
    }
    let l = cols
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .unwrap_or(usize::MAX);
    if x.shape[2] != l {
        bail!("Col2Im: {} blocks given, {l} expected", x.shape[2]);
    }
    let n = x.shape[0];
    let mut dims = vec![n, c];
    dims.extend(&image);
    let mut out = super::shape::buffer::<f64>("the Col2Im result", &dims)?;
    let img_n: usize = image.iter().product();
    let v = x.to_f64();
    let ist = strides(&image);
    let kcoords = map_indices(&block, |o| Ok(o.to_vec()))?;
    let ccoords = map_indices(&cols, |o| Ok(o.to_vec()))?;
    for b in 0..n {
        for ch in 0..c {
            for (kk, ko) in kcoords.iter().enumerate() {
                for (cc, co) in ccoords.iter().enumerate() {
                    let mut lin = 0;
                    let mut inside = true;
                    for i in 0..nd {
                        let p = co[i] as i64 * strd[i] - pads[i] + ko[i] as i64 * dil[i];
                        if p < 0 || p >= image[i] as i64 {
                            inside = false;
                            break;
                        }
                        lin += p as usize * ist[i];
                    }
                    if inside {
                        out[(b * c + ch) * img_n + lin] += v[((b * c + ch) * bl + kk) * l + cc];
                    }
                }
            }
        }
    }
    let mut shape = vec![n, c];
    shape.extend_from_slice(&image);
    one(Tensor::new(shape, Data::from_f64(x.elem(), &out))?)
}

// ---------------------------------------------------------------- sorting

fn top_k(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let k = ints(tensor(inputs, 1)?);
    let Some(&k) = k.first() else {
        bail!("TopK: K is empty")
    };
    let axis = norm_axis(cx.attr_int("axis", -1), x.rank())?;
    let largest = cx.attr_int("largest", 1) != 0;
    let n = x.shape[axis];
    if k < 0 || k as usize > n {
        bail!("TopK: K = {k} out of range for a dim of {n}");
    }
    let k = k as usize;
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let mut src = Vec::with_capacity(outer * k * inner);
    let mut pos = vec![0i64; outer * k * inner];
    for o in 0..outer {
        for i in 0..inner {
            let mut order: Vec<usize> = (0..n).collect();
            let at = |j: usize| (o * n + j) * inner + i;
            // Stable sort: equal values keep the lower index first.
            order.sort_by(|&a, &b| {
                let c = cmp_elems(&x.data, at(a), at(b));
                if largest {
                    c.reverse()
                } else {
                    c
                }
            });
            for (j, &p) in order[..k].iter().enumerate() {
                pos[(o * k + j) * inner + i] = p as i64;
            }
        }
    }
    for o in 0..outer {
        for j in 0..k {
            for i in 0..inner {
                src.push((o * n + pos[(o * k + j) * inner + i] as usize) * inner + i);
            }
        }
    }
    let mut shape = x.shape.clone();
    shape[axis] = k;
    Ok(vec![
        Value::tensor(Tensor::new(shape.clone(), x.data.gather(&src))?),
        Value::tensor(Tensor::new(shape, Data::I64(pos))?),
    ])
}

fn unique(cx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    let sorted = cx.attr_int("sorted", 1) != 0;
    // Items compared lexicographically: single elements, or the slices
    // along `axis` (item j, part k is element rest[k] + j * step).
    let (axis, n_items, rest, step): (Option<usize>, usize, Vec<usize>, usize) =
        match cx.attr("axis") {
            None => (None, x.len(), vec![0], 1),
            Some(_) => {
                let axis = norm_axis(cx.attr_int("axis", 0), x.rank())?;
                let mut rest_shape = x.shape.clone();
                rest_shape[axis] = 1;
                let st = x.strides();
                let rest = map_indices(&rest_shape, |o| {
                    Ok(o.iter().zip(&st).map(|(a, b)| a * b).sum())
                })?;
                (Some(axis), x.shape[axis], rest, st[axis])
            }
        };
    let cmp_items = |a: usize, b: usize| {
        rest.iter()
            .map(|&r| cmp_elems(&x.data, r + a * step, r + b * step))
            .find(|c| c.is_ne())
            .unwrap_or(Ordering::Equal)
    };
    let mut order: Vec<usize> = (0..n_items).collect();
    order.sort_by(|&a, &b| cmp_items(a, b));
    // Groups in sorted order: (first occurrence, count).
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut group_of = vec![0usize; n_items];
    for (p, &i) in order.iter().enumerate() {
        if p > 0 && cmp_items(order[p - 1], i).is_eq() {
            let g = groups.last_mut().expect("group");
            g.0 = g.0.min(i);
            g.1 += 1;
        } else {
            groups.push((i, 1));
        }
        group_of[i] = groups.len() - 1;
    }
    // Output order of the groups: sorted, or by first occurrence.
    let mut gorder: Vec<usize> = (0..groups.len()).collect();
    if !sorted {
        gorder.sort_by_key(|&g| groups[g].0);
    }
    let mut rank_of = vec![0usize; groups.len()];
    for (r, &g) in gorder.iter().enumerate() {
        rank_of[g] = r;
    }
    let firsts: Vec<usize> = gorder.iter().map(|&g| groups[g].0).collect();
    let y = match axis {
        None => {
            let idx: Vec<usize> = firsts.clone();
            Tensor::new(vec![idx.len()], x.data.gather(&idx))?
        }
        Some(axis) => {
            let mut shape = x.shape.clone();
            shape[axis] = firsts.len();
            let st = x.strides();
            let idx = map_indices(&shape, |o| {
                Ok(o.iter()
                    .enumerate()
                    .map(|(d, &i)| (if d == axis { firsts[i] } else { i }) * st[d])
                    .sum())
            })?;
            Tensor::new(shape, x.data.gather(&idx))?
        }
    };
    let m = firsts.len();
    let indices: Vec<i64> = firsts.iter().map(|&i| i as i64).collect();
    let inverse: Vec<i64> = group_of.iter().map(|&g| rank_of[g] as i64).collect();
    let counts: Vec<i64> = gorder.iter().map(|&g| groups[g].1 as i64).collect();
    Ok(vec![
        Value::tensor(y),
        Value::tensor(Tensor::new(vec![m], Data::I64(indices))?),
        Value::tensor(Tensor::new(vec![inverse.len()], Data::I64(inverse))?),
        Value::tensor(Tensor::new(vec![m], Data::I64(counts))?),
    ])
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::interp::Interpreter;
    use crate::tensor::{Data, Tensor};
    use crate::value::Value;

    /// Run a module whose graph has no inputs; its outputs as tensors, or
    /// the error message.
    fn run(body: &str) -> Result<Vec<Tensor>, String> {
        let src = format!("module @m opset(ai.onnx = 22) {{\n{body}\n}}\n");
        let m = kiln_ir::parse_module(&src).expect("parse");
        Interpreter::new(&m)
            .run(&HashMap::new())
            .map(|vs| {
                vs.into_iter()
                    .map(|v| v.as_tensor().expect("tensor").clone())
                    .collect()
            })
            .map_err(|e| e.message)
    }

    #[test]
    fn pad_negative_and_large_reflect() {
        let out = run("  const %x: i64[4] = dense[1, 2, 3, 4]\n  const %p: i64[2] = dense[-1, 6]\n  %y = Pad(%x, %p) {mode = \"reflect\"} : i64[9]\n  return %y")
            .expect("run");
        // Periodic reflection of 1 2 3 4 (period 6), starting at index 1.
        assert_eq!(out[0].data, Data::I64(vec![2, 3, 4, 3, 2, 1, 2, 3, 4]));
        let out = run("  const %x: string[2] = dense[\"a\", \"b\"]\n  const %p: i64[2] = dense[1, 1]\n  const %v: string[] = dense[\"z\"]\n  %y = Pad(%x, %p, %v) : string[4]\n  return %y")
            .expect("run");
        assert_eq!(
            out[0].data,
            Data::Str(vec!["z".into(), "a".into(), "b".into(), "z".into()])
        );
    }

    #[test]
    fn slice_clamps_huge_bounds_and_negative_steps() {
        let out = run("  const %x: i64[5] = dense[0, 1, 2, 3, 4]\n  const %s: i64[1] = dense[9223372036854775807]\n  const %e: i64[1] = dense[-9223372036854775807]\n  const %a: i64[1] = dense[0]\n  const %st: i64[1] = dense[-2]\n  %y = Slice(%x, %s, %e, %a, %st) : i64[3]\n  return %y")
            .expect("run");
        assert_eq!(out[0].data, Data::I64(vec![4, 2, 0]));
    }

    #[test]
    fn top_k_ties_take_the_lower_index() {
        let out = run("  const %x: f32[5] = dense[1.0, 3.0, 3.0, 0.0, 3.0]\n  const %k: i64[1] = dense[3]\n  %v, %i = TopK(%x, %k) : f32[3], i64[3]\n  return %v, %i")
            .expect("run");
        assert_eq!(out[1].data, Data::I64(vec![1, 2, 4]));
        let out = run("  const %x: f32[5] = dense[1.0, 3.0, 3.0, 0.0, 3.0]\n  const %k: i64[1] = dense[2]\n  %v, %i = TopK(%x, %k) {largest = 0} : f32[2], i64[2]\n  return %v, %i")
            .expect("run");
        assert_eq!(out[1].data, Data::I64(vec![3, 0]));
    }

    #[test]
    fn unique_unsorted_outputs() {
        let out = run("  const %x: i64[6] = dense[2, 1, 1, 3, 4, 3]\n  %y, %i, %inv, %c = Unique(%x) {sorted = 0} : i64[4], i64[4], i64[6], i64[4]\n  return %y, %i, %inv, %c")
            .expect("run");
        assert_eq!(out[0].data, Data::I64(vec![2, 1, 3, 4]));
        assert_eq!(out[1].data, Data::I64(vec![0, 1, 3, 4]));
        assert_eq!(out[2].data, Data::I64(vec![0, 1, 1, 2, 3, 2]));
        assert_eq!(out[3].data, Data::I64(vec![1, 2, 2, 1]));
    }

    #[test]
    fn out_of_range_indices_are_errors() {
        let err = run("  const %x: f32[3] = dense[1.0, 2.0, 3.0]\n  const %i: i64[1] = dense[3]\n  %y = Gather(%x, %i) : f32[1]\n  return %y")
            .expect_err("out of range");
        assert!(err.contains("out of range"), "{err}");
        let out = run("  const %x: f32[3] = dense[1.0, 2.0, 3.0]\n  const %i: i64[1] = dense[-3]\n  %y = Gather(%x, %i) : f32[1]\n  return %y")
            .expect("negative wraps");
        assert_eq!(out[0].data, Data::F32(vec![1.0]));
        let err = run("  const %x: f32[3] = dense[1.0, 2.0, 3.0]\n  const %i: i64[1,1] = dense[5]\n  const %u: f32[1] = dense[9.0]\n  %y = ScatterND(%x, %i, %u) : f32[3]\n  return %y")
            .expect_err("out of range");
        assert!(err.contains("out of range"), "{err}");
    }

    #[test]
    fn split_uneven_last_chunk() {
        let out = run("  const %x: i64[5] = dense[0, 1, 2, 3, 4]\n  %a, %b = Split(%x) {num_outputs = 2} : i64[3], i64[2]\n  return %a, %b")
            .expect("run");
        assert_eq!(out[1].data, Data::I64(vec![3, 4]));
    }

    #[test]
    fn gather_fill_keeps_the_type() {
        let t = Tensor::new(vec![2], Data::Bool(vec![true, false])).expect("t");
        let d = super::gather_fill(&t.data, &[Some(1), None, Some(0)], &Data::Bool(vec![true]))
            .expect("fill");
        assert_eq!(d, Data::Bool(vec![false, true, true]));
        let _ = Value::tensor(t);
    }
}
