//! Pass `cse`: common-subexpression elimination — merge identical nodes and
//! identical constants.
//!
//! Why: exported models repeat work (the same `Shape`/`Gather` chain per
//! attention head, the same `Transpose` of one weight, one constant saved
//! once per use), and folding makes more duplicates. Computing each thing
//! once saves time and memory, and lets later passes see one value.
//!
//! Two constants merge when their types are equal and their data is equal
//! (bucketed by a hash of the bytes, then compared). Two nodes merge when
//! they have the same op, the same operands (after earlier merges) and
//! equal attributes. The later duplicate goes; uses of its results (later
//! nodes, nested regions, region outputs) are renamed to the earlier ones.
//!
//! Scoping follows visibility: a node or constant of an enclosing region
//! that precedes a nested region may replace a duplicate inside it, never
//! the reverse, and the branches of one node do not see each other.
//!
//! Not merged: random ops (two draws differ), nodes with regions, elided
//! constants (their bytes are unknown), and a duplicate one of whose
//! results is a graph output (graph outputs keep their names).

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use kiln_ir::ops::traits::is_random;
use kiln_ir::{Module, Node, Payload, Region, ValueId};

/// When may a node take part in CSE at all? (The rules, each one small.)
type Guard = fn(&Module, &Node) -> bool;

const NEVER_MERGE: &[(&str, Guard)] = &[
    ("random", is_random),
    ("has-regions", |_, n| n.regions().next().is_some()),
    ("no-results", |_, n| n.outputs.is_empty()),
];

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut body = std::mem::take(&mut m.body);
    let mut cx = Cse {
        graph_outputs: body.outputs.iter().copied().collect(),
        nodes: HashMap::new(),
        consts: HashMap::new(),
        subst: HashMap::new(),
    };
    let changed = cx.region(m, &mut body);
    m.body = body;
    Ok(changed)
}

/// A node's identity for lookup: op and operands (attributes are compared
/// on a hit, as `Attr` holds floats and is not hashable).
type NodeKey = (String, Vec<Option<ValueId>>);

#[derive(Default)]
struct Cse {
    graph_outputs: HashSet<ValueId>,
    /// Visible nodes by key: (the node, less its regions, for comparing
    /// attributes).
    nodes: HashMap<NodeKey, Vec<Node>>,
    /// Visible constants by hash of type and data.
    consts: HashMap<u64, Vec<ValueId>>,
    /// Renamings of removed duplicates' results.
    subst: HashMap<ValueId, ValueId>,
}

impl Cse {
    fn map(&self, v: ValueId) -> ValueId {
        self.subst.get(&v).copied().unwrap_or(v)
    }

    fn region(&mut self, m: &Module, r: &mut Region) -> bool {
        let mut changed = false;
        let mut added_nodes: Vec<NodeKey> = vec![];
        let mut added_consts: Vec<u64> = vec![];

        // Constants.
        let mut kept_consts = Vec::with_capacity(r.constants.len());
        for &c in &r.constants {
            match self.const_key(m, c) {
                None => kept_consts.push(c),
                Some(h) => {
                    let same = self
                        .consts
                        .get(&h)
                        .and_then(|cands| cands.iter().copied().find(|&e| same_constant(m, e, c)));
                    match same {
                        Some(e) if !self.graph_outputs.contains(&c) => {
                            self.subst.insert(c, e);
                            changed = true;
                        }
                        _ => {
                            self.consts.entry(h).or_default().push(c);
                            added_consts.push(h);
                            kept_consts.push(c);
                        }
                    }
                }
            }
        }
        r.constants = kept_consts;

        // Nodes, in order.
        let nodes = std::mem::take(&mut r.nodes);
        let mut kept = Vec::with_capacity(nodes.len());
        for mut node in nodes {
            for i in node.inputs.iter_mut().flatten() {
                *i = self.map(*i);
            }
            // A fusion body is closed (it sees only its inputs): it gets a
            // scope of its own, or an outer value could replace one of its
            // constants.
            let closed = node.op == "kiln.Fusion";
            for sub in node.regions_mut() {
                if closed {
                    changed |= Cse::default().region(m, sub);
                } else {
                    changed |= self.region(m, sub);
                }
            }
            if NEVER_MERGE.iter().any(|(_, rule)| rule(m, &node)) {
                kept.push(node);
                continue;
            }
            let key: NodeKey = (node.op.clone(), node.inputs.clone());
            let earlier = self
                .nodes
                .get(&key)
                .and_then(|cands| cands.iter().find(|e| same_node(m, e, &node)))
                .map(|e| e.outputs.clone());
            match earlier {
                Some(outs) if !node.outputs.iter().any(|o| self.graph_outputs.contains(o)) => {
                    for (&d, &e) in node.outputs.iter().zip(&outs) {
                        self.subst.insert(d, e);
                    }
                    changed = true;
                }
                _ => {
                    self.nodes
                        .entry(key.clone())
                        .or_default()
                        .push(node.clone());
                    added_nodes.push(key);
                    kept.push(node);
                }
            }
        }
        r.nodes = kept;
        for o in r.outputs.iter_mut() {
            *o = self.map(*o);
        }

        // What this region defined is not visible after it.
        for k in added_nodes {
            if let Some(v) = self.nodes.get_mut(&k) {
                v.pop();
            }
        }
        for h in added_consts {
            if let Some(v) = self.consts.get_mut(&h) {
                v.pop();
            }
        }
        changed
    }

    /// The bucket of a constant: a hash of its type and data; `None` for
    /// constants that never merge.
    fn const_key(&self, m: &Module, c: ValueId) -> Option<u64> {
        let d = m.constant(c)?;
        let mut h = DefaultHasher::new();
        d.elem.hash(&mut h);
        d.shape.hash(&mut h);
        match &d.payload {
            // Large weights: hash a sample (ends and a stride through the
            // middle), not every byte; equal buckets compare in full, so
            // the sample only has to separate most distinct constants.
            Payload::Bytes(b) if b.len() > SAMPLE_ABOVE => {
                b.len().hash(&mut h);
                b[..64].hash(&mut h);
                b[b.len() - 64..].hash(&mut h);
                let step = b.len() / 1024;
                (0..1024)
                    .map(|i| b[i * step])
                    .collect::<Vec<u8>>()
                    .hash(&mut h);
            }
            Payload::Bytes(b) => b.hash(&mut h),
            Payload::Strings(s) => s.hash(&mut h),
            Payload::Elided => return None,
        }
        Some(h.finish())
    }
}

/// Constants larger than this are bucketed by a sample of their bytes.
const SAMPLE_ABOVE: usize = 64 << 10;

fn same_constant(m: &Module, a: ValueId, b: ValueId) -> bool {
    m.ty(a) == m.ty(b)
        && match (m.constant(a), m.constant(b)) {
            (Some(x), Some(y)) => std::sync::Arc::ptr_eq(x, y) || x == y,
            _ => false,
        }
}

/// Same op, operands, result count, attributes, and result types (so that
/// renaming never changes a type anyone relies on).
fn same_node(m: &Module, a: &Node, b: &Node) -> bool {
    a.op == b.op
        && a.inputs == b.inputs
        && a.outputs.len() == b.outputs.len()
        && a.attrs == b.attrs
        && a.outputs
            .iter()
            .zip(&b.outputs)
            .all(|(&x, &y)| m.ty(x) == m.ty(y))
}
