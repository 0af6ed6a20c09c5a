//! Nodes with dynamic shapes, lowered per shape when they run
//! ([`kiln_runtime::cpu::dynamic`]): the node becomes a module of its own
//! (its non-constant operands are the graph inputs, its constants shared),
//! and each run's operand shapes, plus the values of the operands that
//! decide result shapes, specialize a copy of it, which the ordinary
//! lowering table ([`super::lower_node`]) then lowers. Constant weights are
//! packed once for all specializations (their [`Weights`] cache is the
//! step's).

use std::sync::{Arc, Mutex};

use kiln_ir::{Dim, ElemType, Module, Node, Region, TensorData, TensorType, Type, ValueId};
use kiln_runtime::cpu::dynamic::{
    value_constant, DynamicStep, FoldedResults, Specialize, Specialized,
};
use kiln_runtime::cpu::jit::TargetCpu;
use kiln_runtime::cpu::NativeStep;
use kiln_runtime::tensor::Tensor;

use super::dense::Weights;

/// Whether `n` reads or makes a tensor whose shape is not static: what
/// the static lowering cannot plan, and this one may.
pub(super) fn has_dynamic_shape(m: &Module, n: &Node) -> bool {
    n.inputs
        .iter()
        .flatten()
        .chain(&n.outputs)
        .any(|&v| matches!(m.ty(v), Type::Tensor(_)) && m.static_shape(v).is_err())
}

/// Whether an operand whose values inference reads (a value operand:
/// Resize's sizes, a reduction's axes, Slice's starts, Pad's pads) is not
/// a constant: the static lowering cannot plan the node, and a
/// specialization per value can.
pub(super) fn has_run_time_values(m: &Module, n: &Node) -> bool {
    kiln_ir::ops::value_operands(m, n)
        .iter()
        .any(|&k| n.input(k).is_some_and(|v| m.constant(v).is_none()))
}

/// A step lowering `n` per shape at run time. Refused for nodes with
/// regions other than a fusion body, and for non-tensor operands or
/// results.
pub(super) fn dynamic(m: &Module, n: &Node, target: TargetCpu) -> Result<DynamicStep, String> {
    if n.op != "kiln.Fusion" && n.regions().next().is_some() {
        return Err(format!("{} has regions", n.op));
    }
    let tensors = n.inputs.iter().flatten().chain(&n.outputs).all(|&v| {
        m.ty(v)
            .as_tensor()
            .is_some_and(|t| kiln_runtime::cpu::view::is_viewable(t.elem))
    });
    if !tensors {
        return Err("operands or results without a native layout".into());
    }
    let region = Region {
        inputs: vec![],
        constants: vec![],
        nodes: vec![n.clone()],
        outputs: n.outputs.clone(),
    };
    let (template, _) = super::control::region_module(m, &region, &format!("{}.dynamic", m.name))?;
    let value_operands = kiln_ir::ops::value_operands(m, n);
    let spec = NodeSpecializer {
        template,
        target,
        value_operands: value_operands.clone(),
        weights: Mutex::new(Weights::default()),
    };
    let probe = spec.probe();
    Ok(DynamicStep::new(Box::new(spec), value_operands, probe))
}

/// What a run's operand gives a specialization: its type and, for a value
/// operand, its data.
struct Given {
    elem: ElemType,
    shape: Vec<usize>,
    data: Option<TensorData>,
}

struct NodeSpecializer {
    /// The node alone: its non-constant operands are graph inputs.
    template: Module,
    target: TargetCpu,
    value_operands: Vec<usize>,
    weights: Mutex<Weights>,
}

impl NodeSpecializer {
    /// The operand values of the template's node.
    fn operands(&self) -> &[Option<ValueId>] {
        &self.template.body.nodes[0].inputs
    }

