//! Pass `hoist-casts`: move a fusion body's integer-to-float `Cast` out of
//! the body, in front of the fusion node.
//!
//! Why: a code generator for fusion bodies works on one element type
//! (f32 on the cpu backend, the same on the GPU). Fusion happily pulls a
//! `Cast(i64 → f32)` of a graph input into an f32 chain (MiniLM's attention
//! mask, `(1 - Cast(mask)) * -big`); left inside, the whole region could
//! not be generated. Hoisted, the cast is a step of its own (a native
//! conversion) and the body is all f32.
//!
//! The rule: a body input of type i64, i32, i8, u8 or bool whose only use in the
//! body is one `Cast` to f32, and which is not itself a body output,
//! becomes that Cast's result; the Cast moves to the enclosing region,
//! right before the fusion node, on the fusion's operand. Fusion nodes in
//! nested regions are rewritten too. Semantics are unchanged: the same
//! Cast runs on the same value, only outside the region.

use kiln_ir::{Attr, ElemType, Module, Node, Region, TensorType, Type};

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut body = std::mem::take(&mut m.body);
    let changed = hoist_region(m, &mut body);
    m.body = body;
    Ok(changed)
}

fn hoist_region(m: &mut Module, r: &mut Region) -> bool {
    let mut changed = false;
    let mut out: Vec<Node> = Vec::with_capacity(r.nodes.len());
    for mut node in std::mem::take(&mut r.nodes) {
        for sub in node.regions_mut() {
            changed |= hoist_region(m, sub);
        }
        if node.op == "kiln.Fusion" {
            let hoisted = hoist_fusion(m, &mut node);
            changed |= !hoisted.is_empty();
            out.extend(hoisted);
        }
        out.push(node);
    }
    r.nodes = out;
    changed
}

/// Hoist what can be hoisted out of one fusion node; returns the Cast
/// nodes to place before it.
fn hoist_fusion(m: &mut Module, fusion: &mut Node) -> Vec<Node> {
    let Some(Attr::Graph(mut body)) = fusion.attrs.remove("body") else {
        return vec![];
    };
    let mut hoisted = vec![];
    for k in 0..body.inputs.len() {
        let v = body.inputs[k];
        let is_int = matches!(
            m.ty(v).as_tensor().map(|t| t.elem),
            Some(ElemType::I64 | ElemType::I32 | ElemType::Bool | ElemType::U8 | ElemType::I8)
        );
        let Some(Some(outer)) = fusion.inputs.get(k).copied() else {
            continue;
        };
        if !is_int || body.outputs.contains(&v) {
            continue;
        }
        let users: Vec<usize> = (0..body.nodes.len())
            .filter(|&i| body.nodes[i].inputs.iter().flatten().any(|&x| x == v))
            .collect();
        let [i] = users[..] else { continue };
        let c = &body.nodes[i];
        let Some(&res) = c.outputs.first() else {
            continue;
        };
        let to_f32 = m.ty(res).as_tensor().map(|t| t.elem) == Some(ElemType::F32);
        if c.op != "Cast" || c.inputs.len() != 1 || c.outputs.len() != 1 || !to_f32 {
            continue;
        }
        // The hoisted result takes the outer operand's shape, as f32.
        let Some(outer_t) = m.ty(outer).as_tensor() else {
            continue;
        };
        let ty = Type::Tensor(TensorType {
            elem: ElemType::F32,
            shape: outer_t.shape.clone(),
            quant: None,
        });
        let hint = format!("{}.f32", m.name(outer));
        let cast_out = m.add_value_unique(&hint, ty);
        let mut cast = body.nodes.remove(i);
        cast.inputs = vec![Some(outer)];
        cast.outputs = vec![cast_out];
        body.inputs[k] = res;
        fusion.inputs[k] = Some(cast_out);
        hoisted.push(cast);
    }
    fusion.attrs.insert("body".into(), Attr::Graph(body));
    hoisted
}
