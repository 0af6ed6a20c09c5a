//! `prune`: remove the weights, or whole conv channels, that matter least,
//! and choose how far to go by measured accuracy.
//!
//! - Unstructured: the lowest-scoring fraction of each layer's weights
//!   (or of all layers' together, `global`) becomes zero.
//! - `N:M`: in every group of M consecutive weights along the reduction
//!   axis, the M−N lowest become zero (2:4 is what sparse tensor cores
//!   run).
//! - Channels: a Conv loses its lowest-norm output channels and every
//!   reader is rewritten to match: BatchNormalization parameters,
//!   elementwise activations and pooling pass channels through, a
//!   depthwise Conv loses the same channels (and its groups), elementwise
//!   ops whose operands all carry those channels (`x · sigmoid(x)`, a
//!   hardswish) pass them on, the next Conv loses those input channels. A
//!   conv whose channels reach anything else (a residual Add with another
//!   branch, a Concat, a reshape, a graph output) keeps them, so the model
//!   stays consistent; it is really smaller and faster.
//!
//! Scores: `magnitude` is |w|; `activation` is |w| times the norm of the
//! input channel it reads over the calibration data (Wanda), no
//! fine-tuning. A sweep prunes at each level, evaluates against the float
//! model, and keeps the sparsest level that meets the tolerance.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use prost::Message;
use serde::Serialize;

use crate::compress::constants::Constants;
use crate::compress::data::{agreement, f32_data, progress_bar, Inputs, Runner, Source};
use crate::compress::metrics::{self, Metric, OutputMetrics, Tolerance};
use crate::compress::onnx_edit::{self, f32_tensor, int_attr, Names};
use crate::lower::cpu::CpuOptions;
use crate::onnx::proto;
use crate::Target;

/// What is removed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Structure {
    /// Single weights; `global`: one threshold over all layers.
    Unstructured { global: bool },
    /// `n` of every `m` consecutive weights along the reduction axis kept.
    Pattern { n: usize, m: usize },
    /// Whole conv output channels, ranked by the `l1` (else L2) norm.
    Channels { l1: bool },
}

/// How a weight's importance is scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Score {
    Magnitude,
    Activation,
}

#[derive(Clone, Debug)]
pub struct PruneOptions {
    pub structure: Structure,
    pub score: Score,
    /// The levels to try (one for a plain run); ignored by `Pattern`.
    pub levels: Vec<f64>,
    pub tolerances: Vec<Tolerance>,
    pub threads: usize,
    pub progress: bool,
}

/// One pruned layer.
#[derive(Clone, Debug, Serialize)]
pub struct PrunedLayer {
    pub node: String,
    pub op: String,
    pub output: String,
    /// Fraction of its weights that are zero (or removed).
    pub sparsity: f64,
    /// Its weights before pruning.
    pub weights: u64,
    /// Output channels before and after (channel pruning).
    pub channels_before: Option<usize>,
    pub channels_after: Option<usize>,
    /// The pruned weight against the original (removed channels count
    /// as zeros).
    pub weight_sqnr_db: Option<f64>,
    /// The layer's result in the pruned model against the float model's.
    pub activation_sqnr_db: Option<f64>,
    /// Not applicable to pruning (kept for the report's layout).
    pub clipped_fraction: Option<f64>,
    pub sensitivity: Option<f64>,
}

/// One level of a sweep.
#[derive(Clone, Debug, Serialize)]
pub struct SweepPoint {
    pub sparsity: f64,
    pub metrics: Vec<OutputMetrics>,
    pub latency_ms: f64,
    pub size_bytes: u64,
    /// Whether every tolerance holds (None: none given).
    pub holds: Option<bool>,
}

/// What `kiln prune --report` writes: `kiln quantize`'s keys plus
/// `sparsity` and `sweep`.
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    pub outputs: Vec<OutputMetrics>,
    pub layers: Vec<PrunedLayer>,
    pub excluded: Vec<String>,
    pub size_before_bytes: u64,
    pub size_after_bytes: u64,
    pub latency_before_ms: f64,
    pub latency_after_ms: f64,
    /// The chosen level (the requested sparsity; 0.5 for 2:4).
    pub sparsity: f64,
    /// The share of all prunable layers' weights that are zero or gone in
    /// the written model (channels removed from readers included).
    pub achieved_sparsity: f64,
    pub sweep: Vec<SweepPoint>,
    pub structure: String,
    pub score: String,
    pub calibration_sets: usize,
    pub eval_sets: usize,
    pub threads: usize,
    pub tolerances: Vec<Tolerance>,
    pub tolerance_met: Option<bool>,
    pub notes: Vec<String>,
}

pub struct Pruned {
    pub model: proto::ModelProto,
    pub report: PruneReport,
}

impl Pruned {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.model.encode_to_vec()
    }
}

/// A prunable weight: the node, the weight's input position, and how its
/// elements map to input channels.
#[derive(Clone, Debug)]
struct Layer {
    index: usize,
    name: String,
    op: String,
    weight: String,
    shape: Vec<usize>,
    /// Conv: groups; MatMul/Gemm: whether the weight is [N, K].
    group: usize,
    transposed: bool,
}

impl Layer {
    /// Input channels the weight reads (Conv: C; MatMul/Gemm: K).
    fn in_channels(&self) -> usize {
        match self.op.as_str() {
            "Conv" => self.shape[1] * self.group,
            _ if self.transposed => self.shape[1],
            _ => self.shape[0],
        }
    }

