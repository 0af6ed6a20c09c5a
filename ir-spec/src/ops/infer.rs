//! Module-wide shape and type inference: walks regions in program order
//! (nested regions before the node holding them) and sets or refines the
//! type of every node result.

use std::collections::HashMap;
use std::sync::Arc;

use super::registry::lookup;
use super::schema::{InferCtx, InferError, IntValues};
use super::values;
use crate::module::{Module, Node, Region, ValueId};
use crate::tensor::TensorData;
use crate::types::{Dim, TensorType, Type};
use crate::verify::error::{
    constant_node_data, node_regions, region_path, type_str, Location, Rule, VerifyError,
};

/// What module walks know about values beyond their types: data of
/// `Constant` node results, and propagated integer values.
#[derive(Default, Debug)]
pub(crate) struct Known {
    pub consts: HashMap<ValueId, Arc<TensorData>>,
    pub values: HashMap<ValueId, IntValues>,
}

/// Errors of [`infer_module`] are verifier errors (location + rule).
pub type ModuleInferError = VerifyError;

/// What to do with the result types already on the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeclaredTypes {
    /// Declared types are facts: keep whatever they say beyond the
    /// inferred type; a declared type incompatible with the inferred one
    /// is an error.
    #[default]
    Refine,
    /// Declared types are placeholders: refine when compatible, otherwise
    /// replace them with the inferred type.
    Replace,
}

/// Infer every node's result types, refining the declared ones
/// ([`DeclaredTypes::Refine`]).
#[allow(clippy::result_large_err)]
pub fn infer_module(m: &mut Module) -> Result<(), ModuleInferError> {
    infer_module_with(m, DeclaredTypes::Refine)
}

/// [`infer_module`] with a choice of policy for declared types.
#[allow(clippy::result_large_err)]
pub fn infer_module_with(m: &mut Module, policy: DeclaredTypes) -> Result<(), ModuleInferError> {
    let body = std::mem::take(&mut m.body);
    let mut known = Known::default();
    let r = infer_region(m, &body, "main", policy, &mut known);
    m.body = body;
    r
}

/// The inference context of one node of `m` (operands with ids outside the
/// module are treated as omitted).
pub(crate) fn node_ctx<'a>(m: &'a Module, node: &'a Node, known: &'a Known) -> InferCtx<'a> {
    let valid = |v: &ValueId| v.index() < m.num_values();
    let inputs = node
        .inputs
        .iter()
        .map(|v| v.filter(valid).map(|v| m.ty(v)))
        .collect();
    let consts = node
        .inputs
        .iter()
        .map(|v| {
            let v = (*v).filter(valid)?;
            m.constant(v).or_else(|| known.consts.get(&v)).map(|d| &**d)
        })
        .collect();
    let values = node
        .inputs
        .iter()
        .map(|v| v.and_then(|v| known.values.get(&v).cloned()))
        .collect();
    let declared = node
        .outputs
        .iter()
        .map(|v| valid(v).then(|| m.ty(*v)))
        .collect();
    let regions = node_regions(node)
        .into_iter()
        .map(|(name, _, r)| {
            (
                name,
                r.outputs
                    .iter()
                    .filter(|o| valid(o))
                    .map(|&o| m.ty(o).clone())
                    .collect(),
            )
        })
        .collect();
    InferCtx {
        op: &node.op,
        node: node.describe(),
        inputs,
        consts,
        values,
        attrs: &node.attrs,
        num_outputs: node.outputs.len(),
        declared,
        regions,
        value_reads: Default::default(),
    }
}

/// Infer one node of `m` (its regions' output types as they are now).
pub fn infer_node(m: &Module, node: &Node) -> Result<Vec<Type>, InferError> {
    let empty = Known::default();
    let ctx = node_ctx(m, node, &empty);
    ctx.infer()
}

