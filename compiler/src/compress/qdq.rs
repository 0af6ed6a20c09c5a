//! Writing a float ONNX model as a static QDQ model: which nodes quantize
//! ([`plan`]), and the rewrite that inserts the `QuantizeLinear` /
//! `DequantizeLinear` pairs and the quantized weights ([`write`]).
//!
//! The form is the one onnxruntime's `quantize_static` writes, which
//! runtimes (onnxruntime, TensorRT, Kiln's `fold-qdq`) fold into integer
//! ops:
//! - activations u8, asymmetric, one scale per tensor, from calibration;
//! - weights s8, symmetric (zero point 0, grid ±127), one scale per output
//!   channel (`--per-tensor`: one per tensor); stored as s8 initializers
//!   behind a `DequantizeLinear`;
//! - Conv/Gemm biases i32 with scale `x_scale · w_scale`, zero point 0;
//! - a quantized node's activation inputs carry a Q/DQ pair, and so do the
//!   tensors that reach them through ops that pass 8-bit values on
//!   (MaxPool, Reshape, Transpose, ..., Concat); those ops' operands and
//!   results share one grid, so runtimes run them on the 8-bit values. A
//!   result only float ops read stays float (quantizing it would add error
//!   and save nothing); a Relu/Clip after a quantized node is where its
//!   result is quantized (the integer op applies it in its
//!   requantization).
//!
//! A node kept in float (`excluded`) reads its inputs unquantized and keeps
//! its float weights; other readers of the same tensors still see them
//! quantized.

use std::collections::{HashMap, HashSet};

use crate::compress::calibrate::u8_params;
use crate::compress::onnx_edit::{
    f32_tensor, int_attr, node, raw_tensor, remove_dead, Constants, Names,
};
use crate::onnx::proto::{self, tensor_proto::DataType};

/// Ops a quantized result may pass through with its scale unchanged.
const SHARES_SCALE: &[&str] = &[
    "MaxPool",
    "Reshape",
    "Flatten",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Identity",
    // The identity at inference.
    "Dropout",
];

/// Activations that a quantized node's result may end in.
const ACTIVATIONS: &[&str] = &["Relu", "Clip"];

/// A node the plan quantizes.
#[derive(Clone, Debug)]
pub struct QNode {
    /// Index in the graph's node list.
    pub index: usize,
    pub name: String,
    pub op: String,
    /// Input positions of activations (quantized u8).
    pub activations: Vec<usize>,
    /// Input position of a constant weight and its channel axis (None:
    /// only one scale fits, e.g. a batched MatMul weight).
    pub weight: Option<(usize, Option<usize>)>,
    /// Input position of a constant bias quantized as i32.
    pub bias: Option<usize>,
    /// The tensor that carries the node's result once quantized: its own
    /// output, or that of the Relu/Clip after it.
    pub output: String,
}

/// What quantizes in a model.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub nodes: Vec<QNode>,
}

impl Plan {
    /// Every tensor whose range calibration needs: what [`write`]
    /// quantizes with no node kept in float.
    pub fn tensors(&self, graph: &proto::GraphProto) -> Vec<String> {
        let mut t: Vec<String> = quantized_tensors(graph, self.nodes.iter())
            .into_iter()
            .collect();
        t.sort();
        t
    }
}

