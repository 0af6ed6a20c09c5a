//! Rules of the data-movement ops: constants and shape queries (Constant,
//! ConstantOfShape, Shape, Size), reshapes (Reshape, Flatten, Squeeze,
//! Unsqueeze, Transpose, Expand, Tile, DepthToSpace, SpaceToDepth),
//! joining and cutting (Concat, Split, Slice, Pad, CenterCropPad, Col2Im),
//! gathers and selection (Gather, GatherElements, GatherND, Compress,
//! OneHot, TopK, NonZero, Unique), and Range.

use super::common::{
    axis_of, bad_attr, const_scalar, elem, err, fill, k, known_u64, norm_axes, shape_len, shape_of,
    shape_operand, t, t_opt, tensor, unknown_dims, unranked, R,
};
use crate::attr::Attr;
use crate::ops::dims::{add_const, broadcast_shapes, div_exact, merge_dim, mul_const};
use crate::ops::schema::{InferCtx, InferError};
use crate::types::{dims_product, Dim, ElemType, TensorType, Type};

pub(super) fn constant(c: &InferCtx) -> R {
    let a = c
        .attrs
        .iter()
        .find(|(k, _)| k.starts_with("value") || *k == "sparse_value")
        .map(|(_, a)| a)
        .ok_or_else(|| err("Constant needs one value attribute"))?;
    Ok(vec![match a {
        Attr::Tensor(d) => Type::Tensor(TensorType::known(d.elem, &d.shape)),
        Attr::Float(_) => t(ElemType::F32, vec![]),
        Attr::Int(_) => t(ElemType::I64, vec![]),
        Attr::String(_) => t(ElemType::String, vec![]),
        Attr::Floats(v) => t(ElemType::F32, vec![k(v.len() as u64)]),
        Attr::Ints(v) => t(ElemType::I64, vec![k(v.len() as u64)]),
        Attr::Strings(v) => t(ElemType::String, vec![k(v.len() as u64)]),
        _ => return Err(err("unsupported Constant value attribute")),
    }])
}

pub(super) fn constant_of_shape(c: &InferCtx) -> R {
    let e = c
        .attr("value")
        .and_then(Attr::as_tensor)
        .map(|d| d.elem)
        .unwrap_or(ElemType::F32);
    Ok(vec![t_opt(e, shape_operand(c, 0)?)])
}

pub(super) fn shape(c: &InferCtx) -> R {
    let n = match shape_of(c, 0)? {
        None => Dim::Unknown,
        Some(s) => {
            let r = s.len() as i64;
            let clamp = |v: i64| {
                if v < 0 {
                    (v.saturating_add(r)).max(0)
                } else {
                    v.min(r)
                }
            };
            let start = clamp(c.attr_int("start", 0));
            let end = clamp(c.attr_int("end", r));
            k((end - start).max(0) as u64)
        }
    };
    Ok(vec![t(ElemType::I64, vec![n])])
}

pub(super) fn size(c: &InferCtx) -> R {
    tensor(c, 0)?;
    Ok(vec![t(ElemType::I64, vec![])])
}

