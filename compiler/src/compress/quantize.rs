//! `quantize`: post-training static int8 quantization of an ONNX model,
//! with the accuracy loop that decides which nodes stay in float.
//!
//! 1. Prepare: name every node, fold BatchNormalization into the Conv
//!    before it, raise the opset to the lowest one that expresses the
//!    quantization (13 for per-channel weights, else 10).
//! 2. Plan which nodes quantize ([`qdq::plan`]) and calibrate the ranges
//!    of their activations on the calibration sets (streaming observers,
//!    [`calibrate`]).
//! 3. Write the QDQ model and evaluate it against the float model on the
//!    eval sets (Kiln's cpu backend runs both).
//! 4. With tolerances: rank every quantized node by its sensitivity (how
//!    much the worst output's metric improves when that node alone stays
//!    float), then keep the most sensitive nodes in float one at a time
//!    until every tolerance holds or `max_trials` run out.
//! 5. Report: per output and per layer (weight SQNR, activation SQNR of
//!    the layer's own quantization and accumulated through the model,
//!    clipped fraction, sensitivity), sizes and Kiln latencies.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use prost::Message;
use serde::Serialize;

use crate::compress::calibrate::{fake_quant_u8, Method, Observer};
use crate::compress::constants::Constants;
use crate::compress::data::{agreement, f32_data, progress_bar, Inputs, Runner, Source};
use crate::compress::metrics::{self, Metric, OutputMetrics, Tolerance};
use crate::compress::onnx_edit;
use crate::compress::qdq::{self, WriteOptions};
use crate::lower::cpu::CpuOptions;
use crate::onnx::proto;
use crate::Target;

/// How to quantize.
#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub method: Method,
    /// One weight scale per tensor instead of per output channel.
    pub per_tensor: bool,
    /// Dynamic quantization: MatMul/Gemm weights s8, activations
    /// quantized at run time (no calibration).
    pub dynamic: bool,
    /// Weight-only int4 in blocks of this many rows, and the spelling
    /// (activations stay f32; no calibration).
    pub int4_weights: Option<(usize, crate::compress::weight_only::Format)>,
    /// Every one must hold on every output; empty: quantize everything
    /// (but the `exclude` list) and report.
    pub tolerances: Vec<Tolerance>,
    /// Nodes the accuracy loop may return to float, at most.
    pub max_trials: usize,
    /// Nodes kept in float from the start.
    pub exclude: Vec<String>,
    /// Rank nodes by sensitivity even without tolerances (one evaluation
    /// per quantized node).
    pub sensitivity: bool,
    /// Threads of the cpu backend that runs the models (and whose
    /// latencies the report gives).
    pub threads: usize,
    /// Progress bars on stderr.
    pub progress: bool,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            method: Method::MinMax,
            per_tensor: false,
            dynamic: false,
            int4_weights: None,
            tolerances: Vec::new(),
            max_trials: 10,
            exclude: Vec::new(),
            sensitivity: false,
            threads: 1,
            progress: false,
        }
    }
}

/// One quantized layer in the report.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    pub node: String,
    pub op: String,
    /// The tensor that carries the layer's quantized result.
    pub output: String,
    pub weight_sqnr_db: Option<f64>,
    /// The result against its own quantization (this layer's grid alone).
    pub activation_sqnr_db: Option<f64>,
    /// The result in the quantized model against the float model's.
    pub activation_sqnr_db_accumulated: Option<f64>,
    /// Fraction of the float result's values outside the grid's range.
    pub clipped_fraction: Option<f64>,
    /// How much the worst output's metric improves when this node alone
    /// stays float (None: not measured).
    pub sensitivity: Option<f64>,
    /// Whether the node was kept in float.
    pub excluded: bool,
}

/// One step of the accuracy loop.
#[derive(Clone, Debug, Serialize)]
pub struct Trial {
    pub excluded: Vec<String>,
    pub metric: Metric,
    /// The worst output's value of the metric.
    pub value: f64,
    pub holds: bool,
}

