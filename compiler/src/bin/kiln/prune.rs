//! `kiln prune`: magnitude or activation-scored pruning (unstructured,
//! N:M, or whole conv channels), at one sparsity or over a sweep that
//! keeps the sparsest level meeting a tolerance
//! (`kiln_compiler::compress::prune`).

use std::path::PathBuf;

use kiln_compiler::compress::metrics::Tolerance;
use kiln_compiler::compress::prune::{Score, Structure};
use kiln_compiler::compress::PruneOptions;

use crate::common::Failure;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StructuredArg {
    /// whole conv output channels; readers rewritten to match
    Channels,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ScoreArg {
    /// |w|
    Magnitude,
    /// |w| times its input channel's norm on the calibration data (Wanda)
    Activation,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum NormArg {
    L1,
    L2,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// The float model: a .onnx file or a folder with model.onnx
    pub model: PathBuf,
    /// Where to write the pruned model
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// Fraction of weights (or channels) to remove
    #[arg(long, value_name = "S", conflicts_with = "sweep")]
    pub sparsity: Option<f64>,
    /// Try FROM:TO:STEP sparsities and keep the sparsest that meets
    /// --tolerance
    #[arg(long, value_name = "FROM:TO:STEP")]
    pub sweep: Option<String>,
    /// Unstructured pruning with one threshold over all layers instead of
    /// one per layer
    #[arg(long, conflicts_with_all = ["structured", "pattern"])]
    pub global: bool,
    /// Remove whole structures instead of single weights
    #[arg(long, value_enum, conflicts_with = "pattern")]
    pub structured: Option<StructuredArg>,
    /// Channel norm for --structured channels
    #[arg(long, value_enum, default_value = "l1")]
    pub norm: NormArg,
    /// N:M semi-structured sparsity (N kept of every M along the
    /// reduction axis), e.g. 2:4
    #[arg(long, value_name = "N:M")]
    pub pattern: Option<String>,
    /// How weights are scored
    #[arg(long, value_enum, default_value = "magnitude")]
    pub score: ScoreArg,
    #[command(flatten)]
    pub data: crate::common::DataArgs,
    /// METRIC=VALUE every output must meet (cosine, top1, sqnr-db: at
    /// least; max-abs: at most); repeatable
    #[arg(long, value_name = "METRIC=VALUE")]
    pub tolerance: Vec<Tolerance>,
    /// Write the report as JSON
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Draw the sweep (metric and latency against sparsity) as SVG
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Threads of the cpu backend that runs the models (default: every core)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// `FROM:TO:STEP` → the levels, inclusive of TO (within rounding).
fn parse_sweep(s: &str) -> Result<Vec<f64>, String> {
    let parts: Vec<f64> = s
        .split(':')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("--sweep `{s}`: expected FROM:TO:STEP"))?;
    let [from, to, step] = parts[..] else {
        return Err(format!("--sweep `{s}`: expected FROM:TO:STEP"));
    };
    if step.is_nan() || step <= 0.0 || from.is_nan() || from > to || from < 0.0 || to >= 1.0 {
        return Err(format!(
            "--sweep `{s}`: need 0 <= FROM <= TO < 1 and STEP > 0"
        ));
    }
    let n = ((to - from) / step + 1e-9).floor() as usize;
    if n > 1000 {
        return Err(format!("--sweep `{s}`: {n} levels is too many"));
    }
    // Rounded to the step's decimals, so 0.1:0.9:0.1 gives 0.3, not
    // 0.30000000000000004.
    Ok((0..=n)
        .map(|k| ((from + k as f64 * step) * 1e9).round() / 1e9)
        .collect())
}

fn parse_pattern(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("--pattern `{s}`: expected N:M with 0 < N < M, e.g. 2:4");
    let (n, m) = s.split_once(':').ok_or_else(bad)?;
    let (n, m): (usize, usize) = (
        n.trim().parse().map_err(|_| bad())?,
        m.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || n >= m {
        return Err(bad());
    }
    Ok((n, m))
}

pub fn prune(args: &PruneArgs) -> Result<(), Failure> {
    use std::io::IsTerminal;
    let structure = match (&args.pattern, args.structured) {
        (Some(p), _) => {
            let (n, m) = parse_pattern(p)?;
            Structure::Pattern { n, m }
        }
        (None, Some(StructuredArg::Channels)) => Structure::Channels {
            l1: matches!(args.norm, NormArg::L1),
        },
        (None, None) => Structure::Unstructured {
            global: args.global,
        },
    };
    let levels = match (&args.sweep, args.sparsity) {
        (Some(s), _) => parse_sweep(s)?,
        (None, Some(s)) if (0.0..1.0).contains(&s) => vec![s],
        (None, Some(s)) => return Err(format!("--sparsity {s} is not in [0, 1)").into()),
        (None, None) if args.pattern.is_some() => vec![0.5],
        (None, None) => {
            return Err("give --sparsity S, --sweep FROM:TO:STEP or --pattern N:M"
                .to_string()
                .into())
        }
    };
    if args.sweep.is_some() && args.tolerance.is_empty() {
        return Err("--sweep needs --tolerance METRIC=VALUE to choose a level"
            .to_string()
            .into());
    }
    let (calibration, eval) = args.data.sets(&args.model)?;
    let opts = PruneOptions {
        structure,
        score: match args.score {
            ScoreArg::Magnitude => Score::Magnitude,
            ScoreArg::Activation => Score::Activation,
        },
        levels,
        tolerances: args.tolerance.clone(),
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        progress: std::io::stderr().is_terminal(),
    };
    let p = kiln_compiler::compress::prune(&args.model, &calibration, &eval, &opts)?;
    std::fs::write(&args.output, p.to_bytes())
        .map_err(|e| format!("{}: {e}", args.output.display()))?;
    let r = &p.report;
    crate::common::write_output(None, &r.table())?;
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        if r.sweep.is_empty() {
            return Err("--plot draws a sweep: give --sweep".to_string().into());
        }
        std::fs::write(path, r.plot_svg()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if r.tolerance_met == Some(false) {
        return Err(
            "no level meets the tolerance; the least sparse one was written"
                .to_string()
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_and_patterns_parse() {
        assert_eq!(
            parse_sweep("0.1:0.5:0.1").unwrap(),
            vec![0.1, 0.2, 0.3, 0.4, 0.5]
        );
        assert!(parse_sweep("0.5:0.1:0.1").is_err());
        assert!(parse_sweep("0.1:1.0:0.1").is_err());
        assert!(parse_sweep("0.1:0.5:0").is_err());
        assert!(parse_sweep("0.1:0.5").is_err());
        assert_eq!(parse_pattern("2:4").unwrap(), (2, 4));
        assert!(parse_pattern("4:2").is_err());
        assert!(parse_pattern("0:4").is_err());
    }
}
