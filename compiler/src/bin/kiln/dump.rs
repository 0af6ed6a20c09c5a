//! `kiln dump`: print a module (text, JSON, dot) after a pipeline, with
//! pass-by-pass printing, numbered dump files, pass timing, statistics,
//! the memory plan, fusion explanations and a backend's report.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::ValueEnum;
use kiln_compiler::passes;

use crate::common::{default_inputs, plan_dims, write_output, Backend, Failure, TargetCpuArg};

#[derive(Clone, Copy, ValueEnum)]
pub enum DumpFormat {
    /// Kiln's textual IR (what `.kir` files hold)
    Text,
    /// one JSON document, for tools
    Json,
    /// a Graphviz digraph (`dot -Tsvg`)
    Dot,
}

#[derive(clap::Args)]
pub struct DumpArgs {
    /// The model: a .onnx file, a .kir file, or a folder with model.onnx
    pub model: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    pub format: DumpFormat,
    /// Write to FILE instead of stdout
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print constants with more than N elements as `elided`
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        conflicts_with = "no_elide"
    )]
    pub elide: u64,
    /// Print every constant's values in full
    #[arg(long)]
    pub no_elide: bool,
    /// Optimization level of the pipeline run before printing: 0 prints
    /// the imported module, 1 cleans up (folding, simplification, CSE,
    /// DCE), 2 also fuses (default 0; 2 with --pipeline and
    /// --backend-report)
    #[arg(short = 'O', value_name = "LEVEL", value_parser = clap::value_parser!(u8).range(0..=2))]
    pub opt_level: Option<u8>,
    /// Run a target's whole pipeline: the level's optimization, then the
    /// target's lowering passes (the graph its backend lowers)
    #[arg(long, value_name = "TARGET", conflicts_with = "passes")]
    pub pipeline: Option<String>,
    /// Run exactly these passes, in order (comma-separated names), instead
    /// of a level's pipeline
    #[arg(
        long,
        value_name = "PASS[,PASS]",
        value_delimiter = ',',
        conflicts_with = "opt_level"
    )]
    pub passes: Vec<String>,
    /// Print the IR after every pass that changed it (to stdout, each
    /// under a `# after N: PASS` header)
    #[arg(long)]
    pub print_after_all: bool,
    /// Print the IR after these passes (comma-separated names) when they
    /// change it
    #[arg(long, value_name = "PASS[,PASS]", value_delimiter = ',')]
    pub print_after: Vec<String>,
    /// Write the IR before the pipeline and after every pass that changed
    /// it as numbered files in DIR (`0003.after.fuse.kir`)
    #[arg(long, value_name = "DIR")]
    pub dump_dir: Option<PathBuf>,
    /// Print a table of time per pass to stderr
    #[arg(long)]
    pub time_passes: bool,
    /// Verify the module after every pass (always on in debug builds)
    #[arg(long)]
    pub verify: bool,
    /// Print one JSON line of statistics instead of the IR: nodes_before,
    /// nodes_after, kernels, fused_ops, arena_bytes, naive_bytes,
    /// constants_bytes
    #[arg(long)]
    pub stats: bool,
    /// After the IR, print the memory plan of its top-level region (offset
    /// and size per buffer) as `#` comment lines
    #[arg(long)]
    pub memory_plan: bool,
    /// Instead of the IR, print why each producer→consumer pair that
    /// `fuse` would see (the module after -O1 cleanup) stays in separate
    /// kernels, one line per pair
    #[arg(long)]
    pub explain_fusion: bool,
    /// Instead of the IR, compile for the backend (at -O, default 2) and
    /// list how each top-level node runs: natively (what was generated) or
    /// on the interpreter (why), then one summary line
    #[arg(long)]
    pub backend_report: bool,
    /// The backend of --backend-report
    #[arg(long, value_enum, default_value = "cpu", requires = "backend_report")]
    pub backend: Backend,
    /// Bind a symbolic dim of the graph inputs: NAME=VALUE. The module is
    /// specialized to those sizes before the pipeline runs (as the cpu
    /// backend does); memory planning takes other symbols as 1
    #[arg(long = "dim", value_name = "NAME=VALUE")]
    pub dims: Vec<String>,
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

/// Run the pipeline of `args.opt_level` with the observers the flags ask
/// for: printing after passes, numbered dump files, timing.
fn optimize_for_dump(
    m: &mut kiln_ir::Module,
    args: &DumpArgs,
    popts: &kiln_ir::text::PrintOptions,
) -> Result<(), Failure> {
    let steps = if !args.passes.is_empty() {
        kiln_compiler::compile::explicit_pipeline(&args.passes)?
    } else if let Some(target) = &args.pipeline {
        kiln_compiler::compile::target_pipeline(target, args.opt_level.unwrap_or(2))?
    } else {
        passes::pipeline(args.opt_level.unwrap_or(0))
    };
    for name in &args.print_after {
        if kiln_compiler::compile::pass(name).is_none() {
            return Err(format!(
                "--print-after: unknown pass `{name}`; passes: {}",
                kiln_compiler::compile::pass_names().join(", ")
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
    passes::run_pipeline(m, &steps, &mut opts).map_err(|e| e.to_string())?;
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

pub fn dump(args: &DumpArgs) -> Result<(), Failure> {
    let mut m = crate::common::load_model(&args.model)?;
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
        let mut shapes = HashMap::new();
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
        if args.opt_level.unwrap_or(0) > 0 || args.pipeline.is_some() {
            // Fold what the bound shapes make constant before the
            // pipeline proper runs (see `optimize_static`).
            let skip =
                kiln_compiler::compile::skipped_passes(args.pipeline.as_deref().unwrap_or(""));
            kiln_compiler::lower::optimize_static(&mut m, 1, skip)?;
        }
    }
    let nodes_before = op_count(&m.body);
    if args.backend_report {
        let inputs = default_inputs(&m, &args.model, &args.dims)?;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let target =
            args.backend
                .target(args.opt_level.unwrap_or(2), threads, TargetCpuArg::Native);
        let shapes = kiln_compiler::lower::shapes_of(&inputs);
        let exe = kiln_compiler::compile(&m, &target, &shapes)?;
        return write_output(args.output.as_deref(), &exe.report());
    }
    if args.explain_fusion {
        // `fuse` runs on the cleaned-up module: explain that one.
        kiln_compiler::passes::optimize(&mut m, 1, &[]).map_err(|e| e.to_string())?;
        let lines = kiln_compiler::passes::fuse::explain(&m);
        let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        if lines.is_empty() {
            text.push_str("# every producer→consumer pair would be fused\n");
        }
        return write_output(args.output.as_deref(), &text);
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
    write_output(args.output.as_deref(), &text)
}

/// The module to plan memory for: specialized to the shapes of the model
/// folder's `test_data_set_0` when there is one (models exported with
/// unknown `?` dims get sizes that way), else the module itself.
fn module_for_plan(
    m: &kiln_ir::Module,
    model: &std::path::Path,
) -> Result<kiln_ir::Module, String> {
    match kiln_compiler::check::inputs_from_test_folder(m, model)? {
        Some(inputs) => {
            kiln_compiler::lower::specialize(m, &kiln_compiler::lower::shapes_of(&inputs))
        }
        None => Ok(m.clone()),
    }
}