/// What `kiln quantize --report` writes. The first eight keys are a
/// contract other tools read.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub outputs: Vec<OutputMetrics>,
    pub layers: Vec<LayerReport>,
    pub excluded: Vec<String>,
    pub size_before_bytes: u64,
    pub size_after_bytes: u64,
    pub latency_before_ms: f64,
    pub latency_after_ms: f64,
    pub method: String,
    pub per_channel: bool,
    pub opset: i64,
    pub calibration_sets: usize,
    pub eval_sets: usize,
    pub threads: usize,
    pub tolerances: Vec<Tolerance>,
    /// Whether every tolerance holds (None: none given).
    pub tolerance_met: Option<bool>,
    pub trials: Vec<Trial>,
    pub notes: Vec<String>,
}

/// The quantized model and its report.
pub struct Quantized {
    pub model: proto::ModelProto,
    pub report: Report,
}

impl Quantized {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.model.encode_to_vec()
    }
}

/// Quantize the ONNX model at `path` (a `.onnx` file or a folder with
/// `model.onnx`), calibrating on `calibration` and judging on `eval`.
pub fn quantize(
    path: &Path,
    calibration: &[Inputs],
    eval: &[Inputs],
    opts: &QuantizeOptions,
) -> Result<Quantized, String> {
    if calibration.is_empty() || eval.is_empty() {
        return Err("quantization needs at least one calibration and one eval set".into());
    }
    let source = Source::read(path)?;
    let size_before = source.size_bytes;
    let model = source.model.clone();
    let import = |m: &proto::ModelProto| source.import(m);
    let float = import(&model)?;
    let target = Target::Cpu(CpuOptions {
        opt_level: 2,
        threads: opts.threads.max(1),
        ..Default::default()
    });
    let mut notes = Vec::new();

    // 1. Prepare.
    let mut prepared = model.clone();
    {
        let constants = Constants::of(&model, &float)?;
        let consts = |n: &str| constants.get(n);
        let mut g = prepared.graph.take().unwrap_or_default();
        let bn = onnx_edit::fold_batch_norms(&mut g, &consts);
        if bn > 0 {
            notes.push(format!(
                "{bn} BatchNormalization folded into the Conv before it"
            ));
        }
        prepared.graph = Some(g);
    }
    let mut per_tensor = opts.per_tensor;
    let rank = |n: &str| {
        float
            .lookup(n)
            .and_then(|v| float.ty(v).as_tensor()?.shape.as_ref().map(|s| s.len()))
    };
    let from = onnx_edit::default_opset(&prepared);
    let float_activations = opts.dynamic || opts.int4_weights.is_some();
    if !per_tensor && !float_activations && from < 13 {
        match onnx_edit::raise_opset(&mut prepared, 13, &rank) {
            Ok(()) => notes.push(format!(
                "opset raised from {from} to 13: per-channel DequantizeLinear needs it"
            )),
            Err(e) => {
                notes.push(format!("weights per tensor: {e}"));
                per_tensor = true;
            }
        }
    }
    // QuantizeLinear needs 10, DynamicQuantizeLinear 11.
    let (need, op) = match opts.int4_weights {
        Some((_, crate::compress::weight_only::Format::Standard)) => {
            (21, "blocked int4 DequantizeLinear")
        }
        Some(_) => (1, "MatMulNBits"),
        None if opts.dynamic => (11, "DynamicQuantizeLinear"),
        None => (10, "QuantizeLinear"),
    };
    if onnx_edit::default_opset(&prepared) < need {
        onnx_edit::raise_opset(&mut prepared, need, &rank)?;
        notes.push(format!("opset raised from {from} to {need}: {op} needs it"));
    }
    let prepared_ir = import(&prepared)?;
    let constants = Constants::of(&prepared, &prepared_ir)?;
    let consts = |n: &str| constants.get(n);
    let is_f32 = |n: &str| {
        prepared_ir
            .lookup(n)
            .and_then(|v| {
                prepared_ir
                    .ty(v)
                    .as_tensor()
                    .map(|t| t.elem == kiln_ir::ElemType::F32)
            })
            .unwrap_or(false)
    };
    let graph = prepared.graph.as_ref().ok_or("the model has no graph")?;
    let mut plan = qdq::plan(graph, &consts, &is_f32);
    if float_activations {
        plan.nodes
            .retain(|q| qdq::is_plain_product(&graph.node[q.index], q));
    }
    if plan.nodes.is_empty() {
        return Err(if float_activations {
            "nothing to quantize dynamically: the model has no MatMul or Gemm with a constant weight".into()
        } else {
            "nothing to quantize: the model has no Conv, MatMul or Gemm of f32 tensors".into()
        });
    }
    let known: HashSet<&str> = plan.nodes.iter().map(|q| q.name.as_str()).collect();
    for e in &opts.exclude {
        if !known.contains(e.as_str()) {
            return Err(format!(
                "--exclude: `{e}` is not a quantizable node (Conv, MatMul, Gemm) of the model"
            ));
        }
    }

    // 2. Calibrate (dynamic quantization needs no ranges).
    let tensors = if float_activations {
        Vec::new()
    } else {
        plan.tensors(graph)
    };
    let mut observed = Runner::new(prepared_ir.clone(), &target, &tensors)?;
    let first_extra = observed.outputs().len() - tensors.len();
    let mut observers: Vec<Observer> = vec![Observer::default(); tensors.len()];
    let passes = match (float_activations, opts.method.needs_histogram()) {
        (true, _) => 0,
        (false, true) => 2,
        (false, false) => 1,
    };
    let bar = progress_bar(
        opts.progress,
        (passes * calibration.len()) as u64,
        "calibrating",
    );
    for pass in 0..passes {
        for set in calibration {
            let out = observed.run(set)?;
            for (o, v) in observers.iter_mut().zip(&out[first_extra..]) {
                if let Some(x) = f32_data(v) {
                    if pass == 0 {
                        o.observe_range(&x);
                    } else {
                        o.observe_histogram(&x);
                    }
                }
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let ranges: HashMap<String, (f32, f32)> = tensors
        .iter()
        .zip(&observers)
        .map(|(t, o)| (t.clone(), o.range(opts.method)))
        .collect();

    // 3. Reference outputs, then the plain quantized model.
    let mut float_runner = Runner::new(float.clone(), &target, &[])?;
    let output_names: Vec<String> = float_runner.outputs().to_vec();
    let reference: Vec<Vec<kiln_interp::Value>> = eval
        .iter()
        .map(|s| float_runner.run(s))
        .collect::<Result<_, _>>()?;
    let wopts = WriteOptions { per_tensor };
    let evaluate =
        |excluded: &HashSet<String>| -> Result<(qdq::Written, Vec<OutputMetrics>), String> {
            let w = if let Some((block, format)) = opts.int4_weights {
                crate::compress::weight_only::write(
                    &prepared, &plan, excluded, block, format, &consts,
                )?
            } else if opts.dynamic {
                crate::compress::dynamic::write(&prepared, &plan, excluded, per_tensor, &consts)?
            } else {
                qdq::write(&prepared, &plan, &ranges, excluded, &wopts, &consts)?
            };
            let m = import(&w.model)?;
            let mut r = Runner::new(m, &target, &[])?;
            let metrics = agreement(&mut r, eval, &reference, &output_names)?;
            Ok((w, metrics))
        };
    let mut excluded: HashSet<String> = opts.exclude.iter().cloned().collect();
    let (mut written, mut outputs) = evaluate(&excluded)?;
    let metric = opts
        .tolerances
        .first()
        .map(|t| t.metric)
        .unwrap_or(Metric::Cosine);
    let holds = |o: &[OutputMetrics]| opts.tolerances.iter().all(|t| t.holds(o));

    // 4. Sensitivity and the accuracy loop.
    let mut sensitivity: HashMap<String, f64> = HashMap::new();
    let mut trials = Vec::new();
    let need_loop = !opts.tolerances.is_empty() && !holds(&outputs);
    if opts.sensitivity || need_loop {
        let base = metrics::worst(metric, &outputs);
        let candidates: Vec<&str> = plan
            .nodes
            .iter()
            .map(|q| q.name.as_str())
            .filter(|n| !excluded.contains(*n))
            .collect();
        let bar = progress_bar(opts.progress, candidates.len() as u64, "sensitivity");
        for name in candidates {
            let mut ex = excluded.clone();
            ex.insert(name.to_string());
            let (_, o) = evaluate(&ex)?;
            sensitivity.insert(name.to_string(), metrics::worst(metric, &o) - base);
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    if need_loop {
        let mut order: Vec<(&String, f64)> = sensitivity.iter().map(|(n, &s)| (n, s)).collect();
        // Most sensitive first; ties by name, so runs are reproducible.
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        let bar = progress_bar(opts.progress, opts.max_trials as u64, "accuracy loop");
        for (name, _) in order.into_iter().take(opts.max_trials) {
            excluded.insert(name.clone());
            let (w, o) = evaluate(&excluded)?;
            let ok = holds(&o);
            let mut ex: Vec<String> = excluded.iter().cloned().collect();
            ex.sort();
            trials.push(Trial {
                excluded: ex,
                metric,
                value: metrics::worst(metric, &o),
                holds: ok,
            });
            written = w;
            outputs = o;
            bar.inc(1);
            if ok {
                break;
            }
        }
        bar.finish_and_clear();
    }
    let tolerance_met = (!opts.tolerances.is_empty()).then(|| holds(&outputs));
    if tolerance_met == Some(false) {
        notes.push(format!(
            "the tolerance does not hold after {} trials (--max-trials)",
            trials.len()
        ));
    }

    // 5. Per-layer figures on the final model, and latencies.
    let mut layers: Vec<LayerReport> = plan
        .nodes
        .iter()
        .map(|q| {
            let w = written.layers.iter().find(|l| l.node == q.name);
            LayerReport {
                node: q.name.clone(),
                op: q.op.clone(),
                output: q.output.clone(),
                weight_sqnr_db: w.and_then(|l| l.weight_sqnr_db),
                activation_sqnr_db: None,
                activation_sqnr_db_accumulated: None,
                clipped_fraction: None,
                sensitivity: sensitivity.get(&q.name).copied(),
                excluded: excluded.contains(&q.name),
            }
        })
        .collect();
    layer_activations(&mut layers, &written, &prepared_ir, &import, &target, eval)?;
    let latency_before = float_runner.latency_ms(&eval[0], 15)?;
    let mut quant_runner = Runner::new(import(&written.model)?, &target, &[])?;
    let latency_after = quant_runner.latency_ms(&eval[0], 15)?;
    let mut excluded: Vec<String> = excluded.into_iter().collect();
    excluded.sort();
    let model = written.model;
    let report = Report {
        outputs,
        layers,
        excluded,
        size_before_bytes: size_before,
        size_after_bytes: model.encoded_len() as u64,
        latency_before_ms: latency_before,
        latency_after_ms: latency_after,
        method: match opts.method {
            _ if opts.int4_weights.is_some() => format!(
                "int4 weights, blocks of {}",
                opts.int4_weights.map_or(0, |w| w.0)
            ),
            _ if opts.dynamic => "dynamic".to_string(),
            Method::Percentile(p) => format!("percentile {p}"),
            m => m.name().to_string(),
        },
        per_channel: !per_tensor && opts.int4_weights.is_none(),
        opset: onnx_edit::default_opset(&model),
        calibration_sets: calibration.len(),
        eval_sets: eval.len(),
        threads: opts.threads.max(1),
        tolerances: opts.tolerances.clone(),
        tolerance_met,
        trials,
        notes,
    };
    Ok(Quantized { model, report })
}

/// Fill the activation figures of `layers`: the float model's layer
/// results (from the prepared float module) against their own grids and
/// against the quantized model's.
fn layer_activations(
    layers: &mut [LayerReport],
    written: &qdq::Written,
    prepared_ir: &kiln_ir::Module,
    import: &dyn Fn(&proto::ModelProto) -> Result<kiln_ir::Module, String>,
    target: &Target,
    eval: &[Inputs],
) -> Result<(), String> {
    let quant_ir = import(&written.model)?;
    // A layer's result in the quantized model as its readers see it.
    let seen: HashMap<&str, &str> = written
        .layers
        .iter()
        .map(|l| (l.output.as_str(), l.seen_as.as_deref().unwrap_or(&l.output)))
        .collect();
    let quant_name = |n: &str| seen.get(n).copied().unwrap_or(n).to_string();
    let names: Vec<String> = layers
        .iter()
        .map(|l| l.output.clone())
        .filter(|n| prepared_ir.lookup(n).is_some() && quant_ir.lookup(&quant_name(n)).is_some())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let quant_names: Vec<String> = names.iter().map(|n| quant_name(n)).collect();
    let mut fr = Runner::new(prepared_ir.clone(), target, &names)?;
    let mut qr = Runner::new(quant_ir, target, &quant_names)?;
    #[derive(Default, Clone)]
    struct Sums {
        signal: f64,
        local_noise: f64,
        acc_noise: f64,
        clipped: u64,
        count: u64,
    }
    let mut sums: HashMap<&str, Sums> = HashMap::new();
    for set in eval {
        let f = fr.run(set)?;
        let q = qr.run(set)?;
        let index = |outs: &[String], n: &str| outs.iter().position(|o| o == n);
        for (n, qn) in names.iter().zip(&quant_names) {
            let (Some(fi), Some(qi)) = (index(fr.outputs(), n), index(qr.outputs(), qn)) else {
                continue;
            };
            let (Some(fv), Some(qv)) = (f32_data(&f[fi]), f32_data(&q[qi])) else {
                continue;
            };
            let s = sums.entry(n.as_str()).or_default();
            let grid = written.grids.get(n).copied();
            for (&x, &y) in fv.iter().zip(qv.iter()) {
                if !x.is_finite() {
                    continue;
                }
                s.signal += (x as f64).powi(2);
                s.acc_noise += (x as f64 - y as f64).powi(2);
                if let Some((scale, zero)) = grid {
                    let fq = fake_quant_u8(x, scale, zero);
                    s.local_noise += (x as f64 - fq as f64).powi(2);
                    let lo = -(zero as f32) * scale;
                    let hi = (255.0 - zero as f32) * scale;
                    s.clipped += (x < lo - scale / 2.0 || x > hi + scale / 2.0) as u64;
                }
                s.count += 1;
            }
        }
    }
    for l in layers {
        let Some(s) = sums.get(l.output.as_str()) else {
            continue;
        };
        l.activation_sqnr_db_accumulated = metrics::sqnr_db(s.signal, s.acc_noise);
        if written.grids.contains_key(&l.output) && !l.excluded {
            l.activation_sqnr_db = metrics::sqnr_db(s.signal, s.local_noise);
            l.clipped_fraction = Some(s.clipped as f64 / s.count.max(1) as f64);
        }
    }
    Ok(())
}

impl Report {
    /// The report as tables for a terminal.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        s.push_str(&metrics::outputs_table(&self.outputs));
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "layer                          op      w_sqnr  a_sqnr  a_sqnr_acc  clipped  sensitivity"
        );
        let mut layers: Vec<&LayerReport> = self.layers.iter().collect();
        layers.sort_by(|a, b| {
            b.sensitivity
                .unwrap_or(f64::NEG_INFINITY)
                .total_cmp(&a.sensitivity.unwrap_or(f64::NEG_INFINITY))
        });
        let opt = |x: Option<f64>, p: usize| x.map_or("-".to_string(), |v| format!("{v:.p$}"));
        for l in layers {
            let _ = writeln!(
                s,
                "{:<30} {:<7} {:>6} {:>7} {:>11} {:>8} {:>12}{}",
                truncate(&l.node, 30),
                l.op,
                opt(l.weight_sqnr_db, 1),
                opt(l.activation_sqnr_db, 1),
                opt(l.activation_sqnr_db_accumulated, 1),
                opt(l.clipped_fraction.map(|c| c * 100.0), 3),
                l.sensitivity
                    .map_or("-".to_string(), |v| format!("{v:+.2e}")),
                if l.excluded { "  float" } else { "" }
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "size {:.2} MB -> {:.2} MB ({:.0} %), latency {:.3} ms -> {:.3} ms ({} thread{}), opset {}, {}{}",
            self.size_before_bytes as f64 / 1e6,
            self.size_after_bytes as f64 / 1e6,
            100.0 * self.size_after_bytes as f64 / self.size_before_bytes.max(1) as f64,
            self.latency_before_ms,
            self.latency_after_ms,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.opset,
            self.method,
            match (self.method.starts_with("int4"), self.per_channel) {
                (true, _) => "",
                (false, true) => " per channel",
                (false, false) => " per tensor",
            },
        );
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        s
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let t: String = s.chars().take(n - 1).collect();
        format!("{t}…")
    }
}
