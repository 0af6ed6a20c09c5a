//! `kiln bench` and `kiln profile`: compile once, warm up, time many runs
//! (median, min, p90, compile time, peak RSS), or time each step.

use std::collections::HashMap;
use std::path::PathBuf;

use kiln_runtime::{Executable, Placement};

use crate::common::{default_inputs, Backend, Failure, TargetCpuArg};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// The model: a .onnx file, a .kir file, or a folder with model.onnx
    /// (inputs from its test_data_set_0 when there is one)
    pub model: PathBuf,
    /// Which backend executes the model
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: Backend,
    /// Threads the kernels use
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub threads: usize,
    /// Timed runs (after warm-up)
    #[arg(long, value_name = "K", default_value_t = 50)]
    pub runs: usize,
    /// Optimization level
    #[arg(short = 'O', value_name = "LEVEL", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub opt_level: u8,
    /// A symbolic dim's size for random inputs: NAME=VALUE (default 1)
    #[arg(long = "dim", value_name = "NAME=VALUE")]
    pub dims: Vec<String>,
    /// Instruction set of the generated code
    #[arg(long, value_enum, default_value = "native")]
    pub target_cpu: TargetCpuArg,
    /// Print one JSON line: model, backend, threads, runs, median_ms,
    /// min_ms, p90_ms, compile_ms, peak_rss_mb
    #[arg(long)]
    pub json: bool,
}

/// A model compiled for `kiln bench`/`kiln profile`, with its inputs.
struct Prepared {
    inputs: HashMap<String, kiln_runtime::Value>,
    exe: Box<dyn Executable>,
    compile_ms: f64,
}

impl Prepared {
    fn run(&self) -> Result<Vec<kiln_runtime::Value>, String> {
        self.exe.run(&self.inputs).map_err(|e| e.to_string())
    }
}

/// Load, pick inputs (the folder's test_data_set_0, else seeded random
/// ones), compile; compile time counts from the start of the import.
fn prepare(args: &BenchArgs) -> Result<Prepared, Failure> {
    let start = std::time::Instant::now();
    let m = crate::common::load_model(&args.model)?;
    let inputs = default_inputs(&m, &args.model, &args.dims)?;
    let target = args
        .backend
        .target(args.opt_level, args.threads, args.target_cpu);
    let shapes = kiln_compiler::lower::shapes_of(&inputs);
    let exe = kiln_compiler::compile::compile_owned(m, &target, &shapes)?;
    Ok(Prepared {
        inputs,
        exe,
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

pub fn bench(args: &BenchArgs) -> Result<(), Failure> {
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
        let mut j = serde_json::json!({
            "model": model,
            "backend": args.backend.name(),
            "threads": args.threads.max(1),
            "runs": ms.len(),
            "median_ms": median,
            "min_ms": min,
            "p90_ms": p90,
            "compile_ms": p.compile_ms,
            "peak_rss_mb": peak_rss_mb(),
            "arena_mb": p.exe.memory().arena_bytes as f64 / (1024.0 * 1024.0),
        });
        // A GPU executable says which adapter ran and how many transfers a
        // run makes.
        if let (Some(a), Some(t), Some(o)) = (p.exe.adapter(), p.exe.transfers(), j.as_object_mut())
        {
            o.insert("adapter".into(), a.into());
            o.insert("transfers".into(), t.into());
        }
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

pub fn profile(args: &BenchArgs) -> Result<(), Failure> {
    let p = prepare(args)?;
    let exe = &p.exe;
    warm_up(&p, 3)?;
    // After the warm-up: control-flow steps describe the regions their
    // first run compiled.
    let steps = exe.steps();
    let runs = args.runs.max(1);
    let mut total = vec![std::time::Duration::ZERO; steps.len()];
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
    let mut rows: Vec<(f64, String, String, f64, f64)> = steps
        .iter()
        .zip(&total)
        .map(|(s, d)| {
            let n = &m.body.nodes[s.node];
            let ms = d.as_secs_f64() * 1e3 / runs as f64;
            let bytes: f64 = s.bytes.unwrap_or_else(|| {
                n.inputs
                    .iter()
                    .flatten()
                    .chain(&n.outputs)
                    .map(|&v| bytes_of(v))
                    .sum()
            });
            let (what, flops) = match s.placement {
                Placement::Native => (s.what.clone(), s.flops),
                Placement::Interp => (format!("{} (interpreter)", n.op), 0.0),
            };
            let name = n.outputs.first().map(|&o| m.name(o)).unwrap_or("?");
            (ms, format!("%{name}"), what, flops, bytes)
        })
        .collect();
    let sum: f64 = rows.iter().map(|r| r.0).sum();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    // The cpu's kernels against this machine's measured FMA peak (per
    // core, times the threads) and one core's streaming bandwidth (above
    // 100 %: the data came from cache).
    let machine = (exe.backend() == "cpu").then(kiln_runtime::cpu::machine::Machine::get);
    let threads = exe.threads().max(1) as f64;
    println!(
        "{:>9} {:>6} {:>8} {:>6} {:>7} {:>6}  kernel",
        "ms", "share", "GFLOP/s", "%peak", "GB/s", "%bw"
    );
    for (ms, name, what, flops, bytes) in &rows {
        let secs = ms / 1e3;
        let rate = (*flops > 0.0 && secs > 0.0).then(|| flops / secs / 1e9);
        let gflops = rate.map_or("-".into(), |r| format!("{r:.1}"));
        let peak = match (rate, machine) {
            (Some(r), Some(m)) if m.peak_gflops() > 0.0 => {
                format!("{:.0}%", 100.0 * r / (m.peak_gflops() * threads))
            }
            _ => "-".into(),
        };
        let gbs = if secs > 0.0 { bytes / secs / 1e9 } else { 0.0 };
        let bw = match machine {
            Some(m) if m.bandwidth_gbs > 0.0 => format!("{:.0}%", 100.0 * gbs / m.bandwidth_gbs),
            _ => "-".into(),
        };
        println!(
            "{ms:>9.3} {:>5.1}% {gflops:>8} {peak:>6} {gbs:>7.2} {bw:>6}  {name}: {what}",
            100.0 * ms / sum.max(1e-12)
        );
    }
    if let Some(m) = machine {
        println!("# {}", m.describe());
    }
    println!(
        "{sum:>9.3} total ms per run ({runs} runs, {} thread(s))",
        exe.threads()
    );
    Ok(())
}
