//! Kiln's fusion ops. `kiln.Fusion` runs its `body` region on its operands
//! and returns the body's outputs. `kiln.FusedConv` is
//! `activation(Conv(X, W, B) + Z)`. The interpreter executes the fused ops
//! one by one with the kernels of the ops they stand for, exactly as before
//! fusion, so a fused module gives the same results as the unfused one;
//! native backends lower each as one kernel. Those kernels are looked up
//! through the [`KernelHost`](super::ctx::KernelHost), not with
//! `kernels::lookup`, which asks this file's table in turn.

use kiln_ir::{Attr, Node};

use super::ctx::{bail, Ctx, KResult, KernelFn};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    match op {
        "kiln.Fusion" => Some(fusion),
        "kiln.FusedConv" => Some(fused_conv),
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

/// `Relu(Conv(X, W, B) + Z)` with Z and the Relu optional: Conv's, Add's
/// and Relu's own kernels in turn, each seeing a node of its own op with
/// the FusedConv's result (Conv's keeps the conv attributes).
fn fused_conv(ctx: &mut Ctx, inputs: &[Option<Value>]) -> KResult<Vec<Value>> {
    let node = ctx.node;
    let step = |ctx: &mut Ctx, op: &str, attrs: bool, operands: &[Option<Value>]| {
        let Some(kernel) = ctx.host.kernel(op) else {
            bail!("no kernel for {op}")
        };
        let mut n = Node::new(op, vec![], node.outputs.clone());
        n.name = node.name.clone();
        if attrs {
            n.attrs = node.attrs.clone();
            n.attrs.remove("activation");
        }
        let mut sub = Ctx {
            host: ctx.host,
            env: ctx.env,
            node: &n,
        };
        kernel(&mut sub, operands)
    };
    let mut y = step(ctx, "Conv", true, &inputs[..inputs.len().min(3)])?;
    if let Some(z) = inputs.get(3).cloned().flatten() {
        y = step(ctx, "Add", false, &[y.pop(), Some(z)])?;
    }
    match node.attr("activation").and_then(Attr::as_str) {
        None => Ok(y),
        Some("Relu") => step(ctx, "Relu", false, &[y.pop()]),
        Some(a) => bail!("unknown activation `{a}`"),
    }
}
