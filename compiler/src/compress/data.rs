//! The inputs compression tools calibrate and evaluate on, and running a
//! model on them natively with chosen intermediate tensors as extra
//! outputs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use kiln_interp::Value;
use kiln_ir::Module;

use crate::Target;

/// One input set: a value per graph input, by name.
pub type Inputs = HashMap<String, Value>;

/// The input sets under `dir`: its `test_data_set_*` folders (the ONNX
/// backend-test layout), or `dir` itself when it holds `input_N` files.
/// `input_N.pb`/`.npy` is the model's N-th graph input.
pub fn read_sets(m: &Module, dir: &Path) -> Result<Vec<Inputs>, String> {
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && has_inputs(p))
        .collect();
    folders.sort();
    if folders.is_empty() && has_inputs(dir) {
        folders.push(dir.to_path_buf());
    }
    if folders.is_empty() {
        return Err(format!(
            "{}: no input sets (folders of input_N.pb or .npy files)",
            dir.display()
        ));
    }
    folders.iter().map(|f| read_set(m, f)).collect()
}

fn has_inputs(dir: &Path) -> bool {
    ["pb", "npy"]
        .iter()
        .any(|ext| dir.join(format!("input_0.{ext}")).is_file())
}

fn read_set(m: &Module, dir: &Path) -> Result<Inputs, String> {
    let mut inputs = Inputs::new();
    for (k, &i) in m.body.inputs.iter().enumerate() {
        let file = ["pb", "npy"]
            .iter()
            .map(|ext| dir.join(format!("input_{k}.{ext}")))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!(
                    "{}: no input_{k}.pb or .npy for graph input %{}",
                    dir.display(),
                    m.name(i)
                )
            })?;
        let v = crate::testdata::read_value(&file, m.ty(i))?;
        inputs.insert(m.name(i).to_string(), v);
    }
    Ok(inputs)
}

/// `n` seeded random input sets of the declared types (symbolic dims 1).
pub fn random_sets(m: &Module, n: usize, seed: u32) -> Result<Vec<Inputs>, String> {
    (0..n)
        .map(|k| crate::check::random_inputs(m, &HashMap::new(), seed.wrapping_add(k as u32)))
        .collect()
}

/// Calibration and evaluation sets from one list: the last fifth (at least
/// one) is held back for evaluation; with a single set both use it.
pub fn split_held_back(mut sets: Vec<Inputs>) -> (Vec<Inputs>, Vec<Inputs>) {
    if sets.len() < 2 {
        return (sets.clone(), sets);
    }
    let held = (sets.len() / 5).max(1);
    let eval = sets.split_off(sets.len() - held);
    (sets, eval)
}

/// Input shapes by name, sorted: what an executable was compiled for.
type ShapeKey = Vec<(String, Vec<usize>)>;

/// A module compiled for a target, with extra outputs, recompiled when
/// input shapes change.
pub struct Runner {
    module: Module,
    target: Target,
    outputs: Vec<String>,
    compiled: Option<(ShapeKey, Box<dyn kiln_runtime::Executable>)>,
}

impl Runner {
    /// `extra`: tensors of the module to return after its graph outputs
    /// (names it does not have are an error; graph outputs are not
    /// repeated).
    pub fn new(mut module: Module, target: &Target, extra: &[String]) -> Result<Runner, String> {
        for name in extra {
            let v = module
                .lookup(name)
                .ok_or_else(|| format!("the model has no tensor `{name}`"))?;
            if !module.body.outputs.contains(&v) {
                module.body.outputs.push(v);
            }
        }
        let outputs = module
            .body
            .outputs
            .iter()
            .map(|&o| module.name(o).to_string())
            .collect();
        Ok(Runner {
            module,
            target: target.clone(),
            outputs,
            compiled: None,
        })
    }

    /// Names of what [`Runner::run`] returns, in order.
    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    pub fn run(&mut self, inputs: &Inputs) -> Result<Vec<Value>, String> {
        let shapes = crate::lower::shapes_of(inputs);
        let mut key: ShapeKey = shapes.clone().into_iter().collect();
        key.sort();
        if self
            .compiled
            .as_ref()
            .map(|(k, _)| k != &key)
            .unwrap_or(true)
        {
            let exe = crate::compile::compile(&self.module, &self.target, &shapes)?;
            self.compiled = Some((key, exe));
        }
        let (_, exe) = self.compiled.as_ref().expect("compiled above");
        exe.run(inputs).map_err(|e| e.to_string())
    }

