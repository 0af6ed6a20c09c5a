//! Sequences and optionals: construction, insertion, erasure, lookup,
//! concatenation and splitting of tensor sequences, and the optional
//! wrapper ops.

use super::common::{concat_axis, opt_scalar_i64, select_axis, slice_axis, stack_axis};
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::interp::kernels::shape::norm_axis;
use crate::tensor::{Data, Tensor};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "SequenceConstruct" => construct,
        "SequenceEmpty" => empty,
        "SequenceInsert" => insert,
        "SequenceErase" => erase,
        "SequenceAt" => at,
        "SequenceLength" => length,
        "ConcatFromSequence" => concat_from_sequence,
        "SplitToSequence" => split_to_sequence,
        "Optional" => optional,
        "OptionalGetElement" => optional_get_element,
        "OptionalHasElement" => optional_has_element,
        _ => return None,
    })
}

fn sequence(inputs: &[Option<Value>], i: usize) -> KResult<&[Value]> {
    match inputs.get(i) {
        Some(Some(Value::Sequence(s))) => Ok(s),
        Some(Some(Value::Optional(Some(v)))) => match &**v {
            Value::Sequence(s) => Ok(s),
            other => bail!("operand {i} must be a sequence, got {}", other.describe()),
        },
        Some(Some(other)) => bail!("operand {i} must be a sequence, got {}", other.describe()),
        _ => bail!("operand {i} is required"),
    }
}

/// A position operand checked against `0..len` (`inclusive_end`: `0..=len`)
/// after adding `len` to a negative one.
fn position(p: i64, len: usize, inclusive_end: bool) -> KResult<usize> {
    let l = len as i64;
    let q = if p < 0 { p + l } else { p };
    if q < 0 || q > l || (q == l && !inclusive_end) {
        bail!("position {p} is out of range for a sequence of {len}");
    }
    Ok(q as usize)
}

fn construct(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let items = (0..inputs.len())
        .map(|i| tensor(inputs, i).map(|t| Value::tensor(t.clone())))
        .collect::<KResult<_>>()?;
    Ok(vec![Value::Sequence(items)])
}

fn empty(_: &mut Ctx, _: &[Option<Value>]) -> KResult<Vec<Value>> {
    Ok(vec![Value::Sequence(Vec::new())])
}

fn insert(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let mut s = sequence(inputs, 0)?.to_vec();
    let t = tensor(inputs, 1)?;
    let pos = match opt_scalar_i64(inputs, 2)? {
        Some(p) => position(p, s.len(), true)?,
        None => s.len(),
    };
    s.insert(pos, Value::tensor(t.clone()));
    Ok(vec![Value::Sequence(s)])
}

fn erase(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let mut s = sequence(inputs, 0)?.to_vec();
    if s.is_empty() {
        bail!("cannot erase from an empty sequence");
    }
    let pos = position(opt_scalar_i64(inputs, 1)?.unwrap_or(-1), s.len(), false)?;
    s.remove(pos);
    Ok(vec![Value::Sequence(s)])
}

fn at(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let s = sequence(inputs, 0)?;
    let p = opt_scalar_i64(inputs, 1)?.ok_or("operand 1 (position) is required")?;
    Ok(vec![s[position(p, s.len(), false)?].clone()])
}

fn length(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let n = sequence(inputs, 0)?.len() as i64;
    Ok(vec![Value::tensor(Tensor::scalar(Data::I64(vec![n])))])
}

fn concat_from_sequence(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let s = sequence(inputs, 0)?;
    let ts = s
        .iter()
        .map(|v| {
            v.as_tensor()
                .ok_or_else(|| format!("sequence element {} is not a tensor", v.describe()).into())
        })
        .collect::<KResult<Vec<_>>>()?;
    let Some(first) = ts.first() else {
        bail!("cannot concatenate an empty sequence")
    };
    let new_axis = ctx.attr_int("new_axis", 0) != 0;
    let axis = ctx
        .attr("axis")
        .and_then(|a| a.as_int())
        .ok_or("attribute `axis` is required")?;
    let out = if new_axis {
        stack_axis(&ts, norm_axis(axis, first.rank() + 1)?)?
    } else {
        concat_axis(&ts, norm_axis(axis, first.rank())?)?
    };
    Ok(vec![Value::tensor(out)])
}

fn split_to_sequence(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let x = tensor(inputs, 0)?;
    if x.rank() == 0 {
        bail!("cannot split a scalar");
    }
    let axis = norm_axis(ctx.attr_int("axis", 0), x.rank())?;
    let dim = x.shape[axis];
    let keepdims = ctx.attr_int("keepdims", 1) != 0;
    let items = match opt_tensor(inputs, 1)? {
        None => {
            let mut v = Vec::with_capacity(dim);
            for i in 0..dim {
                let t = if keepdims {
                    slice_axis(x, axis, i, 1)?
                } else {
                    select_axis(x, axis, i)?
                };
                v.push(Value::tensor(t));
            }
            v
        }
        Some(split) => {
            let sizes: Vec<i64> = if split.rank() == 0 {
                let chunk = split.to_i64()[0];
                if chunk <= 0 {
                    bail!("split size {chunk} must be positive");
                }
                let chunk = chunk as usize;
                (0..dim.div_ceil(chunk))
                    .map(|i| chunk.min(dim - i * chunk) as i64)
                    .collect()
            } else {
                split.to_i64()
            };
            if sizes.iter().any(|&s| s < 0) || sizes.iter().sum::<i64>() != dim as i64 {
                bail!("split sizes {sizes:?} do not add up to dimension {dim}");
            }
            let mut v = Vec::with_capacity(sizes.len());
            let mut start = 0;
            for &s in &sizes {
                v.push(Value::tensor(slice_axis(x, axis, start, s as usize)?));
                start += s as usize;
            }
            v
        }
    };
    Ok(vec![Value::Sequence(items)])
}

fn optional(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    Ok(vec![Value::Optional(
        inputs.first().cloned().flatten().map(Box::new),
    )])
}

fn optional_get_element(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    match inputs.first() {
        Some(Some(Value::Optional(Some(v)))) => Ok(vec![(**v).clone()]),
        Some(Some(Value::Optional(None))) => bail!("the optional is empty"),
        Some(Some(v)) => Ok(vec![v.clone()]),
        _ => bail!("operand 0 is required"),
    }
}

fn optional_has_element(_: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let has = !matches!(
        inputs.first(),
        None | Some(None) | Some(Some(Value::Optional(None)))
    );
    Ok(vec![Value::tensor(Tensor::scalar(Data::Bool(vec![has])))])
}
