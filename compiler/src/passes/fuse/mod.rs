//! Pass `fuse`: groups ops that a backend should run as one kernel into
//! `kiln.Fusion` nodes, so each group reads its inputs and writes its
//! outputs to memory once instead of once per op (XLA's loop, input and
//! output fusion).
//!
//! Three kinds of group (see [`rules`]): elementwise chains and DAGs;
//! elementwise producers absorbed by a following reduction, Softmax,
//! LogSoftmax or LayerNormalization; and epilogues (bias, activation,
//! residual add) applied to a MatMul/Gemm/Conv/ConvTranspose output. A
//! group's body is a closed region: its inputs are the fusion's operands
//! (the values the group reads from outside), scalar and small integer
//! constants are copied into it, and its outputs are the fusion's results
//! (the root's results, which keep their value names). Nothing is
//! recomputed: a value used outside its group is a group output. Only
//! groups of two or more ops are formed. Every region is fused, nested
//! regions of If/Loop/Scan included; fusion bodies are left alone.
//!
//! [`explain`] says, for every producer→consumer pair left unfused, why.
//!
//! Files: `plan.rs` the plan (groups, classes, merges) that `rules.rs`
//! reads and this file builds; `rules.rs` the rules; this file the
//! machinery that applies them and rewrites the module.

mod plan;
pub mod rules;

use std::collections::{HashMap, HashSet};

use kiln_ir::{Attr, Module, Node, Region, ValueId};

use plan::{Class, Kind};
pub use plan::{Group, Plan};
use rules::{classify, Order, RULES};

pub fn run(m: &mut Module) -> Result<bool, String> {
    let mut body = std::mem::take(&mut m.body);
    let r = fuse_region(m, &mut body);
    m.body = body;
    r
}

/// One line per producer→consumer pair (in any region) that `fuse` would
/// leave in different kernels, saying why.
pub fn explain(m: &Module) -> Vec<String> {
    let mut out = vec![];
    explain_region(m, &m.body, &mut out);
    out
}

impl<'a> Plan<'a> {
    pub fn new(m: &'a Module, r: &'a Region) -> Plan<'a> {
        let nodes = &r.nodes[..];
        let class = nodes.iter().map(|n| classify(m, n)).collect();
        let mut p = Plan::ungrouped(m, r, class);
        for &(_, order, rule) in RULES {
            let idx: Vec<usize> = match order {
                Order::Backward => (0..nodes.len()).rev().collect(),
                Order::Forward => (0..nodes.len()).collect(),
            };
            for i in idx {
                for mg in rule(&p, i) {
                    p.merge(mg);
                }
            }
        }
        p
    }
}

/// Fuse one region (its nested regions first).
fn fuse_region(m: &mut Module, r: &mut Region) -> Result<bool, String> {
    let mut changed = false;
    for n in &mut r.nodes {
        if n.op == "kiln.Fusion" {
            continue;
        }
        for sub in n.regions_mut() {
            changed |= fuse_region(m, sub)?;
        }
    }
    let groups: Vec<Group> = Plan::new(m, r).fused_groups().cloned().collect();
    if groups.is_empty() {
        return Ok(changed);
    }
    // Build every fusion node, then rebuild the node list: a fusion takes
    // its root's place, other members disappear.
    let mut at_root: HashMap<usize, Node> = HashMap::new();
    let mut removed: HashSet<usize> = HashSet::new();
    for g in &groups {
        let f = build_fusion(m, &r.nodes, g)?;
        at_root.insert(g.root, f);
        removed.extend(g.members.iter().copied().filter(|&i| i != g.root));
    }
    let old = std::mem::take(&mut r.nodes);
    for (i, n) in old.into_iter().enumerate() {
        if let Some(f) = at_root.remove(&i) {
            r.nodes.push(f);
        } else if !removed.contains(&i) {
            r.nodes.push(n);
        }
    }
    Ok(true)
}

/// Constants copied into a body rather than passed as operands: scalars,
/// and small integer vectors (axes) that inference inside the body needs.
fn copy_into_body(m: &Module, v: ValueId) -> bool {
    let Some(d) = m.constant(v) else { return false };
    d.numel() <= 1 || (d.elem.is_int() && d.shape.len() == 1 && d.numel() <= 16)
}

