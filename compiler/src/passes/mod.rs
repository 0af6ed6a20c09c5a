//! The pass manager. A pass is a named function from module to
//! changed/unchanged (XLA's HLO pass shape), one pass per file; pipelines
//! are lists of passes and fixed-point groups, built per optimization level.
//!
//! - `-O0`: nothing (the imported module).
//! - `-O1`: QDQ folding (quantized models to integer ops and 8-bit
//!   tables), then cleanup
//!   to a fixed point: constant folding, simplification,
//!   CSE, DCE.
//! - `-O2` (default): cleanup, then fusion, then cleanup again.
//!
//! A target adds its lowering passes after the level's pipeline: rewrites
//! its code generator needs, done as IR passes so that dumps show the graph
//! that runs. Target-independent ones (`hoist-casts`) are here; the rest
//! live with their target (`lower/cpu/epilogue.rs`), and
//! `crate::compile` assembles each target's pipeline (`kiln dump
//! --pipeline cpu|gpu`) and looks passes up by name (`--passes a,b`).
//!
//! Memory planning is an analysis of the final module, not a rewrite; it
//! lives in [`memory_plan`] and is run by whoever lowers the module.

pub mod constant_fold;
pub mod cse;
pub mod dce;
pub mod einsum;
pub mod expand_composites;
pub mod fold_qdq;
pub mod fold_weight_dq;
pub mod fuse;
pub mod hoist_casts;
pub mod memory_plan;
pub mod qdq_lookup;
pub mod resolve_pads;
pub mod sequence_split;
pub mod simplify;
pub mod trim_conv_taps;
pub mod widen_f16;

use std::time::{Duration, Instant};

use kiln_ir::{Module, Node, Region, ValueId};

/// What a node expands to: the nodes computing its results, and the
/// constants they add.
pub(crate) type Expansion = (Vec<Node>, Vec<ValueId>);

/// Replace each node of `r` and its nested regions that `expand` expands
/// (the nodes computing its results, and the constants they add) and
/// keep the others; whether anything was replaced. The loop of the
/// passes that rewrite one node at a time.
pub(crate) fn expand_nodes(
    m: &mut Module,
    r: &mut Region,
    expand: &mut dyn FnMut(&mut Module, &Node) -> Option<Expansion>,
) -> bool {
    let mut changed = false;
    for n in &mut r.nodes {
        for sub in n.regions_mut() {
            changed |= expand_nodes(m, sub, expand);
        }
    }
    let nodes = std::mem::take(&mut r.nodes);
    for n in nodes {
        match expand(m, &n) {
            Some((new_nodes, consts)) => {
                r.nodes.extend(new_nodes);
                r.constants.extend(consts);
                changed = true;
            }
            None => r.nodes.push(n),
        }
    }
    changed
}

/// What a pass does: rewrite the module, say whether anything changed.
pub type PassFn = fn(&mut Module) -> Result<bool, String>;

/// A named pass.
#[derive(Clone, Copy)]
pub struct Pass {
    pub name: &'static str,
    pub run: PassFn,
    /// One line on what it does (for `--help` texts and docs).
    pub summary: &'static str,
}

