//! The one compile entry point: a module, a [`Target`], the input shapes
//! → a [`kiln_runtime::Executable`]. Every command of the `kiln` binary
//! and the conformance runner choose their backend here and nowhere else;
//! a new backend is a new `Target` variant and one arm of [`compile`].
//!
//! What a compile does for a native target (XLA's shape):
//! 1. specialize the module to the given input shapes ([`crate::lower::specialize`]);
//! 2. run the level's optimization pipeline, inferring shapes again
//!    between rounds ([`crate::lower::optimize_static`]);
//! 3. run the target's lowering passes
//!    ([`crate::passes::lowering_pipeline`]), IR rewrites that dumps show;
//! 4. build the executable: the backend's lowering table turns each
//!    top-level node into a step.

use std::collections::HashMap;

use kiln_ir::Module;
use kiln_runtime::{Executable, InterpExecutable};

use crate::lower::cpu::CpuOptions;
use crate::lower::gpu::GpuOptions;
use crate::passes::{self, Pass, Step};

/// How to run the reference interpreter as a backend.
#[derive(Clone, Debug)]
pub struct InterpOptions {
    /// The optimization level whose pipeline runs first (0: none).
    pub opt_level: u8,
    /// Verify after every pass (catches a pass that breaks the IR).
    pub verify_each: bool,
    /// What runs may allocate and loop.
    pub limits: kiln_ir::Limits,
}

// Not derivable: verification defaults on in debug builds only.
#[allow(clippy::derivable_impls)]
impl Default for InterpOptions {
    fn default() -> InterpOptions {
        InterpOptions {
            opt_level: 0,
            verify_each: cfg!(debug_assertions),
            limits: Default::default(),
        }
    }
}

/// What to compile for.
#[derive(Clone, Debug)]
pub enum Target {
    /// The reference interpreter on the (optionally optimized) module, at
    /// any input shapes.
    Interp(InterpOptions),
    /// Native CPU code: the kernel library plus Cranelift-generated loops,
    /// specialized to the input shapes.
    Cpu(CpuOptions),
    /// Generated WGSL compute shaders on a wgpu device (CPU steps with
    /// transfers for what they do not cover), specialized to the input
    /// shapes.
    Gpu(GpuOptions),
}

impl Target {
    /// The backend's name as the command line spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Target::Interp(_) => "interp",
            Target::Cpu(_) => "cpu",
            Target::Gpu(_) => "gpu",
        }
    }

    /// The optimization level of the target's pipeline.
    pub fn opt_level(&self) -> u8 {
        match self {
            Target::Interp(o) => o.opt_level,
            Target::Cpu(o) => o.opt_level,
            Target::Gpu(o) => o.opt_level,
        }
    }

    /// Alignment in bytes of buffers in the target's arena: a cache line
    /// (and an AVX-512 vector) on the CPU; 256 for GPU storage-buffer
    /// offsets (WebGPU's default `minStorageBufferOffsetAlignment`).
    pub fn buffer_alignment(&self) -> u64 {
        match self {
            Target::Interp(_) | Target::Cpu(_) => 64,
            Target::Gpu(_) => 256,
        }
    }
}

/// The targets that have a named pipeline.
pub const PIPELINES: &[&str] = &["cpu", "gpu"];

/// Passes that belong to a target's lowering, by name.
const TARGET_PASSES: &[Pass] = &[Pass {
    name: "conv-epilogue",
    run: crate::lower::cpu::epilogue::run,
    summary: "cpu: a fusion's Conv takes the residual Add and Relu its kernel applies in its tiles (kiln.FusedConv)",
}];

/// Any pass by name: the optimizer's and the targets' lowering passes.
pub fn pass(name: &str) -> Option<&'static Pass> {
    passes::pass(name).or_else(|| TARGET_PASSES.iter().find(|p| p.name == name))
}

/// Every pass's name.
pub fn pass_names() -> Vec<&'static str> {
    let mut names = passes::names();
    names.extend(TARGET_PASSES.iter().map(|p| p.name));
    names
}

/// The optimization passes a target leaves out, for a pass whose output
/// the target has no kernel for yet. None at present: the gpu, which
/// left out `qdq-lookup` and `fold-weight-dq`, now has shaders for
/// `kiln.Lookup` and `kiln.DequantMatMul`.
pub fn skipped_passes(_target: &str) -> &'static [&'static str] {
    &[]
}

/// The lowering passes a target runs after its optimization pipeline:
/// rewrites its code generator needs, as IR passes that dumps show.
pub fn lowering_pipeline(target: &str) -> Result<Vec<Step>, String> {
    let run = |name: &str| {
        pass(name)
            .map(Step::Run)
            .ok_or_else(|| format!("internal: no pass `{name}`"))
    };
    match target {
        // Backends see explicit pads; the cpu code generator emits one
        // element type per fusion body; its convs take a residual and a
        // Relu in their tiles.
        "cpu" => Ok(vec![
            run("resolve-pads")?,
            run("hoist-casts")?,
            run("conv-epilogue")?,
        ]),
        // The same for WGSL bodies (the GEMM shader applies a fusion's
        // epilogue itself, so no conv-epilogue rewrite).
        "gpu" => Ok(vec![run("resolve-pads")?, run("hoist-casts")?]),
        other => Err(format!(
            "unknown pipeline `{other}`; pipelines: {}",
            PIPELINES.join(", ")
        )),
    }
}

