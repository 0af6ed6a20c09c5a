//! The CPU executable: a lowered module run as a sequence of steps (XLA's
//! thunk sequence), one per top-level node, in the memory plan's order. A
//! step is a native kernel built at compile time — a planned matmul or
//! convolution from [`super::kernels`], a Cranelift-compiled fusion region
//! from [`super::jit`], or both (an epilogue) — or the interpreter's kernel
//! for the few ops not worth generating (each listed in the backend
//! report).
//!
//! Intermediates live where the compiler's memory plan put them
//! ([`Layout`]): slices of one arena, reused across values whose lives do
//! not overlap, a pointwise result over its operand where the plan says
//! so. Native kernels read and write those slices through views
//! ([`super::view`]). Graph inputs, constants, graph outputs, the values
//! interpreted steps make or read, and values the plan does not place
//! (sequences, strings) live in the interpreter's environment as before.
//!
//! An executable is immutable once built: `run` may be called from several
//! threads at once; each run takes an arena of its own from a pool (so a
//! steady stream of runs reuses one, its pages already faulted in) and
//! runs its kernels on the executable's thread pool.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln_ir::{ElemType, Module, Region, ValueId};

use crate::executable::{
    native_interp_report, Executable, MemoryUse, Placement, StepInfo, StepTimes,
};
use crate::interp::{Constants, InterpError, Interpreter};
use crate::tensor::{Data, Tensor};
use crate::value::Value;

use super::control::ControlStep;
use super::view::{In, Out};

/// A kernel built for one node with static shapes.
pub trait NativeKernel: Send + Sync {
    /// Compute the node's results into `outputs` (typed and shaped as the
    /// node's results; their contents are stale: write every element) from
    /// `inputs` (`None`: omitted, or captured by the kernel).
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], threads: usize)
        -> Result<(), String>;

    /// Whether a result may be the very memory of an operand of the same
    /// size (the memory plan's in-place steps): the kernel then reads
    /// element i of every operand before it writes element i, through raw
    /// pointers. Kernels that say no never get aliased views.
    fn in_place(&self) -> bool {
        false
    }

    /// For a kernel whose result shapes depend on its operands' values
    /// (NonZero): those shapes, computed from the operands before the
    /// results are allocated. Such a kernel only runs as a per-shape
    /// specialization ([`super::dynamic`]), whose results live outside
    /// the arena; its plan has no result shapes. `None`: the planned
    /// shapes.
    fn sized_results(&self, inputs: &[Option<In>]) -> Option<Result<Vec<Vec<usize>>, String>> {
        let _ = inputs;
        None
    }

    /// Whether [`NativeKernel::sized_results`] gives the result shapes.
    fn sized_by_values(&self) -> bool {
        false
    }

    /// Whether the kernel only moves its operands' bytes into its results
    /// (Reshape, Slice, Split, Concat) and skips what the memory plan
    /// already put in place: a profile then counts only the bytes that
    /// move ([`CpuExecutable::moved_bytes`]).
    fn moves_data(&self) -> bool {
        false
    }
}

/// Where the intermediates of a run live: the memory plan as the
/// executable runs it.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    /// The order the steps run in: indices into the module's body nodes,
    /// each once.
    pub schedule: Vec<usize>,
    /// Byte offset in the arena of each value the plan placed.
    pub offsets: HashMap<ValueId, u64>,
    /// Bytes the arena needs.
    pub arena_bytes: u64,
}

/// A value's place in the arena.
struct Slot {
    offset: usize,
    elem: ElemType,
    shape: Vec<usize>,
}

/// The arena's unit: 64 bytes, 64-byte aligned, so every slot whose offset
/// is a multiple of 64 is aligned for any element type and a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

