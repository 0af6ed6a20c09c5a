//! The CPU executable: a lowered module run as a sequence of steps (XLA's
//! thunk sequence), one per top-level node, in the module's order. A step
//! is a native kernel built at compile time — a planned matmul or
//! convolution from [`super::kernels`], a Cranelift-compiled fusion region
//! from [`super::jit`], or both (an epilogue) — or the interpreter's kernel
//! for the few ops not worth generating (each listed in the backend
//! report).
//!
//! Values flow through the interpreter's environment, so native and
//! interpreted steps mix freely, and a value's buffer is freed after its
//! last use. An executable is immutable once built: `run` may be called
//! from several threads at once; each run gets its own environment and
//! runs its kernels on the executable's thread pool.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_ir::{Module, ValueId};

use crate::executable::{native_interp_report, Executable, Placement, StepInfo, StepTimes};
use crate::interp::{Constants, InterpError, Interpreter};
use crate::tensor::Tensor;
use crate::value::Value;

/// A kernel built for one node with static shapes.
pub trait NativeKernel: Send + Sync {
    /// Compute the node's results from its operands (`None`: omitted).
    fn run(&self, inputs: &[Option<&Tensor>], threads: usize) -> Result<Vec<Tensor>, String>;
}

/// A native step as the lowering built it.
pub struct NativeStep {
    pub kernel: Box<dyn NativeKernel>,
    /// What was generated, for reports ("conv 3x3 + Add+Relu").
    pub what: String,
    /// Floating-point operations per run (0 when not counted).
    pub flops: f64,
    /// Operand indices whose data the kernel holds itself (constant
    /// weights packed at compile time): passed as `None`.
    pub captured: Vec<usize>,
}

impl NativeStep {
    /// A step that holds no operand itself.
    pub fn new(kernel: Box<dyn NativeKernel>, what: impl Into<String>, flops: f64) -> NativeStep {
        NativeStep {
            kernel,
            what: what.into(),
            flops,
            captured: vec![],
        }
    }
}

/// How a step runs.
pub enum StepKind {
    Native(NativeStep),
    /// The interpreter's kernel runs the node; `why` says why it was not
    /// lowered.
    Interp {
        why: String,
    },
}

/// One step: the top-level node at `node` (an index into the module's
/// body).
pub struct Step {
    pub node: usize,
    pub kind: StepKind,
}

/// A module compiled for the CPU, ready to run many times.
pub struct CpuExecutable {
    module: Module,
    consts: Arc<Constants>,
    steps: Vec<Step>,
    /// For each step, the values whose last use it is.
    frees: Vec<Vec<ValueId>>,
    threads: usize,
    pool: rayon::ThreadPool,
}

impl CpuExecutable {
    /// Build an executable from a module whose top-level nodes are covered
    /// by `steps` (in order), running kernels on `threads` threads.
    pub fn new(module: Module, steps: Vec<Step>, threads: usize) -> Result<CpuExecutable, String> {
        if steps.len() != module.body.nodes.len()
            || steps.iter().enumerate().any(|(i, s)| s.node != i)
        {
            return Err("internal: the steps do not cover the module's nodes in order".into());
        }
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kiln-cpu-{i}"))
            .build()
            .map_err(|e| format!("thread pool: {e}"))?;
        let needed = needed_constants(&module, &steps);
        let consts = Arc::new(Interpreter::load_constants_where(&module, |c| {
            needed.contains(&c)
        }));
        let frees = last_uses(&module);
        Ok(CpuExecutable {
            module,
            consts,
            steps,
            frees,
            threads,
            pool,
        })
    }

    /// The steps, with their kernels.
    pub fn step_kinds(&self) -> &[Step] {
        &self.steps
    }

    fn run_inner(
        &self,
        inputs: &HashMap<String, Value>,
        mut times: Option<&mut StepTimes>,
    ) -> Result<Vec<Value>, InterpError> {
        let m = &self.module;
        let interp = Interpreter::with_constants(m, self.consts.clone());
        // Constants a kernel holds itself were not loaded: they stay
        // unbound.
        let mut env = interp.bind_body(inputs)?;
        self.pool.install(|| {
            with_workers_awake(self.threads, || -> Result<(), InterpError> {
                for (k, step) in self.steps.iter().enumerate() {
                    let node = &m.body.nodes[step.node];
                    let start = times.as_ref().map(|_| Instant::now());
                    match &step.kind {
                        StepKind::Interp { .. } => interp.run_node(node, &mut env)?,
                        StepKind::Native(NativeStep {
                            kernel, captured, ..
                        }) => {
                            let fail = |msg: String| InterpError::new(node.describe(), msg);
                            let results = {
                                let mut operands: Vec<Option<&Tensor>> = vec![];
                                for (k, i) in node.inputs.iter().enumerate() {
                                    operands.push(match i {
                                        None => None,
                                        Some(_) if captured.contains(&k) => None,
                                        Some(v) => Some(
                                            env.get(*v).and_then(Value::as_tensor).ok_or_else(
                                                || {
                                                    fail(format!(
                                                        "operand %{} has no tensor",
                                                        m.name(*v)
                                                    ))
                                                },
                                            )?,
                                        ),
                                    });
                                }
                                // A kernel bug must not take the caller down: a
                                // panic becomes this node's error.
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    kernel.run(&operands, self.threads)
                                }))
                                .unwrap_or_else(|p| {
                                    Err(format!("kernel panicked: {}", crate::panic_message(&*p)))
                                })
                                .map_err(fail)?
                            };
                            if results.len() < node.outputs.len() {
                                return Err(fail(format!(
                                    "kernel gave {} results, the node has {}",
                                    results.len(),
                                    node.outputs.len()
                                )));
                            }
                            for (&o, t) in node.outputs.iter().zip(results) {
                                env.set(o, Value::tensor(t));
                            }
                        }
                    }
                    for &v in &self.frees[k] {
                        if let Some(val) = env.take(v) {
                            super::buffers::recycle(val);
                        }
                    }
                    if let (Some(t), Some(s)) = (times.as_mut(), start) {
                        t[k] += s.elapsed();
                    }
                }
                Ok(())
            })
        })?;
        interp.body_outputs(&env)
    }
}