    /// The input channel element `i` of the weight reads.
    fn in_channel(&self, i: usize) -> usize {
        match self.op.as_str() {
            "Conv" => {
                let spatial: usize = self.shape[2..].iter().product();
                let per_group_out = self.shape[0] / self.group;
                let m = i / (self.shape[1] * spatial);
                let c = (i / spatial) % self.shape[1];
                (m / per_group_out) * self.shape[1] + c
            }
            _ if self.transposed => i % self.shape[1],
            _ => i / self.shape[1],
        }
    }

    /// Groups of consecutive elements along the reduction axis, `m` long.
    fn reduction_groups(&self, m: usize) -> Vec<Vec<usize>> {
        let n: usize = self.shape.iter().product();
        match self.op.as_str() {
            // [M, C·kh·kw] rows, contiguous.
            "Conv" => {
                let row = n / self.shape[0];
                (0..self.shape[0])
                    .flat_map(|r| {
                        (0..row / m).map(move |g| (0..m).map(|j| r * row + g * m + j).collect())
                    })
                    .collect()
            }
            _ if self.transposed => {
                let k = self.shape[1];
                (0..self.shape[0])
                    .flat_map(|r| {
                        (0..k / m).map(move |g| (0..m).map(|j| r * k + g * m + j).collect())
                    })
                    .collect()
            }
            // [K, N]: along K, stride N.
            _ => {
                let (k, cols) = (self.shape[0], self.shape[1]);
                (0..cols)
                    .flat_map(|c| {
                        (0..k / m).map(move |g| (0..m).map(|j| (g * m + j) * cols + c).collect())
                    })
                    .collect()
            }
        }
    }
}

fn prunable_layers(graph: &proto::GraphProto, consts: &Constants) -> Vec<Layer> {
    let mut out = Vec::new();
    for (index, n) in graph.node.iter().enumerate() {
        if !n.domain().is_empty() || n.input.len() < 2 {
            continue;
        }
        let Some(d) = consts.get(&n.input[1]) else {
            continue;
        };
        let shape: Vec<usize> = d.shape.iter().map(|&x| x as usize).collect();
        let attr_i = |name: &str, default: i64| {
            n.attribute
                .iter()
                .find(|a| a.name() == name)
                .and_then(|a| a.i)
                .unwrap_or(default)
        };
        let (group, transposed) = match n.op_type() {
            "Conv" if shape.len() >= 3 => (attr_i("group", 1).max(1) as usize, false),
            "MatMul" if shape.len() == 2 => (1, false),
            "Gemm" if shape.len() == 2 => (1, attr_i("transB", 0) != 0),
            _ => continue,
        };
        if consts.get(&n.input[0]).is_some() {
            continue;
        }
        out.push(Layer {
            index,
            name: n.name().to_string(),
            op: n.op_type().to_string(),
            weight: n.input[1].clone(),
            shape,
            group,
            transposed,
        });
    }
    out
}

/// Ops a conv's output channels pass through unchanged, channel for
/// channel (their other operands are per-channel constants or none).
const CHANNELWISE: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Softplus",
    "Identity",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
];