/// The activations a set of quantized nodes makes quantized: their
/// activation inputs, and through the ops that pass 8-bit values on
/// ([`SHARES_SCALE`], Concat) the tensors those read, back to where they
/// are made. A result that only float ops read stays float: quantizing
/// it would add error for little. The exception is a conv result that
/// only averaging pools read: quantized, the conv runs as one integer op,
/// and the average smooths the grid's error away.
fn quantized_tensors<'a>(
    graph: &proto::GraphProto,
    nodes: impl Iterator<Item = &'a QNode>,
) -> HashSet<String> {
    let mut readers: HashMap<&str, Vec<&str>> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            readers.entry(i.as_str()).or_default().push(n.op_type());
        }
    }
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    let mut q: HashSet<String> = HashSet::new();
    for qn in nodes {
        let n = &graph.node[qn.index];
        q.extend(qn.activations.iter().map(|&i| n.input[i].clone()));
        let averaged = readers.get(qn.output.as_str()).is_some_and(|r| {
            r.iter()
                .all(|op| ["GlobalAveragePool", "AveragePool"].contains(op))
        });
        if qn.op == "Conv" && averaged && !outputs.contains(qn.output.as_str()) {
            q.insert(qn.output.clone());
        }
    }
    loop {
        let before = q.len();
        for n in graph.node.iter().rev() {
            // Output 0 carries the data (Dropout's mask, MaxPool's indices
            // are others).
            if n.output.is_empty()
                || n.input.is_empty()
                || !q.contains(&n.output[0])
                || !n.domain().is_empty()
            {
                continue;
            }
            if SHARES_SCALE.contains(&n.op_type()) {
                q.insert(n.input[0].clone());
            } else if n.op_type() == "Concat" {
                q.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
            }
        }
        if q.len() == before {
            return q;
        }
    }
}

/// Tensors that must share one grid, so runtimes pass 8-bit values
/// through the op between them: a movement op's input and result, and all
/// operands and the result of a Concat. Each group's range is the union of
/// its members'.
fn shared_ranges(
    graph: &proto::GraphProto,
    quantized: &HashSet<String>,
    ranges: &mut HashMap<String, (f32, f32)>,
) {
    // Union-find over the quantized tensors.
    let names: Vec<&String> = quantized.iter().collect();
    let index: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), i))
        .collect();
    let mut parent: Vec<usize> = (0..names.len()).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    for n in &graph.node {
        if !n.domain().is_empty() || n.output.is_empty() || n.input.is_empty() {
            continue;
        }
        let members: Vec<&str> = if SHARES_SCALE.contains(&n.op_type()) {
            vec![n.input[0].as_str(), n.output[0].as_str()]
        } else if n.op_type() == "Concat" {
            n.input
                .iter()
                .chain(&n.output)
                .map(String::as_str)
                .collect()
        } else {
            continue;
        };
        let ids: Option<Vec<usize>> = members.iter().map(|m| index.get(m).copied()).collect();
        let Some(ids) = ids else { continue };
        for w in ids.windows(2) {
            let (a, b) = (find(&mut parent, w[0]), find(&mut parent, w[1]));
            parent[a] = b;
        }
    }
    let mut group: HashMap<usize, (f32, f32)> = HashMap::new();
    for (i, n) in names.iter().enumerate() {
        let root = find(&mut parent, i);
        if let Some(&(lo, hi)) = ranges.get(n.as_str()) {
            let g = group.entry(root).or_insert((lo, hi));
            *g = (g.0.min(lo), g.1.max(hi));
        }
    }
    for (i, n) in names.iter().enumerate() {
        let root = find(&mut parent, i);
        if let Some(&r) = group.get(&root) {
            ranges.insert((*n).clone(), r);
        }
    }
}