    /// Lowers the node with its non-constant operands given (`None`:
    /// omitted or constant).
    fn lower(&self, given: &[Option<Given>]) -> Result<Specialized, String> {
        let mut m = self.template.clone();
        for (k, v) in self.operands().iter().enumerate() {
            let (Some(v), Some(Some(g))) = (*v, given.get(k)) else {
                continue;
            };
            if m.constant(v).is_some() {
                continue;
            }
            let dims = g.shape.iter().map(|&d| Dim::Known(d as u64)).collect();
            m.set_ty(v, Type::Tensor(TensorType::new(g.elem, dims)));
            if let Some(d) = &g.data {
                m.set_constant(v, Some(Arc::new(d.clone())));
                m.body.inputs.retain(|&i| i != v);
                m.body.constants.push(v);
            }
        }
        kiln_ir::ops::infer_module_with(&mut m, kiln_ir::ops::DeclaredTypes::Replace)
            .map_err(|e| e.to_string())?;
        // Results that shapes and value operands decide (Shape, Size):
        // constant folding computes them once per key.
        let op = m.body.nodes[0].op.clone();
        crate::passes::constant_fold::run(&mut m)?;
        if m.body.nodes.is_empty() {
            return folded(&m, &op);
        }
        let n = &m.body.nodes[0];
        let mut weights = self.weights.lock().map_err(|_| "weights cache poisoned")?;
        let step = super::lower_node(&m, n, self.target, &mut weights)?;
        // A kernel that sizes its results from values has none planned.
        let sized = step.kernel.sized_by_values();
        let results = n
            .outputs
            .iter()
            .map(|&o| {
                let elem = m.ty(o).as_tensor().ok_or("result is not a tensor")?.elem;
                let shape = if sized { vec![] } else { m.static_shape(o)? };
                Ok((elem, shape))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Specialized { step, results })
    }

    /// A compile-time trial for reports: whether the lowering table has a
    /// native kernel for this op on these element types. Unknown dims are
    /// taken as 1, and so are the values of value operands (a K, a target
    /// shape, Resize's scales): a trial, so the report can say before any
    /// run that the step will run natively.
    fn probe(&self) -> Result<String, String> {
        let mut given = vec![];
        for (k, v) in self.operands().iter().enumerate() {
            let g = match v {
                Some(v) if self.template.constant(*v).is_none() => {
                    let t = self.template.ty(*v).as_tensor().ok_or("not a tensor")?;
                    let dims = t.shape.as_ref().ok_or("operand of unknown rank")?;
                    let shape: Vec<usize> = dims
                        .iter()
                        .map(|d| d.as_known().unwrap_or(1) as usize)
                        .collect();
                    let data = if self.value_operands.contains(&k) {
                        let ones = vec![1i64; shape.iter().product()];
                        let dims = shape.iter().map(|&d| d as u64).collect();
                        let d = match t.elem {
                            ElemType::I64 => TensorData::from_i64(dims, &ones),
                            ElemType::F32 => TensorData::from_f32(dims, &vec![1.0; ones.len()]),
                            ElemType::I32 => TensorData::from_bytes(
                                ElemType::I32,
                                dims,
                                ones.iter()
                                    .flat_map(|_| 1i32.to_le_bytes())
                                    .collect::<Vec<u8>>(),
                            ),
                            _ => {
                                return Err(format!(
                                    "operand {k}'s values are known only at run time"
                                ))
                            }
                        };
                        Some(d.map_err(|e| e.to_string())?)
                    } else {
                        None
                    };
                    Some(Given {
                        elem: t.elem,
                        shape,
                        data,
                    })
                }
                _ => None,
            };
            given.push(g);
        }
        self.lower(&given).map(|s| s.step.what)
    }
}

/// The specialization of a node constant folding removed: its results,
/// now constants of `m`.
fn folded(m: &Module, op: &str) -> Result<Specialized, String> {
    let mut bytes = vec![];
    let mut results = vec![];
    for &o in &m.body.outputs {
        let d = m.constant(o).ok_or("a folded result is not a constant")?;
        let b = d.bytes().ok_or("a folded result has no bytes")?;
        if !kiln_runtime::cpu::view::is_viewable(d.elem) {
            return Err(format!("a folded {} result has no native layout", d.elem));
        }
        bytes.push(b.to_vec());
        results.push((d.elem, m.static_shape(o)?));
    }
    let step = NativeStep::new(
        Box::new(FoldedResults { bytes }),
        format!("{op} (folded)"),
        0.0,
    );
    Ok(Specialized { step, results })
}

impl Specialize for NodeSpecializer {
    fn specialize(&self, operands: &[Option<&Tensor>]) -> Result<Specialized, String> {
        let given: Vec<Option<Given>> = operands
            .iter()
            .enumerate()
            .map(|(k, t)| {
                t.map(|t| Given {
                    elem: t.elem(),
                    shape: t.shape.clone(),
                    data: if self.value_operands.contains(&k) {
                        value_constant(t)
                    } else {
                        None
                    },
                })
            })
            .collect();
        self.lower(&given)
    }
}
