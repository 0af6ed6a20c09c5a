//! Pass `dce`: remove nodes and constants nothing uses.
//!
//! Why: folding, simplification and CSE leave nodes whose results nobody
//! reads any more (and the constants that fed them); exported models carry
//! some too. ONNX inference ops have no side effects, so a node none of
//! whose results is used — by a later node, a nested region, or a region
//! output — can go, random ops included (an unused random draw changes
//! nothing: every random node seeds its own source).
//!
//! Liveness is computed backwards per region: the region's outputs are
//! live; a node is live when one of its results is; a live node makes its
//! operands live, and every value its nested regions mention (after those
//! regions are cleaned first). Region inputs are never removed (they are
//! the region's signature); neither are graph inputs or outputs.

use std::collections::HashSet;

use kiln_ir::{Module, Node, Region, ValueId};

/// The liveness rules: is this node kept although no result is used?
/// (None in ONNX inference; the hook stays for ops that gain effects.)
type Keep = fn(&Node) -> bool;

const KEEP_UNUSED: &[(&str, Keep)] = &[];

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut body = std::mem::take(&mut m.body);
    let changed = dce_region(&mut body);
    m.body = body;
    Ok(changed)
}

fn keep_unused(node: &Node) -> bool {
    KEEP_UNUSED.iter().any(|(_, rule)| rule(node))
}

/// Clean one region; returns whether anything was removed.
fn dce_region(r: &mut Region) -> bool {
    let mut live: HashSet<ValueId> = r.outputs.iter().copied().collect();
    let mut changed = false;
    let before = r.nodes.len();
    let mut kept: Vec<Node> = Vec::with_capacity(before);
    for mut node in std::mem::take(&mut r.nodes).into_iter().rev() {
        if !keep_unused(&node) && !node.outputs.iter().any(|o| live.contains(o)) {
            continue;
        }
        live.extend(node.inputs.iter().flatten().copied());
        for sub in node.regions_mut() {
            changed |= dce_region(sub);
            mentioned(sub, &mut live);
        }
        kept.push(node);
    }
    kept.reverse();
    changed |= kept.len() != before;
    r.nodes = kept;
    let nconst = r.constants.len();
    r.constants.retain(|c| live.contains(c));
    changed | (r.constants.len() != nconst)
}

/// Every value a region mentions: operands of its nodes (nested regions
/// included) and its outputs. Values of the region itself are included
/// too; they cannot be defined outside it, so this over-approximation of
/// "outer values used" is harmless.
fn mentioned(r: &Region, out: &mut HashSet<ValueId>) {
    out.extend(r.outputs.iter().copied());
    r.walk(&mut |n| out.extend(n.inputs.iter().flatten().copied()));
    // Nested region outputs are not operands; collect them too.
    fn nested_outputs(r: &Region, out: &mut HashSet<ValueId>) {
        for n in &r.nodes {
            for (_, sub) in n.regions() {
                out.extend(sub.outputs.iter().copied());
                nested_outputs(sub, out);
            }
        }
    }
    nested_outputs(r, out);
}