/// Decide which nodes quantize: Conv, MatMul and Gemm of f32 tensors
/// (`is_f32`) whose weight is a constant (`consts`); a MatMul of two
/// activations quantizes both.
pub fn plan(
    graph: &proto::GraphProto,
    consts: Constants<'_>,
    is_f32: &dyn Fn(&str) -> bool,
) -> Plan {
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for inp in &n.input {
            readers.entry(inp.as_str()).or_default().push(i);
        }
    }
    let graph_outputs: HashSet<&str> = graph.output.iter().map(|o| o.name()).collect();
    let rank = |name: &str| consts(name).map(|d| d.shape.len());
    let mut nodes = Vec::new();
    for (index, n) in graph.node.iter().enumerate() {
        if !n.domain().is_empty() || n.input.is_empty() || n.output.is_empty() {
            continue;
        }
        let input = |i: usize| n.input.get(i).filter(|s| !s.is_empty()).map(String::as_str);
        let Some(x) = input(0) else { continue };
        if !is_f32(x) || consts(x).is_some() {
            continue;
        }
        let attr_i = |name: &str| {
            n.attribute
                .iter()
                .find(|a| a.name() == name)
                .and_then(|a| a.i)
        };
        let attr_f = |name: &str| {
            n.attribute
                .iter()
                .find(|a| a.name() == name)
                .and_then(|a| a.f)
        };
        let (activations, weight, bias) = match n.op_type() {
            "Conv" => {
                let Some(w) = input(1).filter(|w| rank(w).is_some_and(|r| r >= 3)) else {
                    continue;
                };
                let _ = w;
                let bias = input(2).filter(|b| rank(b) == Some(1)).map(|_| 2);
                (vec![0], Some((1, Some(0))), bias)
            }
            "MatMul" => match input(1) {
                Some(w) if rank(w) == Some(2) => (vec![0], Some((1, Some(1))), None),
                Some(w) if rank(w).is_some() => (vec![0], Some((1, None)), None),
                Some(w) if is_f32(w) => (vec![0, 1], None, None),
                _ => continue,
            },
            "Gemm" => {
                let Some(w) = input(1).filter(|w| rank(w) == Some(2)) else {
                    continue;
                };
                let _ = w;
                let axis = if attr_i("transB").unwrap_or(0) != 0 {
                    0
                } else {
                    1
                };
                let plain = attr_f("alpha").unwrap_or(1.0) == 1.0
                    && attr_f("beta").unwrap_or(1.0) == 1.0
                    && attr_i("transA").unwrap_or(0) == 0;
                let bias = input(2).filter(|b| plain && rank(b) == Some(1)).map(|_| 2);
                (vec![0], Some((1, Some(axis))), bias)
            }
            _ => continue,
        };
        // The result runs through a Relu/Clip that is its only reader.
        let mut output = n.output[0].clone();
        if let [r] = readers
            .get(output.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let act = &graph.node[*r];
            let clip_const = act
                .input
                .iter()
                .skip(1)
                .all(|s| s.is_empty() || consts(s).is_some());
            if act.domain().is_empty()
                && ACTIVATIONS.contains(&act.op_type())
                && clip_const
                && !graph_outputs.contains(output.as_str())
                && act.output.len() == 1
            {
                output = act.output[0].clone();
            }
        }
        nodes.push(QNode {
            index,
            name: n.name().to_string(),
            op: n.op_type().to_string(),
            activations,
            weight,
            bias,
            output,
        });
    }
    Plan { nodes }
}

/// How to write the model.
#[derive(Clone, Debug, Default)]
pub struct WriteOptions {
    /// One weight scale per tensor instead of per output channel.
    pub per_tensor: bool,
}

/// One quantized layer as written.
#[derive(Clone, Debug)]
pub struct WrittenLayer {
    pub node: String,
    pub op: String,
    /// SQNR of the weight against its quantized form (None: no constant
    /// weight, or exact).
    pub weight_sqnr_db: Option<f64>,
    /// The quantized result tensor and its grid (None when nothing reads
    /// it quantized: a graph output, say).
    pub output: String,
    pub output_grid: Option<(f32, u8)>,
    /// What the model's readers see of `output`: its dequantized form
    /// (None: they read it as it is).
    pub seen_as: Option<String>,
}

/// The written model and what it holds.
pub struct Written {
    pub model: proto::ModelProto,
    pub layers: Vec<WrittenLayer>,
    /// Every quantized activation and its u8 grid.
    pub grids: HashMap<String, (f32, u8)>,
}

