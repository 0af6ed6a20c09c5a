//! `kiln quantize`: post-training static int8 quantization with an
//! accuracy loop (`kiln_compiler::compress::quantize`), writing a QDQ
//! ONNX model, a table on stdout and optionally a JSON report.

use std::path::PathBuf;

use kiln_compiler::compress::calibrate::Method;
use kiln_compiler::compress::metrics::Tolerance;
use kiln_compiler::compress::weight_only::Format;
use kiln_compiler::compress::QuantizeOptions;

use crate::common::Failure;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MethodArg {
    /// the whole observed range
    Minmax,
    /// the central --percentile of the values
    Percentile,
    /// least KL divergence over a 2048-bin histogram
    Entropy,
    /// least squared quantization error
    Mse,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum WeightsArg {
    /// 4-bit symmetric blocks with one scale per block and column
    Int4,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    Standard,
    Ort,
}

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// The float model: a .onnx file or a folder with model.onnx
    pub model: PathBuf,
    /// Where to write the quantized model
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    #[command(flatten)]
    pub data: crate::common::DataArgs,
    /// How activation ranges are chosen
    #[arg(long, value_enum, default_value = "minmax")]
    pub method: MethodArg,
    /// The share of values --method percentile keeps, in percent
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f64,
    /// One weight scale per tensor instead of per output channel
    #[arg(long)]
    pub per_tensor: bool,
    /// Dynamic quantization for transformers: MatMul/Gemm weights s8,
    /// activations quantized at run time (DynamicQuantizeLinear +
    /// MatMulInteger); needs no calibration ranges
    #[arg(long, conflicts_with = "weights")]
    pub dynamic: bool,
    /// Weight-only quantization of MatMul/Gemm weights (activations stay
    /// f32; no calibration ranges)
    #[arg(long, value_enum)]
    pub weights: Option<WeightsArg>,
    /// Rows per int4 block along the reduction axis (--weights int4)
    /// (a power of two, 16 to 256)
    #[arg(long, default_value_t = 32)]
    pub block_size: usize,
    /// How --weights int4 is written: standard blocked DequantizeLinear
    /// (opset 21), or onnxruntime's com.microsoft.MatMulNBits
    #[arg(long, value_enum, default_value = "standard")]
    pub format: FormatArg,
    /// METRIC=VALUE that every output must meet against the float model
    /// (cosine, top1, sqnr-db: at least; max-abs: at most); repeatable.
    /// The most sensitive nodes stay in float until it holds.
    #[arg(long, value_name = "METRIC=VALUE")]
    pub tolerance: Vec<Tolerance>,
    /// Nodes the accuracy loop may keep in float, at most
    #[arg(long, default_value_t = 10)]
    pub max_trials: usize,
    /// Nodes to keep in float, by name (comma-separated; the list a
    /// previous run printed)
    #[arg(long, value_delimiter = ',', value_name = "NODE,...")]
    pub exclude: Vec<String>,
    /// Measure every node's sensitivity even without --tolerance
    #[arg(long)]
    pub sensitivity: bool,
    /// Write the report as JSON
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,
    /// Threads of the cpu backend that runs the models (default: every core)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

pub fn quantize(args: &QuantizeArgs) -> Result<(), Failure> {
    use std::io::IsTerminal;
    let (calibration, eval) = args.data.sets(&args.model)?;
    if !(args.percentile > 0.0 && args.percentile <= 100.0) {
        return Err(format!("--percentile {} is not in (0, 100]", args.percentile).into());
    }
    if !(args.block_size.is_power_of_two() && (16..=256).contains(&args.block_size)) {
        return Err(format!(
            "--block-size {} is not a power of two from 16 to 256",
            args.block_size
        )
        .into());
    }
    let opts = QuantizeOptions {
        method: match args.method {
            MethodArg::Minmax => Method::MinMax,
            MethodArg::Percentile => Method::Percentile(args.percentile),
            MethodArg::Entropy => Method::Entropy,
            MethodArg::Mse => Method::Mse,
        },
        per_tensor: args.per_tensor,
        dynamic: args.dynamic,
        int4_weights: args.weights.map(|WeightsArg::Int4| {
            (
                args.block_size,
                match args.format {
                    FormatArg::Standard => Format::Standard,
                    FormatArg::Ort => Format::Ort,
                },
            )
        }),
        tolerances: args.tolerance.clone(),
        max_trials: args.max_trials,
        exclude: args.exclude.clone(),
        sensitivity: args.sensitivity,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        progress: std::io::stderr().is_terminal(),
    };
    let q = kiln_compiler::compress::quantize(&args.model, &calibration, &eval, &opts)?;
    std::fs::write(&args.output, q.to_bytes())
        .map_err(|e| format!("{}: {e}", args.output.display()))?;
    let r = &q.report;
    let mut text = r.table();
    if !r.excluded.is_empty() {
        text += &format!("kept in float: --exclude {}\n", r.excluded.join(","));
    }
    crate::common::write_output(None, &text)?;
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if r.tolerance_met == Some(false) {
        return Err(format!(
            "the tolerance does not hold with {} nodes in float (raise --max-trials); the model was written",
            r.excluded.len()
        )
        .into());
    }
    Ok(())
}
