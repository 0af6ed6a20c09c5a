//! Control flow: `If`, `Loop`, `Scan` and `SequenceMap`, which run the
//! node's regions with the interpreter.

use kiln_ir::{Attr, Region};

use super::common::{empty_like_type, opt_scalar_i64, select_axis, stack_axis};
use crate::interp::kernels::ctx::{bail, opt_tensor, tensor, Ctx, KResult, KernelFn};
use crate::interp::kernels::shape::norm_axis;
use crate::tensor::{Data, Tensor};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    Some(match op {
        "If" => if_,
        "Loop" => loop_,
        "Scan" => scan,
        "SequenceMap" => sequence_map,
        _ => return None,
    })
}

/// A graph attribute, borrowed from the node (not from `ctx`, so the
/// region can be run while it is held).
fn region<'a>(ctx: &Ctx<'a>, name: &str) -> KResult<&'a Region> {
    let node = ctx.node;
    match node.attr(name).and_then(Attr::as_graph) {
        Some(r) => Ok(r),
        None => bail!("missing graph attribute `{name}`"),
    }
}

/// The truth of a one-element tensor.
fn truthy(t: &Tensor, what: &str) -> KResult<bool> {
    if t.len() != 1 {
        bail!("{what} must hold one element, got shape {:?}", t.shape);
    }
    Ok(t.to_f64()[0] != 0.0)
}

fn value_tensor<'v>(v: &'v Value, what: &str) -> KResult<&'v Tensor> {
    match v {
        Value::Tensor(t) => Ok(t),
        other => bail!("{what} must be a tensor, got {}", other.describe()),
    }
}

fn if_(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let cond = truthy(tensor(inputs, 0)?, "the condition")?;
    let branch = region(ctx, if cond { "then_branch" } else { "else_branch" })?;
    ctx.run_region(branch, Vec::new())
}

/// Stack per-iteration scan outputs along `axis`; with no iterations, an
/// empty tensor of the declared type.
fn stack_scan(ctx: &Ctx, result: usize, items: &[Value], axis: i64) -> KResult<Value> {
    if items.is_empty() {
        return Ok(Value::tensor(empty_like_type(
            ctx.output_type(result),
            Some(0),
        )));
    }
    let ts = items
        .iter()
        .map(|v| value_tensor(v, "a scan output"))
        .collect::<KResult<Vec<_>>>()?;
    let axis = norm_axis(axis, ts[0].rank() + 1)?;
    Ok(Value::tensor(stack_axis(&ts, axis)?))
}

fn loop_(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let body = region(ctx, "body")?;
    let max_trips = opt_scalar_i64(inputs, 0)?;
    let mut cond = match opt_tensor(inputs, 1)? {
        Some(t) => truthy(t, "the loop condition")?,
        None => true,
    };
    let mut carried: Vec<Value> = inputs
        .iter()
        .skip(2)
        .map(|v| v.clone().unwrap_or(Value::Optional(None)))
        .collect();
    let n = carried.len();
    if body.outputs.len() < 1 + n || body.inputs.len() != 2 + n {
        bail!(
            "the loop body must take {} inputs and give at least {} outputs",
            2 + n,
            1 + n
        );
    }
    let k = body.outputs.len() - 1 - n;
    let mut scans: Vec<Vec<Value>> = vec![Vec::new(); k];
    let mut i: i64 = 0;
    // Counted as they run: exporters write `while` loops as the largest
    // trip count and a condition, so the declared count says nothing.
    let limits = crate::limits::current();
    while cond && max_trips.is_none_or(|m| i < m) {
        limits.iterations(|| "the Loop".to_string(), i as u64 + 1)?;
        let mut args = Vec::with_capacity(2 + n);
        args.push(Value::tensor(Tensor::scalar(Data::I64(vec![i]))));
        args.push(Value::tensor(Tensor::scalar(Data::Bool(vec![cond]))));
        args.extend(carried.iter().cloned());
        let mut out = ctx.run_region(body, args)?.into_iter();
        let c = out.next().ok_or("the loop body gave no condition")?;
        cond = truthy(
            value_tensor(&c, "the loop body's condition")?,
            "the loop body's condition",
        )?;
        carried = out.by_ref().take(n).collect();
        for (s, v) in scans.iter_mut().zip(out) {
            s.push(v);
        }
        i += 1;
    }
    let mut results = carried;
    for (j, s) in scans.iter().enumerate() {
        results.push(stack_scan(ctx, n + j, s, 0)?);
    }
    Ok(results)
}