/// Rewrite `model` (whose graph `plan` was made on) as QDQ with the
/// calibrated `ranges`, leaving the nodes named in `excluded` in float.
pub fn write(
    model: &proto::ModelProto,
    plan: &Plan,
    ranges: &HashMap<String, (f32, f32)>,
    excluded: &HashSet<String>,
    opts: &WriteOptions,
    consts: Constants<'_>,
) -> Result<Written, String> {
    let mut model = model.clone();
    let mut graph = model.graph.take().ok_or("the model has no graph")?;
    let included: Vec<&QNode> = plan
        .nodes
        .iter()
        .filter(|q| !excluded.contains(&q.name))
        .collect();
    let kept_float: HashSet<usize> = plan
        .nodes
        .iter()
        .filter(|q| excluded.contains(&q.name))
        .map(|q| q.index)
        .collect();

    // Readers of each tensor that would see it quantized (not graph
    // outputs, not nodes kept in float).
    let mut readers: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        if kept_float.contains(&i) {
            continue;
        }
        for inp in n.input.iter().filter(|s| !s.is_empty()) {
            *readers.entry(inp.as_str()).or_default() += 1;
        }
    }
    let mut quantized = quantized_tensors(&graph, included.iter().copied());
    quantized
        .retain(|t| readers.get(t.as_str()).copied().unwrap_or(0) > 0 && ranges.contains_key(t));
    let mut ranges = ranges.clone();
    shared_ranges(&graph, &quantized, &mut ranges);
    let grids: HashMap<String, (f32, u8)> = quantized
        .iter()
        .map(|t| {
            let (lo, hi) = ranges[t];
            (t.clone(), u8_params(lo, hi))
        })
        .collect();

    // A Relu (or Clip from 0) after a quantized node whose result's grid
    // starts at 0 does nothing the QuantizeLinear does not: quantize the
    // node's own result instead (onnxruntime's quantizer does the same), so
    // runtimes see `Q(Conv(DQ, DQ))` and fold it into one integer op.
    let producer: HashMap<&str, &proto::NodeProto> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut q_source: HashMap<String, String> = HashMap::new();
    for q in &included {
        let own = &graph.node[q.index].output[0];
        if q.output == *own {
            continue;
        }
        let (Some(&(_, 0)), Some(act)) = (grids.get(&q.output), producer.get(q.output.as_str()))
        else {
            continue;
        };
        let bound = |i: usize| {
            act.input
                .get(i)
                .filter(|s| !s.is_empty())
                .and_then(|s| consts(s))
                .and_then(|d| crate::compress::onnx_edit::f32_values(&d))
                .and_then(|v| v.first().copied())
        };
        let removable = match act.op_type() {
            "Relu" => true,
            // Clip(0, max): the grid's top must not pass max.
            "Clip" => {
                bound(1) == Some(0.0)
                    && bound(2).is_none_or(|hi| ranges.get(&q.output).is_some_and(|r| r.1 <= hi))
            }
            _ => false,
        };
        if removable {
            q_source.insert(q.output.clone(), own.clone());
        }
    }

    let mut names = Names::of(&graph);
    let mut new_init: Vec<proto::TensorProto> = Vec::new();
    let mut dq_of: HashMap<String, String> = HashMap::new();
    // Q/DQ nodes for one activation; returns them.
    let pair = |t: &str, names: &mut Names, init: &mut Vec<proto::TensorProto>| {
        let (scale, zero) = grids[t];
        let s = names.fresh(&format!("{t}_scale"));
        let z = names.fresh(&format!("{t}_zero_point"));
        init.push(f32_tensor(&s, &[], &[scale]));
        init.push(raw_tensor(&z, DataType::Uint8, &[], vec![zero]));
        let q = names.fresh(&format!("{t}_quantized"));
        let dq = names.fresh(&format!("{t}_dequantized"));
        let source = q_source.get(t).map_or(t, String::as_str);
        let qn = node(
            "QuantizeLinear",
            &names.fresh(&format!("{t}_QuantizeLinear")),
            &[source, &s, &z],
            &[&q],
        );
        let dqn = node(
            "DequantizeLinear",
            &names.fresh(&format!("{t}_DequantizeLinear")),
            &[&q, &s, &z],
            &[&dq],
        );
        (dq, [qn, dqn])
    };
    let mut nodes = Vec::with_capacity(graph.node.len() * 2);
    for inp in &graph.input {
        if quantized.contains(inp.name()) {
            let (dq, qdq) = pair(inp.name(), &mut names, &mut new_init);
            dq_of.insert(inp.name().to_string(), dq);
            nodes.extend(qdq);
        }
    }

    let by_index: HashMap<usize, &QNode> = included.iter().map(|q| (q.index, *q)).collect();
    let mut weights: HashMap<(String, Option<usize>), (String, Vec<f32>)> = HashMap::new();
    let mut layers = Vec::new();
    for (i, mut n) in std::mem::take(&mut graph.node).into_iter().enumerate() {
        let orig_inputs = n.input.clone();
        if !kept_float.contains(&i) {
            for inp in &mut n.input {
                if let Some(dq) = dq_of.get(inp.as_str()) {
                    *inp = dq.clone();
                }
            }
        }
        let mut weight_sqnr_db = None;
        if let Some(q) = by_index.get(&i) {
            let mut w_scales = None;
            if let Some((pos, axis)) = q.weight {
                let axis = if opts.per_tensor { None } else { axis };
                let wname = n.input[pos].clone();
                let key = (wname.clone(), axis);
                if !weights.contains_key(&key) {
                    let d = consts(&wname)
                        .ok_or_else(|| format!("weight `{wname}` is not a constant"))?;
                    let (dq, scales, sqnr, init) = quantize_weight(&wname, &d, axis, &mut names)?;
                    new_init.extend(init.0);
                    nodes.push(init.1);
                    weight_sqnr_db = sqnr;
                    weights.insert(key.clone(), (dq, scales));
                } else {
                    weight_sqnr_db = None;
                }
                let (dq, scales) = &weights[&key];
                n.input[pos] = dq.clone();
                w_scales = Some((scales.clone(), axis.is_some()));
            }
            // The bias, on the grid of x_scale · w_scale.
            let x = q.activations.first().map(|&a| orig_inputs[a].clone());
            if let (Some(pos), Some((ws, per_channel)), Some(&(xs, _))) =
                (q.bias, &w_scales, x.and_then(|x| grids.get(&x)))
            {
                let bname = n.input[pos].clone();
                if let Some(b) = consts(&bname) {
                    if let Some((dq, init, dqn)) =
                        quantize_bias(&q.name, &bname, &b, xs, ws, *per_channel, &mut names)
                    {
                        new_init.extend(init);
                        nodes.push(dqn);
                        n.input[pos] = dq;
                    }
                }
            }
        }
        let outs = n.output.clone();
        nodes.push(n);
        for o in outs {
            if quantized.contains(&o) {
                let (dq, qdq) = pair(&o, &mut names, &mut new_init);
                dq_of.insert(o.clone(), dq);
                nodes.extend(qdq);
            }
        }
        if let Some(q) = by_index.get(&i) {
            layers.push(WrittenLayer {
                node: q.name.clone(),
                op: q.op.clone(),
                weight_sqnr_db,
                output: q.output.clone(),
                output_grid: grids.get(&q.output).copied(),
                seen_as: None,
            });
        }
    }
    for l in &mut layers {
        l.seen_as = dq_of.get(&l.output).cloned();
    }
    graph.node = nodes;
    graph.initializer.extend(new_init);
    remove_dead(&mut graph);
    model.graph = Some(graph);
    crate::compress::onnx_edit::allow_free_initializers(&mut model);
    Ok(Written {
        model,
        layers,
        grids,
    })
}