/// The passes a target runs before its optimization pipeline: the cpu
/// computes f16 models in f32 (its kernels are f32; the interpreter ran
/// every f16 op otherwise), so that optimization and fusion see f32.
pub fn preparation_pipeline(target: &str) -> Vec<Step> {
    match target {
        "cpu" => pass("widen-f16").map(Step::Run).into_iter().collect(),
        _ => vec![],
    }
}

/// A target's whole pipeline at `level`: its preparation, the level's
/// optimization, then its lowering passes (what `kiln dump --pipeline`
/// runs; `compile` runs the same passes, re-inferring shapes between
/// optimization rounds).
pub fn target_pipeline(target: &str, level: u8) -> Result<Vec<Step>, String> {
    let mut steps = preparation_pipeline(target);
    steps.extend(passes::without(
        passes::pipeline(level),
        skipped_passes(target),
    ));
    steps.extend(lowering_pipeline(target)?);
    Ok(steps)
}

/// Run one pass of any kind by name and verify the result (tests, tools).
pub fn run_named(m: &mut Module, name: &str) -> Result<bool, String> {
    let p = pass(name)
        .ok_or_else(|| format!("unknown pass `{name}`; passes: {}", pass_names().join(", ")))?;
    let changed = (p.run)(m)?;
    kiln_ir::verify::verify(m)
        .map_err(|e| format!("pass `{name}` left the module invalid: {e}"))?;
    Ok(changed)
}

/// An explicit list of passes by name (`kiln dump --passes a,b,c`).
pub fn explicit_pipeline(names: &[String]) -> Result<Vec<Step>, String> {
    names
        .iter()
        .map(|n| {
            pass(n)
                .map(Step::Run)
                .ok_or_else(|| format!("unknown pass `{n}`; passes: {}", pass_names().join(", ")))
        })
        .collect()
}

/// Compile `m` for `target`, for inputs of the given shapes (by graph-input
/// name; the interpreter ignores them and runs any shapes).
pub fn compile(
    m: &Module,
    target: &Target,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<Box<dyn Executable>, String> {
    // A clone shares the constants (`Arc`s): cheap.
    compile_owned(m.clone(), target, shapes)
}

/// [`compile`], taking the module: constants that kernels take over (packed
/// weights) are then freed as they are packed, instead of staying alive in
/// the caller's copy. The command line compiles this way.
pub fn compile_owned(
    m: Module,
    target: &Target,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<Box<dyn Executable>, String> {
    match target {
        Target::Interp(o) => {
            let mut m = m;
            let mut opts = passes::RunOptions {
                verify_each: o.verify_each,
                observer: None,
            };
            passes::run_pipeline(&mut m, &passes::pipeline(o.opt_level), &mut opts)
                .map_err(|e| e.to_string())?;
            Ok(Box::new(InterpExecutable::new(m).with_limits(o.limits)))
        }
        Target::Cpu(o) => {
            let s = prepare_owned(m, target, shapes)?;
            let align = target.buffer_alignment();
            let exe = crate::lower::cpu::build(s, o, align, compile_cpu)?;
            Ok(Box::new(exe.with_limits(o.limits)))
        }
        Target::Gpu(o) => {
            let s = prepare_owned(m, target, shapes)?;
            let exe = crate::lower::gpu::build(s, o, target.buffer_alignment())?;
            Ok(Box::new(exe))
        }
    }
}

/// A CPU compile, as control-flow steps compile their regions.
fn compile_cpu(
    m: &Module,
    o: &CpuOptions,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<Box<dyn Executable>, String> {
    compile(m, &Target::Cpu(o.clone()), shapes)
}

/// Steps 1-3 of a native compile: the module exactly as the target's
/// lowering table sees it (what `kiln dump --pipeline` prints for the
/// same shapes).
pub fn prepare(
    m: &Module,
    target: &Target,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<Module, String> {
    prepare_owned(m.clone(), target, shapes)
}

fn prepare_owned(
    m: Module,
    target: &Target,
    shapes: &HashMap<String, Vec<usize>>,
) -> Result<Module, String> {
    let mut s = crate::lower::specialize(&m, shapes)?;
    // The specialized copy shares what it still needs.
    drop(m);
    let prep = preparation_pipeline(target.name());
    if !prep.is_empty() {
        passes::run_pipeline(&mut s, &prep, &mut passes::RunOptions::default())
            .map_err(|e| e.to_string())?;
        kiln_ir::ops::infer_module_with(&mut s, kiln_ir::ops::DeclaredTypes::Replace)
            .map_err(|e| e.to_string())?;
    }
    crate::lower::optimize_static(&mut s, target.opt_level(), skipped_passes(target.name()))?;
    if let Target::Interp(_) = target {
        return Ok(s);
    }
    passes::run_pipeline(
        &mut s,
        &lowering_pipeline(target.name())?,
        &mut passes::RunOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_pipelines_name_real_passes() {
        for t in PIPELINES {
            for level in 0..=2 {
                assert!(target_pipeline(t, level).is_ok(), "{t} -O{level}");
            }
        }
        assert!(target_pipeline("tpu", 2).is_err());
        assert!(explicit_pipeline(&["fuse".into(), "conv-epilogue".into()]).is_ok());
        assert!(explicit_pipeline(&["fuse".into(), "nope".into()]).is_err());
        for name in pass_names() {
            assert!(pass(name).is_some(), "{name}");
        }
    }
}