thread_local! {
    /// Whether this thread is running an executable's steps: a region's
    /// executable then runs inline.
    static IN_RUN: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as running an executable's steps until dropped
/// (so also when a step panics).
struct InRun;

impl InRun {
    fn enter() -> InRun {
        IN_RUN.set(true);
        InRun
    }
}

impl Drop for InRun {
    fn drop(&mut self) {
        IN_RUN.set(false);
    }
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
    /// A node with regions: its op's interpreter kernel, running the
    /// regions as compiled sub-executables. Its operands and results live
    /// in the environment, as an interpreted step's do.
    Control(ControlStep),
    /// A node with dynamic shapes, lowered per shape when it runs
    /// ([`super::dynamic`]). Its operands and results live in the
    /// environment, as an interpreted step's do.
    Dynamic(super::dynamic::DynamicStep),
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
    /// Node indices in run order.
    schedule: Vec<usize>,
    /// For each position of the schedule, the environment values whose
    /// last use it is.
    frees: Vec<Vec<ValueId>>,
    /// Arena slots by value.
    slots: HashMap<ValueId, Slot>,
    /// Constants only native steps read, viewed in place in the module's
    /// bytes (never converted to run-time tensors: a 47 MB embedding
    /// table is held once), with their shapes.
    in_place_consts: HashMap<ValueId, Vec<usize>>,
    arena_bytes: usize,
    /// For each native step's node, its results' types: (element type,
    /// static shape), for results that are not in the arena.
    result_types: HashMap<usize, Vec<(ElemType, Vec<usize>)>>,
    /// Arenas of finished runs, for the next ones.
    arenas: Mutex<Vec<Vec<Line>>>,
    threads: usize,
    /// Made at the first run that is not nested in another's: a region's
    /// executable runs on its parent's threads.
    pool: OnceLock<rayon::ThreadPool>,
    /// What interpreted steps may allocate and loop.
    limits: kiln_ir::Limits,
}

impl CpuExecutable {
    /// Build an executable from a module whose top-level nodes are covered
    /// by `steps` (in order), running kernels on `threads` threads, with
    /// intermediates where `layout` puts them.
    pub fn new(
        mut module: Module,
        steps: Vec<Step>,
        threads: usize,
        layout: Layout,
    ) -> Result<CpuExecutable, String> {
        if steps.len() != module.body.nodes.len()
            || steps.iter().enumerate().any(|(i, s)| s.node != i)
        {
            return Err("internal: the steps do not cover the module's nodes in order".into());
        }
        let mut sorted = layout.schedule.clone();
        sorted.sort_unstable();
        if sorted != (0..steps.len()).collect::<Vec<_>>() {
            return Err("internal: the schedule is not an order of the module's nodes".into());
        }
        let slots = slots_of(&module, &layout)?;
        // Interpreted steps work on tensors in the environment: the layout
        // must keep every value they make or read out of the arena.
        for st in steps
            .iter()
            .filter(|s| !matches!(s.kind, StepKind::Native(_)))
        {
            let n = &module.body.nodes[st.node];
            let mut touched = n.outputs.clone();
            uses_of(n, &mut touched);
            if let Some(v) = touched.iter().find(|v| slots.contains_key(v)) {
                return Err(format!(
                    "internal: %{} is in the arena but {} runs on the interpreter",
                    module.name(*v),
                    n.describe()
                ));
            }
        }
        let mut result_types = HashMap::new();
        for s in &steps {
            if let StepKind::Native(_) = s.kind {
                let n = &module.body.nodes[s.node];
                let types = n
                    .outputs
                    .iter()
                    .map(|&o| static_type(&module, o))
                    .collect::<Result<Vec<_>, _>>()?;
                result_types.insert(s.node, types);
            }
        }
        let threads = threads.max(1);
        let (needed, native_only) = needed_constants(&module, &steps);
        let in_place_consts = viewable_constants(&module, &native_only);
        let consts = Arc::new(Interpreter::take_constants_where(&mut module, |c| {
            needed.contains(&c) && !in_place_consts.contains_key(&c)
        }));
        let frees = last_uses(&module, &layout.schedule, &slots);
        Ok(CpuExecutable {
            module,
            consts,
            steps,
            schedule: layout.schedule,
            frees,
            slots,
            in_place_consts,
            arena_bytes: layout.arena_bytes as usize,
            result_types,
            arenas: Mutex::new(vec![]),
            threads,
            pool: OnceLock::new(),
            limits: kiln_ir::Limits::default(),
        })
    }

    /// Interpreted steps work within `limits` (allocations, loop
    /// iterations); native steps' sizes are fixed when they are compiled.
    pub fn with_limits(mut self, limits: kiln_ir::Limits) -> CpuExecutable {
        self.limits = limits;
        self
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
        let interp = Interpreter::with_constants(m, self.consts.clone()).with_limits(self.limits);
        // Constants a kernel holds itself were not loaded: they stay
        // unbound.
        let mut env = interp.bind_body(inputs)?;
        let mut arena = self.take_arena();
        let base = arena.as_mut_ptr() as usize;
        let mut steps = || -> Result<(), InterpError> {
            for (pos, &k) in self.schedule.iter().enumerate() {
                let step = &self.steps[k];
                let node = &m.body.nodes[step.node];
                let start = times.as_ref().map(|_| Instant::now());
                match &step.kind {
                    // Its operands and results are all in the
                    // environment (checked when the executable was built).
                    StepKind::Interp { .. } => interp.run_node(node, &mut env)?,
                    StepKind::Control(c) => c.run(&interp, node, &mut env)?,
                    StepKind::Dynamic(d) => d.run(&interp, node, &mut env, self.threads)?,
                    StepKind::Native(native) => self
                        .run_native(native, k, base as *mut u8, &mut env)
                        .map_err(|msg| InterpError::new(node.describe(), msg))?,
                }
                for &v in &self.frees[pos] {
                    if let Some(val) = env.take(v) {
                        super::buffers::recycle(val);
                    }
                }
                if let (Some(t), Some(s)) = (times.as_mut(), start) {
                    t[k] += s.elapsed();
                }
            }
            Ok(())
        };
        let result = if IN_RUN.get() {
            // A region's executable, within its parent's run: on the
            // parent's threads, whose workers are already awake.
            steps()
        } else if self.threads <= 1 {
            // One thread: on the caller's, with no pool. Handing the run
            // to a pool's worker and back cost a futex wake and sleep per
            // run, and the scheduler's time showed in every 1-thread
            // profile (about a tenth of a 1-ms model). Every parallel
            // site tests `threads > 1` first, so nothing reaches rayon's
            // global pool from here.
            let _running = InRun::enter();
            steps()
        } else {
            let pool = match self.pool.get() {
                Some(p) => p,
                None => {
                    let p = rayon::ThreadPoolBuilder::new()
                        .num_threads(self.threads)
                        .thread_name(|i| format!("kiln-cpu-{i}"))
                        .build()
                        .map_err(|e| InterpError::new("thread pool", e.to_string()))?;
                    self.pool.get_or_init(|| p)
                }
            };
            pool.install(|| {
                let _running = InRun::enter();
                with_workers_awake(self.threads, steps)
            })
        };
        self.give_back_arena(arena);
        result?;
        interp.body_outputs(&env)
    }

    /// A native step: operands and results as views of the arena (or of
    /// the environment's tensors), results outside the arena allocated
    /// here and stored in the environment.
    fn run_native(
        &self,
        step: &NativeStep,
        k: usize,
        base: *mut u8,
        env: &mut crate::interp::Env,
    ) -> Result<(), String> {
        let m = &self.module;
        let node = &m.body.nodes[k];
        // Results outside the arena: graph outputs, unplanned values.
        let types = self
            .result_types
            .get(&k)
            .ok_or("internal: no result types")?;
        let mut owned: Vec<(usize, Tensor)> = vec![];
        for (j, &o) in node.outputs.iter().enumerate() {
            if !self.slots.contains_key(&o) {
                let (elem, shape) = &types[j];
                let n = shape.iter().product();
                let data = match elem {
                    // Written in full: a recycled buffer will do.
                    ElemType::F32 => Data::F32(super::buffers::output(n)),
                    e => Data::zeros(*e, n),
                };
                let t = Tensor::new(shape.clone(), data).map_err(|e| e.to_string())?;
                owned.push((j, t));
            }
        }
        {
            let mut operands: Vec<Option<In>> = Vec::with_capacity(node.inputs.len());
            for (i, v) in node.inputs.iter().enumerate() {
                operands.push(match v {
                    None => None,
                    Some(_) if step.captured.contains(&i) => None,
                    Some(v) => Some(match self.slots.get(v) {
                        // SAFETY: the slot lies within the arena (checked
                        // when the executable was built) and holds this
                        // value, written by its producer earlier in the
                        // schedule; the plan keeps it from being reused
                        // until its last use.
                        Some(s) => unsafe { In::from_raw(base.add(s.offset), s.elem, &s.shape) },
                        None => match (self.in_place_consts.get(v), m.constant(*v)) {
                            (Some(shape), Some(d)) => {
                                let bytes = d.bytes().ok_or("internal: constant data")?;
                                // SAFETY: `viewable_constants` checked that
                                // the bytes hold `shape` of `d.elem` in the
                                // runtime's layout, aligned; the module,
                                // borrowed for the step, keeps them alive.
                                unsafe { In::from_raw(bytes.as_ptr(), d.elem, shape) }
                            }
                            _ => {
                                let t =
                                    env.get(*v).and_then(Value::as_tensor).ok_or_else(|| {
                                        format!("operand %{} has no tensor", m.name(*v))
                                    })?;
                                In::of(t, t.elem()).ok_or_else(|| {
                                    format!("operand %{} has no native layout", m.name(*v))
                                })?
                            }
                        },
                    }),
                });
            }
            let mut outputs: Vec<Out> = Vec::with_capacity(node.outputs.len());
            let mut owned_iter = owned.iter_mut().peekable();
            for (j, o) in node.outputs.iter().enumerate() {
                outputs.push(match self.slots.get(o) {
                    // SAFETY: as above; the plan gives no other live value
                    // this memory, except an operand of an in-place step,
                    // whose kernel says it may alias (`in_place`).
                    Some(s) => unsafe { Out::from_raw(base.add(s.offset), s.elem, &s.shape) },
                    None => {
                        let e = owned_iter
                            .next_if(|e| e.0 == j)
                            .ok_or("internal: result buffer")?;
                        Out::of(&mut e.1).ok_or("internal: result layout")?
                    }
                });
            }
            // A kernel bug must not take the caller down: a panic becomes
            // this node's error.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                step.kernel.run(&operands, &mut outputs, self.threads)
            }))
            .unwrap_or_else(|p| Err(format!("kernel panicked: {}", crate::panic_message(&*p))))?;
        }
        for (j, t) in owned {
            env.set(node.outputs[j], Value::tensor(t));
        }
        Ok(())
    }

    /// An arena for one run: a finished run's, or a new one.
    fn take_arena(&self) -> Vec<Line> {
        let lines = self.arena_bytes.div_ceil(64);
        let kept = self.arenas.lock().ok().and_then(|mut a| a.pop());
        kept.filter(|a| a.len() == lines)
            .unwrap_or_else(|| vec![Line([0; 64]); lines])
    }

    fn give_back_arena(&self, arena: Vec<Line>) {
        if let Ok(mut a) = self.arenas.lock() {
            // One per thread that runs at once is enough; keep a few.
            if a.len() < 4 {
                a.push(arena);
            }
        }
    }
}