pub(super) fn reshape(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let input = shape_of(c, 0)?;
    let Some(target) = c.int_values(1) else {
        return Ok(vec![t_opt(e, shape_len(c, 1).map(unknown_dims))]);
    };
    let allowzero = c.attr_int("allowzero", 0) != 0;
    let mut out = Vec::with_capacity(target.len());
    let mut infer_at = None;
    for (i, tv) in target.iter().enumerate() {
        // Symbolic entries are sizes; unknown entries may be 0 or -1.
        let d = match tv.as_ref().map(|x| (x.as_const(), x)) {
            Some((Some(c), _)) => c,
            Some((None, x)) => {
                out.push(Dim::from_expr(x.clone()));
                continue;
            }
            // Could be 0 (copy) or -1 (infer): only the rank is known.
            None => return Ok(vec![t(e, unknown_dims(target.len()))]),
        };
        out.push(match d {
            -1 => {
                if infer_at.replace(i).is_some() {
                    return Err(InferError::BadInput {
                        index: 1,
                        msg: "more than one -1".into(),
                    });
                }
                Dim::Unknown
            }
            0 if !allowzero => match input {
                Some(s) => s.get(i).cloned().ok_or_else(|| InferError::BadInput {
                    index: 1,
                    msg: format!("0 at position {i} beyond the input rank {}", s.len()),
                })?,
                None => Dim::Unknown,
            },
            d if d < 0 => {
                return Err(InferError::BadInput {
                    index: 1,
                    msg: format!("invalid dim {d}"),
                })
            }
            d => k(d as u64),
        });
    }
    if let (Some(i), Some(s)) = (infer_at, input) {
        let total = dims_product(s);
        let others: Vec<Dim> = out
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, d)| d.clone())
            .collect();
        let known = dims_product(&others);
        if let (Dim::Known(a), Dim::Known(b)) = (&total, &known) {
            if *b == 0 || a % b != 0 {
                return Err(InferError::BadInput {
                    index: 1,
                    msg: format!("cannot reshape {a} elements into a multiple of {b}"),
                });
            }
        }
        out[i] = div_exact(&total, &known);
    }
    if let (Some(s), None) = (input, infer_at) {
        if let (Dim::Known(a), Dim::Known(b)) = (dims_product(s), dims_product(&out)) {
            if a != b {
                return Err(InferError::BadInput {
                    index: 1,
                    msg: format!("cannot reshape {a} elements into {b}"),
                });
            }
        }
    }
    Ok(vec![t(e, out)])
}

pub(super) fn flatten(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![t(e, unknown_dims(2))]);
    };
    let r = s.len();
    let a = c.attr_int("axis", 1);
    let a = if a < 0 { a + r as i64 } else { a };
    if a < 0 || a > r as i64 {
        return Err(bad_attr("axis", format!("{a} out of range for rank {r}")));
    }
    let a = a as usize;
    Ok(vec![t(
        e,
        vec![dims_product(&s[..a]), dims_product(&s[a..])],
    )])
}

pub(super) fn squeeze(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    if c.has_input(1) {
        let Some(axes) = c.const_ints(1) else {
            return Ok(vec![t_opt(
                e,
                shape_len(c, 1)
                    .and_then(|n| s.len().checked_sub(n))
                    .map(unknown_dims),
            )]);
        };
        let axes = norm_axes(&axes, s.len(), "squeeze")?;
        for &a in &axes {
            if let Dim::Known(d) = s[a] {
                if d != 1 {
                    return Err(err(format!("cannot squeeze axis {a} of size {d}")));
                }
            }
        }
        let out = s
            .iter()
            .enumerate()
            .filter(|(i, _)| !axes.contains(i))
            .map(|(_, d)| d.clone());
        return Ok(vec![t(e, out.collect())]);
    }
    if s.iter().any(|d| !matches!(d, Dim::Known(_))) {
        return Ok(vec![unranked(e)]);
    }
    Ok(vec![t(
        e,
        s.iter().filter(|d| !d.is_one()).cloned().collect(),
    )])
}

pub(super) fn unsqueeze(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let s = shape_of(c, 0)?;
    let Some(axes) = c.const_ints(1) else {
        let r = s.map(|s| s.len()).zip(shape_len(c, 1)).map(|(a, b)| a + b);
        return Ok(vec![t_opt(e, r.map(unknown_dims))]);
    };
    let Some(s) = s else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len() + axes.len();
    let axes = norm_axes(&axes, r, "unsqueeze")?;
    let mut src = s.iter();
    let out = (0..r)
        .map(|i| {
            if axes.contains(&i) {
                k(1)
            } else {
                src.next().cloned().unwrap_or(Dim::Unknown)
            }
        })
        .collect();
    Ok(vec![t(e, out)])
}