/// A weight quantized to s8, symmetric (zero point 0, grid ±127), one
/// scale per slice along an axis or one for the whole tensor.
pub struct SymmetricS8 {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
    /// The weight against its quantized form (None: exact).
    pub sqnr_db: Option<f64>,
}

impl SymmetricS8 {
    pub fn of(w: &[f32], shape: &[usize], axis: Option<usize>) -> SymmetricS8 {
        let (channels, inner) = match axis {
            Some(a) if a < shape.len() => (shape[a], shape[a + 1..].iter().product::<usize>()),
            _ => (1, w.len()),
        };
        let channel = |idx: usize| (idx / inner.max(1)) % channels.max(1);
        let mut maxabs = vec![0f32; channels.max(1)];
        for (i, &x) in w.iter().enumerate() {
            let c = channel(i);
            maxabs[c] = maxabs[c].max(x.abs());
        }
        let scales: Vec<f32> = maxabs
            .iter()
            .map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 })
            .collect();
        let mut values = Vec::with_capacity(w.len());
        let (mut sig, mut noise) = (0f64, 0f64);
        for (i, &x) in w.iter().enumerate() {
            let s = scales[channel(i)];
            let v = (x / s).round_ties_even().clamp(-127.0, 127.0);
            values.push(v as i8);
            sig += (x as f64).powi(2);
            noise += (x as f64 - v as f64 * s as f64).powi(2);
        }
        SymmetricS8 {
            values,
            scales,
            sqnr_db: crate::compress::metrics::sqnr_db(sig, noise),
        }
    }

    /// The values as raw bytes (two's complement).
    pub fn bytes(&self) -> Vec<u8> {
        self.values.iter().map(|&v| v as u8).collect()
    }
}

