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

fn dump(args: &DumpArgs) -> Result<(), Failure> {
    let m = kiln_compiler::load::load_model(&args.model)?;
    let threshold = if args.no_elide {
        None
    } else {
        Some(args.elide)
    };
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Dump(a) => dump(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("{msg}");
            ExitCode::FAILURE
        }
    }
}