pub(super) fn transpose(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![t_opt(
            e,
            c.attr_ints("perm").map(|p| unknown_dims(p.len())),
        )]);
    };
    let perm: Vec<i64> = match c.attr_ints("perm") {
        Some(p) => p.to_vec(),
        None => (0..s.len() as i64).rev().collect(),
    };
    if perm.len() != s.len() {
        return Err(bad_attr(
            "perm",
            format!("length {} for rank {}", perm.len(), s.len()),
        ));
    }
    let p = norm_axes(&perm, s.len(), "perm")?;
    Ok(vec![t(e, p.iter().map(|&i| s[i].clone()).collect())])
}

pub(super) fn expand(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(s), Some(target)) = (shape_of(c, 0)?, shape_operand(c, 1)?) else {
        return Ok(vec![unranked(e)]);
    };
    Ok(vec![t(e, broadcast_shapes(&[s, &target]).map_err(err)?)])
}

pub(super) fn tile(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let Some(rep) = c.const_ints(1) else {
        return Ok(vec![t(e, unknown_dims(s.len()))]);
    };
    if rep.len() != s.len() {
        return Err(InferError::BadInput {
            index: 1,
            msg: "repeats length must equal the rank".into(),
        });
    }
    let out = s
        .iter()
        .zip(&rep)
        .map(|(d, &r)| {
            u64::try_from(r)
                .map(|r| mul_const(d, r))
                .map_err(|_| err("negative repeat"))
        })
        .collect::<Result<_, _>>()?;
    Ok(vec![t(e, out)])
}

pub(super) fn concat(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let mut shapes = vec![];
    for i in 0..c.inputs.len() {
        if c.has_input(i) {
            match shape_of(c, i)? {
                Some(s) => shapes.push(s),
                None => return Ok(vec![unranked(e)]),
            }
        }
    }
    let r = shapes
        .first()
        .map(|s| s.len())
        .ok_or_else(|| err("Concat needs an operand"))?;
    if shapes.iter().any(|s| s.len() != r) {
        return Err(err("Concat operands have different ranks"));
    }
    let a = axis_of(c, "axis", 0, r)?;
    let mut out = shapes[0].to_vec();
    for s in &shapes[1..] {
        for i in 0..r {
            out[i] = if i == a {
                out[i].add(&s[i])
            } else {
                merge_dim(&out[i], &s[i]).map_err(err)?
            };
        }
    }
    Ok(vec![t(e, out)])
}

pub(super) fn split(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let n = c.num_outputs.max(1);
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e); n]);
    };
    let a = axis_of(c, "axis", 0, s.len())?;
    let parts: Vec<Dim> = if c.has_input(1) {
        match c.const_ints(1) {
            Some(v) => {
                if v.len() != n {
                    return Err(InferError::BadInput {
                        index: 1,
                        msg: format!("{} sizes for {n} results", v.len()),
                    });
                }
                if let Some(total) = s[a].as_known() {
                    if v.iter().try_fold(0i64, |acc, &x| acc.checked_add(x))
                        != i64::try_from(total).ok()
                    {
                        return Err(InferError::BadInput {
                            index: 1,
                            msg: format!("sizes do not sum to {total}"),
                        });
                    }
                }
                v.iter()
                    .map(|&x| known_u64(x).ok_or_else(|| err("negative split")))
                    .collect::<Result<_, _>>()?
            }
            None => unknown_dims(n),
        }
    } else {
        let parts = c.attr_int("num_outputs", n as i64);
        if parts != n as i64 {
            return Err(bad_attr(
                "num_outputs",
                format!("{parts} but the node has {n} results"),
            ));
        }
        match &s[a] {
            Dim::Known(d) => {
                let chunk = d.div_ceil(n as u64);
                let mut left = *d;
                (0..n)
                    .map(|_| {
                        let x = chunk.min(left);
                        left -= x;
                        k(x)
                    })
                    .collect()
            }
            d => vec![div_exact(d, &k(n as u64)); n],
        }
    };
    Ok(parts
        .into_iter()
        .map(|p| {
            let mut o = s.to_vec();
            o[a] = p;
            t(e, o)
        })
        .collect())
}