type WeightParts = (
    String,
    Vec<f32>,
    Option<f64>,
    (Vec<proto::TensorProto>, proto::NodeProto),
);

/// A constant weight as s8 (symmetric, ±127) with one scale per slice
/// along `axis` (or per tensor): the DQ's output name, the scales, the
/// weight's SQNR, and the initializers and DQ node to add.
fn quantize_weight(
    name: &str,
    d: &kiln_ir::TensorData,
    axis: Option<usize>,
    names: &mut Names,
) -> Result<WeightParts, String> {
    let w = crate::compress::onnx_edit::f32_values(d)
        .ok_or_else(|| format!("weight `{name}` is not numeric"))?;
    let shape: Vec<usize> = d.shape.iter().map(|&x| x as usize).collect();
    let s8 = SymmetricS8::of(&w, &shape, axis);
    let (q, scales, channels) = (s8.bytes(), s8.scales.clone(), s8.scales.len());
    let dims: Vec<i64> = shape.iter().map(|&x| x as i64).collect();
    let qn = names.fresh(&format!("{name}_quantized"));
    let sn = names.fresh(&format!("{name}_scale"));
    let zn = names.fresh(&format!("{name}_zero_point"));
    let dq = names.fresh(&format!("{name}_dequantized"));
    let sdims: Vec<i64> = if axis.is_some() {
        vec![channels as i64]
    } else {
        vec![]
    };
    let init = vec![
        raw_tensor(&qn, DataType::Int8, &dims, q),
        f32_tensor(&sn, &sdims, &scales),
        raw_tensor(&zn, DataType::Int8, &sdims, vec![0; scales.len()]),
    ];
    let mut dqn = node(
        "DequantizeLinear",
        &names.fresh(&format!("{name}_DequantizeLinear")),
        &[&qn, &sn, &zn],
        &[&dq],
    );
    if let Some(a) = axis {
        dqn.attribute.push(int_attr("axis", a as i64));
    }
    Ok((dq, scales, s8.sqnr_db, (init, dqn)))
}

