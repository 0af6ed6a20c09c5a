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

pub mod rules;

use std::collections::{HashMap, HashSet};

use kiln_ir::{Attr, Module, Node, Region, ValueId};

use rules::{classify, Class, Kind, Order, RULES};

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

/// A group of nodes of one region.
#[derive(Clone, Debug)]
pub struct Group {
    /// Node indices, ascending.
    pub members: Vec<usize>,
    pub kind: Kind,
    /// The last member; only its results are used outside the group.
    pub root: usize,
    /// The MatMul/Conv of an epilogue.
    pub anchor: Option<usize>,
}

/// The grouping of one region's nodes.
pub struct Plan<'a> {
    pub m: &'a Module,
    pub nodes: &'a [Node],
    pub class: Vec<Result<Class, String>>,
    /// Node defining each value defined by a node of this region.
    pub def: HashMap<ValueId, usize>,
    /// Nodes using each value (uses inside their nested regions count),
    /// ascending, without repeats.
    pub users: HashMap<ValueId, Vec<usize>>,
    /// Values the region returns.
    pub region_outputs: HashSet<ValueId>,
    pub group_of: Vec<usize>,
    /// By group id (initially one per node; merged-away groups are empty).
    pub groups: Vec<Group>,
}

/// Every value a node uses, its nested regions included.
fn node_uses(n: &Node, out: &mut Vec<ValueId>) {
    out.extend(n.inputs.iter().flatten());
    for (_, r) in n.regions() {
        out.extend(&r.outputs);
        for x in &r.nodes {
            node_uses(x, out);
        }
    }
}

impl<'a> Plan<'a> {
    pub fn new(m: &'a Module, r: &'a Region) -> Plan<'a> {
        let nodes = &r.nodes[..];
        let mut def = HashMap::new();
        let mut users: HashMap<ValueId, Vec<usize>> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            let mut uses = vec![];
            node_uses(n, &mut uses);
            for v in uses {
                let u = users.entry(v).or_default();
                if u.last() != Some(&i) && !u.contains(&i) {
                    u.push(i);
                }
            }
            for &o in &n.outputs {
                def.insert(o, i);
            }
        }
        let mut p = Plan {
            m,
            nodes,
            class: nodes.iter().map(|n| classify(m, n)).collect(),
            def,
            users,
            region_outputs: r.outputs.iter().copied().collect(),
            group_of: (0..nodes.len()).collect(),
            groups: (0..nodes.len())
                .map(|i| Group {
                    members: vec![i],
                    kind: Kind::Elementwise,
                    root: i,
                    anchor: None,
                })
                .collect(),
        };
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

    pub fn users_of(&self, v: ValueId) -> &[usize] {
        self.users.get(&v).map(|u| &u[..]).unwrap_or(&[])
    }

    /// The one group all users of `v` are in, when `v` is not a region
    /// output and has at least one user.
    pub fn sole_user_group(&self, v: ValueId) -> Option<usize> {
        if self.region_outputs.contains(&v) {
            return None;
        }
        let users = self.users_of(v);
        let g = self.group_of[*users.first()?];
        users.iter().all(|&u| self.group_of[u] == g).then_some(g)
    }

    /// Is group `g` an elementwise group (no anchor, no reduction; a
    /// single node counts when it is elementwise)?
    pub fn is_elementwise_group(&self, g: usize) -> bool {
        let grp = &self.groups[g];
        grp.kind == Kind::Elementwise && self.class[grp.root] == Ok(Class::Elementwise)
    }

    fn merge(&mut self, mg: rules::Merge) {
        if mg.from == mg.into {
            return;
        }
        let from = std::mem::take(&mut self.groups[mg.from].members);
        for &i in &from {
            self.group_of[i] = mg.into;
        }
        let into = &mut self.groups[mg.into];
        into.members.extend(from);
        into.members.sort_unstable();
        into.root = *into.members.last().unwrap_or(&into.root);
        into.kind = mg.kind;
        if mg.anchor.is_some() {
            into.anchor = mg.anchor;
        }
    }

    /// Groups of two or more nodes.
    pub fn fused_groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.iter().filter(|g| g.members.len() >= 2)
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
        for v in nodes[i].inputs.iter().flatten() {
            if inside.contains(v) || map.contains_key(v) {
                continue;
            }
            let hint = m.name(*v).to_string();
            let inner = if copy_into_body(m, *v) {
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
    for &i in &g.members {
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
