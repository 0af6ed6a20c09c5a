//! The `kiln` command line: one module per command, what they share in
//! [`common`]. Every command that runs a model compiles it through
//! `kiln_compiler::compile` with the target its flags name.

mod bench;
mod check;
mod common;
mod conformance;
mod dump;
mod prune;
mod quantize;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use bench::BenchArgs;
use check::CheckArgs;
use common::Failure;
use conformance::ConformanceArgs;
use dump::DumpArgs;
use prune::PruneArgs;
use quantize::QuantizeArgs;
use run::RunArgs;

/// Kiln, a deep-learning graph compiler: import ONNX or Kiln IR, optimize,
/// lower to native code, and inspect every step.
#[derive(Parser)]
#[command(name = "kiln", version)]
struct Cli {
    /// The most memory a model may ask for: any one tensor (imported,
    /// folded or made at run time) and all of its constants together
    /// (512M, 8G, 4096; default: 4G per tensor, 32G in all)
    #[arg(long, global = true, value_name = "SIZE", value_parser = kiln_ir::limits::parse_bytes)]
    max_memory: Option<u64>,
    /// The most nodes a model may have once its functions are inlined
    /// (default: 262144)
    #[arg(long, global = true, value_name = "N")]
    max_nodes: Option<u64>,
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
    /// Quantize a float ONNX model to int8 (QDQ): calibrate activation
    /// ranges, keep the most sensitive nodes in float until a tolerance
    /// holds, and report the accuracy, size and speed.
    Quantize(QuantizeArgs),
    /// Prune a float ONNX model (single weights, N:M, or whole conv
    /// channels) at a sparsity or over a sweep that keeps the sparsest
    /// level meeting a tolerance; report accuracy, size and speed.
    Prune(PruneArgs),
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
    let mut limits = kiln_ir::Limits::default();
    if let Some(bytes) = cli.max_memory {
        limits.tensor_bytes = bytes;
        limits.memory_bytes = bytes;
    }
    if let Some(n) = cli.max_nodes {
        limits.nodes = n;
    }
    common::set_limits(limits);
    let result = match &cli.command {
        Command::Dump(a) => dump::dump(a),
        Command::Run(a) => run::run(a),
        Command::Conformance(a) => conformance::conformance(a),
        Command::Check(a) => check::check(a),
        Command::Bench(a) => bench::bench(a),
        Command::Profile(a) => bench::profile(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Prune(a) => prune::prune(a),
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