impl CpuExecutable {
    /// The bytes a data-movement step reads and writes: twice those that
    /// move, which are the results' bytes not on an operand's (a Concat's
    /// operands may lie inside its result, a Slice's result inside its
    /// operand, a view on its operand), or as many of the operands'
    /// bytes if fewer. A step whose results are all in place moves none.
    fn moved_bytes(&self, node: &kiln_ir::Node) -> f64 {
        let range = |v: ValueId| -> Option<(usize, usize)> {
            let s = self.slots.get(&v)?;
            let n = s
                .elem
                .storage_bytes(s.shape.iter().product::<usize>() as u64)?
                as usize;
            Some((s.offset, s.offset + n))
        };
        let size = |v: ValueId| -> f64 {
            self.module
                .ty(v)
                .as_tensor()
                .and_then(|t| Some(t.elem.storage_bytes(t.num_elements()?)? as f64))
                .unwrap_or(0.0)
        };
        let inside = |a: Option<(usize, usize)>, b: Option<(usize, usize)>| matches!((a, b), (Some(a), Some(b)) if b.0 <= a.0 && a.1 <= b.1);
        let operands: Vec<ValueId> = node.inputs.iter().flatten().copied().collect();
        // Each side's bytes not shared with the other side.
        let apart = |side: &[ValueId], other: &[ValueId]| -> f64 {
            side.iter()
                .map(|&v| {
                    if other.iter().any(|&o| inside(range(v), range(o))) {
                        return 0.0;
                    }
                    let within: f64 = other
                        .iter()
                        .filter(|&&o| inside(range(o), range(v)))
                        .map(|&o| size(o))
                        .sum();
                    (size(v) - within).max(0.0)
                })
                .sum()
        };
        2.0 * apart(&node.outputs, &operands).min(apart(&operands, &node.outputs))
    }
}