/// Prune `path` at each level of `opts.levels`, evaluate, keep the
/// sparsest level that meets the tolerances (or the only level).
pub fn prune(
    path: &Path,
    calibration: &[Inputs],
    eval: &[Inputs],
    opts: &PruneOptions,
) -> Result<Pruned, String> {
    if eval.is_empty() {
        return Err("pruning needs at least one eval set".into());
    }
    let levels: Vec<f64> = match opts.structure {
        Structure::Pattern { n, m } => vec![1.0 - n as f64 / m as f64],
        _ => opts.levels.clone(),
    };
    if levels.is_empty() || levels.iter().any(|s| !(0.0..1.0).contains(s)) {
        return Err(format!("sparsity levels must be in [0, 1): {levels:?}"));
    }
    if let Structure::Pattern { n, m } = opts.structure {
        if n == 0 || n >= m {
            return Err(format!("pattern {n}:{m}: need 0 < N < M"));
        }
    }
    let source = Source::read(path)?;
    let size_before = source.size_bytes;
    let model = source.model.clone();
    let import = |m: &proto::ModelProto| source.import(m);
    let float = import(&model)?;
    // Channels are scored on the weights the model computes with: a
    // BatchNormalization after a conv rescales its channels, so it folds
    // in first (the pruned model keeps it folded).
    let mut notes = Vec::new();
    let mut model = model;
    let consts = {
        let c = Constants::of(&model, &float)?;
        let mut g = model.graph.take().unwrap_or_default();
        let bn = onnx_edit::fold_batch_norms(&mut g, &|n: &str| c.get(n));
        model.graph = Some(g);
        if bn > 0 {
            notes.push(format!(
                "{bn} BatchNormalization folded into the Conv before it"
            ));
            Constants::of(&model, &import(&model)?)?
        } else {
            c
        }
    };
    let graph = model.graph.as_ref().ok_or("the model has no graph")?;
    let layers = prunable_layers(graph, &consts);
    if layers.is_empty() {
        return Err(
            "nothing to prune: the model has no Conv, MatMul or Gemm with a constant weight".into(),
        );
    }
    let target = Target::Cpu(CpuOptions {
        opt_level: 2,
        threads: opts.threads.max(1),
        ..Default::default()
    });

    // Input-channel norms for activation scores.
    let norms: HashMap<String, Vec<f64>> = if opts.score == Score::Activation {
        if calibration.is_empty() {
            return Err("--score activation needs calibration inputs".into());
        }
        channel_norms(graph, &layers, &float, &target, calibration)?
    } else {
        HashMap::new()
    };
    let moments: HashMap<String, Moments> = match opts.structure {
        Structure::Channels { .. } if !calibration.is_empty() => {
            conv_input_moments(graph, &float, &target, calibration)?
        }
        _ => HashMap::new(),
    };
    let scores = |l: &Layer, w: &[f32]| -> Vec<f64> {
        let norm = norms.get(&l.name);
        w.iter()
            .enumerate()
            .map(|(i, &x)| {
                let k = norm
                    .and_then(|n| n.get(l.in_channel(i)))
                    .copied()
                    .unwrap_or(1.0);
                x.abs() as f64 * k
            })
            .collect()
    };

    let mut float_runner = Runner::new(float.clone(), &target, &[])?;
    let output_names = float_runner.outputs().to_vec();
    let reference: Vec<Vec<kiln_interp::Value>> = eval
        .iter()
        .map(|s| float_runner.run(s))
        .collect::<Result<_, _>>()?;
    let latency_before = float_runner.latency_ms(&eval[0], 15)?;

    let mut sweep = Vec::new();
    let mut best: Option<(usize, proto::ModelProto, Vec<PrunedLayer>, Vec<String>)> = None;
    let bar = progress_bar(opts.progress, levels.len() as u64, "sweep");
    for (k, &level) in levels.iter().enumerate() {
        let cx = Context {
            consts: &consts,
            scores: &scores,
            moments: &moments,
            activation: opts.score == Score::Activation,
        };
        let (pruned, layer_stats, notes) = apply(&model, &layers, &cx, opts.structure, level)?;
        let m = import(&pruned)?;
        let mut r = Runner::new(m, &target, &[])?;
        let outputs = agreement(&mut r, eval, &reference, &output_names)?;
        let holds = (!opts.tolerances.is_empty())
            .then(|| opts.tolerances.iter().all(|t| t.holds(&outputs)));
        let latency = r.latency_ms(&eval[0], 7)?;
        sweep.push(SweepPoint {
            sparsity: level,
            metrics: outputs,
            latency_ms: latency,
            size_bytes: pruned.encoded_len() as u64,
            holds,
        });
        // The sparsest level that holds; without tolerances, the last.
        let take = match holds {
            Some(h) => h && best.as_ref().is_none_or(|b| levels[b.0] < level),
            None => true,
        };
        if take || best.is_none() {
            best = Some((k, pruned, layer_stats, notes));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (k, pruned, mut layer_stats, level_notes) = best.expect("one level at least");
    notes.extend(level_notes);
    let tolerance_met = sweep[k].holds;
    if tolerance_met == Some(false) {
        notes.push("no level meets the tolerance; the least sparse one is written".into());
    }
    // Per-layer accumulated activation SQNR at the chosen level.
    layer_activations(&mut layer_stats, &float, &import(&pruned)?, &target, eval)?;
    let mut final_runner = Runner::new(import(&pruned)?, &target, &[])?;
    let latency_after = final_runner.latency_ms(&eval[0], 15)?;
    // Over the written model: weights removed with channels count, in the
    // pruned convs and in the ones that read them.
    let kept = nonzero_weights(&pruned, &layers);
    let total: f64 = layers
        .iter()
        .map(|l| l.shape.iter().product::<usize>() as f64)
        .sum();
    let zero = total - kept as f64;
    let report = PruneReport {
        outputs: sweep[k].metrics.clone(),
        layers: layer_stats,
        excluded: Vec::new(),
        size_before_bytes: size_before,
        size_after_bytes: pruned.encoded_len() as u64,
        latency_before_ms: latency_before,
        latency_after_ms: latency_after,
        sparsity: levels[k],
        achieved_sparsity: if total > 0.0 { zero / total } else { 0.0 },
        sweep: if levels.len() > 1 { sweep } else { Vec::new() },
        structure: match opts.structure {
            Structure::Unstructured { global: false } => "unstructured".into(),
            Structure::Unstructured { global: true } => "unstructured, global".into(),
            Structure::Pattern { n, m } => format!("{n}:{m}"),
            Structure::Channels { l1: true } => "channels (L1)".into(),
            Structure::Channels { l1: false } => "channels (L2)".into(),
        },
        score: match opts.score {
            Score::Magnitude => "magnitude".into(),
            Score::Activation => "activation".into(),
        },
        calibration_sets: calibration.len(),
        eval_sets: eval.len(),
        threads: opts.threads.max(1),
        tolerances: opts.tolerances.clone(),
        tolerance_met,
        notes,
    };
    Ok(Pruned {
        model: pruned,
        report,
    })
}

/// Nonzero elements of the layers' weights in a written model (found by
/// node name: folding and dead-node removal renumber nodes).
fn nonzero_weights(model: &proto::ModelProto, layers: &[Layer]) -> u64 {
    let Some(g) = model.graph.as_ref() else {
        return 0;
    };
    let inits: HashMap<&str, &proto::TensorProto> =
        g.initializer.iter().map(|t| (t.name(), t)).collect();
    let mut n = 0u64;
    for l in layers {
        let Some(node) = g.node.iter().find(|x| x.name() == l.name) else {
            continue;
        };
        let Some(t) = node.input.get(1).and_then(|w| inits.get(w.as_str())) else {
            // A weight the tools did not rewrite: all of it counts.
            n += l.shape.iter().product::<usize>() as u64;
            continue;
        };
        n += match crate::onnx::import::constant_data(t)
            .ok()
            .and_then(|d| onnx_edit::f32_values(&d))
        {
            Some(v) => v.iter().filter(|&&x| x != 0.0).count() as u64,
            None => l.shape.iter().product::<usize>() as u64,
        };
    }
    n
}

type Scorer<'a> = dyn Fn(&Layer, &[f32]) -> Vec<f64> + 'a;

/// What pruning at any level reads.
struct Context<'a> {
    consts: &'a Constants,
    scores: &'a Scorer<'a>,
    /// Per-channel means and mean squares of conv inputs on the
    /// calibration data, by tensor: a removed channel's mean contribution
    /// moves into the reading conv's bias, and with activation scores a
    /// channel's importance is how much its variation moves its readers.
    moments: &'a HashMap<String, Moments>,
    activation: bool,
}

/// A constant's values and shape, as the channel rewrite edits it.
type Array = (Vec<f32>, Vec<usize>);

/// Per-channel mean and mean square.
#[derive(Clone, Debug, Default)]
struct Moments {
    mean: Vec<f64>,
    mean_sq: Vec<f64>,
}

/// The model pruned at one level, with per-layer figures and notes.
fn apply(
    model: &proto::ModelProto,
    layers: &[Layer],
    cx: &Context<'_>,
    structure: Structure,
    level: f64,
) -> Result<(proto::ModelProto, Vec<PrunedLayer>, Vec<String>), String> {
    let mut model = model.clone();
    let mut graph = model.graph.take().ok_or("the model has no graph")?;
    let mut names = Names::of(&graph);
    let (consts, scores) = (cx.consts, cx.scores);
    let weights: Vec<Vec<f32>> = layers
        .iter()
        .map(|l| {
            consts
                .get(&l.weight)
                .and_then(|d| onnx_edit::f32_values(&d))
                .ok_or_else(|| format!("weight `{}` is not numeric", l.weight))
        })
        .collect::<Result<_, _>>()?;
    let mut stats = Vec::new();
    let mut notes = Vec::new();
    match structure {
        Structure::Unstructured { .. } | Structure::Pattern { .. } => {
            let all: Vec<Vec<f64>> = layers
                .iter()
                .zip(&weights)
                .map(|(l, w)| scores(l, w))
                .collect();
            let global_threshold = match structure {
                Structure::Unstructured { global: true } => {
                    let mut pooled: Vec<f64> = all.iter().flatten().copied().collect();
                    let cut = (pooled.len() as f64 * level) as usize;
                    if cut == 0 {
                        None
                    } else {
                        let (_, t, _) = pooled.select_nth_unstable_by(cut - 1, f64::total_cmp);
                        Some(*t)
                    }
                }
                _ => None,
            };
            for ((l, w), s) in layers.iter().zip(&weights).zip(&all) {
                let mut pruned = w.clone();
                match structure {
                    Structure::Pattern { n, m } => {
                        for g in l.reduction_groups(m) {
                            let mut idx = g.clone();
                            idx.sort_by(|&a, &b| s[a].total_cmp(&s[b]).then(a.cmp(&b)));
                            for &i in &idx[..m - n] {
                                pruned[i] = 0.0;
                            }
                        }
                    }
                    _ => match global_threshold {
                        Some(t) => {
                            for (x, &sc) in pruned.iter_mut().zip(s) {
                                if sc <= t {
                                    *x = 0.0;
                                }
                            }
                        }
                        None if matches!(structure, Structure::Unstructured { global: true }) => {}
                        None => {
                            let cut = (w.len() as f64 * level) as usize;
                            let mut idx: Vec<usize> = (0..w.len()).collect();
                            idx.sort_by(|&a, &b| s[a].total_cmp(&s[b]).then(a.cmp(&b)));
                            for &i in &idx[..cut] {
                                pruned[i] = 0.0;
                            }
                        }
                    },
                }
                let zeros = pruned.iter().filter(|&&x| x == 0.0).count();
                let name = names.fresh(&format!("{}_pruned", l.weight));
                let dims: Vec<i64> = l.shape.iter().map(|&x| x as i64).collect();
                graph.initializer.push(f32_tensor(&name, &dims, &pruned));
                graph.node[l.index].input[1] = name;
                stats.push(layer_stat(
                    l,
                    w,
                    &pruned,
                    zeros as f64 / w.len() as f64,
                    None,
                ));
            }
        }
        Structure::Channels { l1 } => {
            prune_channels(
                &mut graph, layers, &weights, cx, level, l1, &mut names, &mut stats, &mut notes,
            )?;
        }
    }
    onnx_edit::remove_dead(&mut graph);
    model.graph = Some(graph);
    onnx_edit::allow_free_initializers(&mut model);
    Ok((model, stats, notes))
}

fn layer_stat(
    l: &Layer,
    before: &[f32],
    after: &[f32],
    sparsity: f64,
    channels: Option<(usize, usize)>,
) -> PrunedLayer {
    let sig: f64 = before.iter().map(|&x| (x as f64).powi(2)).sum();
    let noise: f64 = before
        .iter()
        .zip(after)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    PrunedLayer {
        node: l.name.clone(),
        op: l.op.clone(),
        output: String::new(),
        sparsity,
        weights: l.shape.iter().product::<usize>() as u64,
        channels_before: channels.map(|c| c.0),
        channels_after: channels.map(|c| c.1),
        weight_sqnr_db: metrics::sqnr_db(sig, noise),
        activation_sqnr_db: None,
        clipped_fraction: None,
        sensitivity: None,
    }
}

/// Where a conv's output channels go: the channel-wise ops and depthwise
/// convs they pass through, and the convs that read them as input
/// channels. None when they reach anything else.
struct Reach {
    passes: Vec<usize>,
    depthwise: Vec<usize>,
    readers: Vec<usize>,
}

fn reach(
    graph: &proto::GraphProto,
    from: &str,
    consts: &Constants,
    outputs: &HashSet<&str>,
) -> Option<Reach> {
    let mut r = Reach {
        passes: Vec::new(),
        depthwise: Vec::new(),
        readers: Vec::new(),
    };
    // The tensors carrying the conv's channels, the nodes seen, and the
    // binary ops among them (checked once the set is complete).
    let mut carried: HashSet<String> = HashSet::from([from.to_string()]);
    let mut seen: HashSet<usize> = HashSet::new();
    let mut binary: Vec<usize> = Vec::new();
    let mut frontier = vec![from.to_string()];
    while let Some(t) = frontier.pop() {
        if outputs.contains(t.as_str()) {
            return None;
        }
        for (i, n) in graph.node.iter().enumerate() {
            if !n.input.contains(&t) || !seen.insert(i) {
                continue;
            }
            if !n.domain().is_empty() || n.output.is_empty() {
                return None;
            }
            let mut carry = |o: &str, frontier: &mut Vec<String>| {
                if carried.insert(o.to_string()) {
                    frontier.push(o.to_string());
                }
            };
            // `x * sigmoid(x)`, `x * hardsigmoid(x)`: elementwise ops
            // whose every operand carries the same channels (or is a
            // scalar constant) pass them on.
            if ["Add", "Sub", "Mul", "Div"].contains(&n.op_type()) {
                binary.push(i);
                carry(&n.output[0], &mut frontier);
                continue;
            }
            // Otherwise `t` must be the data operand, read once.
            if n.input[0] != t || n.input.iter().filter(|x| **x == t).count() > 1 {
                return None;
            }
            let group = n
                .attribute
                .iter()
                .find(|a| a.name() == "group")
                .and_then(|a| a.i)
                .unwrap_or(1);
            let weight_shape = n
                .input
                .get(1)
                .and_then(|w| consts.get(w))
                .map(|d| d.shape.clone());
            match n.op_type() {
                "Conv" if group == 1 && weight_shape.is_some() => r.readers.push(i),
                "Conv"
                    if weight_shape
                        .as_ref()
                        .is_some_and(|s| s.len() >= 3 && s[1] == 1 && s[0] as i64 == group) =>
                {
                    r.depthwise.push(i);
                    carry(&n.output[0], &mut frontier);
                }
                op if CHANNELWISE.contains(&op) => {
                    // Clip bounds and BN parameters must be constants.
                    if n.input
                        .iter()
                        .skip(1)
                        .any(|x| !x.is_empty() && consts.get(x).is_none())
                    {
                        return None;
                    }
                    r.passes.push(i);
                    carry(&n.output[0], &mut frontier);
                }
                _ => return None,
            }
        }
    }
    let scalar = |x: &str| consts.get(x).is_some_and(|d| d.numel() == 1);
    for &b in &binary {
        let n = &graph.node[b];
        if n.input
            .iter()
            .any(|x| !x.is_empty() && !carried.contains(x) && !scalar(x))
        {
            return None;
        }
    }
    Some(r)
}

/// Slice a constant along `axis` to the `kept` indices.
fn take(values: &[f32], shape: &[usize], axis: usize, kept: &[usize]) -> (Vec<f32>, Vec<usize>) {
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let mut out = Vec::with_capacity(outer * kept.len() * inner);
    for o in 0..outer {
        for &k in kept {
            let start = (o * shape[axis] + k) * inner;
            out.extend_from_slice(&values[start..start + inner]);
        }
    }
    let mut s = shape.to_vec();
    s[axis] = kept.len();
    (out, s)
}

#[allow(clippy::too_many_arguments)]
fn prune_channels(
    graph: &mut proto::GraphProto,
    layers: &[Layer],
    weights: &[Vec<f32>],
    cx: &Context<'_>,
    level: f64,
    l1: bool,
    names: &mut Names,
    stats: &mut Vec<PrunedLayer>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let (consts, scores) = (cx.consts, cx.scores);
    let outputs: HashSet<String> = graph.output.iter().map(|o| o.name().to_string()).collect();
    let outputs_ref: HashSet<&str> = outputs.iter().map(String::as_str).collect();
    // Working copies of every constant the rewrite touches, by the node
    // and operand that reads it (a shared constant is copied per reader).
    let mut work: HashMap<(usize, usize), Array> = HashMap::new();
    let get =
        |work: &HashMap<(usize, usize), Array>, g: &proto::GraphProto, node: usize, pos: usize| {
            work.get(&(node, pos)).cloned().or_else(|| {
                let name = g.node[node].input.get(pos).filter(|s| !s.is_empty())?;
                let d = consts.get(name)?;
                Some((
                    onnx_edit::f32_values(&d)?,
                    d.shape.iter().map(|&x| x as usize).collect(),
                ))
            })
        };
    let mut kept_convs = 0;
    for (l, w) in layers.iter().zip(weights) {
        if l.op != "Conv" || l.group != 1 {
            continue;
        }
        let out = graph.node[l.index].output[0].clone();
        let Some(r) = reach(graph, &out, consts, &outputs_ref) else {
            kept_convs += 1;
            stats.push(layer_stat(l, w, w, 0.0, Some((l.shape[0], l.shape[0]))));
            continue;
        };
        let (cur, cur_shape) = get(&work, graph, l.index, 1).ok_or("weight vanished")?;
        let m = cur_shape[0];
        let per = cur.len() / m;
        let s = scores(l, w);
        // Channel scores on the current (possibly input-sliced) weight use
        // the original layout's scores summed per output channel.
        let orig_per = w.len() / l.shape[0];
        let mut channel_score: Vec<f64> = (0..m)
            .map(|c| {
                let xs = &s[c * orig_per..(c + 1) * orig_per];
                if l1 {
                    xs.iter().sum()
                } else {
                    xs.iter().map(|x| x * x).sum::<f64>().sqrt()
                }
            })
            .collect();
        // With activation scores, a channel matters by how far its
        // variation (its mean moves into biases) moves what reads it:
        // its standard deviation at each reader times the reader's
        // weights on it.
        let readers_seen: Option<Vec<(&Moments, Array)>> = r
            .readers
            .iter()
            .map(|&rd| {
                Some((
                    cx.moments.get(&graph.node[rd].input[0])?,
                    get(&work, graph, rd, 1)?,
                ))
            })
            .collect();
        if let (true, Some(readers)) = (cx.activation, readers_seen) {
            if !readers.is_empty() {
                for (c, sc) in channel_score.iter_mut().enumerate() {
                    *sc = readers
                        .iter()
                        .map(|(mo, (v, vs))| {
                            let (outs, ins) = (vs[0], vs[1]);
                            let spatial: usize = vs[2..].iter().product();
                            let sd = (mo.mean_sq.get(c).copied().unwrap_or(0.0)
                                - mo.mean.get(c).copied().unwrap_or(0.0).powi(2))
                            .max(0.0)
                            .sqrt();
                            let w2: f64 = (0..outs)
                                .flat_map(|o| {
                                    v[(o * ins + c) * spatial..(o * ins + c + 1) * spatial].iter()
                                })
                                .map(|&x| (x as f64).powi(2))
                                .sum();
                            sd * w2.sqrt()
                        })
                        .sum();
                }
            }
        }
        let remove = ((m as f64) * level).floor() as usize;
        let remove = remove.min(m - 1);
        if remove == 0 {
            stats.push(layer_stat(l, w, w, 0.0, Some((m, m))));
            continue;
        }
        let mut order: Vec<usize> = (0..m).collect();
        order.sort_by(|&a, &b| {
            channel_score[a]
                .total_cmp(&channel_score[b])
                .then(a.cmp(&b))
        });
        let mut kept: Vec<usize> = order[remove..].to_vec();
        kept.sort_unstable();
        // The conv itself: weight rows and bias.
        let (nw, ns) = take(&cur, &cur_shape, 0, &kept);
        work.insert((l.index, 1), (nw.clone(), ns));
        if let Some((b, bs)) = get(&work, graph, l.index, 2) {
            work.insert((l.index, 2), take(&b, &bs, 0, &kept));
        }
        for &p in &r.passes {
            if graph.node[p].op_type() == "BatchNormalization" {
                for pos in 1..5 {
                    if let Some((v, vs)) = get(&work, graph, p, pos) {
                        work.insert((p, pos), take(&v, &vs, 0, &kept));
                    }
                }
            }
        }
        for &d in &r.depthwise {
            if let Some((v, vs)) = get(&work, graph, d, 1) {
                work.insert((d, 1), take(&v, &vs, 0, &kept));
            }
            if let Some((v, vs)) = get(&work, graph, d, 2) {
                work.insert((d, 2), take(&v, &vs, 0, &kept));
            }
            let n = &mut graph.node[d];
            n.attribute.retain(|a| a.name() != "group");
            n.attribute.push(int_attr("group", kept.len() as i64));
        }
        let removed: Vec<usize> = order[..remove].to_vec();
        for &rd in &r.readers {
            let Some((v, vs)) = get(&work, graph, rd, 1) else {
                continue;
            };
            // The removed channels' mean contribution goes into the
            // reader's bias (exact away from padded borders).
            if let Some(mu) = cx.moments.get(&graph.node[rd].input[0]).map(|m| &m.mean) {
                let (outs, ins) = (vs[0], vs[1]);
                let spatial: usize = vs[2..].iter().product();
                let (mut b, bs) = get(&work, graph, rd, 2).unwrap_or((vec![0.0; outs], vec![outs]));
                for (o, bo) in b.iter_mut().enumerate() {
                    let mut add = 0f64;
                    for &c in &removed {
                        let w: f64 = v[(o * ins + c) * spatial..(o * ins + c + 1) * spatial]
                            .iter()
                            .map(|&x| x as f64)
                            .sum();
                        add += mu.get(c).copied().unwrap_or(0.0) * w;
                    }
                    *bo = (*bo as f64 + add) as f32;
                }
                work.insert((rd, 2), (b, bs));
            }
            work.insert((rd, 1), take(&v, &vs, 1, &kept));
        }
        // Figures against the original weight: removed rows are zeros.
        let mut as_zeros = vec![0f32; w.len()];
        for (j, &c) in kept.iter().enumerate() {
            let src = &nw[j * per..(j + 1) * per];
            if per == orig_per {
                as_zeros[c * orig_per..(c + 1) * orig_per].copy_from_slice(src);
            }
        }
        let mut st = layer_stat(
            l,
            w,
            &as_zeros,
            remove as f64 / m as f64,
            Some((m, kept.len())),
        );
        if per != orig_per {
            st.weight_sqnr_db = None;
        }
        stats.push(st);
    }
    // Other layers (MatMul, Gemm, grouped convs) are not channel-pruned.
    for l in layers.iter().filter(|l| l.op != "Conv" || l.group != 1) {
        stats.push(PrunedLayer {
            sparsity: 0.0,
            ..layer_stat(l, &[], &[], 0.0, None)
        });
    }
    if kept_convs > 0 {
        notes.push(format!(
            "{kept_convs} convs keep their channels: their outputs reach a residual Add, Concat, reshape or graph output"
        ));
    }
    // Write the working copies as new initializers.
    let mut entries: Vec<_> = work.into_iter().collect();
    entries.sort_by_key(|e| e.0);
    for ((node, pos), (v, s)) in entries {
        let n = &mut graph.node[node];
        let old = match n.input.get(pos).filter(|x| !x.is_empty()) {
            Some(x) => x.clone(),
            None => format!("{}_bias", n.name()),
        };
        let name = names.fresh(&format!("{old}_pruned"));
        let dims: Vec<i64> = s.iter().map(|&x| x as i64).collect();
        graph.initializer.push(f32_tensor(&name, &dims, &v));
        while n.input.len() <= pos {
            n.input.push(String::new());
        }
        n.input[pos] = name;
    }
    // Declared shapes of intermediate tensors no longer hold.
    graph.value_info.clear();
    Ok(())
}

/// Input-channel L2 norms of every layer's data operand over the
/// calibration sets (NCHW channel axis for Conv, the last axis for
/// MatMul/Gemm).
fn channel_norms(
    graph: &proto::GraphProto,
    layers: &[Layer],
    float: &kiln_ir::Module,
    target: &Target,
    calibration: &[Inputs],
) -> Result<HashMap<String, Vec<f64>>, String> {
    let tensors: Vec<String> = layers
        .iter()
        .map(|l| graph.node[l.index].input[0].clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut r = Runner::new(float.clone(), target, &tensors)?;
    let first = r.outputs().len() - tensors.len();
    let mut sums: HashMap<String, Vec<f64>> = HashMap::new();
    for set in calibration {
        let out = r.run(set)?;
        for (t, v) in tensors.iter().zip(&out[first..]) {
            let (Some(x), Some(tv)) = (f32_data(v), v.as_tensor()) else {
                continue;
            };
            let shape = &tv.shape;
            for l in layers.iter().filter(|l| graph.node[l.index].input[0] == *t) {
                let c = l.in_channels();
                let s = sums.entry(l.name.clone()).or_insert_with(|| vec![0.0; c]);
                if l.op == "Conv" {
                    if shape.len() < 2 || shape[1] != c {
                        continue;
                    }
                    let inner: usize = shape[2..].iter().product();
                    for (i, &v) in x.iter().enumerate() {
                        s[(i / inner) % c] += (v as f64).powi(2);
                    }
                } else {
                    if shape.last() != Some(&c) {
                        continue;
                    }
                    for (i, &v) in x.iter().enumerate() {
                        s[i % c] += (v as f64).powi(2);
                    }
                }
            }
        }
    }
    Ok(sums
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(f64::sqrt).collect()))
        .collect())
}