fn scan(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let body = region(ctx, "body")?;
    let m = ctx.attr_int("num_scan_inputs", -1);
    if m < 0 || m as usize > inputs.len() {
        bail!("num_scan_inputs {m} does not fit {} operands", inputs.len());
    }
    let m = m as usize;
    let n = inputs.len() - m;
    if body.inputs.len() != n + m || body.outputs.len() < n {
        bail!(
            "the scan body must take {} inputs and give at least {n} outputs",
            n + m
        );
    }
    let k = body.outputs.len() - n;
    let attr_list = |name: &str, len: usize| -> KResult<Vec<i64>> {
        match ctx.attr_ints(name) {
            Some(v) if v.len() == len => Ok(v.to_vec()),
            Some(v) => bail!("`{name}` has {} entries, expected {len}", v.len()),
            None => Ok(vec![0; len]),
        }
    };
    let in_axes = attr_list("scan_input_axes", m)?;
    let in_dirs = attr_list("scan_input_directions", m)?;
    let out_axes = attr_list("scan_output_axes", k)?;
    let out_dirs = attr_list("scan_output_directions", k)?;

    let mut state: Vec<Value> = (0..n)
        .map(|i| inputs[i].clone().ok_or("a scan state is omitted"))
        .collect::<Result<_, _>>()?;
    let mut scan_ins = Vec::with_capacity(m);
    let mut len = None;
    for (j, &in_axis) in in_axes.iter().enumerate() {
        let t = tensor(inputs, n + j)?;
        let axis = norm_axis(in_axis, t.rank())?;
        if t.rank() == 0 {
            bail!("scan input {j} is a scalar");
        }
        match len {
            None => len = Some(t.shape[axis]),
            Some(l) if l != t.shape[axis] => {
                bail!(
                    "scan inputs disagree on the sequence length ({l} and {})",
                    t.shape[axis]
                )
            }
            _ => {}
        }
        scan_ins.push((t, axis));
    }
    let len = len.unwrap_or(0);
    let mut scans: Vec<Vec<Value>> = vec![Vec::new(); k];
    for step in 0..len {
        let mut args = state.clone();
        for (j, (t, axis)) in scan_ins.iter().enumerate() {
            let i = if in_dirs[j] == 1 {
                len - 1 - step
            } else {
                step
            };
            args.push(Value::tensor(select_axis(t, *axis, i)?));
        }
        let mut out = ctx.run_region(body, args)?.into_iter();
        state = out.by_ref().take(n).collect();
        for (s, v) in scans.iter_mut().zip(out) {
            s.push(v);
        }
    }
    let mut results = state;
    for (j, mut s) in scans.into_iter().enumerate() {
        if out_dirs[j] == 1 {
            s.reverse();
        }
        results.push(stack_scan(ctx, n + j, &s, out_axes[j])?);
    }
    Ok(results)
}

fn sequence_map(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let body = region(ctx, "body")?;
    let len = match inputs.first() {
        Some(Some(Value::Sequence(s))) => s.len(),
        _ => bail!("operand 0 must be a sequence"),
    };
    for (i, v) in inputs.iter().enumerate() {
        match v {
            Some(Value::Sequence(s)) if s.len() != len => {
                bail!(
                    "sequence operand {i} has {} elements, operand 0 has {len}",
                    s.len()
                )
            }
            None => bail!("operand {i} is omitted"),
            _ => {}
        }
    }
    let k = body.outputs.len();
    let mut outs: Vec<Vec<Value>> = vec![Vec::with_capacity(len); k];
    for i in 0..len {
        let args = inputs
            .iter()
            .map(|v| match v {
                Some(Value::Sequence(s)) => s[i].clone(),
                Some(other) => other.clone(),
                None => Value::Optional(None),
            })
            .collect();
        for (o, v) in outs.iter_mut().zip(ctx.run_region(body, args)?) {
            o.push(v);
        }
    }
    Ok(outs.into_iter().map(Value::Sequence).collect())
}