/// A constant bias as i32 on the grid `x_scale · w_scale` (per channel or
/// per tensor); None when it would not fit in i32 (it then stays float).
fn quantize_bias(
    node_name: &str,
    name: &str,
    d: &kiln_ir::TensorData,
    x_scale: f32,
    w_scales: &[f32],
    per_channel: bool,
    names: &mut Names,
) -> Option<(String, Vec<proto::TensorProto>, proto::NodeProto)> {
    let b = crate::compress::onnx_edit::f32_values(d)?;
    if per_channel && w_scales.len() != b.len() {
        return None;
    }
    let scales: Vec<f32> = if per_channel {
        w_scales.iter().map(|&w| x_scale * w).collect()
    } else {
        vec![x_scale * w_scales[0]]
    };
    let mut q = Vec::with_capacity(b.len() * 4);
    for (i, &x) in b.iter().enumerate() {
        let s = scales[if per_channel { i } else { 0 }];
        let v = (x as f64 / s as f64).round_ties_even();
        if s.is_nan() || s <= 0.0 || v.abs() > i32::MAX as f64 {
            return None;
        }
        q.extend((v as i32).to_le_bytes());
    }
    let sdims: Vec<i64> = if per_channel {
        vec![b.len() as i64]
    } else {
        vec![]
    };
    let qn = names.fresh(&format!("{node_name}_{name}_quantized"));
    let sn = names.fresh(&format!("{node_name}_{name}_scale"));
    let zn = names.fresh(&format!("{node_name}_{name}_zero_point"));
    let dq = names.fresh(&format!("{node_name}_{name}_dequantized"));
    let init = vec![
        raw_tensor(&qn, DataType::Int32, &[b.len() as i64], q),
        f32_tensor(&sn, &sdims, &scales),
        raw_tensor(&zn, DataType::Int32, &sdims, vec![0; 4 * scales.len()]),
    ];
    let mut dqn = node(
        "DequantizeLinear",
        &names.fresh(&format!("{node_name}_{name}_DequantizeLinear")),
        &[&qn, &sn, &zn],
        &[&dq],
    );
    if per_channel {
        dqn.attribute.push(int_attr("axis", 0));
    }
    Some((dq, init, dqn))
}

/// MatMul with a constant 2-D weight, or a Gemm without transA, alpha or
/// beta: the products the dynamic and weight-only forms rewrite (they
/// compute them exactly).
pub fn is_plain_product(n: &proto::NodeProto, q: &QNode) -> bool {
    let plain = n.attribute.iter().all(|a| match a.name() {
        "transA" => a.i.unwrap_or(0) == 0,
        "alpha" | "beta" => a.f.unwrap_or(1.0) == 1.0,
        _ => true,
    });
    match q.op.as_str() {
        "MatMul" => matches!(q.weight, Some((1, Some(1)))),
        "Gemm" => q.weight.is_some() && plain,
        _ => false,
    }
}

/// A plain product's constant weight as `[K, N]` values (a Gemm's
/// `transB` weight `[N, K]` transposed), with K and N.
pub fn weight_kn(
    n: &proto::NodeProto,
    consts: Constants<'_>,
) -> Result<(Vec<f32>, usize, usize), String> {
    let name = n.input.get(1).ok_or("a product without a weight")?;
    let d = consts(name).ok_or_else(|| format!("weight `{name}` is not a constant"))?;
    let w = crate::compress::onnx_edit::f32_values(&d)
        .ok_or_else(|| format!("weight `{name}` is not numeric"))?;
    let [rows, cols] = d.shape[..] else {
        return Err(format!("weight `{name}` is not a matrix"));
    };
    let (rows, cols) = (rows as usize, cols as usize);
    let trans_b = n.op_type() == "Gemm"
        && n.attribute
            .iter()
            .any(|x| x.name() == "transB" && x.i.unwrap_or(0) != 0);
    if !trans_b {
        return Ok((w, rows, cols));
    }
    let mut t = vec![0f32; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    Ok((t, cols, rows))
}
