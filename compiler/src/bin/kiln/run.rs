//! `kiln run`: run a model on inputs from files and write its outputs.

use std::path::PathBuf;

use crate::common::{read_inputs, Backend, Failure, TargetCpuArg};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The model: a .onnx file, a .kir file, or a folder with model.onnx
    pub model: PathBuf,
    /// A graph input: NAME=FILE, FILE a TensorProto .pb or a .npy
    #[arg(long = "input", value_name = "NAME=FILE")]
    pub inputs: Vec<String>,
    /// Where to write the outputs, one NAME.pb per graph output
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Which backend executes the model
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: Backend,
    /// Threads the cpu backend's kernels use (default: every core)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Instruction set of the cpu backend's generated code
    #[arg(long, value_enum, default_value = "native")]
    pub target_cpu: TargetCpuArg,
}

pub fn run(args: &RunArgs) -> Result<(), Failure> {
    let m = crate::common::load_model(&args.model)?;
    let given = read_inputs(&m, &args.inputs)?;
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
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let target = args.backend.target(2, threads, args.target_cpu);
    let shapes = kiln_compiler::lower::shapes_of(&given);
    let names: Vec<String> = m
        .body
        .outputs
        .iter()
        .map(|&o| m.name(o).to_string())
        .collect();
    // Handing the module over lets weights be freed as kernels pack them.
    let outputs = kiln_compiler::compile::compile_owned(m, &target, &shapes)?
        .run(&given)
        .map_err(|e| e.to_string())?;
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for (name, v) in names.iter().zip(&outputs) {
        let name = name.as_str();
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