impl Executable for CpuExecutable {
    fn backend(&self) -> &'static str {
        "cpu"
    }

    fn module(&self) -> &Module {
        &self.module
    }

    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, inputs: &HashMap<String, Value>) -> Result<Vec<Value>, InterpError> {
        self.run_inner(inputs, None)
    }

    fn run_profiled(
        &self,
        inputs: &HashMap<String, Value>,
        times: &mut StepTimes,
    ) -> Result<Vec<Value>, InterpError> {
        times.clear();
        times.resize(self.steps.len(), Duration::ZERO);
        self.run_inner(inputs, Some(times))
    }

    fn steps(&self) -> Vec<StepInfo> {
        self.steps
            .iter()
            .map(|s| match &s.kind {
                StepKind::Native(NativeStep { what, flops, .. }) => StepInfo {
                    node: s.node,
                    placement: Placement::Native,
                    what: what.clone(),
                    flops: *flops,
                },
                StepKind::Interp { why } => StepInfo {
                    node: s.node,
                    placement: Placement::Interp,
                    what: why.clone(),
                    flops: 0.0,
                },
            })
            .collect()
    }

    fn report(&self) -> String {
        native_interp_report(&self.module, &Executable::steps(self))
    }
}

/// Runs `f` on this pool thread while the pool's other workers poll for
/// work instead of going to sleep between kernels. A run hands its
/// workers dozens of kernels 0.05-2 ms long; a sleeping worker takes tens
/// of microseconds to wake on this VM (an IPI to an idle vCPU), a fifth of
/// a small kernel (onnxruntime's intra-op threads spin the same way). The
/// pollers run any pending work of the pool (`rayon::yield_now`) and stop
/// when `f` returns.
fn with_workers_awake<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    if threads <= 1 {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| {
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let r = f();
        done.store(true, Ordering::Release);
        r
    })
}

/// Top-level constants some step reads at run time: operands of
/// interpreted nodes (nested regions included), operands of native kernels
/// that did not capture them, graph outputs.
fn needed_constants(m: &Module, steps: &[Step]) -> std::collections::HashSet<ValueId> {
    fn all_uses(r: &kiln_ir::Region, out: &mut std::collections::HashSet<ValueId>) {
        for n in &r.nodes {
            out.extend(n.inputs.iter().flatten());
            for (_, sub) in n.regions() {
                all_uses(sub, out);
            }
        }
        out.extend(&r.outputs);
    }
    let mut needed: std::collections::HashSet<ValueId> = m.body.outputs.iter().copied().collect();
    for s in steps {
        let Some(n) = m.body.nodes.get(s.node) else {
            continue;
        };
        match &s.kind {
            StepKind::Interp { .. } => {
                needed.extend(n.inputs.iter().flatten());
                for (_, sub) in n.regions() {
                    all_uses(sub, &mut needed);
                }
            }
            StepKind::Native(NativeStep { captured, .. }) => {
                for (k, v) in n.inputs.iter().enumerate() {
                    if let (Some(v), false) = (v, captured.contains(&k)) {
                        needed.insert(*v);
                    }
                }
            }
        }
    }
    needed
}

/// For each top-level node, the values (node results and graph inputs,
/// not constants or graph outputs) whose last use is that node (uses in
/// nested regions count as uses by the node holding them).
fn last_uses(m: &Module) -> Vec<Vec<ValueId>> {
    fn uses(r: &kiln_ir::Region, out: &mut Vec<ValueId>) {
        for n in &r.nodes {
            out.extend(n.inputs.iter().flatten());
            for (_, sub) in n.regions() {
                uses(sub, out);
            }
        }
        out.extend(&r.outputs);
    }
    let keep: std::collections::HashSet<ValueId> = m
        .body
        .outputs
        .iter()
        .chain(&m.body.constants)
        .copied()
        .collect();
    let mut last: HashMap<ValueId, usize> = HashMap::new();
    for (k, n) in m.body.nodes.iter().enumerate() {
        let mut u: Vec<ValueId> = n.inputs.iter().flatten().copied().collect();
        for (_, sub) in n.regions() {
            uses(sub, &mut u);
        }
        for v in u {
            last.insert(v, k);
        }
    }
    let mut frees = vec![vec![]; m.body.nodes.len()];
    for (v, k) in last {
        if !keep.contains(&v) {
            frees[k].push(v);
        }
    }
    frees
}