pub(super) fn slice(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len();
    let (Some(starts), Some(ends)) = (c.const_ints(1), c.const_ints(2)) else {
        return Ok(vec![t(e, unknown_dims(r))]);
    };
    if starts.len() != ends.len() {
        return Err(err("starts and ends differ in length"));
    }
    let axes: Vec<i64> = if c.has_input(3) {
        match c.const_ints(3) {
            Some(a) => a,
            None => return Ok(vec![t(e, unknown_dims(r))]),
        }
    } else {
        (0..starts.len() as i64).collect()
    };
    let steps: Vec<i64> = if c.has_input(4) {
        match c.const_ints(4) {
            Some(a) => a,
            None => return Ok(vec![t(e, unknown_dims(r))]),
        }
    } else {
        vec![1; starts.len()]
    };
    if axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(err("starts, ends, axes and steps differ in length"));
    }
    let axes = norm_axes(&axes, r, "slice")?;
    let mut out = s.to_vec();
    for (j, &a) in axes.iter().enumerate() {
        let (st, en, step) = (starts[j], ends[j], steps[j]);
        if step == 0 {
            return Err(err("slice step 0"));
        }
        out[a] = match &s[a] {
            Dim::Known(d) => {
                let (_, len) = crate::ops::geometry::slice_range(st, en, step, *d);
                k(len)
            }
            d => {
                // Symbolic: only the full-range-from-a-start forward slice.
                // (An end of at least INT_MAX means "to the end".)
                if step == 1 && st >= 0 && en >= i32::MAX as i64 {
                    add_const(d, -st)
                } else {
                    Dim::Unknown
                }
            }
        };
    }
    Ok(vec![t(e, out)])
}

pub(super) fn gather(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(d), Some(i)) = (shape_of(c, 0)?, shape_of(c, 1)?) else {
        return Ok(vec![unranked(e)]);
    };
    let a = axis_of(c, "axis", 0, d.len())?;
    let mut out = d[..a].to_vec();
    out.extend(i.iter().cloned());
    out.extend(d[a + 1..].iter().cloned());
    Ok(vec![t(e, out)])
}

pub(super) fn gather_elements(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    Ok(vec![t_opt(e, shape_of(c, 1)?.map(|s| s.to_vec()))])
}

pub(super) fn gather_nd(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(d), Some(i)) = (shape_of(c, 0)?, shape_of(c, 1)?) else {
        return Ok(vec![unranked(e)]);
    };
    let b = usize::try_from(c.attr_int("batch_dims", 0))
        .map_err(|_| bad_attr("batch_dims", "negative"))?;
    let Some(last) = i.last() else {
        return Err(err("GatherND indices must have rank >= 1"));
    };
    let Some(m) = last.as_known().and_then(|m| usize::try_from(m).ok()) else {
        return Ok(vec![unranked(e)]);
    };
    let Some(rest) = b.checked_add(m).filter(|&x| x <= d.len()) else {
        return Err(err("GatherND index depth exceeds the data rank"));
    };
    let mut out = i[..i.len() - 1].to_vec();
    out.extend(d[rest..].iter().cloned());
    Ok(vec![t(e, out)])
}

pub(super) fn compress(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    match c.attr("axis") {
        None => Ok(vec![t(e, vec![Dim::Unknown])]),
        Some(_) => {
            let Some(s) = shape_of(c, 0)? else {
                return Ok(vec![unranked(e)]);
            };
            let a = axis_of(c, "axis", 0, s.len())?;
            let mut o = s.to_vec();
            o[a] = Dim::Unknown;
            Ok(vec![t(e, o)])
        }
    }
}

