//! The interface every backend's compiled module offers: run it, run it
//! timing each step, and say how each step runs. The compiler's
//! `compile(module, target, shapes)` returns a `Box<dyn Executable>`; the
//! command line, the conformance runner and the tests use only this trait,
//! so a backend plugs in by implementing it.

use std::collections::HashMap;
use std::time::Duration;

use kiln_ir::Module;

use crate::interp::error::InterpError;
use crate::value::Value;

/// Per-step wall time of one run, by step index.
pub type StepTimes = Vec<Duration>;

/// Where a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Code the backend generated or a kernel of its library.
    Native,
    /// The reference interpreter's kernel (a fallback).
    Interp,
}

/// One step of an executable, as reports and profiles see it.
#[derive(Clone, Debug)]
pub struct StepInfo {
    /// The top-level node of [`Executable::module`] the step runs.
    pub node: usize,
    pub placement: Placement,
    /// What runs ("conv 3x3 3→64 ch + Relu"), or why the node fell back.
    pub what: String,
    /// Floating-point operations per run (0 when not counted).
    pub flops: f64,
    /// Bytes the step reads and writes per run, where the backend knows
    /// better than its operands' and results' sizes (a data-movement step
    /// whose results the memory plan put on its operands' bytes moves
    /// less, or nothing); `None`: those sizes.
    pub bytes: Option<f64>,
}

/// A module compiled for one target and one set of input shapes.
/// Immutable once built: `run` may be called from several threads.
pub trait Executable: Send + Sync {
    /// The backend's name as the command line spells it (`cpu`, `interp`).
    fn backend(&self) -> &'static str;

    /// The module as it runs (specialized and optimized).
    fn module(&self) -> &Module;

    /// Threads the executable's kernels use.
    fn threads(&self) -> usize;

    /// Run on inputs given by graph-input name; returns the graph outputs.
    fn run(&self, inputs: &HashMap<String, Value>) -> Result<Vec<Value>, InterpError>;

    /// [`Executable::run`], also timing every step into `times`.
    fn run_profiled(
        &self,
        inputs: &HashMap<String, Value>,
        times: &mut StepTimes,
    ) -> Result<Vec<Value>, InterpError>;

    /// The steps in run order.
    fn steps(&self) -> Vec<StepInfo>;

    /// One line per step saying how it runs, then one summary line that
    /// tools read (`# N steps: A native, B on the interpreter` on the
    /// cpu backend).
    fn report(&self) -> String;

    /// Where a run's intermediates live.
    fn memory(&self) -> MemoryUse {
        MemoryUse::default()
    }

    /// The device adapter a GPU executable runs on (`None` on the host).
    fn adapter(&self) -> Option<String> {
        None
    }

    /// Transfers between host and device in one run, graph inputs and
    /// outputs included (`None` on the host).
    fn transfers(&self) -> Option<usize> {
        None
    }
}

/// Where an executable keeps a run's intermediates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryUse {
    /// Bytes of the arena every run uses (the memory plan's size; 0 where
    /// the backend allocates each result on its own).
    pub arena_bytes: usize,
    /// Intermediates placed in the arena.
    pub arena_values: usize,
    /// Intermediates a run allocates outside the arena (by name): values
    /// the plan could not place (sequences, strings). Graph outputs are
    /// not intermediates.
    pub unplanned: Vec<String>,
}

/// The step lines of a report: `native  %name (Op): what` or
/// `interp  %name (Op): why`, and the fallback count by op.
pub fn step_lines(
    m: &Module,
    steps: &[StepInfo],
) -> (String, std::collections::BTreeMap<String, usize>) {
    let mut out = String::new();
    let mut fallbacks: std::collections::BTreeMap<String, usize> = Default::default();
    for s in steps {
        let n = &m.body.nodes[s.node];
        let name = n.outputs.first().map(|&o| m.name(o)).unwrap_or("?");
        let tag = match s.placement {
            Placement::Native => "native",
            Placement::Interp => {
                *fallbacks.entry(n.op.clone()).or_default() += 1;
                "interp"
            }
        };
        out.push_str(&format!("{tag}  %{name} ({}): {}\n", n.op, s.what));
    }
    (out, fallbacks)
}

/// A report whose summary counts native and interpreted steps:
/// `# N steps: A native, B on the interpreter (Op xK, ...)`.
pub fn native_interp_report(m: &Module, steps: &[StepInfo]) -> String {
    let (mut out, fallbacks) = step_lines(m, steps);
    let total: usize = fallbacks.values().sum();
    out.push_str(&format!(
        "# {} steps: {} native, {total} on the interpreter",
        steps.len(),
        steps.len() - total
    ));
    if total > 0 {
        let list: Vec<String> = fallbacks
            .iter()
            .map(|(op, k)| format!("{op} x{k}"))
            .collect();
        out.push_str(&format!(" ({})", list.join(", ")));
    }
    out.push('\n');
    out
}
