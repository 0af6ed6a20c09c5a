//! What every command shares: the error type that `main` prints, the
//! backend and instruction-set flags and how they become a
//! [`kiln_compiler::Target`], `--input`/`--dim` parsing, picking a model's
//! inputs, and writing output that survives a closed pipe.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use kiln_compiler::compile::InterpOptions;
use kiln_compiler::lower::cpu::CpuOptions;
use kiln_compiler::lower::gpu::GpuOptions;
use kiln_compiler::Target;

/// The limits the command line set (`--max-memory`, `--max-nodes`), once,
/// before any command runs.
static LIMITS: std::sync::OnceLock<kiln_ir::Limits> = std::sync::OnceLock::new();

pub fn set_limits(limits: kiln_ir::Limits) {
    let _ = LIMITS.set(limits);
}

pub fn limits() -> kiln_ir::Limits {
    LIMITS.get().copied().unwrap_or_default()
}

/// Load a model within the command line's limits.
pub fn load_model(path: &Path) -> Result<kiln_ir::Module, Failure> {
    Ok(kiln_compiler::load::load_model_with(path, &limits())?)
}

/// A failure to report: parse errors arrive already rendered (source line
/// and caret); everything else is one paragraph after `error: `.
pub struct Failure(pub String);

impl From<String> for Failure {
    fn from(s: String) -> Failure {
        Failure(format!("error: {}", s.trim_end()))
    }
}

