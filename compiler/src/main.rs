//! The `kiln` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Kiln, a deep-learning graph compiler: import ONNX or Kiln IR, optimize,
/// lower to native code, and inspect every step.
#[derive(Parser)]
#[command(name = "kiln", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Import a model (.onnx, .kir, or a folder holding model.onnx),
    /// verify it, and print its IR.
    Dump(DumpArgs),
    /// Run a model on given inputs and write its outputs.
    Run(RunArgs),
    /// Run ONNX backend-test folders and compare with their expected
    /// outputs (ONNX's rule: |got - want| <= atol + rtol*|want|).
    Conformance(ConformanceArgs),
    /// Find miscompiles: interpret the model after every optimization pass
    /// on the same inputs and name the first pass after which an output
    /// moves beyond tolerance.
    Check(CheckArgs),
    /// Compile a model and time it: median, min and p90 of many runs, the
    /// compile time, and peak memory.
    Bench(BenchArgs),
    /// Compile a model, run it several times, and print the time per
    /// kernel, sorted, with its share of the total and its GFLOP/s and GB/s.
    Profile(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The model: a .onnx file, a .kir file, or a folder with model.onnx
    /// (inputs from its test_data_set_0 when there is one)
    model: PathBuf,
    /// Which backend executes the model
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// Threads the kernels use
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
    /// Timed runs (after warm-up)
    #[arg(long, value_name = "K", default_value_t = 50)]
    runs: usize,
    /// Optimization level
    #[arg(short = 'O', value_name = "LEVEL", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    opt_level: u8,
    /// A symbolic dim's size for random inputs: NAME=VALUE (default 1)
    #[arg(long = "dim", value_name = "NAME=VALUE")]
    dims: Vec<String>,
    /// Instruction set of the generated code
    #[arg(long, value_enum, default_value = "native")]
    target_cpu: TargetCpuArg,
    /// Print one JSON line: model, backend, threads, runs, median_ms,
    /// min_ms, p90_ms, compile_ms, peak_rss_mb
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The model: a .onnx file, a .kir file, or a folder with model.onnx
    model: PathBuf,
    /// A graph input: NAME=FILE (.pb or .npy). Without any, the folder's
    /// test_data_set_0 is used, else seeded random inputs
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// A symbolic dim's size for random inputs: NAME=VALUE (default 1)
    #[arg(long = "dim", value_name = "NAME=VALUE")]
    dims: Vec<String>,
    /// Seed of the random inputs
    #[arg(long, default_value_t = 0)]
    seed: u32,
    /// Optimization level whose pipeline is checked
    #[arg(short = 'O', value_name = "LEVEL", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    opt_level: u8,
    /// Relative tolerance
    #[arg(long, default_value_t = 1e-3)]
    rtol: f64,
    /// Absolute tolerance
    #[arg(long, default_value_t = 1e-5)]
    atol: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Backend {
    /// native code: the kernel library and Cranelift-compiled fusion
    /// regions (rare ops on the interpreter's kernels)
    Cpu,
    /// the reference interpreter
    Interp,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Interp => "interp",
        }
    }
}

