//! Control flow on the CPU backend: a node with regions (`If`, `Loop`,
//! `Scan`, `SequenceMap`) whose regions run as compiled sub-executables.
//!
//! What the op means (trip counts, conditions, carried values, scan outputs
//! stacked) stays in the interpreter's control-flow kernel: one place for
//! each fact about an op. This step is the [`KernelHost`] that kernel runs
//! its regions through, and it runs each region as an executable compiled
//! from it (ONNX Runtime's subgraph sessions, XLA's while/conditional
//! computations):
//! - once per distinct set of input shapes, because a loop's carried
//!   values may change shape from one iteration to the next;
//! - after [`MAX_SHAPES`] shapes, once more for any shapes (what inference
//!   leaves dynamic then runs on the interpreter inside it);
//! - on the interpreter where a compile fails: a branch whose shapes only
//!   check for inputs it never sees must not fail the model.
//!
//! Regions read values of the enclosing regions; the compiler made those
//! graph inputs of the region's module (the captures, after the region's
//! own inputs), so a run passes them in from the environment, shared, not
//! copied.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use kiln_ir::{Module, Node, Region, ValueId};

use crate::executable::Executable;
use crate::interp::kernels::{self, KernelFn, KernelHost};
use crate::interp::{Env, InterpError, InterpExecutable, Interpreter};
use crate::value::Value;

/// Distinct input shapes a region is compiled for before it is compiled
/// once for any shapes.
pub const MAX_SHAPES: usize = 8;

/// Compiles a region's module for the given input shapes (by graph-input
/// name; an empty map: for any shapes).
pub type RegionCompiler = Arc<
    dyn Fn(&Module, &HashMap<String, Vec<usize>>) -> Result<Box<dyn Executable>, String>
        + Send
        + Sync,
>;

/// The shapes of a run's region inputs (`None`: not a tensor), or `None`
/// for the executable compiled for any shapes.
type Signature = Option<Vec<Option<Vec<usize>>>>;

enum Compiled {
    Exe(Box<dyn Executable>),
    /// Why the compile failed: runs with this signature use the
    /// interpreter.
    Failed(String),
}

/// One region, ready to run.
pub struct RegionProgram {
    /// The region as a module of its own: its inputs, then the captures,
    /// are the graph inputs.
    module: Arc<Module>,
    /// The enclosing regions' values the region reads, in the order of
    /// the module's trailing graph inputs.
    captures: Vec<ValueId>,
    compile: RegionCompiler,
    compiled: Mutex<Vec<(Signature, Arc<Compiled>)>>,
    fallback: OnceLock<InterpExecutable>,
    limits: kiln_ir::Limits,
}

impl RegionProgram {
    /// A region whose module is `module` (graph inputs: the region's
    /// inputs, then `captures`).
    pub fn new(
        module: Module,
        captures: Vec<ValueId>,
        compile: RegionCompiler,
        limits: kiln_ir::Limits,
    ) -> RegionProgram {
        RegionProgram {
            module: Arc::new(module),
            captures,
            compile,
            compiled: Mutex::new(vec![]),
            fallback: OnceLock::new(),
            limits,
        }
    }

    /// Compile now for these input shapes (all graph inputs' static
    /// shapes, in order; `None` for non-tensors), so the first run does
    /// not; a failure is remembered, and runs of those shapes use the
    /// interpreter.
    pub fn precompile(&self, shapes: Vec<Option<Vec<usize>>>) {
        self.executable(Some(shapes));
    }

    /// The first compiled executable's report summary, or why the region
    /// runs on the interpreter.
    pub fn summary(&self) -> String {
        let compiled = self
            .compiled
            .lock()
            .map(|c| c.first().map(|(_, c)| c.clone()));
        match compiled.ok().flatten().as_deref() {
            Some(Compiled::Exe(e)) => {
                let report = e.report();
                let last = report.lines().last().unwrap_or_default();
                last.trim_start_matches("# ").to_string()
            }
            Some(Compiled::Failed(why)) => format!("on the interpreter: {why}"),
            None => "compiled at its first run".to_string(),
        }
    }

    /// The first compiled executable's full report, if there is one.
    pub fn report(&self) -> Option<String> {
        let compiled = self.compiled.lock().ok()?.first().map(|(_, c)| c.clone())?;
        match &*compiled {
            Compiled::Exe(e) => Some(e.report()),
            Compiled::Failed(_) => None,
        }
    }