impl From<kiln_compiler::LoadError> for Failure {
    fn from(e: kiln_compiler::LoadError) -> Failure {
        match e {
            kiln_compiler::LoadError::Parse { rendered, .. } => {
                Failure(rendered.trim_end().to_string())
            }
            other => Failure::from(other.to_string()),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Backend {
    /// native code: the kernel library and Cranelift-compiled fusion
    /// regions (rare ops on the interpreter's kernels)
    Cpu,
    /// generated WGSL compute shaders on a wgpu device (WGPU_BACKEND picks
    /// the API: vulkan, metal, dx12); what they do not cover runs on the cpu
    Gpu,
    /// the reference interpreter
    Interp,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Gpu => "gpu",
            Backend::Interp => "interp",
        }
    }

    /// The compile target for this backend at `opt_level`.
    pub fn target(self, opt_level: u8, threads: usize, target_cpu: TargetCpuArg) -> Target {
        match self {
            Backend::Cpu => Target::Cpu(CpuOptions {
                opt_level,
                threads: threads.max(1),
                target_cpu: target_cpu.into(),
                limits: limits(),
            }),
            Backend::Gpu => Target::Gpu(GpuOptions {
                opt_level,
                limits: limits(),
            }),
            Backend::Interp => Target::Interp(InterpOptions {
                opt_level,
                limits: limits(),
                ..Default::default()
            }),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TargetCpuArg {
    /// every feature of this machine
    Native,
    /// the architecture's baseline (x86-64: SSE2): runs anywhere
    Baseline,
}

impl From<TargetCpuArg> for kiln_runtime::cpu::jit::TargetCpu {
    fn from(t: TargetCpuArg) -> Self {
        match t {
            TargetCpuArg::Native => Self::Native,
            TargetCpuArg::Baseline => Self::Baseline,
        }
    }
}

/// `--dim NAME=VALUE` flags, with every other symbol of the module's
/// inputs bound to 1.
pub fn plan_dims(
    m: &kiln_ir::Module,
    flags: &[String],
) -> Result<std::collections::HashMap<String, u64>, String> {
    let mut dims = std::collections::HashMap::new();
    for &i in &m.body.inputs {
        if let Some(shape) = m.ty(i).as_tensor().and_then(|t| t.shape.as_ref()) {
            for d in shape {
                if let kiln_ir::Dim::Sym(e) = d {
                    for s in e.symbols() {
                        dims.insert(s.to_string(), 1);
                    }
                }
            }
        }
    }
    for f in flags {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("--dim `{f}`: expected NAME=VALUE"))?;
        let v: u64 = v
            .parse()
            .map_err(|_| format!("--dim `{f}`: `{v}` is not a size"))?;
        dims.insert(k.to_string(), v);
    }
    Ok(dims)
}

/// The inputs a model runs on when none are given: its folder's
/// `test_data_set_0`, else seeded random values of the declared types
/// (symbolic dims from `--dim`, others 1).
pub fn default_inputs(
    m: &kiln_ir::Module,
    model: &Path,
    dims: &[String],
) -> Result<HashMap<String, kiln_runtime::Value>, String> {
    match kiln_compiler::check::inputs_from_test_folder(m, model)? {
        Some(i) => Ok(i),
        None => kiln_compiler::check::random_inputs(m, &plan_dims(m, dims)?, 0),
    }
}

/// Write `text` to `path`, or stdout when there is none.
pub fn write_output(path: Option<&Path>, text: &str) -> Result<(), Failure> {
    match path {
        Some(p) => Ok(std::fs::write(p, text).map_err(|e| format!("{}: {e}", p.display()))?),
        None => {
            let mut out = std::io::stdout().lock();
            // A closed pipe (`kiln dump m | head`) is not an error worth a message.
            match out.write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    Err(format!("stdout: {e}").into())
                }
                _ => Ok(()),
            }
        }
    }
}

fn parse_input(spec: &str) -> Result<(String, PathBuf), String> {
    let (name, file) = spec
        .split_once('=')
        .ok_or_else(|| format!("--input `{spec}`: expected NAME=FILE"))?;
    Ok((name.to_string(), PathBuf::from(file)))
}

/// The values of `--input NAME=FILE` flags, each read as its graph input's
/// declared type.
pub fn read_inputs(
    m: &kiln_ir::Module,
    specs: &[String],
) -> Result<HashMap<String, kiln_runtime::Value>, String> {
    let mut given = HashMap::new();
    for spec in specs {
        let (name, file) = parse_input(spec)?;
        let id = m
            .body
            .inputs
            .iter()
            .copied()
            .find(|&i| m.name(i) == name)
            .ok_or_else(|| {
                let names: Vec<String> = m
                    .body
                    .inputs
                    .iter()
                    .map(|&i| format!("{}: {}", m.name(i), kiln_ir::print_type(m.ty(i))))
                    .collect();
                format!(
                    "the model has no input `{name}`; its inputs are {}",
                    names.join(", ")
                )
            })?;
        given.insert(name, kiln_compiler::testdata::read_value(&file, m.ty(id))?);
    }
    Ok(given)
}

/// The input sets `kiln quantize` and `kiln prune` calibrate and evaluate
/// on.
#[derive(clap::Args)]
pub struct DataArgs {
    /// Calibration inputs: folders of input_N.pb/.npy sets (the layout of
    /// test_data_set_*), or one such folder
    #[arg(long, value_name = "DIR", conflicts_with = "random")]
    pub calibration: Option<PathBuf>,
    /// Evaluation inputs, laid out as --calibration (default: the last
    /// fifth of the calibration sets, held back; with one set, that set)
    #[arg(long, value_name = "DIR")]
    pub eval: Option<PathBuf>,
    /// N seeded random input sets of the declared types instead of
    /// --calibration (smoke tests: random inputs say little about real
    /// data)
    #[arg(long, value_name = "N")]
    pub random: Option<usize>,
    /// The seed of --random
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// A folder of JPEG/PNG images, one input set each, for a model with
    /// one image input (then --eval is an image folder too)
    #[arg(long, value_name = "DIR", conflicts_with_all = ["calibration", "random"])]
    pub images: Option<PathBuf>,
    /// Image height and width (default: the model input's static size)
    #[arg(long, value_name = "H,W", value_delimiter = ',')]
    pub size: Vec<usize>,
    /// Per-channel (R,G,B) mean of pixels scaled to [0, 1]
    #[arg(
        long,
        value_name = "R,G,B",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub mean: Vec<f32>,
    /// Per-channel (R,G,B) standard deviation of pixels scaled to [0, 1]
    #[arg(long, value_name = "R,G,B", value_delimiter = ',')]
    pub std: Vec<f32>,
    /// Where image channels go
    #[arg(long, value_enum, default_value = "nchw")]
    pub layout: LayoutArg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LayoutArg {
    Nchw,
    Nhwc,
}

impl DataArgs {
    /// (calibration sets, eval sets) for the model at `path`.
    pub fn sets(
        &self,
        path: &Path,
    ) -> Result<
        (
            Vec<kiln_compiler::compress::data::Inputs>,
            Vec<kiln_compiler::compress::data::Inputs>,
        ),
        Failure,
    > {
        use kiln_compiler::compress::data;
        let m = load_model(path)?;
        if let Some(dir) = &self.images {
            use kiln_compiler::compress::images::{image_sets, ImageOptions, Layout};
            let three = |v: &[f32], default: f32, flag: &str| -> Result<[f32; 3], String> {
                match v {
                    [] => Ok([default; 3]),
                    [x] => Ok([*x; 3]),
                    [r, g, b] => Ok([*r, *g, *b]),
                    _ => Err(format!("--{flag} takes one value or three (R,G,B)")),
                }
            };
            let o = ImageOptions {
                size: match self.size[..] {
                    [] => None,
                    [h, w] => Some((h, w)),
                    _ => return Err("--size takes H,W".to_string().into()),
                },
                mean: three(&self.mean, 0.0, "mean")?,
                std: three(&self.std, 1.0, "std")?,
                layout: match self.layout {
                    LayoutArg::Nchw => Layout::Nchw,
                    LayoutArg::Nhwc => Layout::Nhwc,
                },
            };
            let sets = image_sets(&m, dir, &o)?;
            return Ok(match &self.eval {
                Some(eval) => (sets, image_sets(&m, eval, &o)?),
                None => data::split_held_back(sets),
            });
        }
        let sets = match (&self.calibration, self.random) {
            (Some(dir), _) => data::read_sets(&m, dir)?,
            (None, Some(n)) if n > 0 => data::random_sets(&m, n, self.seed)?,
            _ => {
                return Err(
                    "give input sets: --calibration DIR, --images DIR or --random N"
                        .to_string()
                        .into(),
                )
            }
        };
        Ok(match &self.eval {
            Some(dir) => (sets, data::read_sets(&m, dir)?),
            None => data::split_held_back(sets),
        })
    }
}
