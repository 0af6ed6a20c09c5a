//! Pass `conv-epilogue` (cpu lowering): a fusion's Conv anchor takes the
//! residual Add (or Sum) and the Relu (or constant Clip) right after it, as one
//! `kiln.FusedConv`, where the CPU conv kernel adds the residual as each
//! tile starts and clamps as it stores the tile.
//!
//! Why: a residual block's `Relu(Conv(x) + z)` otherwise reads the conv's
//! result and `z` back from memory in a second loop (15-30 % of ResNet-50's
//! residual convs). Whether the kernel can take them depends on the conv's
//! strategy on this host (implicit GEMM, transposed product, small-k
//! tiles), so the pass asks the kernel library
//! (`ConvPlan::epilogues`) before it rewrites. As a pass, the rewrite
//! shows in `kiln dump --pipeline cpu --print-after-all`.
//!
//! The rules, inside each top-level `kiln.Fusion` whose body starts with a
//! Conv reading only body inputs:
//! - residual: the next node is `Add(v, r)` or `Sum(v, r)` (either order)
//!   of the conv's result `v`, which nothing else reads and which is not a
//!   body output; `r` is a body input of exactly the result's shape and
//!   f32; the sum is not a body output if more nodes follow;
//! - activation: then a `Relu` of the (new) result, or a `Clip` with
//!   constant bounds (ReLU6), read by nothing else, not a body output
//!   (nor its own result if more nodes follow); or SiLU, `Sigmoid(v)`
//!   then `Mul` of it and `v` (either order), as `Swish`: neither `v` nor
//!   the sigmoid read by anything else or a body output (YOLO, EfficientNet
//!   and MobileNet-style nets put SiLU after every conv); or a `HardSwish`
//!   (MobileNetV3's, as Relu's rules). The matching is `tile_store.rs`'s.
//!
//! A body left with the FusedConv alone becomes a top-level
//! `kiln.FusedConv` node on the fusion's operands.

use kiln_ir::{Attr, ElemType, Module, Node, Region, ValueId};
use kiln_runtime::cpu::kernels::ConvPlan;

use super::tile_store::{self, TileAct};
use crate::lower::common::conv_attrs;

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut changed = false;
    for i in 0..m.body.nodes.len() {
        if m.body.nodes[i].op != "kiln.Fusion" {
            continue;
        }
        let Some(rewritten) = rewrite(m, &m.body.nodes[i]) else {
            continue;
        };
        m.body.nodes[i] = rewritten;
        changed = true;
    }
    Ok(changed)
}

/// The fusion node with its conv's epilogue folded, or `None` when
/// nothing folds.
fn rewrite(m: &Module, fusion: &Node) -> Option<Node> {
    let Some(Attr::Graph(body)) = fusion.attrs.get("body") else {
        return None;
    };
    let conv = body.nodes.first()?;
    if conv.op != "Conv" || conv.outputs.len() != 1 {
        return None;
    }
    let operand_of = |v: ValueId| body.inputs.iter().position(|&b| b == v);
    let outer = |v: ValueId| fusion.inputs.get(operand_of(v)?).copied().flatten();
    if conv
        .inputs
        .iter()
        .flatten()
        .any(|&v| operand_of(v).is_none())
    {
        return None;
    }
    let (x, w) = (outer(conv.input(0)?)?, outer(conv.input(1)?)?);
    let f32_of = |v: ValueId| m.ty(v).as_tensor().map(|t| t.elem) == Some(ElemType::F32);
    if !f32_of(x) || !f32_of(w) {
        return None;
    }
    let (xs, ws) = (m.static_shape(x).ok()?, m.static_shape(w).ok()?);
    let attrs = conv_attrs(conv, &xs, &ws).ok()?;
    let const_w = m.constant(w).is_some();
    let can = ConvPlan::epilogues(&xs, &ws, &attrs, const_w).ok()?;

    let mut fused = Node::new(
        "kiln.FusedConv",
        vec![conv.input(0), conv.input(1), conv.input(2)],
        conv.outputs.clone(),
    );
    fused.attrs = conv.attrs.clone();
    fused.name = conv.name.clone();
    let mut tail = &body.nodes[1..];
    let mut v = conv.outputs[0];
    let mut folded = false;
    let reads = |n: &Node, v: ValueId| n.inputs.iter().flatten().any(|&x| x == v);
    if can.residual {
        if let Some((add, rest)) = tail.split_first() {
            let r = match (add.input(0), add.input(1)) {
                (Some(a), Some(b)) if a == v && b != v => Some(b),
                (Some(a), Some(b)) if b == v && a != v => Some(a),
                _ => None,
            };
            let ok = (add.op == "Add" || add.op == "Sum")
                && add.inputs.len() == 2
                && add.outputs.len() == 1
                && !body.outputs.contains(&v)
                && !rest.iter().any(|n| reads(n, v))
                && (rest.is_empty() || !body.outputs.contains(&add.outputs[0]));
            let shape_ok = r.is_some_and(|r| {
                operand_of(r).is_some()
                    && f32_of(r)
                    && m.static_shape(r).ok() == m.static_shape(v).ok()
            });
            if let (true, true, Some(r)) = (ok, shape_ok, r) {
                fused.inputs.resize(3, None);
                fused.inputs.push(Some(r));
                fused.outputs = add.outputs.clone();
                v = add.outputs[0];
                tail = rest;
                folded = true;
            }
        }
    }
    if can.clamp {
        if let Some((act, out, rest)) = tile_store::activation(m, body, tail, v, &outer) {
            let attrs = match act {
                TileAct::Relu => Some(("Relu", None)),
                TileAct::Clip(lo, hi) => Some(("Clip", Some((lo, hi)))),
                TileAct::Swish => Some(("Swish", None)),
                TileAct::HardSwish => Some(("HardSwish", None)),
                // (Not among FusedConv's activations.)
                TileAct::Gelu { .. } => None,
            };
            if let Some((name, bounds)) = attrs {
                fused
                    .attrs
                    .insert("activation".into(), Attr::String(name.into()));
                if let Some((lo, hi)) = bounds {
                    fused.attrs.insert("min".into(), Attr::Float(lo));
                    fused.attrs.insert("max".into(), Attr::Float(hi));
                }
                fused.outputs = vec![out];
                tail = rest;
                folded = true;
            }
        }
    }
    if !folded {
        return None;
    }
    while fused.inputs.last() == Some(&None) {
        fused.inputs.pop();
    }
    if tail.is_empty() && body.outputs == fused.outputs {
        // The conv is the whole fusion: it stands on its own.
        let mut top = fused.clone();
        top.inputs = fused.inputs.iter().map(|v| v.and_then(&outer)).collect();
        top.outputs = fusion.outputs.clone();
        top.name = fusion.name.clone();
        return Some(top);
    }
    let mut nodes = vec![fused];
    nodes.extend(tail.iter().cloned());
    let new_body = Region {
        inputs: body.inputs.clone(),
        constants: body.constants.clone(),
        nodes,
        outputs: body.outputs.clone(),
    };
    let mut out = fusion.clone();
    out.attrs.insert("body".into(), Attr::Graph(new_body));
    Some(out)
}