    fn executable(&self, sig: Signature) -> Arc<Compiled> {
        let Ok(mut cache) = self.compiled.lock() else {
            return Arc::new(Compiled::Failed("internal: a poisoned cache".into()));
        };
        if let Some((_, c)) = cache.iter().find(|(s, _)| *s == sig) {
            return c.clone();
        }
        let specialized = cache.iter().filter(|(s, _)| s.is_some()).count();
        let sig = if specialized >= MAX_SHAPES { None } else { sig };
        if let Some((_, c)) = cache.iter().find(|(s, _)| *s == sig) {
            return c.clone();
        }
        let shapes: HashMap<String, Vec<usize>> = match &sig {
            Some(shapes) => self
                .module
                .body
                .inputs
                .iter()
                .zip(shapes)
                .filter_map(|(&i, s)| Some((self.module.name(i).to_string(), s.clone()?)))
                .collect(),
            None => HashMap::new(),
        };
        let compiled = Arc::new(match (self.compile)(&self.module, &shapes) {
            Ok(e) => Compiled::Exe(e),
            Err(why) => Compiled::Failed(why),
        });
        cache.push((sig, compiled.clone()));
        compiled
    }

    /// Run the region on `args` (its inputs), reading its captures from
    /// `env`.
    fn run(&self, env: &Env, args: Vec<Value>) -> Result<Vec<Value>, InterpError> {
        let inputs = &self.module.body.inputs;
        if args.len() + self.captures.len() != inputs.len() {
            return Err(InterpError::new(
                "region",
                format!(
                    "takes {} inputs, got {}",
                    inputs.len() - self.captures.len(),
                    args.len()
                ),
            ));
        }
        let mut values = args;
        let capture_inputs = &inputs[inputs.len() - self.captures.len()..];
        for (&c, &input) in self.captures.iter().zip(capture_inputs) {
            let v = env.get(c).cloned().ok_or_else(|| {
                InterpError::new(
                    "region",
                    format!("captured value %{} has no value", self.module.name(input)),
                )
            })?;
            values.push(v);
        }
        let sig = values
            .iter()
            .map(|v| v.as_tensor().map(|t| t.shape.clone()))
            .collect();
        let compiled = self.executable(Some(sig));
        let named: HashMap<String, Value> = inputs
            .iter()
            .map(|&i| self.module.name(i).to_string())
            .zip(values)
            .collect();
        match &*compiled {
            Compiled::Exe(e) => e.run(&named),
            Compiled::Failed(_) => self
                .fallback
                .get_or_init(|| {
                    InterpExecutable::new((*self.module).clone()).with_limits(self.limits)
                })
                .run(&named),
        }
    }
}

/// A node with regions, each a [`RegionProgram`].
pub struct ControlStep {
    /// Per region of the node, in `Node::regions` order.
    pub regions: Vec<RegionProgram>,
}

impl ControlStep {
    /// Values of enclosing regions the node's regions read.
    pub fn captures(&self) -> impl Iterator<Item = ValueId> + '_ {
        self.regions.iter().flat_map(|r| r.captures.iter().copied())
    }

    /// What the step runs, for reports: each region's summary.
    pub fn describe(&self, node: &Node) -> String {
        let parts: Vec<String> = node
            .regions()
            .zip(&self.regions)
            .map(|((name, _), p)| format!("{name}: {}", p.summary()))
            .collect();
        format!("{} with compiled regions ({})", node.op, parts.join("; "))
    }

    /// The regions' own reports under a line naming the node and region,
    /// every line a `#` comment (tools read a report's `native`/`interp`
    /// lines as this executable's steps).
    pub fn nested_report(&self, m: &Module, node: &Node) -> String {
        let mut out = String::new();
        for ((name, _), p) in node.regions().zip(&self.regions) {
            let Some(report) = p.report() else { continue };
            let result = node.outputs.first().map(|&o| m.name(o)).unwrap_or("");
            out.push_str(&format!("# region %{result} ({}) {name}:\n", node.op));
            for line in report.lines() {
                out.push_str(&format!("#   {line}\n"));
            }
        }
        out
    }

    /// Run `node` (whose step this is) with the interpreter's kernel for
    /// its op, its regions compiled.
    pub fn run(&self, interp: &Interpreter, node: &Node, env: &mut Env) -> Result<(), InterpError> {
        let host = Host {
            module: interp.module(),
            node,
            step: self,
        };
        interp.run_node_hosted(node, env, &host)
    }
}

/// The kernel's view of a control step.
struct Host<'a> {
    module: &'a Module,
    node: &'a Node,
    step: &'a ControlStep,
}

impl KernelHost for Host<'_> {
    fn module(&self) -> &Module {
        self.module
    }

    fn kernel(&self, op: &str) -> Option<KernelFn> {
        kernels::lookup(op)
    }

    fn run_region(
        &self,
        r: &Region,
        env: &mut Env,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, InterpError> {
        let program = self
            .node
            .regions()
            .zip(&self.step.regions)
            .find(|((_, region), _)| std::ptr::eq(*region, r))
            .map(|(_, p)| p)
            .ok_or_else(|| InterpError::new(self.node.describe(), "internal: unknown region"))?;
        program.run(env, args)
    }
}
