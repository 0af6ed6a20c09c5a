//! `kiln check`: interpret the model after every pass of a pipeline and
//! name the first pass that moves an output.

use std::path::PathBuf;

use crate::common::{read_inputs, Backend, Failure, TargetCpuArg};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The model: a .onnx file, a .kir file, or a folder with model.onnx
    pub model: PathBuf,
    /// A graph input: NAME=FILE (.pb or .npy). Without any, the folder's
    /// test_data_set_0 is used, else seeded random inputs
    #[arg(long = "input", value_name = "NAME=FILE")]
    pub inputs: Vec<String>,
    /// A symbolic dim's size for random inputs: NAME=VALUE (default 1)
    #[arg(long = "dim", value_name = "NAME=VALUE")]
    pub dims: Vec<String>,
    /// Seed of the random inputs
    #[arg(long, default_value_t = 0)]
    pub seed: u32,
    /// Optimization level whose pipeline is checked
    #[arg(short = 'O', value_name = "LEVEL", default_value_t = 2, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub opt_level: u8,
    /// Relative tolerance
    #[arg(long, default_value_t = 1e-3)]
    pub rtol: f64,
    /// Absolute tolerance
    #[arg(long, default_value_t = 1e-5)]
    pub atol: f64,
    /// Also compile for this backend and compare its outputs with the
    /// interpreter's on the unoptimized module (interp: the passes only)
    #[arg(long, value_enum, default_value_t = Backend::Interp)]
    pub backend: Backend,
}

pub fn check(args: &CheckArgs) -> Result<(), Failure> {
    use kiln_compiler::check::{
        check_pipeline, inputs_from_test_folder, random_inputs, CheckOutcome,
    };
    let mut m = crate::common::load_model(&args.model)?;
    let inputs = if !args.inputs.is_empty() {
        read_inputs(&m, &args.inputs)?
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
        quantized: false,
    };
    let original = m.clone();
    let steps = kiln_compiler::passes::pipeline(args.opt_level);
    match check_pipeline(&mut m, &steps, &inputs, tol)? {
        CheckOutcome::Ok {
            passes_run,
            passes_changed,
        } => {
            println!("ok: {passes_run} pass runs ({passes_changed} changed the module), outputs within tolerance after each");
            if let Backend::Interp = args.backend {
                return Ok(());
            }
            check_backend(&original, &inputs, args, tol)
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

/// The backend's outputs against the interpreter's on the unoptimized
/// module.
fn check_backend(
    m: &kiln_ir::Module,
    inputs: &std::collections::HashMap<String, kiln_runtime::Value>,
    args: &CheckArgs,
    tol: kiln_compiler::conformance::Tolerance,
) -> Result<(), Failure> {
    let want = kiln_runtime::Interpreter::new(m)
        .run(inputs)
        .map_err(|e| format!("the unoptimized module fails: {e}"))?;
    let target = args.backend.target(args.opt_level, 1, TargetCpuArg::Native);
    let shapes = kiln_compiler::lower::shapes_of(inputs);
    let exe = kiln_compiler::compile(m, &target, &shapes)?;
    let got = exe.run(inputs).map_err(|e| e.to_string())?;
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        if let Err(e) = kiln_compiler::conformance::compare(g, w, tol) {
            let name = m.body.outputs.get(k).map(|&o| m.name(o)).unwrap_or("?");
            return Err(Failure(format!(
                "mismatch: the {} backend's output {k} (%{name}) {e}",
                args.backend.name()
            )));
        }
    }
    println!(
        "ok: the {} backend's outputs within tolerance of the interpreter's",
        args.backend.name()
    );
    Ok(())
}
