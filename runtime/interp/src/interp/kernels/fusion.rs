//! Kiln's fusion ops. `kiln.Fusion` runs its `body` region on its operands
//! and returns the body's outputs. `kiln.FusedConv` is
//! `activation(Conv(X, W, B) + Z)`; `kiln.DequantMatMul` is
//! `MatMul(A, DequantizeLinear(W, ..))`; `kiln.DequantLSTM` is an `LSTM`
//! of two DequantizeLinear'd weights. The interpreter executes the fused ops
//! one by one with the kernels of the ops they stand for, exactly as before
//! fusion, so a fused module gives the same results as the unfused one;
//! native backends lower each as one kernel. Those kernels are looked up
//! through the [`KernelHost`](super::ctx::KernelHost), not with
//! `kernels::lookup`, which asks this file's table in turn.

use kiln_ir::{Attr, Node};

use super::ctx::{bail, Ctx, KResult, KernelFn};
use crate::value::Value;
use crate::Tensor;

pub fn lookup(op: &str) -> Option<KernelFn> {
    match op {
        "kiln.Fusion" => Some(fusion),
        "kiln.FusedConv" => Some(fused_conv),
        "kiln.DequantMatMul" => Some(dequant_matmul),
        "kiln.DequantLSTM" => Some(dequant_lstm),
        _ => None,
    }
}

fn fusion(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let node = ctx.node;
    let Some(body) = node.attr("body").and_then(Attr::as_graph) else {
        bail!("missing graph attribute `body`")
    };
    let args = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Some(v) => Ok(v.clone()),
            None => bail!("operand {i} is omitted"),
        })
        .collect::<KResult<Vec<Value>>>()?;
    ctx.run_region(body, args)
}

/// `activation(Conv(X, W, B) + Z)` with Z and the activation (Relu, Swish
/// of alpha 1, HardSwish, or Clip to the `min` and `max` attributes)
/// optional: the ops' own kernels
/// in turn, each seeing a node of its own op with
/// the FusedConv's result (Conv's keeps the conv attributes).
fn fused_conv(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let node = ctx.node;
    let step = |ctx: &mut Ctx, op: &str, attrs: bool, operands: &[Option<Value>]| {
        let mut n = Node::new(op, vec![], node.outputs.clone());
        if attrs {
            n.attrs = node.attrs.clone();
            n.attrs.remove("activation");
        }
        run_as(ctx, n, operands)
    };
    let mut y = step(ctx, "Conv", true, &inputs[..inputs.len().min(3)])?;
    if let Some(z) = inputs.get(3).cloned().flatten() {
        y = step(ctx, "Add", false, &[y.pop(), Some(z)])?;
    }
    match node.attr("activation").and_then(Attr::as_str) {
        None => Ok(y),
        Some("Relu") => step(ctx, "Relu", false, &[y.pop()]),
        Some("Swish") => step(ctx, "Swish", false, &[y.pop()]),
        Some("HardSwish") => step(ctx, "HardSwish", false, &[y.pop()]),
        Some("Clip") => {
            let bound = |k: &str, none: f32| {
                let v = node.attr(k).and_then(Attr::as_float).unwrap_or(none);
                Tensor::from_f32(vec![], vec![v]).map(|t| Some(Value::tensor(t)))
            };
            let lo = bound("min", f32::NEG_INFINITY)?;
            let hi = bound("max", f32::INFINITY)?;
            step(ctx, "Clip", false, &[y.pop(), lo, hi])
        }
        Some(a) => bail!("unknown activation `{a}`"),
    }
}

/// `MatMul(A, DequantizeLinear(W, W_scale, W_zero_point))`: the two ops'
/// own kernels in turn (DequantizeLinear's sees the node's `axis` and
/// `block_size`).
fn dequant_matmul(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let Some(a) = inputs.first().cloned().flatten() else {
        bail!("operand A is omitted")
    };
    let mut dq = Node::new("DequantizeLinear", vec![], ctx.node.outputs.clone());
    dq.attrs = ctx.node.attrs.clone();
    let mut w = run_as(ctx, dq, &inputs[1..])?;
    let mm = Node::new("MatMul", vec![], ctx.node.outputs.clone());
    run_as(ctx, mm, &[Some(a), w.pop()])
}

/// `LSTM(X, DequantizeLinear(W), DequantizeLinear(R), ...)`: each weight
/// through DequantizeLinear's kernel (scales `[D]` on axis 0, or `[D,
/// 4·hidden, 1]` as blocks of a whole row), then LSTM's on the node's
/// attributes.
fn dequant_lstm(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    if inputs.len() != 12 {
        bail!("expected 12 operands, got {}", inputs.len())
    }
    let weight = |ctx: &mut Ctx, at: usize, params: usize| -> KResult<Option<Value>> {
        let (Some(Value::Tensor(w)), Some(Value::Tensor(s))) = (&inputs[at], &inputs[params])
        else {
            bail!("operands {at} and {params} must be tensors")
        };
        let mut dq = Node::new(
            "DequantizeLinear",
            vec![],
            ctx.node.outputs[..1.min(ctx.node.outputs.len())].to_vec(),
        );
        match (s.shape.len(), w.shape.get(2)) {
            (1, _) => {
                dq.attrs.insert("axis".into(), Attr::Int(0));
            }
            (3, Some(&cols)) => {
                dq.attrs.insert("axis".into(), Attr::Int(2));
                dq.attrs.insert("block_size".into(), Attr::Int(cols as i64));
            }
            _ => bail!("scale of shape {:?} for weights {:?}", s.shape, w.shape),
        }
        let ops = [
            inputs[at].clone(),
            inputs[params].clone(),
            inputs[params + 1].clone(),
        ];
        Ok(run_as(ctx, dq, &ops)?.pop())
    };
    let w = weight(ctx, 1, 8)?;
    let r = weight(ctx, 2, 10)?;
    let mut ops = inputs[..8].to_vec();
    ops[1] = w;
    ops[2] = r;
    let mut lstm = Node::new("LSTM", vec![], ctx.node.outputs.clone());
    lstm.attrs = ctx.node.attrs.clone();
    run_as(ctx, lstm, &ops)
}

/// Runs the kernel of `n.op` on `operands` as node `n` (named like the
/// fused node, whose results it gives).
fn run_as(ctx: &mut Ctx, mut n: Node, operands: &[Option<Value>]) -> KResult<Vec<Value>> {
    let Some(kernel) = ctx.host.kernel(&n.op) else {
        bail!("no kernel for {}", n.op)
    };
    n.name = ctx.node.name.clone();
    let mut sub = Ctx {
        host: ctx.host,
        env: ctx.env,
        node: &n,
    };
    kernel(&mut sub, operands)
}
