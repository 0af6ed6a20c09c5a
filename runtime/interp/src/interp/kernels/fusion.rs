//! Kiln's fusion op: `kiln.Fusion` runs its `body` region on its operands
//! and returns the body's outputs. The interpreter executes the fused ops
//! one by one, exactly as before fusion, so a fused module gives the same
//! results as the unfused one; native backends lower the body as one kernel.

use kiln_ir::Attr;

use super::{bail, Ctx, KResult, KernelFn};
use crate::value::Value;

pub fn lookup(op: &str) -> Option<KernelFn> {
    match op {
        "kiln.Fusion" => Some(fusion),
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