/// Per-channel moments (NCHW axis 1) of every group-1 Conv's data operand
/// over the calibration sets.
fn conv_input_moments(
    graph: &proto::GraphProto,
    float: &kiln_ir::Module,
    target: &Target,
    calibration: &[Inputs],
) -> Result<HashMap<String, Moments>, String> {
    let tensors: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.op_type() == "Conv" && n.domain().is_empty() && !n.input.is_empty())
        .filter(|n| {
            n.attribute
                .iter()
                .find(|a| a.name() == "group")
                .and_then(|a| a.i)
                .unwrap_or(1)
                == 1
        })
        .map(|n| n.input[0].clone())
        .filter(|t| float.lookup(t).is_some())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut r = Runner::new(float.clone(), target, &tensors)?;
    let first = r.outputs().len() - tensors.len();
    let mut sums: HashMap<String, (Vec<f64>, Vec<f64>, f64)> = HashMap::new();
    for set in calibration {
        let out = r.run(set)?;
        for (t, v) in tensors.iter().zip(&out[first..]) {
            let (Some(x), Some(tv)) = (f32_data(v), v.as_tensor()) else {
                continue;
            };
            if tv.shape.len() < 2 {
                continue;
            }
            let c = tv.shape[1];
            let inner: usize = tv.shape[2..].iter().product();
            let e = sums
                .entry(t.clone())
                .or_insert_with(|| (vec![0.0; c], vec![0.0; c], 0.0));
            if e.0.len() != c {
                continue;
            }
            for (i, &v) in x.iter().enumerate() {
                let ch = (i / inner.max(1)) % c;
                e.0[ch] += v as f64;
                e.1[ch] += (v as f64).powi(2);
            }
            e.2 += (x.len() / c) as f64;
        }
    }
    Ok(sums
        .into_iter()
        .map(|(t, (s, s2, n))| {
            let n = n.max(1.0);
            let mean = s.into_iter().map(|x| x / n).collect();
            let mean_sq = s2.into_iter().map(|x| x / n).collect();
            (t, Moments { mean, mean_sq })
        })
        .collect())
}

