//! The value of every tensor of a model that does not depend on its
//! inputs: weights wherever they come from (initializers, `Constant`
//! nodes, subgraphs such as `ConstantOfShape` → `Mul`).
//!
//! Kiln's constant folding gives most of them; it declines results that
//! would bloat a model it runs (a large `ConstantOfShape`), which a
//! compression tool still needs to read. Those it evaluates with the
//! reference interpreter on the model cut down to them, once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_ir::{Module, TensorData};

use crate::onnx::proto;

/// Operands of these ops are what the tools read as constants: weights,
/// biases, normalization parameters, clip bounds.
const READS_CONSTANTS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "BatchNormalization",
    "Clip",
];

/// Constant tensors by name.
pub struct Constants {
    folded: Module,
    evaluated: HashMap<String, Arc<TensorData>>,
}

impl Constants {
    /// The constants of `m`, the import of `model`.
    pub fn of(model: &proto::ModelProto, m: &Module) -> Result<Constants, String> {
        let mut folded = m.clone();
        crate::compile::run_named(&mut folded, "constant-fold")?;
        let graph = model.graph.as_ref().ok_or("the model has no graph")?;
        let free = input_free(graph);
        let wanted: Vec<String> = graph
            .node
            .iter()
            .filter(|n| n.domain().is_empty() && READS_CONSTANTS.contains(&n.op_type()))
            .flat_map(|n| n.input.iter().skip(1))
            .filter(|t| !t.is_empty() && free.contains(t.as_str()))
            .filter(|t| {
                folded
                    .lookup(t)
                    .is_some_and(|v| folded.constant(v).is_none())
            })
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let evaluated = if wanted.is_empty() {
            HashMap::new()
        } else {
            evaluate(&folded, &wanted)?
        };
        Ok(Constants { folded, evaluated })
    }

    pub fn get(&self, name: &str) -> Option<Arc<TensorData>> {
        if let Some(d) = self.evaluated.get(name) {
            return Some(d.clone());
        }
        let v = self.folded.lookup(name)?;
        self.folded.constant(v).cloned()
    }
}

/// Tensors of the top-level graph that depend on no graph input (nodes
/// with subgraphs and random ops count as dependent).
fn input_free(g: &proto::GraphProto) -> HashSet<&str> {
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name()).collect();
    let mut dependent: HashSet<&str> = g
        .input
        .iter()
        .map(|i| i.name())
        .filter(|n| !inits.contains(n))
        .collect();
    let mut free: HashSet<&str> = inits;
    for n in &g.node {
        let random = n.op_type().starts_with("Random") || n.op_type() == "Multinomial";
        let has_graph = n
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty());
        let dep = random
            || has_graph
            || n.input.iter().any(|i| {
                !i.is_empty() && (dependent.contains(i.as_str()) || !free.contains(i.as_str()))
            });
        for o in &n.output {
            if dep {
                dependent.insert(o);
            } else {
                free.insert(o);
            }
        }
    }
    free
}

/// The interpreter on `m` cut down to computing `names` (which depend on
/// no input).
fn evaluate(m: &Module, names: &[String]) -> Result<HashMap<String, Arc<TensorData>>, String> {
    let mut cut = m.clone();
    cut.body.outputs = names
        .iter()
        .map(|n| cut.lookup(n).ok_or_else(|| format!("no tensor `{n}`")))
        .collect::<Result<_, _>>()?;
    crate::compile::run_named(&mut cut, "dce")?;
    let mut used = HashSet::new();
    cut.body
        .walk(&mut |n| used.extend(n.inputs.iter().flatten().copied()));
    if cut.body.inputs.iter().any(|i| used.contains(i)) {
        return Err("internal: a constant tensor depends on a graph input".into());
    }
    cut.body.inputs.clear();
    let exe = kiln_runtime::InterpExecutable::new(cut);
    let values = kiln_runtime::Executable::run(&exe, &HashMap::new()).map_err(|e| e.to_string())?;
    Ok(names
        .iter()
        .zip(values)
        .filter_map(|(n, v)| Some((n.clone(), Arc::new(v.as_tensor()?.to_data()))))
        .collect())
}