/// The arena slots of `layout`, checked: inside the arena, aligned, of
/// tensors with static shapes and fixed-size elements.
fn slots_of(m: &Module, layout: &Layout) -> Result<HashMap<ValueId, Slot>, String> {
    let mut slots = HashMap::new();
    for (&v, &offset) in &layout.offsets {
        let (elem, shape) = static_type(m, v)?;
        let bytes = elem
            .storage_bytes(shape.iter().product::<usize>() as u64)
            .ok_or_else(|| format!("internal: %{} has no fixed size", m.name(v)))?;
        if offset % 64 != 0 || offset + bytes > layout.arena_bytes {
            return Err(format!(
                "internal: %{}'s slot ({bytes} bytes at {offset}) is outside the {}-byte arena or unaligned",
                m.name(v),
                layout.arena_bytes
            ));
        }
        let offset = usize::try_from(offset).map_err(|e| e.to_string())?;
        slots.insert(
            v,
            Slot {
                offset,
                elem,
                shape,
            },
        );
    }
    Ok(slots)
}

/// A tensor value's element type and static shape.
fn static_type(m: &Module, v: ValueId) -> Result<(ElemType, Vec<usize>), String> {
    let elem = m
        .ty(v)
        .as_tensor()
        .ok_or_else(|| format!("%{} is not a tensor", m.name(v)))?
        .elem;
    Ok((elem, m.static_shape(v)?))
}