/// Each pruned layer's result in the pruned model against the float one.
fn layer_activations(
    layers: &mut [PrunedLayer],
    float: &kiln_ir::Module,
    pruned: &kiln_ir::Module,
    target: &Target,
    eval: &[Inputs],
) -> Result<(), String> {
    let graph_out = |m: &kiln_ir::Module, node: &str| {
        let mut found = None;
        m.body.walk(&mut |n| {
            if n.name == node && found.is_none() {
                found = n.outputs.first().map(|&o| m.name(o).to_string());
            }
        });
        found
    };
    for l in layers.iter_mut() {
        l.output = graph_out(float, &l.node).unwrap_or_default();
    }
    let names: Vec<String> = layers
        .iter()
        .map(|l| l.output.clone())
        .filter(|n| !n.is_empty() && float.lookup(n).is_some() && pruned.lookup(n).is_some())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mut fr = Runner::new(float.clone(), target, &names)?;
    let mut pr = Runner::new(pruned.clone(), target, &names)?;
    let mut sums: HashMap<String, (f64, f64)> = HashMap::new();
    for set in eval {
        let (f, p) = (fr.run(set)?, pr.run(set)?);
        for n in &names {
            let fi = fr.outputs().iter().position(|o| o == n);
            let pi = pr.outputs().iter().position(|o| o == n);
            let (Some(fi), Some(pi)) = (fi, pi) else {
                continue;
            };
            let (Some(a), Some(b)) = (f32_data(&f[fi]), f32_data(&p[pi])) else {
                continue;
            };
            // Channel pruning changes intermediate shapes: only same-shape
            // results compare.
            if a.len() != b.len() {
                continue;
            }
            let e = sums.entry(n.clone()).or_default();
            for (&x, &y) in a.iter().zip(b.iter()) {
                e.0 += (x as f64).powi(2);
                e.1 += (x as f64 - y as f64).powi(2);
            }
        }
    }
    for l in layers {
        if let Some(&(s, n)) = sums.get(&l.output) {
            l.activation_sqnr_db = metrics::sqnr_db(s, n);
        }
    }
    Ok(())
}

