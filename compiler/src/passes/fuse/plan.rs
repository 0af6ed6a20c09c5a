//! The grouping plan of pass `fuse` and the terms it is written in: how
//! the pass sees an op ([`Class`]), a group's [`Kind`], a rule's decision
//! ([`Merge`]), the groups of one region ([`Group`], [`Plan`]) and the
//! questions rules ask about them.
//!
//! It is a module of its own so that dependencies form a chain: the rules
//! (`rules.rs`) read a plan and the machinery (`mod.rs`) builds one by
//! applying the rules, so both import this and this imports neither.

use std::collections::{HashMap, HashSet};

use kiln_ir::{Module, Node, Region, ValueId};

/// How the pass sees an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Pointwise ops (with broadcasting: unary math and activations, binary
    /// arithmetic, comparisons and bitwise ops, Where, Clip, Cast) and
    /// channelwise ones (inference-mode BatchNormalization, a per-channel
    /// affine map).
    Elementwise,
    /// Reductions (`Reduce*`) and normalizations along an axis (Softmax,
    /// LogSoftmax, LpNormalization, LayerNormalization): may absorb their
    /// elementwise producers, and end their group.
    Reduction,
    /// Contractions (MatMul, Gemm, Conv, ConvTranspose, DeformConv): may
    /// take an elementwise epilogue (bias, activation, residual) on their
    /// output.
    Anchor,
    /// Anything else (not fused).
    Other,
}

/// The kind a group has (the `kind` attribute of its `kiln.Fusion`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Elementwise,
    Reduction,
    Epilogue,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Elementwise => "elementwise",
            Kind::Reduction => "reduction",
            Kind::Epilogue => "epilogue",
        }
    }
}

/// What a rule decides for one node: merge group `from` into group `into`,
/// the merged group having `kind` (and, for epilogues, the anchor node).
pub struct Merge {
    pub from: usize,
    pub into: usize,
    pub kind: Kind,
    pub anchor: Option<usize>,
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
    /// The plan before any rule ran: every node of `r` a group of its own,
    /// `class[i]` the class of node `i` (the rules' `classify`).
    pub(super) fn ungrouped(
        m: &'a Module,
        r: &'a Region,
        class: Vec<Result<Class, String>>,
    ) -> Plan<'a> {
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
        Plan {
            m,
            nodes,
            class,
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
        }
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

    /// Apply a rule's decision.
    pub(super) fn merge(&mut self, mg: Merge) {
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