    /// Median wall time of a run in milliseconds (after warm-up runs).
    pub fn latency_ms(&mut self, inputs: &Inputs, runs: usize) -> Result<f64, String> {
        for _ in 0..2 {
            self.run(inputs)?;
        }
        let mut t: Vec<f64> = (0..runs.max(1))
            .map(|_| {
                let start = Instant::now();
                self.run(inputs)
                    .map(|_| start.elapsed().as_secs_f64() * 1e3)
            })
            .collect::<Result<_, _>>()?;
        t.sort_by(f64::total_cmp);
        Ok(t[t.len() / 2])
    }
}

/// A value's elements as f32 (None for non-numeric values).
pub fn f32_data(v: &Value) -> Option<std::borrow::Cow<'_, [f32]>> {
    let t = v.as_tensor()?;
    match &t.data {
        kiln_interp::Data::F32(x) => Some(std::borrow::Cow::Borrowed(x)),
        kiln_interp::Data::Str(_) | kiln_interp::Data::C64(_) | kiln_interp::Data::C128(_) => None,
        d => Some(std::borrow::Cow::Owned(
            d.to_f64().into_iter().map(|x| x as f32).collect(),
        )),
    }
}

/// An ONNX model read for a compression tool: every node named (so
/// reports and `--exclude` can name any), with where it came from.
pub struct Source {
    pub model: crate::onnx::proto::ModelProto,
    /// The file's size.
    pub size_bytes: u64,
    /// Where external tensor data lives.
    dir: Option<PathBuf>,
}

impl Source {
    /// Read `path` (a `.onnx` file or a folder with `model.onnx`).
    pub fn read(path: &Path) -> Result<Source, String> {
        use prost::Message;
        let path = if path.is_dir() {
            path.join("model.onnx")
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut model = crate::onnx::proto::ModelProto::decode(bytes.as_slice())
            .map_err(|e| format!("{}: not a valid ONNX protobuf: {e}", path.display()))?;
        let mut graph = model.graph.take().ok_or("the model has no graph")?;
        crate::compress::onnx_edit::name_nodes(&mut graph);
        model.graph = Some(graph);
        Ok(Source {
            model,
            size_bytes: bytes.len() as u64,
            dir: path.parent().map(Path::to_path_buf),
        })
    }

    /// Import and verify `m` (this model or an edit of it).
    pub fn import(&self, m: &crate::onnx::proto::ModelProto) -> Result<Module, String> {
        use prost::Message;
        let m = crate::onnx::import_model_bytes(
            &m.encode_to_vec(),
            self.dir.as_deref(),
            &Default::default(),
        )
        .map_err(|e| e.to_string())?;
        kiln_ir::verify::verify(&m).map_err(|e| e.to_string())?;
        Ok(m)
    }
}

/// How close `runner`'s outputs are to `reference` (the float model's on
/// the same sets), per output.
pub fn agreement(
    runner: &mut Runner,
    sets: &[Inputs],
    reference: &[Vec<Value>],
    names: &[String],
) -> Result<Vec<crate::compress::metrics::OutputMetrics>, String> {
    let mut acc = vec![crate::compress::metrics::Agreement::default(); names.len()];
    for (set, want) in sets.iter().zip(reference) {
        let got = runner.run(set)?;
        for ((a, g), wv) in acc.iter_mut().zip(&got).zip(want) {
            let row = wv
                .as_tensor()
                .and_then(|t| t.shape.last().copied())
                .unwrap_or(1);
            if let (Some(g), Some(w)) = (f32_data(g), f32_data(wv)) {
                a.add(&w, &g, row);
            }
        }
    }
    Ok(acc.iter().zip(names).map(|(a, n)| a.finish(n)).collect())
}

/// A progress bar on stderr labelled `msg`, or a hidden one.
pub fn progress_bar(show: bool, len: u64, msg: &'static str) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg:14} {bar:40} {pos}/{len}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(msg);
    b
}