/// Every pass, by name.
pub const PASSES: &[Pass] = &[
    Pass {
        name: "constant-fold",
        run: constant_fold::run,
        summary: "evaluate ops whose operands are all constants (size-capped)",
    },
    Pass {
        name: "simplify",
        run: simplify::run,
        summary: "algebraic identities, chain folding, BatchNorm folding, pattern recognition",
    },
    Pass {
        name: "sequence-split",
        run: sequence_split::run,
        summary: "elements of a statically split sequence (SequenceAt of SplitToSequence) to slices",
    },
    Pass {
        name: "einsum",
        run: einsum::run,
        summary: "Einsum of static shapes to ReduceSum, Transpose, Reshape and MatMul",
    },
    Pass {
        name: "expand-composites",
        run: expand_composites::run,
        summary: "ops ONNX defines as functions (Attention, RMSNormalization, RotaryEmbedding, Swish) to the ops they are made of",
    },
    Pass {
        name: "trim-conv-taps",
        run: trim_conv_taps::run,
        summary: "drop conv kernel taps that read only padding (dilated convs on small maps)",
    },
    Pass {
        name: "cse",
        run: cse::run,
        summary: "merge identical nodes (regions included)",
    },
    Pass {
        name: "dce",
        run: dce::run,
        summary: "remove nodes and constants nothing uses",
    },
    Pass {
        name: "fold-qdq",
        run: fold_qdq::run,
        summary:
            "QDQ-form quantized Conv, MatMul and movement ops to integer ops (weights stay 8-bit)",
    },
    Pass {
        name: "qdq-lookup",
        run: qdq_lookup::run,
        summary: "functions of one 8-bit tensor in QDQ form (activations, requantizing Concat inputs) to 256-entry tables",
    },
    Pass {
        name: "fold-weight-dq",
        run: fold_weight_dq::run,
        summary: "products of DequantizeLinear'd constant 8/4-bit weights to kiln.DequantMatMul (weights stay packed)",
    },
    Pass {
        name: "fuse",
        run: fuse::run,
        summary: "group elementwise chains, reductions and epilogues into fusion regions",
    },
    Pass {
        name: "hoist-casts",
        run: hoist_casts::run,
        summary:
            "move integer-to-f32 Casts out of fusion bodies (lowering: one element type per body)",
    },
    Pass {
        name: "widen-f16",
        run: widen_f16::run,
        summary: "compute an f16 model in f32, f16 only at its inputs and outputs (cpu preparation)",
    },
    Pass {
        name: "resolve-pads",
        run: resolve_pads::run,
        summary:
            "auto_pad of convs and pools to explicit pads once input sizes are static (lowering)",
    },
];

pub fn pass(name: &str) -> Option<&'static Pass> {
    PASSES.iter().find(|p| p.name == name)
}

/// A step of a pipeline.
#[derive(Clone)]
pub enum Step {
    Run(&'static Pass),
    /// Run the steps again until none changes anything (at most `max` rounds).
    FixedPoint {
        steps: Vec<Step>,
        max: usize,
    },
}

fn p(name: &str) -> Step {
    // Names here are the constants above; a typo is a programming error
    // caught by the pipeline test.
    Step::Run(pass(name).unwrap_or(&PASSES[0]))
}

/// The pipeline of an optimization level (0, 1 or 2; above 2 is 2).
pub fn pipeline(level: u8) -> Vec<Step> {
    let cleanup = Step::FixedPoint {
        steps: vec![
            p("constant-fold"),
            p("sequence-split"),
            p("einsum"),
            p("expand-composites"),
            p("simplify"),
            p("trim-conv-taps"),
            p("cse"),
            p("dce"),
        ],
        max: 8,
    };
    // QDQ folding first: constant folding would turn the quantized
    // weights it folds into f32 copies.
    match level {
        0 => vec![],
        1 => vec![p("fold-qdq"), p("qdq-lookup"), p("fold-weight-dq"), cleanup],
        _ => vec![
            p("fold-qdq"),
            p("qdq-lookup"),
            p("fold-weight-dq"),
            cleanup.clone(),
            p("fuse"),
            cleanup,
        ],
    }
}

/// One pass execution, as observers see it.
pub struct PassEvent<'a> {
    /// 1-based position of this execution in the run.
    pub index: usize,
    pub name: &'static str,
    pub changed: bool,
    pub elapsed: Duration,
    pub module: &'a Module,
}

/// How to run a pipeline.
pub struct RunOptions<'a> {
    /// Verify the module after every pass (always on in debug builds).
    pub verify_each: bool,
    /// Called after every pass execution.
    pub observer: Option<&'a mut dyn FnMut(&PassEvent)>,
}

// Not derivable: verification defaults on in debug builds only.
#[allow(clippy::derivable_impls)]
impl Default for RunOptions<'_> {
    fn default() -> Self {
        RunOptions {
            verify_each: cfg!(debug_assertions),
            observer: None,
        }
    }
}