impl PruneReport {
    /// The metric a sweep is judged by: the first tolerance's, else cosine.
    pub fn metric(&self) -> Metric {
        self.tolerances
            .first()
            .map(|t| t.metric)
            .unwrap_or(Metric::Cosine)
    }

    /// The report as tables for a terminal.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        if !self.sweep.is_empty() {
            let metric = self.metric();
            let _ = writeln!(
                s,
                "sparsity  {:>10}  latency_ms  size_MB  holds",
                metric.name()
            );
            for p in &self.sweep {
                let _ = writeln!(
                    s,
                    "{:>8.2}  {:>10.5}  {:>10.3}  {:>7.2}  {}",
                    p.sparsity,
                    metrics::worst(metric, &p.metrics).abs(),
                    p.latency_ms,
                    p.size_bytes as f64 / 1e6,
                    p.holds.map_or("-", |h| if h { "yes" } else { "no" }),
                );
            }
            let _ = writeln!(s);
        }
        s.push_str(&metrics::outputs_table(&self.outputs));
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "layer                          op      sparsity  channels    w_sqnr  a_sqnr_acc"
        );
        let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
        for l in &self.layers {
            let ch = match (l.channels_before, l.channels_after) {
                (Some(a), Some(b)) => format!("{a}->{b}"),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "{:<30} {:<7} {:>8.3}  {:>8}  {:>8}  {:>10}",
                l.node.chars().take(30).collect::<String>(),
                l.op,
                l.sparsity,
                ch,
                opt(l.weight_sqnr_db),
                opt(l.activation_sqnr_db),
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "sparsity {:.2} ({:.3} of weights), size {:.2} MB -> {:.2} MB, latency {:.3} ms -> {:.3} ms ({} thread{}), {}, {} score",
            self.sparsity,
            self.achieved_sparsity,
            self.size_before_bytes as f64 / 1e6,
            self.size_after_bytes as f64 / 1e6,
            self.latency_before_ms,
            self.latency_after_ms,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.structure,
            self.score,
        );
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }

    /// The sweep as an SVG chart: the metric (left axis) and the latency
    /// (right axis) against sparsity.
    pub fn plot_svg(&self) -> String {
        use std::fmt::Write;
        let metric = self.metric();
        let pts: Vec<(f64, f64, f64)> = self
            .sweep
            .iter()
            .map(|p| {
                (
                    p.sparsity,
                    metrics::worst(metric, &p.metrics).abs(),
                    p.latency_ms,
                )
            })
            .collect();
        let (w, h, pad) = (640.0, 400.0, 60.0);
        let range = |xs: &mut dyn Iterator<Item = f64>| {
            let v: Vec<f64> = xs.filter(|x| x.is_finite()).collect();
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if !lo.is_finite() {
                (0.0, 1.0)
            } else if hi - lo < 1e-12 {
                (lo - 0.5, hi + 0.5)
            } else {
                (lo, hi)
            }
        };
        let (x0, x1) = range(&mut pts.iter().map(|p| p.0));
        let (m0, m1) = range(&mut pts.iter().map(|p| p.1));
        let (l0, l1) = range(&mut pts.iter().map(|p| p.2));
        let sx = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
        let sy = |y: f64, lo: f64, hi: f64| h - pad - (y - lo) / (hi - lo) * (h - 2.0 * pad);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<path d="M{pad} {pad} V{} H{}" fill="none" stroke="black"/>"#,
            h - pad,
            w - pad
        );
        let _ = writeln!(
            s,
            r#"<path d="M{} {pad} V{}" fill="none" stroke="black"/>"#,
            w - pad,
            h - pad
        );
        for (series, color, lo, hi) in [(1usize, "#1f77b4", m0, m1), (2, "#d62728", l0, l1)] {
            let d: Vec<String> = pts
                .iter()
                .map(|p| {
                    let y = if series == 1 { p.1 } else { p.2 };
                    format!("{:.1},{:.1}", sx(p.0), sy(y, lo, hi))
                })
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
                d.join(" ")
            );
            for p in &pts {
                let y = if series == 1 { p.1 } else { p.2 };
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    sx(p.0),
                    sy(y, lo, hi)
                );
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">sparsity</text>"#,
            w / 2.0,
            h - 15.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{pad}" y="{}" fill="#1f77b4">{} ({m0:.4} – {m1:.4})</text>"##,
            pad - 20.0,
            metric.name()
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#d62728" text-anchor="end">latency ms ({l0:.2} – {l1:.2})</text>"##,
            w - pad,
            pad - 20.0
        );
        for p in &pts {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}" text-anchor="middle">{:.2}</text>"#,
                sx(p.0),
                h - pad + 18.0,
                p.0
            );
        }
        s.push_str("</svg>\n");
        s
    }
}