fn axes_operand(c: &InferCtx, i: usize, rank: usize) -> Result<Option<Vec<usize>>, InferError> {
    if !c.has_input(i) {
        return Ok(Some((0..rank).collect()));
    }
    match c.const_ints(i) {
        Some(a) => norm_axes(&a, rank, "").map(Some),
        None => Ok(None),
    }
}

pub(super) fn pad(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len();
    let (Some(p), Some(axes)) = (c.const_ints(1), axes_operand(c, 3, r)?) else {
        return Ok(vec![t(e, unknown_dims(r))]);
    };
    if p.len() != 2 * axes.len() {
        return Err(InferError::BadInput {
            index: 1,
            msg: format!("{} pads for {} axes", p.len(), axes.len()),
        });
    }
    let mut out = s.to_vec();
    for (j, &a) in axes.iter().enumerate() {
        let total = p[j]
            .checked_add(p[j + axes.len()])
            .ok_or_else(|| err("pads overflow"))?;
        out[a] = add_const(&s[a], total);
    }
    Ok(vec![t(e, out)])
}

pub(super) fn center_crop_pad(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len();
    let axes = match c.attr_ints("axes") {
        Some(a) => norm_axes(a, r, "")?,
        None => (0..r).collect(),
    };
    let mut out = s.to_vec();
    match c.const_ints(1) {
        Some(v) if v.len() == axes.len() => {
            for (j, &a) in axes.iter().enumerate() {
                out[a] = known_u64(v[j]).ok_or_else(|| err("negative crop size"))?;
            }
        }
        Some(_) => return Err(err("shape length differs from the number of axes")),
        None => axes.iter().for_each(|&a| out[a] = Dim::Unknown),
    }
    Ok(vec![t(e, out)])
}

fn blocksize(c: &InferCtx) -> Result<u64, InferError> {
    u64::try_from(c.attr_int("blocksize", 0))
        .ok()
        .filter(|&b| b > 0)
        .ok_or_else(|| bad_attr("blocksize", "must be positive"))
}

fn rank4<'a>(c: &InferCtx<'a>, i: usize) -> Result<Option<&'a [Dim]>, InferError> {
    match shape_of(c, i)? {
        Some(s) if s.len() != 4 => Err(InferError::BadInput {
            index: i,
            msg: "expected rank 4".into(),
        }),
        s => Ok(s),
    }
}

pub(super) fn depth_to_space(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let b = blocksize(c)?;
    let Some(s) = rank4(c, 0)? else {
        return Ok(vec![t(e, unknown_dims(4))]);
    };
    let bb = b.checked_mul(b).ok_or_else(|| err("blocksize overflow"))?;
    Ok(vec![t(
        e,
        vec![
            s[0].clone(),
            div_exact(&s[1], &k(bb)),
            mul_const(&s[2], b),
            mul_const(&s[3], b),
        ],
    )])
}

pub(super) fn space_to_depth(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let b = blocksize(c)?;
    let Some(s) = rank4(c, 0)? else {
        return Ok(vec![t(e, unknown_dims(4))]);
    };
    let bb = b.checked_mul(b).ok_or_else(|| err("blocksize overflow"))?;
    Ok(vec![t(
        e,
        vec![
            s[0].clone(),
            mul_const(&s[1], bb),
            div_exact(&s[2], &k(b)),
            div_exact(&s[3], &k(b)),
        ],
    )])
}

pub(super) fn one_hot(c: &InferCtx) -> R {
    let e = elem(c, 2)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e)]);
    };
    let r = s.len() + 1;
    let a = axis_of(c, "axis", -1, r)?;
    let depth = match c.const_floats(1) {
        Some(v) if v.len() == 1 && v[0] >= 0.0 => k(v[0] as u64),
        Some(_) => {
            return Err(InferError::BadInput {
                index: 1,
                msg: "depth must be a non-negative scalar".into(),
            })
        }
        None => Dim::Unknown,
    };
    let mut out = s.to_vec();
    out.insert(a, depth);
    Ok(vec![t(e, out)])
}

