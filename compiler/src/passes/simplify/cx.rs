//! The vocabulary the `simplify` rules and the engine share: what a rule
//! sees ([`Cx`], the use lists of [`Use`]), what it proposes ([`Rewrite`],
//! [`Action`]), and the small helpers rules build proposals with.
//!
//! It is a module of its own so that dependencies form a chain: the rule
//! files (`identities`, `chains`, `fold`, `patterns`) import this, and
//! `mod.rs` imports both this and the rule table. Nothing here knows about
//! any rule or about how a proposal is checked and applied.

use std::collections::HashMap;

use kiln_ir::{Attr, ElemType, Module, Node, Region, TensorData, Type, ValueId};

/// What a rule proposes.
pub(crate) struct Rewrite {
    /// Nodes of the matched pattern (indices in the region), root included.
    /// Every one but the root must have results used only inside the
    /// pattern; they are removed.
    pub pattern: Vec<usize>,
    pub action: Action,
}

pub(crate) enum Action {
    /// The root's first result equals this existing value (defined before
    /// the pattern). The root is removed; its other results must be unused.
    Replace(ValueId),
    /// This node replaces the root; its results are (a prefix of) the
    /// root's results, so users need no rewiring.
    Node(Node),
}

/// A use of a value defined in the current region.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Use {
    /// Operand of the region's node at this index.
    Node(usize),
    /// Used inside a region nested in the node at this index.
    Nested(usize),
    /// A region output (of this region or a nested one).
    Output,
}

/// What rules see: the module (values, types, constants), the region being
/// simplified, use lists and producers.
pub(crate) struct Cx<'a> {
    pub m: &'a mut Module,
    pub r: &'a Region,
    pub uses: HashMap<ValueId, Vec<Use>>,
    pub def: HashMap<ValueId, usize>,
    /// Constants a rule created (listed in the region if the rewrite is applied).
    pub new_consts: Vec<ValueId>,
    /// New constants equal to existing ones share their buffers (BN folded
    /// into equal filters makes equal filters).
    pub pool: &'a mut kiln_ir::ConstantPool,
}

impl Cx<'_> {
    pub fn node(&self, i: usize) -> &Node {
        &self.r.nodes[i]
    }

    /// The index of the node defining `v` in this region, if its op is `op`.
    pub fn producer(&self, v: ValueId, op: &str) -> Option<usize> {
        let &i = self.def.get(&v)?;
        (self.r.nodes[i].op == op).then_some(i)
    }

    /// Producer index of `v` whatever its op.
    pub fn producer_any(&self, v: ValueId) -> Option<usize> {
        self.def.get(&v).copied()
    }

    pub fn uses(&self, v: ValueId) -> &[Use] {
        self.uses.get(&v).map(|u| u.as_slice()).unwrap_or(&[])
    }

    pub fn unused(&self, v: ValueId) -> bool {
        self.uses(v).is_empty()
    }

    /// Is `v` used exactly once, by an operand of node `by`?
    pub fn single_use_by(&self, v: ValueId, by: usize) -> bool {
        self.uses(v) == [Use::Node(by)]
    }

    pub fn tensor_ty(&self, v: ValueId) -> Option<&kiln_ir::TensorType> {
        self.m.ty(v).as_tensor()
    }

    pub fn elem(&self, v: ValueId) -> Option<ElemType> {
        self.tensor_ty(v).map(|t| t.elem)
    }

    pub fn rank(&self, v: ValueId) -> Option<usize> {
        self.tensor_ty(v)?.rank()
    }

    /// Values of a numeric constant.
    pub fn const_f64(&self, v: ValueId) -> Option<Vec<f64>> {
        self.m.constant(v)?.to_f64_vec()
    }

    pub fn const_i64(&self, v: ValueId) -> Option<Vec<i64>> {
        self.m.constant(v)?.to_i64_vec()
    }

    /// The value of a constant whose elements are all equal (a splat).
    pub fn splat(&self, v: ValueId) -> Option<f64> {
        let vals = self.const_f64(v)?;
        let first = *vals.first()?;
        vals.iter()
            .all(|&x| x == first || (x.is_nan() && first.is_nan()))
            .then_some(first)
    }

    /// A one-element constant's value (a scalar however it is shaped).
    pub fn scalar(&self, v: ValueId) -> Option<f64> {
        let d = self.m.constant(v)?;
        if d.numel() != 1 {
            return None;
        }
        self.const_f64(v)?.first().copied()
    }

    /// Add a constant; it is listed in the region if the rewrite applies.
    pub fn new_const(&mut self, hint: &str, data: TensorData) -> ValueId {
        let id = self.pool.add_constant(self.m, hint, data);
        self.new_consts.push(id);
        id
    }

    pub fn name(&self, v: ValueId) -> &str {
        self.m.name(v)
    }
}

