//! What the control family's files share: scalar operands, results of a
//! declared element type, and tensors sliced, selected, concatenated and
//! stacked along an axis.

use kiln_ir::{ElemType, Type};

use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult};
use crate::tensor::{numel, Data, Tensor};
use crate::value::Value;

/// The declared element type of tensor result `i`, or `default` when the
/// declaration does not say.
pub(crate) fn out_elem(ctx: &Ctx, i: usize, default: ElemType) -> ElemType {
    ctx.output_elem(i).unwrap_or(default)
}

/// A float tensor of element type `elem` from f64 values.
pub(crate) fn from_f64(elem: ElemType, shape: Vec<usize>, v: &[f64]) -> KResult<Tensor> {
    Ok(Tensor::new(shape, Data::from_f64(elem, v))?)
}

/// Operand `i` as a scalar integer (a one-element tensor of any integer
/// or float type), `None` when omitted.
pub(crate) fn opt_scalar_i64(inputs: &[Option<Value>], i: usize) -> KResult<Option<i64>> {
    match opt_tensor(inputs, i)? {
        None => Ok(None),
        Some(t) if t.len() == 1 => Ok(Some(t.to_i64()[0])),
        Some(t) => bail!("operand {i} must hold one element, got shape {:?}", t.shape),
    }
}

/// Operand `i` as a scalar float.
pub(crate) fn scalar_f64(inputs: &[Option<Value>], i: usize) -> KResult<f64> {
    let t = tensor(inputs, i)?;
    if t.len() != 1 {
        bail!("operand {i} must hold one element, got shape {:?}", t.shape);
    }
    Ok(t.to_f64()[0])
}

/// (outer, dim, inner) sizes around `axis`.
fn split_dims(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        numel(&shape[..axis]),
        shape[axis],
        numel(&shape[axis + 1..]),
    )
}

/// The slab `start..start+len` of `t` along `axis` (the axis kept).
pub(crate) fn slice_axis(t: &Tensor, axis: usize, start: usize, len: usize) -> KResult<Tensor> {
    if axis >= t.rank() || start.checked_add(len).is_none_or(|e| e > t.shape[axis]) {
        bail!(
            "slice {start}..{} of axis {axis} is out of range for shape {:?}",
            start + len,
            t.shape
        );
    }
    let (outer, dim, inner) = split_dims(&t.shape, axis);
    let mut idx = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        let base = (o * dim + start) * inner;
        idx.extend(base..base + len * inner);
    }
    let mut shape = t.shape.clone();
    shape[axis] = len;
    Ok(Tensor::new(shape, t.data.gather(&idx))?)
}

/// Index `i` of `t` along `axis`, the axis removed.
pub(crate) fn select_axis(t: &Tensor, axis: usize, i: usize) -> KResult<Tensor> {
    let mut s = slice_axis(t, axis, i, 1)?;
    s.shape.remove(axis);
    Ok(s)
}

/// Concatenate tensors of one element type along an existing `axis`.
pub(crate) fn concat_axis(parts: &[&Tensor], axis: usize) -> KResult<Tensor> {
    let Some(first) = parts.first() else {
        bail!("nothing to concatenate")
    };
    let rank = first.rank();
    if axis >= rank {
        bail!("axis {axis} is out of range for rank {rank}");
    }
    for p in parts {
        if p.elem() != first.elem() {
            bail!("cannot concatenate {} with {}", first.elem(), p.elem());
        }
        if p.rank() != rank || (0..rank).any(|d| d != axis && p.shape[d] != first.shape[d]) {
            bail!(
                "cannot concatenate shapes {:?} and {:?} along axis {axis}",
                first.shape,
                p.shape
            );
        }
    }
    let outer = numel(&first.shape[..axis]);
    let inner = numel(&first.shape[axis + 1..]);
    let total: usize = parts.iter().map(|p| p.shape[axis]).sum();
    let all = Data::concat(&parts.iter().map(|p| &p.data).collect::<Vec<_>>())
        .ok_or("cannot concatenate tensors of different element types")?;
    let mut offsets = Vec::with_capacity(parts.len());
    let mut off = 0;
    for p in parts {
        offsets.push(off);
        off += p.len();
    }
    let mut idx = Vec::with_capacity(outer * total * inner);
    for o in 0..outer {
        for (p, &base) in parts.iter().zip(&offsets) {
            let chunk = p.shape[axis] * inner;
            let start = base + o * chunk;
            idx.extend(start..start + chunk);
        }
    }
    let mut shape = first.shape.clone();
    shape[axis] = total;
    Ok(Tensor::new(shape, all.gather(&idx))?)
}

/// Stack tensors of one shape along a new `axis` (0..=rank).
pub(crate) fn stack_axis(parts: &[&Tensor], axis: usize) -> KResult<Tensor> {
    let Some(first) = parts.first() else {
        bail!("nothing to stack")
    };
    if axis > first.rank() {
        bail!(
            "axis {axis} is out of range for stacking rank {}",
            first.rank()
        );
    }
    let mut expanded = Vec::with_capacity(parts.len());
    for p in parts {
        if p.shape != first.shape {
            bail!("cannot stack shapes {:?} and {:?}", first.shape, p.shape);
        }
        let mut shape = p.shape.clone();
        shape.insert(axis, 1);
        expanded.push(Tensor {
            shape,
            data: p.data.clone(),
        });
    }
    concat_axis(&expanded.iter().collect::<Vec<_>>(), axis)
}

/// An empty tensor for a declared type: known dims kept, the others 0.
pub(crate) fn empty_like_type(ty: Option<&Type>, lead: Option<usize>) -> Tensor {
    let (elem, dims) = match ty.and_then(Type::as_tensor) {
        Some(t) => (t.elem, t.shape.clone()),
        None => (ElemType::F32, None),
    };
    let mut shape: Vec<usize> = match dims {
        Some(d) => d
            .iter()
            .map(|x| x.as_known().unwrap_or(0) as usize)
            .collect(),
        None => vec![0],
    };
    if let (Some(n), Some(s)) = (lead, shape.first_mut()) {
        *s = n;
    }
    Tensor::zeros(elem, shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], v: &[i64]) -> Tensor {
        Tensor::new(shape.to_vec(), Data::I64(v.to_vec())).unwrap()
    }

    #[test]
    fn axis_helpers() {
        let a = t(&[2, 3], &[0, 1, 2, 3, 4, 5]);
        assert_eq!(select_axis(&a, 1, 2).unwrap(), t(&[2], &[2, 5]));
        assert_eq!(slice_axis(&a, 1, 1, 2).unwrap(), t(&[2, 2], &[1, 2, 4, 5]));
        let b = t(&[2, 1], &[9, 8]);
        assert_eq!(
            concat_axis(&[&a, &b], 1).unwrap(),
            t(&[2, 4], &[0, 1, 2, 9, 3, 4, 5, 8])
        );
        let s = stack_axis(&[&t(&[2], &[1, 2]), &t(&[2], &[3, 4])], 1).unwrap();
        assert_eq!(s, t(&[2, 2], &[1, 3, 2, 4]));
        assert!(slice_axis(&a, 1, 2, 2).is_err());
    }
}