/// The `kiln.Fusion` node of a group of `nodes`.
fn build_fusion(m: &mut Module, nodes: &[Node], g: &Group) -> Result<Node, String> {
    let root = nodes.get(g.root).ok_or("fusion root out of range")?;
    let mut inside: HashSet<ValueId> = HashSet::new();
    for &i in &g.members {
        inside.extend(&nodes[i].outputs);
    }
    let mut body = Region::default();
    let mut operands: Vec<Option<ValueId>> = vec![];
    // Outer value -> its stand-in inside the body.
    let mut map: HashMap<ValueId, ValueId> = HashMap::new();
    for &i in &g.members {
        let statistics = nodes[i].op == "BatchNormalization";
        for (k, v) in nodes[i].inputs.iter().enumerate() {
            let Some(v) = v else { continue };
            if inside.contains(v) || map.contains_key(v) {
                continue;
            }
            let hint = m.name(*v).to_string();
            // A BatchNormalization's constant statistics go in too: every
            // backend folds them into a per-channel scale and shift while
            // compiling the body, which needs their values there.
            let copy = copy_into_body(m, *v) || statistics && k >= 1 && m.constant(*v).is_some();
            let inner = if copy {
                let data = m.constant(*v).cloned().ok_or("constant without data")?;
                let c = m.add_constant_unique(&hint, data);
                body.constants.push(c);
                c
            } else {
                let ty = m.ty(*v).clone();
                let b = m.add_value_unique(&format!("{hint}_in"), ty);
                body.inputs.push(b);
                operands.push(Some(*v));
                b
            };
            map.insert(*v, inner);
        }
    }
    // The root's results get inner stand-ins; the fusion node defines the
    // original values, so every user outside keeps its operands.
    for &o in &root.outputs {
        let ty = m.ty(o).clone();
        let hint = format!("{}_out", m.name(o));
        let inner = m.add_value_unique(&hint, ty);
        map.insert(o, inner);
    }
    // An epilogue's anchor goes first, as the backends read it: members
    // that do not depend on it (a BatchNormalization on the skip branch of
    // `relu(bn(x) + conv(x))`) may precede it in the region, and the
    // anchor reads no member (a member it read would have a user outside
    // the elementwise group, which rule 1 never merges).
    let order = g
        .anchor
        .into_iter()
        .chain(g.members.iter().copied().filter(|&i| Some(i) != g.anchor));
    for i in order {
        let mut n = nodes[i].clone();
        for v in n.inputs.iter_mut().flatten() {
            if let Some(&x) = map.get(v) {
                *v = x;
            }
        }
        if i == g.root {
            for o in &mut n.outputs {
                *o = map[o];
            }
        }
        body.nodes.push(n);
    }
    body.outputs = root.outputs.iter().map(|o| map[o]).collect();
    let mut f = Node::new("kiln.Fusion", operands, root.outputs.clone());
    f.name = root.name.clone();
    f.attrs.insert("body".into(), Attr::Graph(body));
    f.attrs
        .insert("kind".into(), Attr::String(g.kind.name().into()));
    Ok(f)
}

fn explain_region(m: &Module, r: &Region, out: &mut Vec<String>) {
    let p = Plan::new(m, r);
    for (c, n) in r.nodes.iter().enumerate() {
        let mut seen = HashSet::new();
        for &v in n.inputs.iter().flatten() {
            let Some(&d) = p.def.get(&v) else { continue };
            if !seen.insert(v) || p.group_of[d] == p.group_of[c] {
                continue;
            }
            let who = |i: usize| {
                let node = &r.nodes[i];
                let name = node.outputs.first().map(|&o| m.name(o)).unwrap_or("?");
                format!("%{name} ({})", node.op)
            };
            out.push(format!("{} -> {}: {}", who(d), who(c), why(&p, d, c, v)));
        }
        if n.op != "kiln.Fusion" {
            for (_, sub) in n.regions() {
                explain_region(m, sub, out);
            }
        }
    }
}

/// Why producer `d` and consumer `c` (using `v`) are in different groups.
fn why(p: &Plan, d: usize, c: usize, v: ValueId) -> String {
    let name = p.m.name(v);
    let (cd, cc) = match (&p.class[d], &p.class[c]) {
        (Err(e), _) => return format!("producer is not fusible ({e})"),
        (_, Err(e)) => return format!("consumer is not fusible ({e})"),
        (Ok(a), Ok(b)) => (*a, *b),
    };
    let n_users = p.users_of(v).len();
    let gc = &p.groups[p.group_of[c]];
    match (cd, cc) {
        (Class::Reduction, _) => "producer is a reduction: a reduction ends its group".into(),
        (Class::Anchor, Class::Anchor) => "neither is elementwise".into(),
        (_, Class::Anchor) => "consumer is a matmul/conv: elementwise ops fuse into its output (epilogue), not its operands".into(),
        (Class::Anchor, Class::Reduction) => "producer is not elementwise and consumer is not an epilogue".into(),
        _ if p.region_outputs.contains(&v) => format!("%{name} is a region output: kept as a group output"),
        _ if n_users > 1 => format!("%{name} used by {n_users} consumers: kept as a group output"),
        (Class::Anchor, _) if gc.kind == Kind::Reduction => {
            "consumer's group is a reduction fusion: an epilogue joins elementwise groups only".into()
        }
        (Class::Anchor, _) => match gc.anchor {
            Some(a) => format!(
                "consumer's group already has a root op ({} %{})",
                p.nodes[a].op,
                p.nodes[a].outputs.first().map(|&o| p.m.name(o)).unwrap_or("?")
            ),
            None => "not fused".into(),
        },
        _ => {
            let gd = &p.groups[p.group_of[d]];
            if gd.anchor.is_some() && cc == Class::Reduction {
                "producer is an epilogue fusion: a matmul/conv epilogue does not feed a reduction in one kernel".into()
            } else {
                "not fused".into()
            }
        }
    }
}