/// Is `a` close to `b` (relative tolerance, for constants exporters print).
pub(crate) fn approx(a: f64, b: f64, rtol: f64) -> bool {
    (a - b).abs() <= rtol * b.abs().max(1e-30)
}

/// A new node like `like` (keeping its source name) with other op/operands.
pub(crate) fn node_from(
    like: &Node,
    op: &str,
    inputs: Vec<Option<ValueId>>,
    outputs: Vec<ValueId>,
) -> Node {
    let mut n = Node::new(op, inputs, outputs);
    n.name = like.name.clone();
    n
}

pub(crate) fn attr_int(n: &Node, name: &str, default: i64) -> i64 {
    n.attr(name).and_then(Attr::as_int).unwrap_or(default)
}

pub(crate) fn attr_float(n: &Node, name: &str, default: f32) -> f32 {
    n.attr(name).and_then(Attr::as_float).unwrap_or(default)
}

/// Build a float constant of element type `elem` (f32/f64/f16/bf16).
pub(crate) fn float_data(elem: ElemType, shape: Vec<u64>, v: &[f64]) -> Option<TensorData> {
    if elem == ElemType::F32 {
        let bytes = kiln_ir::tensor::build_bytes(v.len() * 4, |b| {
            for (o, &x) in b.chunks_exact_mut(4).zip(v) {
                o.copy_from_slice(&(x as f32).to_le_bytes());
            }
        });
        return TensorData::from_bytes(elem, shape, bytes).ok();
    }
    let bytes: Vec<u8> = match elem {
        ElemType::F64 => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        ElemType::F16 => v
            .iter()
            .flat_map(|&x| half::f16::from_f64(x).to_le_bytes())
            .collect(),
        ElemType::BF16 => v
            .iter()
            .flat_map(|&x| half::bf16::from_f64(x).to_le_bytes())
            .collect(),
        _ => return None,
    };
    TensorData::from_bytes(elem, shape, bytes).ok()
}

/// Both tensor types with the same element type and the same shape, every
/// dim known or symbolic (symbolic dims compare algebraically).
pub(crate) fn same_shape(a: &Type, b: &Type) -> bool {
    match (a.as_tensor(), b.as_tensor()) {
        (Some(x), Some(y)) => {
            x.elem == y.elem
                && match (&x.shape, &y.shape) {
                    (Some(p), Some(q)) => {
                        p.len() == q.len()
                            && p.iter()
                                .zip(q)
                                .all(|(d, e)| d == e && *d != kiln_ir::Dim::Unknown)
                    }
                    _ => false,
                }
        }
        _ => false,
    }
}

/// Does broadcasting the constant `c` against `x` leave `x`'s shape (and
/// element type) unchanged? (`c`'s dims, right-aligned, are 1 or equal a
/// known dim of `x`.)
pub(crate) fn broadcasts_into(cx: &Cx, c: ValueId, x: ValueId) -> bool {
    let (Some(ct), Some(xt)) = (cx.tensor_ty(c), cx.tensor_ty(x)) else {
        return false;
    };
    if ct.elem != xt.elem {
        return false;
    }
    let (Some(cs), Some(xs)) = (ct.static_shape(), xt.shape.as_ref()) else {
        return false;
    };
    if cs.len() > xs.len() {
        return false;
    }
    cs.iter()
        .rev()
        .zip(xs.iter().rev())
        .all(|(&c, x)| c == 1 || x.as_known() == Some(c))
}