/// Every value a node reads: its operands and what its nested regions use.
fn uses_of(n: &kiln_ir::Node, out: &mut Vec<ValueId>) {
    fn region(r: &Region, out: &mut Vec<ValueId>) {
        for n in &r.nodes {
            uses_of(n, out);
        }
        out.extend(&r.outputs);
    }
    out.extend(n.inputs.iter().flatten());
    for (_, sub) in n.regions() {
        region(sub, out);
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
                StepKind::Native(NativeStep {
                    what,
                    flops,
                    kernel,
                    ..
                }) => StepInfo {
                    node: s.node,
                    placement: Placement::Native,
                    what: what.clone(),
                    flops: *flops,
                    bytes: kernel
                        .moves_data()
                        .then(|| self.moved_bytes(&self.module.body.nodes[s.node])),
                },
                StepKind::Interp { why } => StepInfo {
                    node: s.node,
                    placement: Placement::Interp,
                    what: why.clone(),
                    flops: 0.0,
                    bytes: None,
                },
                StepKind::Control(c) => StepInfo {
                    node: s.node,
                    placement: Placement::Native,
                    what: c.describe(&self.module.body.nodes[s.node]),
                    flops: 0.0,
                    bytes: None,
                },
                StepKind::Dynamic(d) => {
                    let (native, what) = d.describe();
                    StepInfo {
                        node: s.node,
                        placement: if native {
                            Placement::Native
                        } else {
                            Placement::Interp
                        },
                        what,
                        flops: d.flops(),
                        bytes: None,
                    }
                }
            })
            .collect()
    }

    /// The steps' report; the regions of control-flow steps report their
    /// own steps, indented, before the closing count line (which counts
    /// this executable's steps only).
    fn report(&self) -> String {
        let report = native_interp_report(&self.module, &Executable::steps(self));
        let nested: String = self
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                StepKind::Control(c) => {
                    Some(c.nested_report(&self.module, &self.module.body.nodes[s.node]))
                }
                _ => None,
            })
            .collect();
        if nested.is_empty() {
            return report;
        }
        let body = report.trim_end_matches('\n');
        let (steps, last) = body.rsplit_once('\n').unwrap_or(("", body));
        let steps = if steps.is_empty() {
            String::new()
        } else {
            format!("{steps}\n")
        };
        format!("{steps}{nested}{last}\n")
    }

    fn memory(&self) -> MemoryUse {
        let m = &self.module;
        let outputs: HashSet<ValueId> = m.body.outputs.iter().copied().collect();
        let unplanned = m
            .body
            .nodes
            .iter()
            .flat_map(|n| &n.outputs)
            .filter(|v| !outputs.contains(v) && !self.slots.contains_key(v))
            .map(|&v| m.name(v).to_string())
            .collect();
        MemoryUse {
            arena_bytes: self.arena_bytes,
            arena_values: self.slots.len(),
            unplanned,
        }
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

/// Of `candidates` (constants only native steps read), those a view can
/// read in place in the module's bytes, with their shapes: a viewable
/// element type stored as the runtime stores it (little-endian, one byte
/// per bool), aligned for it. The rest are loaded as tensors.
fn viewable_constants(
    m: &Module,
    candidates: &std::collections::HashSet<ValueId>,
) -> HashMap<ValueId, Vec<usize>> {
    let mut out = HashMap::new();
    if cfg!(target_endian = "big") {
        return out;
    }
    for &c in candidates {
        let Some(d) = m.constant(c) else { continue };
        let Some(bytes) = d.bytes() else { continue };
        let shape: Vec<usize> = d.shape.iter().map(|&x| x as usize).collect();
        let n = shape.iter().product::<usize>() as u64;
        let fits = super::view::is_viewable(d.elem)
            && d.elem.storage_bytes(n) == Some(bytes.len() as u64)
            && (bytes.as_ptr() as usize).is_multiple_of(elem_align(d.elem))
            // A Rust bool must be 0 or 1.
            && (d.elem != ElemType::Bool || bytes.iter().all(|&b| b <= 1));
        if fits {
            out.insert(c, shape);
        }
    }
    out
}

/// The alignment the runtime's storage of `elem` has.
fn elem_align(elem: ElemType) -> usize {
    match elem.bit_width() {
        // Complex numbers align as their parts.
        Some(b) if matches!(elem, ElemType::C64 | ElemType::C128) => (b / 16).max(1) as usize,
        Some(b) => (b / 8).max(1) as usize,
        None => 1,
    }
}

/// Top-level constants some step reads at run time, and of them those
/// only native steps read. Read at run time: operands of interpreted
/// nodes (nested regions included), operands of native kernels that did
/// not capture them, graph outputs.
fn needed_constants(
    m: &Module,
    steps: &[Step],
) -> (
    std::collections::HashSet<ValueId>,
    std::collections::HashSet<ValueId>,
) {
    fn all_uses(r: &kiln_ir::Region, out: &mut std::collections::HashSet<ValueId>) {
        for n in &r.nodes {
            out.extend(n.inputs.iter().flatten());
            for (_, sub) in n.regions() {
                all_uses(sub, out);
            }
        }
        out.extend(&r.outputs);
    }
    // Values the interpreter (or the caller, for outputs) reads as tensors.
    let mut as_tensors: std::collections::HashSet<ValueId> =
        m.body.outputs.iter().copied().collect();
    let mut native = std::collections::HashSet::new();
    for s in steps {
        let Some(n) = m.body.nodes.get(s.node) else {
            continue;
        };
        match &s.kind {
            // A dynamic step falls back to the interpreter for shapes it
            // cannot lower: its operands stay tensors.
            StepKind::Interp { .. } | StepKind::Dynamic(_) => {
                as_tensors.extend(n.inputs.iter().flatten());
                for (_, sub) in n.regions() {
                    all_uses(sub, &mut as_tensors);
                }
            }
            // The regions' modules hold the constants they read; the
            // environment holds their operands and captures.
            StepKind::Control(c) => {
                as_tensors.extend(n.inputs.iter().flatten());
                as_tensors.extend(c.captures());
            }
            StepKind::Native(NativeStep { captured, .. }) => {
                for (k, v) in n.inputs.iter().enumerate() {
                    if let (Some(v), false) = (v, captured.contains(&k)) {
                        native.insert(*v);
                    }
                }
            }
        }
    }
    let top: std::collections::HashSet<ValueId> = m.body.constants.iter().copied().collect();
    let native_only = native
        .difference(&as_tensors)
        .filter(|v| top.contains(v))
        .copied()
        .collect();
    (as_tensors.union(&native).copied().collect(), native_only)
}

/// For each position of `schedule`, the environment values (node results
/// and graph inputs, not constants, graph outputs or arena values) whose
/// last use is the node there (uses in nested regions count as uses by the
/// node holding them).
fn last_uses(m: &Module, schedule: &[usize], slots: &HashMap<ValueId, Slot>) -> Vec<Vec<ValueId>> {
    let keep: HashSet<ValueId> = m
        .body
        .outputs
        .iter()
        .chain(&m.body.constants)
        .copied()
        .collect();
    let mut last: HashMap<ValueId, usize> = HashMap::new();
    for (pos, &k) in schedule.iter().enumerate() {
        let mut u = vec![];
        uses_of(&m.body.nodes[k], &mut u);
        for v in u {
            last.insert(v, pos);
        }
    }
    let mut frees = vec![vec![]; schedule.len()];
    for (v, pos) in last {
        if !keep.contains(&v) && !slots.contains_key(&v) {
            frees[pos].push(v);
        }
    }
    frees
}