/// The operands of `node` whose values, not only their shapes, decide
/// its result types (Reshape's shape, Slice's starts, TopK's k, Resize's
/// sizes): those its inference rule asks the values of. A backend that
/// compiles a node per shape at run time makes these constants too.
pub fn value_operands(m: &Module, node: &Node) -> Vec<usize> {
    let Some(schema) = lookup(&node.op) else {
        return vec![];
    };
    // A rule stops at the first value it lacks (Slice's starts before its
    // ends, axes and steps), so it is asked again with stand-in values
    // (ones) for what it read so far, until it reads nothing new.
    let mut known = Known::default();
    let mut reads = 0u64;
    for _ in 0..8 {
        let ctx = node_ctx(m, node, &known);
        // The rule's answer does not matter, only what it read.
        let _ = (schema.infer)(&ctx);
        let now = reads | ctx.value_reads.get();
        if now == reads {
            break;
        }
        reads = now;
        for i in 0..node.inputs.len().min(64) {
            let Some(v) = node.input(i).filter(|_| reads & (1 << i) != 0) else {
                continue;
            };
            if known.consts.contains_key(&v) || m.constant(v).is_some() {
                continue;
            }
            if let Some(d) = ones_like(m.ty(v)) {
                known.consts.insert(v, Arc::new(d));
            }
        }
    }
    (0..node.inputs.len().min(64))
        .filter(|&i| reads & (1 << i) != 0 && node.input(i).is_some())
        .collect()
}

