//! Pass `sequence-split`: an element of a split sequence at a constant
//! position, `SequenceAt(SplitToSequence(x, split), i)`, becomes the slice
//! of `x` it is: `Slice(x, [b], [e], [axis])`, then `Squeeze` where
//! `keepdims = 0` dropped the axis.
//!
//! Why: TorchScript exports `torch.chunk` and `tensor.split` in scripted
//! code (a GRU or LSTM cell written by hand, gates chunked in a decoder
//! loop) as a sequence and reads it element by element. A sequence has no
//! fixed layout, so every op downstream ran on the interpreter at shapes
//! inference could not know; slices are native and static. The sequence
//! itself goes when nothing else reads it (`dce`).
//!
//! Applies where the split sizes, the position and `x`'s extent along the
//! axis are all known at compile time; regions nested in If/Loop/Scan are
//! rewritten too (a SequenceAt may read a sequence split in an enclosing
//! region: SSA names are module-wide, so the slice reads `x` there).

use std::collections::HashMap;
use std::sync::Arc;

use kiln_ir::{Attr, Dim, Module, Node, Region, TensorData, ValueId};

/// A split sequence: its operand, axis and element bounds along it, and
/// whether elements keep the axis.
struct Split {
    x: ValueId,
    axis: i64,
    bounds: Vec<(i64, i64)>,
    keep_axis: bool,
}

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut splits = HashMap::new();
    find_splits(m, &m.body, &mut splits);
    if splits.is_empty() {
        return Ok(false);
    }
    let mut body = std::mem::take(&mut m.body);
    let changed = super::expand_nodes(m, &mut body, &mut |m, n| slice_for(m, n, &splits));
    m.body = body;
    Ok(changed)
}

fn find_splits(m: &Module, r: &Region, out: &mut HashMap<ValueId, Split>) {
    for n in &r.nodes {
        if n.op == "SplitToSequence" {
            if let Some(s) = split_of(m, n) {
                out.insert(n.outputs[0], s);
            }
        }
        for (_, sub) in n.regions() {
            find_splits(m, sub, out);
        }
    }
}

/// The elements of `SplitToSequence` node `n`, where they are static.
fn split_of(m: &Module, n: &Node) -> Option<Split> {
    let x = n.input(0)?;
    let shape = m.ty(x).as_tensor()?.shape.clone()?;
    let rank = shape.len() as i64;
    let axis = n.attr("axis").and_then(Attr::as_int).unwrap_or(0);
    if axis < -rank || axis >= rank {
        return None;
    }
    let axis = axis.rem_euclid(rank.max(1));
    let Dim::Known(len) = shape[axis as usize] else {
        return None;
    };
    let len = len as i64;
    let (sizes, keep_axis) = match n.input(1) {
        None => (
            vec![1; len as usize],
            n.attr("keepdims").and_then(Attr::as_int).unwrap_or(1) != 0,
        ),
        Some(s) => {
            let d = m.constant(s)?;
            let v = d.to_i64_vec()?;
            if d.shape.is_empty() {
                let chunk = *v.first()?;
                if chunk <= 0 {
                    return None;
                }
                let count = (len + chunk - 1) / chunk;
                let sizes = (0..count).map(|i| chunk.min(len - i * chunk)).collect();
                (sizes, true)
            } else {
                if v.iter().any(|&s| s < 0) || v.iter().sum::<i64>() != len {
                    return None;
                }
                (v, true)
            }
        }
    };
    let mut bounds = Vec::with_capacity(sizes.len());
    let mut at = 0;
    for s in sizes {
        bounds.push((at, at + s));
        at += s;
    }
    Some(Split {
        x,
        axis,
        bounds,
        keep_axis,
    })
}

/// The nodes (and new constants) that compute SequenceAt node `n`'s
/// result from the split operand, if `n` reads a static split at a
/// constant position.
fn slice_for(
    m: &mut Module,
    n: &Node,
    splits: &HashMap<ValueId, Split>,
) -> Option<(Vec<Node>, Vec<ValueId>)> {
    if n.op != "SequenceAt" {
        return None;
    }
    let split = splits.get(&n.input(0)?)?;
    let pos = m.constant(n.input(1)?)?.to_i64_vec()?;
    let &[pos] = pos.as_slice() else { return None };
    let count = split.bounds.len() as i64;
    if pos < -count || pos >= count {
        return None;
    }
    let (b, e) = split.bounds[pos.rem_euclid(count) as usize];
    let out = n.outputs[0];
    let konst = |m: &mut Module, hint: &str, v: i64| -> Option<ValueId> {
        let data = TensorData::from_i64(vec![1], &[v]).ok()?;
        Some(m.add_constant_unique(&format!("{}_{hint}", m.name(out)), Arc::new(data)))
    };
    let starts = konst(m, "start", b)?;
    let ends = konst(m, "end", e)?;
    let axes = konst(m, "axis", split.axis)?;
    let mut consts = vec![starts, ends, axes];
    let named = |op: &str, inputs, outputs| {
        let mut s = Node::new(op, inputs, outputs);
        s.name = n.name.clone();
        s
    };
    let inputs = vec![Some(split.x), Some(starts), Some(ends), Some(axes)];
    if split.keep_axis {
        return Some((vec![named("Slice", inputs, vec![out])], consts));
    }
    let mut tt = m.ty(split.x).as_tensor()?.clone();
    tt.shape.as_mut()?[split.axis as usize] = Dim::Known((e - b) as u64);
    let ty = kiln_ir::Type::Tensor(tt);
    let sliced = m.add_value_unique(&format!("{}_slice", m.name(out)), ty);
    let squeeze_axes = konst(m, "squeeze", split.axis)?;
    consts.push(squeeze_axes);
    Some((
        vec![
            named("Slice", inputs, vec![sliced]),
            named("Squeeze", vec![Some(sliced), Some(squeeze_axes)], vec![out]),
        ],
        consts,
    ))
}
