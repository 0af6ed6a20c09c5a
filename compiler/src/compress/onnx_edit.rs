//! Edits of an ONNX `ModelProto` that the compression tools write back:
//! naming nodes, dead-node removal, folding BatchNormalization into the
//! Conv before it, raising the default-domain opset, and building small
//! tensors. The tools edit the model as ONNX (not Kiln's IR) because what
//! they write is an ONNX model other runtimes load: every op stays a
//! standard one, at an opset the model already had or the lowest one that
//! expresses the edit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_ir::TensorData;

use crate::onnx::proto::{self, tensor_proto::DataType, AttributeProto, NodeProto, TensorProto};

/// The constant value of a tensor of the float model, by name, wherever it
/// comes from (an initializer, a `Constant` node, a constant subgraph such
/// as `ConstantOfShape`): Kiln's constant folding on the imported model.
pub type Constants<'a> = &'a dyn Fn(&str) -> Option<Arc<TensorData>>;

/// The default domain's opset of a model (1 when none is listed, as ONNX
/// reads IR versions 1-2).
pub fn default_opset(model: &proto::ModelProto) -> i64 {
    model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .unwrap_or(1)
}

fn set_default_opset(model: &mut proto::ModelProto, version: i64) {
    match model
        .opset_import
        .iter_mut()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
    {
        Some(o) => o.version = Some(version),
        None => model.opset_import.push(proto::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(version),
        }),
    }
    // Opset 13 needs IR version 7 (ONNX's version table).
    let ir = match version {
        ..=10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        _ => 10,
    };
    if model.ir_version() < ir {
        model.ir_version = Some(ir);
    }
}

/// Before IR version 4 every initializer had to be a graph input too;
/// the tools add initializers, so what they write is at least IR 4 (a
/// change of container rules, not of any op's meaning).
pub fn allow_free_initializers(model: &mut proto::ModelProto) {
    if model.ir_version() < 4 {
        model.ir_version = Some(4);
    }
}

/// Give every unnamed top-level node a unique name (`{op}_{index}`), so
/// reports and `--exclude` can name any node; names already given stay.
pub fn name_nodes(graph: &mut proto::GraphProto) {
    let mut taken: HashSet<String> = graph
        .node
        .iter()
        .filter_map(|n| n.name.clone())
        .filter(|n| !n.is_empty())
        .collect();
    for (i, n) in graph.node.iter_mut().enumerate() {
        if n.name().is_empty() {
            let mut name = format!("{}_{i}", n.op_type());
            while taken.contains(&name) {
                name.push('_');
            }
            taken.insert(name.clone());
            n.name = Some(name);
        }
    }
}

/// Every tensor name a graph's nodes read, subgraphs included (their
/// references to outer values count as uses).
fn used_names(g: &proto::GraphProto, used: &mut HashSet<String>) {
    for n in &g.node {
        used.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        for a in &n.attribute {
            for sub in a.g.iter().chain(&a.graphs) {
                used_names(sub, used);
            }
        }
    }
    used.extend(g.output.iter().map(|o| o.name().to_string()));
}

/// Remove top-level nodes none of whose outputs are used, and unused
/// initializers and value infos, until nothing changes.
pub fn remove_dead(graph: &mut proto::GraphProto) {
    loop {
        let mut used = HashSet::new();
        used_names(graph, &mut used);
        let before = graph.node.len();
        graph
            .node
            .retain(|n| n.output.iter().any(|o| !o.is_empty() && used.contains(o)));
        if graph.node.len() == before {
            // An unused initializer goes, and with it its entry among the
            // graph inputs (old models list weights there); inputs the
            // caller must give stay.
            let dropped: HashSet<String> = graph
                .initializer
                .iter()
                .map(|t| t.name().to_string())
                .filter(|n| !used.contains(n))
                .collect();
            graph.initializer.retain(|t| !dropped.contains(t.name()));
            graph.input.retain(|i| !dropped.contains(i.name()));
            let mut live: HashSet<String> = used;
            for n in &graph.node {
                live.extend(n.output.iter().cloned());
            }
            graph.value_info.retain(|v| live.contains(v.name()));
            return;
        }
    }
}

/// Names used anywhere in a graph (values and nodes), for minting new ones.
pub struct Names(HashSet<String>);

impl Names {
    pub fn of(g: &proto::GraphProto) -> Names {
        let mut s = HashSet::new();
        fn walk(g: &proto::GraphProto, s: &mut HashSet<String>) {
            for n in &g.node {
                s.extend(n.input.iter().cloned());
                s.extend(n.output.iter().cloned());
                s.insert(n.name().to_string());
                for a in &n.attribute {
                    for sub in a.g.iter().chain(&a.graphs) {
                        walk(sub, s);
                    }
                }
            }
            s.extend(g.initializer.iter().map(|t| t.name().to_string()));
            s.extend(g.input.iter().map(|t| t.name().to_string()));
            s.extend(g.output.iter().map(|t| t.name().to_string()));
        }
        walk(g, &mut s);
        Names(s)
    }