/// Ones of a static integer or f32 tensor type: a stand-in value.
fn ones_like(ty: &Type) -> Option<TensorData> {
    let t = ty.as_tensor()?;
    let dims: Vec<u64> = t
        .shape
        .as_ref()?
        .iter()
        .map(|d| match d {
            Dim::Known(n) => Some(*n),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let n = dims.iter().product::<u64>() as usize;
    if n > 1 << 16 {
        return None;
    }
    match t.elem {
        crate::types::ElemType::F32 => TensorData::from_f32(dims, &vec![1.0; n]).ok(),
        e if e.is_int() => {
            // One, little-endian, in the element's width.
            let w = e.storage_bytes(1).filter(|w| [1, 2, 4, 8].contains(w))? as usize;
            let one: Vec<u8> = (0..w).map(|b| u8::from(b == 0)).collect();
            TensorData::from_bytes(e, dims, one.repeat(n)).ok()
        }
        _ => None,
    }
}

#[allow(clippy::result_large_err)]
fn infer_region(
    m: &mut Module,
    r: &Region,
    path: &str,
    policy: DeclaredTypes,
    known: &mut Known,
) -> Result<(), VerifyError> {
    for (idx, node) in r.nodes.iter().enumerate() {
        let fail = |rule: Rule| VerifyError {
            location: Location {
                region: path.to_string(),
                node_index: Some(idx),
                node: Some(node.describe()),
                op: Some(node.op.clone()),
            },
            rule,
        };
        if node.op == "kiln.Fusion" {
            // A fusion body's inputs are its operands: they take the
            // operands' (possibly newly refined) types before the body is
            // inferred.
            if let Some(crate::Attr::Graph(body)) = node.attrs.get("body") {
                for (&bi, &op) in body.inputs.iter().zip(node.inputs.iter().flatten()) {
                    if bi.index() < m.num_values() && op.index() < m.num_values() {
                        let t = m.ty(op).clone();
                        let new = match refine(m.ty(bi), &t) {
                            Some(r) => r,
                            None => t,
                        };
                        m.set_ty(bi, new);
                    }
                }
            }
        }
        // An If's branches are alternatives: a branch whose inference
        // fails (it only checks for inputs it never sees, say a Squeeze of
        // an axis the other branch handles) does not make the model
        // invalid while the other branch infers. Its results then take the
        // other branch's types, and a backend meets the failure again only
        // if it runs the branch.
        let mut failed: Vec<(&Region, VerifyError)> = vec![];
        let mut inferred_any: Option<&Region> = None;
        for (attr, nth, sub) in node_regions(node) {
            let r = infer_region(
                m,
                sub,
                &region_path(path, idx, node, attr, nth),
                policy,
                known,
            );
            match r {
                Ok(()) => inferred_any = Some(sub),
                Err(e) if node.op == "If" => failed.push((sub, e)),
                Err(e) => return Err(e),
            }
        }
        if let Some((_, e)) = failed.first() {
            let Some(good) = inferred_any else {
                return Err(e.clone());
            };
            for (bad, _) in &failed {
                for (&b, &g) in bad.outputs.iter().zip(&good.outputs) {
                    let valid = |v: ValueId| v.index() < m.num_values();
                    let made_there = bad.nodes.iter().any(|n| n.outputs.contains(&b));
                    if valid(b) && valid(g) && made_there {
                        let t = m.ty(g).clone();
                        m.set_ty(b, t);
                    }
                }
            }
        }
        let schema = lookup(&node.op).ok_or_else(|| fail(Rule::UnknownOp))?;
        for (i, o) in node.outputs.iter().enumerate() {
            if o.index() >= m.num_values() {
                return Err(fail(Rule::BadValueId {
                    what: format!("result {i}"),
                    id: o.0,
                }));
            }
        }
        let (inferred, vals) = {
            let ctx = node_ctx(m, node, known);
            let mut inferred = (schema.infer)(&ctx).map_err(|e| fail(Rule::Infer(e)))?;
            super::quant_params::attach(&ctx, &node.op, &mut inferred);
            let vals = inferred.first().and_then(|t| values::propagate(&ctx, t));
            (inferred, vals)
        };
        for (i, (&o, inf)) in node.outputs.iter().zip(&inferred).enumerate() {
            let declared = m.ty(o);
            let new = match refine(declared, inf) {
                Some(t) => t,
                None if policy == DeclaredTypes::Replace => inf.clone(),
                None => {
                    return Err(fail(Rule::ResultType {
                        index: i,
                        value: m.name(o).to_string(),
                        declared: type_str(declared),
                        inferred: type_str(inf),
                    }))
                }
            };
            m.set_ty(o, new);
        }
        if let (Some(d), Some(&o)) = (constant_node_data(node), node.outputs.first()) {
            known.consts.insert(o, d);
        }
        if let (Some(v), Some(&o)) = (vals, node.outputs.first()) {
            known.values.insert(o, v);
        }
    }
    Ok(())
}

/// Combine a declared and an inferred type: the most specific type both
/// describe, or `None` when they contradict. Known dims win; of two
/// symbolic dims the inferred one wins (it is tied to the graph inputs).
pub fn refine(declared: &Type, inferred: &Type) -> Option<Type> {
    Some(match (declared, inferred) {
        (Type::Tensor(d), Type::Tensor(i)) => {
            if d.elem != i.elem {
                return None;
            }
            let shape = match (&d.shape, &i.shape) {
                (None, s) | (s, None) => s.clone(),
                (Some(a), Some(b)) => {
                    if a.len() != b.len() {
                        return None;
                    }
                    Some(
                        a.iter()
                            .zip(b)
                            .map(|(x, y)| match (x, y) {
                                (Dim::Known(p), Dim::Known(q)) if p != q => None,
                                (_, Dim::Known(_)) => Some(y.clone()),
                                (Dim::Known(_), _) => Some(x.clone()),
                                (_, Dim::Sym(_)) => Some(y.clone()),
                                _ => Some(x.clone()),
                            })
                            .collect::<Option<Vec<_>>>()?,
                    )
                }
            };
            Type::Tensor(TensorType {
                elem: i.elem,
                shape,
                quant: i.quant.clone().or_else(|| d.quant.clone()),
            })
        }
        (Type::Sequence(a), Type::Sequence(b)) => Type::Sequence(Box::new(refine(a, b)?)),
        (Type::Optional(a), Type::Optional(b)) => Type::Optional(Box::new(refine(a, b)?)),
        (Type::Map(ka, a), Type::Map(kb, b)) if ka == kb => Type::Map(*ka, Box::new(refine(a, b)?)),
        _ => return None,
    })
}