#[derive(clap::Args)]
struct RunArgs {
    /// The model: a .onnx file, a .kir file, or a folder with model.onnx
    model: PathBuf,
    /// A graph input: NAME=FILE, FILE a TensorProto .pb or a .npy
    #[arg(long = "input", value_name = "NAME=FILE")]
    inputs: Vec<String>,
    /// Where to write the outputs, one NAME.pb per graph output
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Which backend executes the model
    #[arg(long, value_enum, default_value = "cpu")]
    backend: Backend,
    /// Threads the cpu backend's kernels use (default: every core)
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Instruction set of the cpu backend's generated code
    #[arg(long, value_enum, default_value = "native")]
    target_cpu: TargetCpuArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetCpuArg {
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

#[derive(clap::Args)]
struct ConformanceArgs {
    /// Test folders (model.onnx + test_data_set_*/), or folders of them
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Which backend executes the models
    #[arg(long, value_enum, default_value = "interp")]
    backend: Backend,
    /// Optimization level: 0 runs the imported module, 1 the cleaned-up
    /// one (folding, simplification, CSE, DCE), 2 adds fusion (default: 0
    /// on the interpreter, 2 on cpu)
    #[arg(short = 'O', value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(0..=2))]
    opt_level: Option<u8>,
    /// Threads the cpu backend's kernels use
    #[arg(long, value_name = "N", default_value_t = 1)]
    threads: usize,
    /// Relative tolerance
    #[arg(long, default_value_t = 1e-3)]
    rtol: f64,
    /// Absolute tolerance
    #[arg(long, default_value_t = 1e-7)]
    atol: f64,
    /// Write per-test results as JSON to FILE
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// A file listing tests (one name per line, `#` comments) that must
    /// pass: any of them not passing fails the run (exit status 1)
    #[arg(long, value_name = "FILE")]
    expect: Option<PathBuf>,
    /// Write the names of the passing tests to FILE (to refresh --expect)
    #[arg(long, value_name = "FILE")]
    write_passing: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum DumpFormat {
    /// Kiln's textual IR (what `.kir` files hold)
    Text,
    /// one JSON document, for tools
    Json,
    /// a Graphviz digraph (`dot -Tsvg`)
    Dot,
}

#[derive(clap::Args)]
struct DumpArgs {
    /// The model: a .onnx file, a .kir file, or a folder with model.onnx
    model: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    format: DumpFormat,
    /// Write to FILE instead of stdout
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print constants with more than N elements as `elided`
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        conflicts_with = "no_elide"
    )]
    elide: u64,
    /// Print every constant's values in full
    #[arg(long)]
    no_elide: bool,
    /// Optimization level of the pipeline run before printing: 0 prints
    /// the imported module, 1 cleans up (folding, simplification, CSE,
    /// DCE), 2 also fuses
    #[arg(short = 'O', value_name = "LEVEL", default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    opt_level: u8,
    /// Print the IR after every pass that changed it (to stdout, each
    /// under a `# after N: PASS` header)
    #[arg(long)]
    print_after_all: bool,
    /// Print the IR after these passes (comma-separated names) when they
    /// change it
    #[arg(long, value_name = "PASS[,PASS]", value_delimiter = ',')]
    print_after: Vec<String>,
    /// Write the IR before the pipeline and after every pass that changed
    /// it as numbered files in DIR (`0003.after.fuse.kir`)
    #[arg(long, value_name = "DIR")]
    dump_dir: Option<PathBuf>,
    /// Print a table of time per pass to stderr
    #[arg(long)]
    time_passes: bool,
    /// Verify the module after every pass (always on in debug builds)
    #[arg(long)]
    verify: bool,
    /// Print one JSON line of statistics instead of the IR: nodes_before,
    /// nodes_after, kernels, fused_ops, arena_bytes, naive_bytes,
    /// constants_bytes
    #[arg(long)]
    stats: bool,
    /// After the IR, print the memory plan of its top-level region (offset
    /// and size per buffer) as `#` comment lines
    #[arg(long)]
    memory_plan: bool,
    /// Instead of the IR, print why each producer→consumer pair that
    /// `fuse` would see (the module after -O1 cleanup) stays in separate
    /// kernels, one line per pair
    #[arg(long)]
    explain_fusion: bool,
    /// Instead of the IR, compile for the cpu backend (at -O, default 0
    /// meaning the level given) and list how each top-level node runs:
    /// natively (what was generated) or on the interpreter (why)
    #[arg(long)]
    backend_report: bool,
    /// Bind a symbolic dim of the graph inputs: NAME=VALUE. The module is
    /// specialized to those sizes before the pipeline runs (as the cpu
    /// backend does); memory planning takes other symbols as 1
    #[arg(long = "dim", value_name = "NAME=VALUE")]
    dims: Vec<String>,
}

/// `--dim NAME=VALUE` flags, with every other symbol of the module's
/// inputs bound to 1.
fn plan_dims(
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

/// The module to plan memory for: when the model folder has a
/// `test_data_set_0`, a copy whose graph inputs take those inputs' concrete
/// shapes (models exported with unknown `?` dims get sizes that way), with
/// types inferred again; else the module itself.
fn module_for_plan(
    m: &kiln_ir::Module,
    model: &std::path::Path,
) -> Result<kiln_ir::Module, String> {
    let Some(inputs) = kiln_compiler::check::inputs_from_test_folder(m, model)? else {
        return Ok(m.clone());
    };
    let mut c = m.clone();
    for &i in &m.body.inputs {
        if let (Some(kiln_runtime::Value::Tensor(t)), Some(tt)) =
            (inputs.get(m.name(i)), m.ty(i).as_tensor())
        {
            let dims = t
                .shape
                .iter()
                .map(|&d| kiln_ir::Dim::Known(d as u64))
                .collect();
            c.set_ty(
                i,
                kiln_ir::Type::Tensor(kiln_ir::TensorType::new(tt.elem, dims)),
            );
        }
    }
    kiln_ir::ops::infer_module_with(&mut c, kiln_ir::ops::DeclaredTypes::Replace)
        .map_err(|e| e.to_string())?;
    Ok(c)
}

/// Ops in a region and its nested regions, fusion nodes themselves not
/// counted (the ops they group are).
fn op_count(r: &kiln_ir::Region) -> usize {
    r.nodes
        .iter()
        .map(|n| {
            let inner: usize = n.regions().map(|(_, b)| op_count(b)).sum();
            inner + usize::from(n.op != "kiln.Fusion")
        })
        .sum()
}

/// Ops inside fusion regions (fusions in nested regions included).
fn fused_ops(r: &kiln_ir::Region) -> usize {
    r.nodes
        .iter()
        .map(|n| -> usize {
            let nested = n.regions().map(|(_, b)| b);
            if n.op == "kiln.Fusion" {
                nested.map(op_count).sum()
            } else {
                nested.map(fused_ops).sum()
            }
        })
        .sum()
}

/// A failure to report: parse errors arrive already rendered (source line
/// and caret); everything else is one paragraph after `error: `.
struct Failure(String);

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

/// Run the pipeline of `args.opt_level` with the observers the flags ask
/// for: printing after passes, numbered dump files, timing.
fn optimize_for_dump(
    m: &mut kiln_ir::Module,
    args: &DumpArgs,
    popts: &kiln_ir::text::PrintOptions,
) -> Result<(), Failure> {
    use kiln_compiler::passes;
    for name in &args.print_after {
        if passes::pass(name).is_none() {
            return Err(format!(
                "--print-after: unknown pass `{name}`; passes: {}",
                passes::names().join(", ")
            )
            .into());
        }
    }
    if let Some(dir) = &args.dump_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("0000.input.kir");
        std::fs::write(&path, kiln_ir::text::print_module(m, popts))
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut times: Vec<(&'static str, std::time::Duration, usize, usize)> = Vec::new();
    let mut io_error = None;
    let mut observer = |ev: &passes::PassEvent| {
        match times.iter_mut().find(|t| t.0 == ev.name) {
            Some(t) => {
                t.1 += ev.elapsed;
                t.2 += 1;
                t.3 += ev.changed as usize;
            }
            None => times.push((ev.name, ev.elapsed, 1, ev.changed as usize)),
        }
        if !ev.changed {
            return;
        }
        if args.print_after_all || args.print_after.iter().any(|p| p == ev.name) {
            print!(
                "# after {}: {}\n{}",
                ev.index,
                ev.name,
                kiln_ir::text::print_module(ev.module, popts)
            );
        }
        if let Some(dir) = &args.dump_dir {
            let path = dir.join(format!("{:04}.after.{}.kir", ev.index, ev.name));
            if let Err(e) = std::fs::write(&path, kiln_ir::text::print_module(ev.module, popts)) {
                io_error.get_or_insert(format!("{}: {e}", path.display()));
            }
        }
    };
    let mut opts = passes::RunOptions {
        verify_each: args.verify || cfg!(debug_assertions),
        observer: Some(&mut observer),
    };
    passes::run_pipeline(m, &passes::pipeline(args.opt_level), &mut opts)
        .map_err(|e| e.to_string())?;
    if let Some(e) = io_error {
        return Err(e.into());
    }
    if args.time_passes {
        let total: f64 = times.iter().map(|t| t.1.as_secs_f64()).sum();
        eprintln!(
            "{:<16} {:>10} {:>6} {:>8} {:>7}",
            "pass", "ms", "runs", "changed", "share"
        );
        for (name, d, runs, changed) in &times {
            let ms = d.as_secs_f64() * 1e3;
            let share = if total > 0.0 {
                100.0 * d.as_secs_f64() / total
            } else {
                0.0
            };
            eprintln!("{name:<16} {ms:>10.3} {runs:>6} {changed:>8} {share:>6.1}%");
        }
        eprintln!("{:<16} {:>10.3}", "total", total * 1e3);
    }
    Ok(())
}

fn dump(args: &DumpArgs) -> Result<(), Failure> {
    let mut m = kiln_compiler::load::load_model(&args.model)?;
    let threshold = if args.no_elide {
        None
    } else {
        Some(args.elide)
    };
    let popts = kiln_ir::text::PrintOptions {
        elide_threshold: threshold,
    };
    if !args.dims.is_empty() {
        // Bind the named symbols: the pipeline then sees static shapes, as
        // the cpu backend does.
        let dims = plan_dims(&m, &args.dims)?;
        let mut shapes = std::collections::HashMap::new();
        for &i in &m.body.inputs {
            let Some(ds) = m.ty(i).as_tensor().and_then(|t| t.shape.as_ref()) else {
                continue;
            };
            let shape: Option<Vec<usize>> = ds
                .iter()
                .map(|d| match d {
                    kiln_ir::Dim::Known(k) => Some(*k as usize),
                    kiln_ir::Dim::Sym(e) => e
                        .eval(&|s| dims.get(s).map(|&v| v as i64))
                        .map(|v| v as usize),
                    _ => None,
                })
                .collect();
            if let Some(shape) = shape {
                shapes.insert(m.name(i).to_string(), shape);
            }
        }
        m = kiln_compiler::lower::specialize(&m, &shapes)?;
        if args.opt_level > 0 {
            // Fold what the bound shapes make constant before the
            // pipeline proper runs (see `optimize_static`).
            kiln_compiler::lower::optimize_static(&mut m, 1)?;
        }
    }
    let nodes_before = op_count(&m.body);
    if args.backend_report {
        let inputs = match kiln_compiler::check::inputs_from_test_folder(&m, &args.model)? {
            Some(i) => i,
            None => {
                let dims = plan_dims(&m, &args.dims)?;
                kiln_compiler::check::random_inputs(&m, &dims, 0)?
            }
        };
        let opts = kiln_compiler::lower::cpu::CpuOptions {
            opt_level: if args.opt_level == 0 {
                2
            } else {
                args.opt_level
            },
            ..Default::default()
        };
        let exe = kiln_compiler::lower::cpu::compile(
            &m,
            &kiln_compiler::lower::shapes_of(&inputs),
            &opts,
        )?;
        return write_output(args, &kiln_compiler::lower::cpu::backend_report(&exe));
    }
    if args.explain_fusion {
        // `fuse` runs on the cleaned-up module: explain that one.
        kiln_compiler::passes::optimize(&mut m, 1).map_err(|e| e.to_string())?;
        let lines = kiln_compiler::passes::fuse::explain(&m);
        let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        if lines.is_empty() {
            text.push_str("# every producer→consumer pair would be fused\n");
        }
        return write_output(args, &text);
    }
    optimize_for_dump(&mut m, args, &popts)?;
    if args.stats {
        use kiln_compiler::passes::memory_plan;
        let pm = module_for_plan(&m, &args.model)?;
        let plan = memory_plan::plan(&pm, &plan_dims(&pm, &args.dims)?)?;
        let stats = serde_json::json!({
            "nodes_before": nodes_before,
            "nodes_after": op_count(&m.body),
            "kernels": m.body.nodes.len(),
            "fused_ops": fused_ops(&m.body),
            "arena_bytes": plan.arena_bytes,
            "naive_bytes": plan.naive_bytes,
            "constants_bytes": m.constants_bytes(),
        });
        println!("{stats}");
        return Ok(());
    }
    if args.print_after_all || !args.print_after.is_empty() {
        // The pass-by-pass text is the output.
        return Ok(());
    }
    let text = match args.format {
        DumpFormat::Text => kiln_ir::text::print_module(
            &m,
            &kiln_ir::text::PrintOptions {
                elide_threshold: threshold,
            },
        ),
        DumpFormat::Json => {
            let mut s =
                kiln_compiler::dump::module_json(&m, threshold.unwrap_or(u64::MAX)).to_string();
            s.push('\n');
            s
        }
        DumpFormat::Dot => kiln_compiler::dump::module_dot(&m),
    };
    let text = if args.memory_plan {
        use kiln_compiler::passes::memory_plan;
        let pm = module_for_plan(&m, &args.model)?;
        let plan = memory_plan::plan(&pm, &plan_dims(&pm, &args.dims)?)?;
        let table: String = memory_plan::render(&pm, &plan)
            .lines()
            .map(|l| format!("# {l}\n"))
            .collect();
        format!("{text}{table}")
    } else {
        text
    };
    write_output(args, &text)
}

/// Write `text` to `-o FILE` or stdout.
fn write_output(args: &DumpArgs, text: &str) -> Result<(), Failure> {
    match &args.output {
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

fn run(args: &RunArgs) -> Result<(), Failure> {
    let m = kiln_compiler::load::load_model(&args.model)?;
    let mut given = std::collections::HashMap::new();
    for spec in &args.inputs {
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
        let v = kiln_compiler::testdata::read_value(&file, m.ty(id))?;
        given.insert(name, v);
    }
    let missing: Vec<String> = m
        .body
        .inputs
        .iter()
        .filter(|&&i| !given.contains_key(m.name(i)))
        .map(|&i| format!("{} ({})", m.name(i), kiln_ir::print_type(m.ty(i))))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing inputs: {} (give each with --input NAME=FILE)",
            missing.join(", ")
        )
        .into());
    }
    let outputs = match args.backend {
        Backend::Interp => kiln_runtime::Interpreter::new(&m)
            .run(&given)
            .map_err(|e| e.to_string())?,
        Backend::Cpu => {
            let mut opts = kiln_compiler::lower::cpu::CpuOptions::default();
            if let Some(t) = args.threads {
                opts.threads = t;
            }
            opts.target_cpu = args.target_cpu.into();
            let shapes = kiln_compiler::lower::shapes_of(&given);
            kiln_compiler::lower::cpu::compile(&m, &shapes, &opts)?
                .run(&given)
                .map_err(|e| e.to_string())?
        }
    };
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for (&o, v) in m.body.outputs.iter().zip(&outputs) {
        let name = m.name(o);
        println!("{name}: {}", kiln_compiler::testdata::summarize(v));
        if let Some(dir) = &args.output_dir {
            let file: String = name
                .chars()
                .map(|c| {
                    if c.is_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let path = dir.join(format!("{file}.pb"));
            std::fs::write(&path, kiln_compiler::testdata::encode_pb(v, name))
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

fn check(args: &CheckArgs) -> Result<(), Failure> {
    use kiln_compiler::check::{
        check_pipeline, inputs_from_test_folder, random_inputs, CheckOutcome,
    };
    let mut m = kiln_compiler::load::load_model(&args.model)?;
    let inputs = if !args.inputs.is_empty() {
        let mut given = std::collections::HashMap::new();
        for spec in &args.inputs {
            let (name, file) = parse_input(spec)?;
            let id = m
                .body
                .inputs
                .iter()
                .copied()
                .find(|&i| m.name(i) == name)
                .ok_or_else(|| format!("the model has no input `{name}`"))?;
            given.insert(name, kiln_compiler::testdata::read_value(&file, m.ty(id))?);
        }
        given
    } else if let Some(found) = inputs_from_test_folder(&m, &args.model)? {
        found
    } else {
        let mut dims = std::collections::HashMap::new();
        for d in &args.dims {
            let (k, v) = d
                .split_once('=')
                .ok_or_else(|| format!("--dim `{d}`: expected NAME=VALUE"))?;
            let v: u64 = v
                .parse()
                .map_err(|_| format!("--dim `{d}`: `{v}` is not a size"))?;
            dims.insert(k.to_string(), v);
        }
        random_inputs(&m, &dims, args.seed)?
    };
    let tol = kiln_compiler::conformance::Tolerance {
        rtol: args.rtol,
        atol: args.atol,
    };
    let steps = kiln_compiler::passes::pipeline(args.opt_level);
    match check_pipeline(&mut m, &steps, &inputs, tol)? {
        CheckOutcome::Ok {
            passes_run,
            passes_changed,
        } => {
            println!("ok: {passes_run} pass runs ({passes_changed} changed the module), outputs within tolerance after each");
            Ok(())
        }
        CheckOutcome::Miscompile {
            index,
            pass,
            detail,
        } => Err(Failure(format!(
            "miscompile: after pass {index} `{pass}`, {detail}"
        ))),
    }
}

fn conformance(args: &ConformanceArgs) -> Result<(), Failure> {
    use kiln_compiler::conformance::{
        collect_tests, report_line, results_json, run_test_on, Engine, Outcome, Tolerance,
    };
    let engine = match args.backend {
        Backend::Interp => Engine::Interp,
        Backend::Cpu => Engine::Cpu {
            threads: args.threads.max(1),
        },
    };
    let opt_level = args.opt_level.unwrap_or(match args.backend {
        Backend::Interp => 0,
        Backend::Cpu => 2,
    });
    use std::io::IsTerminal;
    let tests = collect_tests(&args.paths)?;
    let tol = Tolerance {
        rtol: args.rtol,
        atol: args.atol,
    };
    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(tests.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    // Kernel panics are caught per test and reported as failures; keep the
    // default hook from printing them over the report.
    std::panic::set_hook(Box::new(|_| {}));
    let mut results = Vec::with_capacity(tests.len());
    for t in &tests {
        bar.set_message(
            t.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_string(),
        );
        let r = run_test_on(t, tol, opt_level, engine);
        bar.suspend(|| println!("{}", report_line(&r)));
        bar.inc(1);
        results.push(r);
    }
    bar.finish_and_clear();
    let _ = std::panic::take_hook();
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.outcome)).count();
    let (passed, failed, skipped) = (
        count(|o| matches!(o, Outcome::Pass)),
        count(|o| matches!(o, Outcome::Fail(_))),
        count(|o| matches!(o, Outcome::Skip(_))),
    );
    if let Some(p) = &args.json {
        let j = results_json(&results, args.backend.name(), opt_level);
        std::fs::write(p, format!("{j:#}\n")).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = &args.write_passing {
        let names: String = results
            .iter()
            .filter(|r| r.outcome == Outcome::Pass)
            .map(|r| format!("{}\n", r.name))
            .collect();
        std::fs::write(p, names).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let mut regressions = Vec::new();
    if let Some(p) = &args.expect {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        for name in text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
        {
            match results.iter().find(|r| r.name == name) {
                Some(r) if r.outcome == Outcome::Pass => {}
                Some(r) => regressions.push(report_line(r)),
                None => regressions.push(format!("{name}: expected to pass but was not run")),
            }
        }
        for r in &regressions {
            eprintln!("regression: {r}");
        }
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    if !regressions.is_empty() {
        return Err(Failure(format!(
            "error: {} expected tests did not pass",
            regressions.len()
        )));
    }
    if args.expect.is_none() && failed > 0 {
        return Err(Failure(String::new()));
    }
    Ok(())
}

/// A model compiled for `kiln bench`/`kiln profile`, with its inputs.
struct Prepared {
    inputs: std::collections::HashMap<String, kiln_runtime::Value>,
    exe: Option<kiln_runtime::cpu::Executable>,
    /// The module the interpreter runs (interp backend).
    module: kiln_ir::Module,
    compile_ms: f64,
}

impl Prepared {
    fn run(&self) -> Result<Vec<kiln_runtime::Value>, String> {
        match &self.exe {
            Some(e) => e.run(&self.inputs).map_err(|e| e.to_string()),
            None => kiln_runtime::Interpreter::new(&self.module)
                .run(&self.inputs)
                .map_err(|e| e.to_string()),
        }
    }
}

/// Load, pick inputs (the folder's test_data_set_0, else seeded random
/// ones), compile; compile time counts from the start of the import.
fn prepare(args: &BenchArgs) -> Result<Prepared, Failure> {
    let start = std::time::Instant::now();
    let mut m = kiln_compiler::load::load_model(&args.model)?;
    let inputs = match kiln_compiler::check::inputs_from_test_folder(&m, &args.model)? {
        Some(i) => i,
        None => {
            let dims = plan_dims(&m, &args.dims)?;
            kiln_compiler::check::random_inputs(&m, &dims, 0)?
        }
    };
    let exe = match args.backend {
        Backend::Cpu => {
            let opts = kiln_compiler::lower::cpu::CpuOptions {
                opt_level: args.opt_level,
                threads: args.threads.max(1),
                target_cpu: args.target_cpu.into(),
            };
            let shapes = kiln_compiler::lower::shapes_of(&inputs);
            Some(kiln_compiler::lower::cpu::compile(&m, &shapes, &opts)?)
        }
        Backend::Interp => {
            kiln_compiler::passes::optimize(&mut m, args.opt_level).map_err(|e| e.to_string())?;
            None
        }
    };
    Ok(Prepared {
        inputs,
        exe,
        module: m,
        compile_ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// Peak resident memory of this process in MiB (Linux `VmHWM`).
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Warm-up runs before timing: enough to fault in buffers and caches.
fn warm_up(p: &Prepared, runs: usize) -> Result<(), Failure> {
    for _ in 0..runs.clamp(1, 5) {
        p.run()?;
    }
    Ok(())
}

fn bench(args: &BenchArgs) -> Result<(), Failure> {
    let p = prepare(args)?;
    warm_up(&p, args.runs / 10)?;
    let mut ms = Vec::with_capacity(args.runs);
    for _ in 0..args.runs.max(1) {
        let t = std::time::Instant::now();
        p.run()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    let (median, min, p90) = (pick(0.5), ms[0], pick(0.9));
    let model = args.model.display().to_string();
    if args.json {
        let j = serde_json::json!({
            "model": model,
            "backend": args.backend.name(),
            "threads": args.threads.max(1),
            "runs": ms.len(),
            "median_ms": median,
            "min_ms": min,
            "p90_ms": p90,
            "compile_ms": p.compile_ms,
            "peak_rss_mb": peak_rss_mb(),
        });
        println!("{j}");
    } else {
        println!(
            "{model}: {} backend, {} thread(s), {} runs: median {median:.3} ms, min {min:.3} ms, p90 {p90:.3} ms; compile {:.1} ms; peak RSS {:.1} MiB",
            args.backend.name(),
            args.threads.max(1),
            ms.len(),
            p.compile_ms,
            peak_rss_mb()
        );
    }
    Ok(())
}

fn profile(args: &BenchArgs) -> Result<(), Failure> {
    use kiln_runtime::cpu::StepKind;
    let p = prepare(args)?;
    let Some(exe) = &p.exe else {
        return Err(Failure::from(
            "kiln profile times the cpu backend's kernels; use --backend cpu".to_string(),
        ));
    };
    warm_up(&p, 3)?;
    let runs = args.runs.max(1);
    let mut total = vec![std::time::Duration::ZERO; exe.steps().len()];
    let mut times = Vec::new();
    for _ in 0..runs {
        exe.run_profiled(&p.inputs, &mut times)
            .map_err(|e| e.to_string())?;
        for (t, d) in total.iter_mut().zip(&times) {
            *t += *d;
        }
    }
    let m = exe.module();
    let bytes_of = |v: kiln_ir::ValueId| -> f64 {
        m.ty(v)
            .as_tensor()
            .and_then(|t| Some(t.elem.storage_bytes(t.num_elements()?)? as f64))
            .unwrap_or(0.0)
    };
    let mut rows: Vec<(f64, String, String, f64, f64)> = exe
        .steps()
        .iter()
        .zip(&total)
        .map(|(s, d)| {
            let n = &m.body.nodes[s.node];
            let ms = d.as_secs_f64() * 1e3 / runs as f64;
            let bytes: f64 = n
                .inputs
                .iter()
                .flatten()
                .chain(&n.outputs)
                .map(|&v| bytes_of(v))
                .sum();
            let (what, flops) = match &s.kind {
                StepKind::Native { what, flops, .. } => (what.clone(), *flops),
                StepKind::Interp { .. } => (format!("{} (interpreter)", n.op), 0.0),
            };
            let name = n.outputs.first().map(|&o| m.name(o)).unwrap_or("?");
            (ms, format!("%{name}"), what, flops, bytes)
        })
        .collect();
    let sum: f64 = rows.iter().map(|r| r.0).sum();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!(
        "{:>9} {:>6} {:>8} {:>7}  kernel",
        "ms", "share", "GFLOP/s", "GB/s"
    );
    for (ms, name, what, flops, bytes) in &rows {
        let secs = ms / 1e3;
        let gflops = if *flops > 0.0 && secs > 0.0 {
            format!("{:.1}", flops / secs / 1e9)
        } else {
            "-".into()
        };
        let gbs = if secs > 0.0 { bytes / secs / 1e9 } else { 0.0 };
        println!(
            "{ms:>9.3} {:>5.1}% {gflops:>8} {gbs:>7.2}  {name}: {what}",
            100.0 * ms / sum.max(1e-12)
        );
    }
    println!(
        "{sum:>9.3} total ms per run ({runs} runs, {} thread(s))",
        exe.threads()
    );
    Ok(())
}

/// Die quietly on a closed pipe (`kiln profile m | head`), as Unix tools
/// do, instead of panicking in `println!`.
fn reset_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE at start-up,
    // before any thread exists, has no memory-safety effect.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    reset_sigpipe();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Dump(a) => dump(a),
        Command::Run(a) => run(a),
        Command::Conformance(a) => conformance(a),
        Command::Check(a) => check(a),
        Command::Bench(a) => bench(a),
        Command::Profile(a) => profile(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            if !msg.is_empty() {
                eprintln!("{msg}");
            }
            ExitCode::FAILURE
        }
    }
}