pub(super) fn topk(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let Some(s) = shape_of(c, 0)? else {
        return Ok(vec![unranked(e), unranked(ElemType::I64)]);
    };
    let a = axis_of(c, "axis", -1, s.len())?;
    let mut out = s.to_vec();
    out[a] = match const_scalar(c, 1) {
        Some(kv) => {
            let kd = known_u64(kv).ok_or_else(|| err("negative k"))?;
            if let (Dim::Known(n), Dim::Known(kk)) = (&s[a], &kd) {
                if kk > n {
                    return Err(err(format!("k = {kk} exceeds the axis size {n}")));
                }
            }
            kd
        }
        None => Dim::Unknown,
    };
    Ok(vec![t(e, out.clone()), t(ElemType::I64, out)])
}

pub(super) fn non_zero(c: &InferCtx) -> R {
    let r = shape_of(c, 0)?
        .map(|s| k(s.len() as u64))
        .unwrap_or(Dim::Unknown);
    Ok(vec![t(ElemType::I64, vec![r, Dim::Unknown])])
}

pub(super) fn unique(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let s = shape_of(c, 0)?;
    let (y, inv) = match (c.attr("axis"), s) {
        (None, s) => (
            vec![Dim::Unknown],
            vec![s.map(dims_product).unwrap_or(Dim::Unknown)],
        ),
        (Some(_), Some(s)) => {
            let a = axis_of(c, "axis", 0, s.len())?;
            let mut o = s.to_vec();
            o[a] = Dim::Unknown;
            (o, vec![s[a].clone()])
        }
        (Some(_), None) => {
            return Ok(fill(
                vec![
                    unranked(e),
                    t(ElemType::I64, vec![Dim::Unknown]),
                    t(ElemType::I64, vec![Dim::Unknown]),
                    t(ElemType::I64, vec![Dim::Unknown]),
                ],
                c.num_outputs,
            ))
        }
    };
    let v = vec![
        t(e, y),
        t(ElemType::I64, vec![Dim::Unknown]),
        t(ElemType::I64, inv),
        t(ElemType::I64, vec![Dim::Unknown]),
    ];
    Ok(fill(v, c.num_outputs))
}

pub(super) fn range(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let n = match (c.const_floats(0), c.const_floats(1), c.const_floats(2)) {
        (Some(a), Some(b), Some(d)) if a.len() == 1 && b.len() == 1 && d.len() == 1 => {
            if d[0] == 0.0 {
                return Err(InferError::BadInput {
                    index: 2,
                    msg: "delta is zero".into(),
                });
            }
            let n = ((b[0] - a[0]) / d[0]).ceil();
            if n.is_finite() {
                k(n.max(0.0) as u64)
            } else {
                Dim::Unknown
            }
        }
        _ => Dim::Unknown,
    };
    Ok(vec![t(e, vec![n])])
}

pub(super) fn col2im(c: &InferCtx) -> R {
    let e = elem(c, 0)?;
    let (Some(img), Some(block)) = (c.const_ints(1), c.const_ints(2)) else {
        let r = shape_len(c, 1).map(|n| n + 2);
        return Ok(vec![t_opt(e, r.map(unknown_dims))]);
    };
    let Some(xs) = shape_of(c, 0)? else {
        return Ok(vec![t(e, unknown_dims(img.len() + 2))]);
    };
    if xs.len() != 3 {
        return Err(err("Col2Im input must have rank 3"));
    }
    let bp = block
        .iter()
        .try_fold(1u64, |a, &b| {
            u64::try_from(b).ok().and_then(|b| a.checked_mul(b))
        })
        .ok_or_else(|| err("bad block_shape"))?;
    let mut out = vec![xs[0].clone(), div_exact(&xs[1], &k(bp))];
    for &d in &img {
        out.push(known_u64(d).ok_or_else(|| err("negative image dim"))?);
    }
    Ok(vec![t(e, out)])
}