/// A pass failed, or left the module invalid.
#[derive(Debug, Clone, thiserror::Error)]
#[error("pass `{pass}`: {message}")]
pub struct PassError {
    pub pass: &'static str,
    pub message: String,
}

/// Run `steps` on `m`; returns whether anything changed.
pub fn run_pipeline(
    m: &mut Module,
    steps: &[Step],
    opts: &mut RunOptions,
) -> Result<bool, PassError> {
    let mut index = 0;
    run_steps(m, steps, opts, &mut index)
}

fn run_steps(
    m: &mut Module,
    steps: &[Step],
    opts: &mut RunOptions,
    index: &mut usize,
) -> Result<bool, PassError> {
    let mut any = false;
    for s in steps {
        match s {
            Step::Run(pass) => any |= run_one(m, pass, opts, index)?,
            Step::FixedPoint { steps, max } => {
                for _ in 0..*max {
                    if !run_steps(m, steps, opts, index)? {
                        break;
                    }
                    any = true;
                }
            }
        }
    }
    Ok(any)
}

fn run_one(
    m: &mut Module,
    pass: &'static Pass,
    opts: &mut RunOptions,
    index: &mut usize,
) -> Result<bool, PassError> {
    let start = Instant::now();
    let changed = (pass.run)(m).map_err(|message| PassError {
        pass: pass.name,
        message,
    })?;
    if changed {
        m.release_unlisted_constants();
    }
    let elapsed = start.elapsed();
    if opts.verify_each && changed {
        kiln_ir::verify::verify(m).map_err(|e| PassError {
            pass: pass.name,
            message: format!("left the module invalid: {e}"),
        })?;
    }
    *index += 1;
    if let Some(obs) = opts.observer.as_mut() {
        obs(&PassEvent {
            index: *index,
            name: pass.name,
            changed,
            elapsed,
            module: m,
        });
    }
    Ok(changed)
}

/// Run one of the optimizer's passes by name and verify the result
/// (tests; `crate::compile::run_named` also knows the targets' passes).
pub fn run_named(m: &mut Module, name: &str) -> Result<bool, String> {
    let pass = pass(name)
        .ok_or_else(|| format!("unknown pass `{name}`; passes: {}", names().join(", ")))?;
    run_verified(m, pass)
}

/// Run `pass` once and verify the result.
pub fn run_verified(m: &mut Module, pass: &Pass) -> Result<bool, String> {
    let changed = (pass.run)(m)?;
    kiln_ir::verify::verify(m)
        .map_err(|e| format!("pass `{}` left the module invalid: {e}", pass.name))?;
    Ok(changed)
}

pub fn names() -> Vec<&'static str> {
    PASSES.iter().map(|p| p.name).collect()
}

/// Optimize at a level with default options, leaving out the passes
/// named in `skip`.
pub fn optimize(m: &mut Module, level: u8, skip: &[&str]) -> Result<bool, PassError> {
    run_pipeline(
        m,
        &without(pipeline(level), skip),
        &mut RunOptions::default(),
    )
}

/// `steps` without the passes named in `skip` (a target leaves out the
/// rewrites its backend has no kernels for).
pub fn without(steps: Vec<Step>, skip: &[&str]) -> Vec<Step> {
    steps
        .into_iter()
        .filter_map(|s| match s {
            Step::Run(p) if skip.contains(&p.name) => None,
            Step::FixedPoint { steps, max } => Some(Step::FixedPoint {
                steps: without(steps, skip),
                max,
            }),
            s => Some(s),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipelines_name_real_passes() {
        fn check(steps: &[Step]) {
            for s in steps {
                match s {
                    Step::Run(p) => assert!(pass(p.name).is_some()),
                    Step::FixedPoint { steps, .. } => check(steps),
                }
            }
        }
        for level in 0..=2 {
            check(&pipeline(level));
        }
        for name in [
            "constant-fold",
            "simplify",
            "cse",
            "dce",
            "fold-qdq",
            "fuse",
            "hoist-casts",
        ] {
            assert!(pass(name).is_some(), "{name}");
        }
    }
}