    /// `hint`, or `hint_1`, `hint_2`, ... when taken; reserved from then on.
    pub fn fresh(&mut self, hint: &str) -> String {
        let mut name = hint.to_string();
        let mut k = 1;
        while self.0.contains(&name) {
            name = format!("{hint}_{k}");
            k += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

/// A tensor initializer from raw little-endian bytes.
pub fn raw_tensor(name: &str, dtype: DataType, dims: &[i64], raw: Vec<u8>) -> TensorProto {
    TensorProto {
        name: Some(name.to_string()),
        dims: dims.to_vec(),
        data_type: Some(dtype as i32),
        raw_data: Some(raw.into()),
        ..Default::default()
    }
}

pub fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    raw_tensor(
        name,
        DataType::Float,
        dims,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

pub fn i64_tensor(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
    raw_tensor(
        name,
        DataType::Int64,
        dims,
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: Some(op.to_string()),
        name: Some(name.to_string()),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_string()),
        r#type: Some(proto::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

/// The name of the last node of a list (the one just pushed).
fn n_name(nodes: &[NodeProto]) -> String {
    nodes
        .last()
        .map(|n| n.name().to_string())
        .unwrap_or_default()
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name() == name)
}

fn take_attr(n: &mut NodeProto, name: &str) -> Option<AttributeProto> {
    let i = n.attribute.iter().position(|a| a.name() == name)?;
    Some(n.attribute.remove(i))
}

/// The f32 values of a constant (any float or integer type).
pub fn f32_values(d: &TensorData) -> Option<Vec<f32>> {
    Some(d.to_f64_vec()?.into_iter().map(|x| x as f32).collect())
}

/// Fold `BatchNormalization(Conv(x, W, b?))` into one Conv with scaled
/// weights and a new bias, where W and the normalization's parameters are
/// constants and the Conv's result has no other use. Quantization tools
/// do this first (onnxruntime's pre-processing does too): the quantized
/// conv then carries the normalization in its weights instead of leaving
/// a float op between two quantized ones. Returns how many were folded.
pub fn fold_batch_norms(graph: &mut proto::GraphProto, consts: Constants<'_>) -> usize {
    let mut uses: HashMap<String, usize> = HashMap::new();
    let mut used = HashSet::new();
    used_names(graph, &mut used);
    for n in &graph.node {
        for i in n.input.iter().filter(|s| !s.is_empty()) {
            *uses.entry(i.clone()).or_default() += 1;
        }
    }
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    let producer: HashMap<String, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i)))
        .collect();
    let mut names = Names::of(graph);
    let mut folded = 0;
    let mut dead = HashSet::new();
    for bi in 0..graph.node.len() {
        let bn = &graph.node[bi];
        if bn.op_type() != "BatchNormalization"
            || bn.domain() != ""
            || bn.output.len() != 1
            || bn.input.len() < 5
        {
            continue;
        }
        let Some(&ci) = producer.get(&bn.input[0]) else {
            continue;
        };
        let conv = &graph.node[ci];
        if conv.op_type() != "Conv"
            || conv.domain() != ""
            || uses.get(&bn.input[0]) != Some(&1)
            || outputs.contains(&bn.input[0])
        {
            continue;
        }
        let get = |name: &str| consts(name).and_then(|d| Some((f32_values(&d)?, d.shape.clone())));
        let Some((w, wshape)) = conv.input.get(1).and_then(|n| get(n)) else {
            continue;
        };
        let params: Option<Vec<Vec<f32>>> =
            bn.input[1..5].iter().map(|n| get(n).map(|v| v.0)).collect();
        let Some(p) = params else { continue };
        let m = wshape.first().copied().unwrap_or(0) as usize;
        if m == 0 || p.iter().any(|v| v.len() != m) || w.len() % m != 0 {
            continue;
        }
        let b = match conv.input.get(2).filter(|s| !s.is_empty()) {
            Some(n) => match get(n) {
                Some((b, _)) if b.len() == m => b,
                _ => continue,
            },
            None => vec![0.0; m],
        };
        let eps = attr(bn, "epsilon").and_then(|a| a.f).unwrap_or(1e-5);
        let (gamma, beta, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
        let per = w.len() / m;
        let mut w2 = w.clone();
        let mut b2 = vec![0f32; m];
        for c in 0..m {
            // In f64: the folded weights are then within an ulp of the
            // exact product.
            let k = gamma[c] as f64 / (var[c] as f64 + eps as f64).sqrt();
            for x in &mut w2[c * per..(c + 1) * per] {
                *x = (*x as f64 * k) as f32;
            }
            b2[c] = ((b[c] as f64 - mean[c] as f64) * k + beta[c] as f64) as f32;
        }
        let dims: Vec<i64> = wshape.iter().map(|&d| d as i64).collect();
        let wname = names.fresh(&format!("{}_folded_weight", conv.name()));
        let bname = names.fresh(&format!("{}_folded_bias", conv.name()));
        let out = bn.output[0].clone();
        graph.initializer.push(f32_tensor(&wname, &dims, &w2));
        graph.initializer.push(f32_tensor(&bname, &[m as i64], &b2));
        let conv = &mut graph.node[ci];
        conv.input.truncate(1);
        conv.input.push(wname);
        conv.input.push(bname);
        conv.output[0] = out;
        dead.insert(bi);
        folded += 1;
    }
    let mut i = 0;
    graph.node.retain(|_| {
        i += 1;
        !dead.contains(&(i - 1))
    });
    remove_dead(graph);
    folded
}

/// Raise the default-domain opset of `model` to `to`, rewriting the nodes
/// whose meaning changed on the way (attributes that became inputs,
/// Softmax's axis, renamed ops); a node it cannot rewrite with the same
/// meaning is an error naming it, and the model is left unchanged.
/// `rank` gives the rank of a tensor of the graph (from Kiln's inference),
/// which Softmax below 13 needs.
pub fn raise_opset(
    model: &mut proto::ModelProto,
    to: i64,
    rank: &dyn Fn(&str) -> Option<usize>,
) -> Result<(), String> {
    let from = default_opset(model);
    if from >= to {
        return Ok(());
    }
    let mut graph = model.graph.clone().unwrap_or_default();
    let mut names = Names::of(&graph);
    let mut extra = Vec::new();
    raise_graph(&mut graph, from, to, rank, &mut names, &mut extra)?;
    graph.initializer.extend(extra);
    model.graph = Some(graph);
    set_default_opset(model, to);
    Ok(())
}

fn raise_graph(
    g: &mut proto::GraphProto,
    from: i64,
    to: i64,
    rank: &dyn Fn(&str) -> Option<usize>,
    names: &mut Names,
    init: &mut Vec<TensorProto>,
) -> Result<(), String> {
    let mut out = Vec::with_capacity(g.node.len());
    for mut n in std::mem::take(&mut g.node) {
        for a in &mut n.attribute {
            if let Some(sub) = &mut a.g {
                raise_graph(sub, from, to, rank, names, init)?;
            }
            for sub in &mut a.graphs {
                raise_graph(sub, from, to, rank, names, init)?;
            }
        }
        if !(n.domain().is_empty() || n.domain() == "ai.onnx") {
            out.push(n);
            continue;
        }
        let cant = |n: &NodeProto, why: &str| {
            Err(format!(
                "cannot raise node `{}` ({}) from opset {from} to {to}: {why}",
                n.name(),
                n.op_type()
            ))
        };
        // An attribute that became an input: an i64 initializer, placed at
        // input position `pos` (empty names fill the gap).
        let mut to_input =
            |n: &mut NodeProto, attr_name: &str, pos: usize, ints: Option<Vec<i64>>| {
                let Some(v) = ints.or_else(|| take_attr(n, attr_name).map(|a| a.ints)) else {
                    return;
                };
                let name = names.fresh(&format!("{}_{attr_name}", n.name()));
                init.push(i64_tensor(&name, &[v.len() as i64], &v));
                while n.input.len() < pos {
                    n.input.push(String::new());
                }
                n.input.insert(pos.min(n.input.len()), name);
            };
        let op = n.op_type().to_string();
        if n.input.is_empty() {
            // Malformed; the importer reports it with context.
            out.push(n);
            continue;
        }
        match op.as_str() {
            "Softmax" | "LogSoftmax" | "Hardmax" if from < 13 && to >= 13 => {
                let axis = attr(&n, "axis").and_then(|a| a.i).unwrap_or(1);
                let Some(r) = rank(&n.input[0]) else {
                    return cant(&n, "the input's rank is unknown");
                };
                let axis = if axis < 0 { axis + r as i64 } else { axis };
                // Below 13 the op normalizes the input flattened to 2-D at
                // `axis`; from 13 along one axis. Where `axis` is not the
                // last one, the old meaning is Flatten, the op on the last
                // axis, and a Reshape back to the input's shape.
                if axis != r as i64 - 1 {
                    let x = n.input[0].clone();
                    let y = n.output[0].clone();
                    let flat = names.fresh(&format!("{}_flat", n.name()));
                    let shape = names.fresh(&format!("{}_shape", n.name()));
                    let norm = names.fresh(&format!("{}_normalized", n.name()));
                    let mut f = node(
                        "Flatten",
                        &names.fresh(&format!("{}_Flatten", n.name())),
                        &[&x],
                        &[&flat],
                    );
                    f.attribute.push(int_attr("axis", axis));
                    out.push(f);
                    out.push(node(
                        "Shape",
                        &names.fresh(&format!("{}_Shape", n.name())),
                        &[&x],
                        &[&shape],
                    ));
                    n.input[0] = flat;
                    n.output[0] = norm.clone();
                    take_attr(&mut n, "axis");
                    n.attribute.push(int_attr("axis", 1));
                    out.push(n);
                    out.push(node(
                        "Reshape",
                        &names.fresh(&format!("{}_Reshape", n_name(&out))),
                        &[&norm, &shape],
                        &[&y],
                    ));
                    continue;
                }
            }
            "Split" if from < 13 && to >= 13 && attr(&n, "split").is_some() => {
                to_input(&mut n, "split", 1, None);
            }
            "Squeeze" | "Unsqueeze" if from < 13 && to >= 13 && attr(&n, "axes").is_some() => {
                to_input(&mut n, "axes", 1, None);
            }
            "ReduceSum" if from < 13 && to >= 13 && attr(&n, "axes").is_some() => {
                to_input(&mut n, "axes", 1, None);
            }
            "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1" | "ReduceL2"
            | "ReduceLogSum" | "ReduceLogSumExp" | "ReduceSumSquare"
                if from < 18 && to >= 18 && attr(&n, "axes").is_some() =>
            {
                to_input(&mut n, "axes", 1, None);
            }
            "GroupNormalization" if from < 21 && to >= 21 => {
                return cant(&n, "its scale and bias became per channel at 21");
            }
            "Slice" if from < 10 && to >= 10 => {
                let starts = take_attr(&mut n, "starts").map(|a| a.ints);
                let ends = take_attr(&mut n, "ends").map(|a| a.ints);
                let axes = take_attr(&mut n, "axes").map(|a| a.ints);
                let (Some(s), Some(e)) = (starts, ends) else {
                    return cant(&n, "it has no starts/ends");
                };
                to_input(&mut n, "starts", 1, Some(s));
                to_input(&mut n, "ends", 2, Some(e));
                if let Some(a) = axes {
                    to_input(&mut n, "axes", 3, Some(a));
                }
            }
            "TopK" if from < 10 && to >= 10 => {
                let k = take_attr(&mut n, "k").and_then(|a| a.i).unwrap_or(1);
                to_input(&mut n, "k", 1, Some(vec![k]));
            }
            "Clip" if from < 11 && to >= 11 => {
                let lo = take_attr(&mut n, "min").and_then(|a| a.f);
                let hi = take_attr(&mut n, "max").and_then(|a| a.f);
                for (pos, v, what) in [(1, lo, "min"), (2, hi, "max")] {
                    if let Some(v) = v {
                        let name = names.fresh(&format!("{}_{what}", n.name()));
                        init.push(f32_tensor(&name, &[], &[v]));
                        while n.input.len() < pos {
                            n.input.push(String::new());
                        }
                        n.input.insert(pos, name);
                    }
                }
            }
            "Pad" if from < 11 && to >= 11 => {
                let pads = take_attr(&mut n, "pads")
                    .map(|a| a.ints)
                    .unwrap_or_default();
                let value = take_attr(&mut n, "value").and_then(|a| a.f).unwrap_or(0.0);
                to_input(&mut n, "pads", 1, Some(pads));
                if value != 0.0 {
                    let name = names.fresh(&format!("{}_value", n.name()));
                    init.push(f32_tensor(&name, &[], &[value]));
                    n.input.push(name);
                }
            }
            "Dropout" if from < 12 && to >= 12 => {
                // Inference ignores the ratio; from 12 it is an input.
                take_attr(&mut n, "ratio");
                take_attr(&mut n, "is_test");
            }
            "Scatter" if from < 11 && to >= 11 => n.op_type = Some("ScatterElements".into()),
            "Upsample" if to >= 10 => return cant(&n, "Upsample was removed; no rewrite is known"),
            "Resize" if from < 11 && to >= 11 => {
                return cant(&n, "Resize-10's coordinate rules have no exact later form")
            }
            _ => {}
        }
        out.push(n);
    }
    g.node = out;
    Ok(())
}
