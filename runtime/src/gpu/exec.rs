//! `GpuExecutable`: a module's steps on one device, in the memory plan's
//! order. A GPU step is one or more compute shaders (made by the lowering,
//! validated by naga there) bound to the values it reads and writes:
//! intermediates at their offsets in one arena buffer (256-byte aligned,
//! the plan's), graph inputs, graph outputs and constants in buffers of
//! their own; constants and the kernels' own data are uploaded once, when
//! the executable is built. A CPU step runs the interpreter's kernel on
//! the host, as the onnxruntime CPU provider takes what a GPU provider
//! cannot: the device values it reads are downloaded first, and the
//! results GPU steps read are uploaded after it; each transfer is listed
//! in the report. All GPU steps between two CPU steps are recorded into
//! one command encoder and submitted once; only what the host needs is
//! read back.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kiln_ir::{ElemType, Module, TensorData, ValueId};

use super::device::Gpu;
use super::wgsl::{Bind, GpuKernel};
use crate::executable::{Executable, MemoryUse, Placement, StepInfo, StepTimes};
use crate::interp::{Constants, InterpError, Interpreter};
use crate::{Tensor, Value};

/// How one top-level node runs.
#[derive(Debug)]
pub enum GpuStepKind {
    Gpu(GpuKernel),
    /// `If` on the device: the host reads the condition back (a
    /// transfer), then records the chosen branch's shaders; each branch
    /// ends with copies of its outputs into the node's results.
    If {
        then_branch: Vec<BranchStep>,
        else_branch: Vec<BranchStep>,
    },
    /// The interpreter's kernel on the host; `why` says why not the GPU.
    Cpu {
        why: String,
    },
}

/// A node of a branch and its kernel (bindings name the branch node's
/// operands and results).
#[derive(Debug)]
pub struct BranchStep {
    pub node: kiln_ir::Node,
    pub kernel: GpuKernel,
}

#[derive(Debug)]
pub struct GpuStep {
    pub node: usize,
    pub kind: GpuStepKind,
}

/// Where the memory plan put the arena's values.
#[derive(Clone, Debug, Default)]
pub struct GpuLayout {
    pub schedule: Vec<usize>,
    pub offsets: HashMap<ValueId, u64>,
    pub arena_bytes: u64,
}

/// Where a value lives on the device.
#[derive(Clone, Copy, Debug)]
enum Loc {
    Arena(u64),
    /// `own[i]`.
    Own(usize),
}

/// A value crossing between host and device.
#[derive(Clone, Debug)]
struct Transfer {
    value: ValueId,
    bytes: u64,
    /// For the report: why it moves.
    why: String,
}

/// A step's recorded work: its shaders, or an `If`'s two branches.
enum Code {
    Plain(Vec<Compiled>),
    If(Vec<Compiled>, Vec<Compiled>),
}

/// Makes pipelines (one per distinct shader text) and bind groups (the
/// values' places) for kernels.
struct Binder<'a> {
    gpu: &'a Gpu,
    loc: &'a HashMap<ValueId, (Loc, u64)>,
    arena: &'a wgpu::Buffer,
    own: &'a [wgpu::Buffer],
    dummy: &'a wgpu::Buffer,
    usage: wgpu::BufferUsages,
    cache: HashMap<String, wgpu::ComputePipeline>,
    layouts: HashMap<usize, wgpu::BindGroupLayout>,
    /// The check flags of the kernels compiled so far: (node description,
    /// flag buffer, message).
    checks: Vec<(String, wgpu::Buffer, String)>,
}

impl Binder<'_> {
    /// `kernel`'s shaders for node `n`, bound: its operands and results
    /// where they live, its data uploaded, its scratch made.
    fn compile(&mut self, n: &kiln_ir::Node, kernel: &GpuKernel) -> Result<Vec<Compiled>, String> {
        let gpu = self.gpu;
        let usage = self.usage;
        let data: Vec<wgpu::Buffer> = kernel
            .data
            .iter()
            .map(|d| {
                let mut d = d.clone();
                d.resize(pad4(d.len() as u64) as usize, 0);
                create_init(gpu, &d, usage)
            })
            .collect();
        let scratch: Vec<wgpu::Buffer> = kernel
            .scratch
            .iter()
            .map(|&b| {
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("scratch"),
                    size: pad4(b),
                    usage,
                    mapped_at_creation: false,
                })
            })
            .collect();
        if let Some((k, msg)) = &kernel.check {
            let flag = scratch.get(*k).ok_or("internal: check flag index")?;
            self.checks.push((n.describe(), flag.clone(), msg.clone()));
        }
        let mut list = vec![];
        for d in &kernel.dispatches {
            let count = d.bindings.len();
            let bgl = self
                .layouts
                .entry(count)
                .or_insert_with(|| bind_group_layout(gpu, count));
            let pipeline = match self.cache.get(&d.wgsl) {
                Some(p) => p.clone(),
                None => {
                    let p = pipeline(gpu, &d.wgsl, bgl)
                        .map_err(|e| format!("{}: {e}", n.describe()))?;
                    self.cache.insert(d.wgsl.clone(), p.clone());
                    p
                }
            };
            let mut entries = vec![];
            for (i, b) in d.bindings.iter().enumerate() {
                let (buffer, offset, size) = match b {
                    Bind::Data(k) => {
                        let buf = data.get(*k).ok_or("internal: kernel data index")?;
                        (buf, 0, buf.size())
                    }
                    Bind::Scratch(k) => {
                        let buf = scratch.get(*k).ok_or("internal: kernel scratch index")?;
                        (buf, 0, buf.size())
                    }
                    Bind::Operand(_) | Bind::Result(_) => {
                        let v = match b {
                            Bind::Operand(i) => n.input(*i),
                            Bind::Result(j) => n.outputs.get(*j).copied(),
                            Bind::Data(_) | Bind::Scratch(_) => None,
                        }
                        .ok_or("internal: binding of a missing value")?;
                        let (l, bytes) = *self
                            .loc
                            .get(&v)
                            .ok_or("internal: value without a device place")?;
                        if bytes == 0 {
                            (self.dummy, 0, 4)
                        } else {
                            match l {
                                Loc::Arena(off) => (self.arena, off, pad4(bytes)),
                                Loc::Own(k) => (&self.own[k], 0, pad4(bytes)),
                            }
                        }
                    }
                };
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer,
                        offset,
                        size: wgpu::BufferSize::new(size),
                    }),
                });
            }
            let bind_group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: bgl,
                entries: &entries,
            });
            list.push(Compiled {
                pipeline,
                bind_group,
                groups: d.groups,
            });
        }
        Ok(list)
    }
}

struct Compiled {
    pipeline: wgpu::ComputePipeline,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
}

/// A module compiled for a GPU.
pub struct GpuExecutable {
    module: Module,
    consts: Arc<Constants>,
    gpu: Gpu,
    steps: Vec<GpuStep>,
    schedule: Vec<usize>,
    compiled: Vec<Code>,
    arena: wgpu::Buffer,
    arena_bytes: u64,
    arena_values: usize,
    own: Vec<wgpu::Buffer>,
    loc: HashMap<ValueId, (Loc, u64)>,
    /// Graph inputs that GPU steps read, uploaded at the start of a run.
    upload_inputs: Vec<Transfer>,
    /// Device values a CPU step reads, downloaded before it (by node).
    download_before: HashMap<usize, Vec<Transfer>>,
    /// CPU-step results GPU steps read, uploaded after it (by node).
    upload_after: HashMap<usize, Vec<Transfer>>,
    /// Graph outputs made on the device, read back at the end.
    download_outputs: Vec<Transfer>,
    /// Kernels' flags of rejected input (see `GpuKernel::check`): which
    /// node, the flag, the message.
    checks: Vec<(String, wgpu::Buffer, String)>,
    /// Two timestamps per step for profiles, where the device has them
    /// (and the steps fit one query set).
    query_set: Option<wgpu::QuerySet>,
    /// One run at a time: the buffers are the executable's.
    run_lock: Mutex<()>,
    limits: kiln_ir::Limits,
}

fn value_bytes(m: &Module, v: ValueId) -> Result<u64, String> {
    let t = m
        .ty(v)
        .as_tensor()
        .ok_or_else(|| format!("%{} is not a tensor", m.name(v)))?;
    let n: u64 = m.static_shape(v)?.iter().map(|&d| d as u64).product();
    t.elem
        .storage_bytes(n)
        .ok_or_else(|| format!("%{} has no fixed size", m.name(v)))
}

fn pad4(b: u64) -> u64 {
    b.div_ceil(4).max(1) * 4
}

/// Every value a node reads, nested regions included.
fn reads_of(n: &kiln_ir::Node, out: &mut HashSet<ValueId>) {
    fn region(r: &kiln_ir::Region, out: &mut HashSet<ValueId>) {
        for n in &r.nodes {
            reads_of(n, out);
        }
        out.extend(&r.outputs);
    }
    out.extend(n.inputs.iter().flatten());
    for (_, sub) in n.regions() {
        region(sub, out);
    }
}

impl GpuExecutable {
    /// Build from a module whose top-level nodes `steps` covers in order,
    /// with intermediates of GPU steps where `layout` puts them.
    pub fn new(
        gpu: Gpu,
        mut module: Module,
        steps: Vec<GpuStep>,
        layout: GpuLayout,
    ) -> Result<GpuExecutable, String> {
        if steps.len() != module.body.nodes.len()
            || steps.iter().enumerate().any(|(i, s)| s.node != i)
        {
            return Err("internal: the steps do not cover the module's nodes in order".into());
        }
        let m = &module;
        let outputs: HashSet<ValueId> = m.body.outputs.iter().copied().collect();
        // Who makes each value, and who reads it.
        let mut gpu_made: HashSet<ValueId> = HashSet::new();
        let mut cpu_made: HashSet<ValueId> = HashSet::new();
        let mut gpu_read: HashSet<ValueId> = HashSet::new();
        for st in &steps {
            let n = &m.body.nodes[st.node];
            match &st.kind {
                GpuStepKind::Gpu(_) => {
                    gpu_made.extend(&n.outputs);
                    gpu_read.extend(n.inputs.iter().flatten());
                }
                GpuStepKind::If {
                    then_branch,
                    else_branch,
                } => {
                    for b in then_branch.iter().chain(else_branch) {
                        gpu_made.extend(&b.node.outputs);
                        gpu_read.extend(b.node.inputs.iter().flatten());
                    }
                }
                GpuStepKind::Cpu { .. } => cpu_made.extend(&n.outputs),
            }
        }
        // Values of the top level: those the memory plan places.
        let top_level: HashSet<ValueId> = m
            .body
            .nodes
            .iter()
            .flat_map(|n| n.outputs.iter().copied())
            .collect();
        // Device locations: every value a GPU step touches.
        let mut loc: HashMap<ValueId, (Loc, u64)> = HashMap::new();
        let mut own: Vec<wgpu::Buffer> = vec![];
        let usage = wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_SRC
            | wgpu::BufferUsages::COPY_DST;
        let mut order: Vec<ValueId> = gpu_made.iter().chain(gpu_read.iter()).copied().collect();
        order.sort_by_key(|v| v.0);
        order.dedup();
        let max_binding = gpu.limits.max_storage_buffer_binding_size;
        for &v in &order {
            let bytes = value_bytes(m, v)?;
            if pad4(bytes) > max_binding {
                return Err(format!(
                    "%{} ({bytes} bytes) is larger than a storage binding may be ({max_binding})",
                    m.name(v)
                ));
            }
            if let Some(&off) = layout.offsets.get(&v) {
                if off + bytes > layout.arena_bytes
                    || off % gpu.limits.min_storage_buffer_offset_alignment as u64 != 0
                {
                    return Err(format!(
                        "internal: %{}'s arena slot is outside the arena or unaligned",
                        m.name(v)
                    ));
                }
                loc.insert(v, (Loc::Arena(off), bytes));
                continue;
            }
            // Graph inputs, outputs, constants and the values inside
            // branches have buffers of their own.
            if top_level.contains(&v) && !outputs.contains(&v) {
                return Err(format!(
                    "internal: %{} has no place on the device",
                    m.name(v)
                ));
            }
            let buf = match m.constant(v) {
                Some(d) => {
                    let b = d
                        .bytes()
                        .ok_or_else(|| format!("constant %{} has no data", m.name(v)))?;
                    let mut data = b.to_vec();
                    data.resize(pad4(bytes) as usize, 0);
                    create_init(&gpu, &data, usage)
                }
                None => gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: pad4(bytes),
                    usage,
                    mapped_at_creation: false,
                }),
            };
            own.push(buf);
            loc.insert(v, (Loc::Own(own.len() - 1), bytes));
        }
        let arena = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("arena"),
            size: layout.arena_bytes.max(4),
            usage,
            mapped_at_creation: false,
        });
        let dummy = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("empty"),
            size: 4,
            usage,
            mapped_at_creation: false,
        });
        // Transfers.
        let mut upload_inputs = vec![];
        for &i in &m.body.inputs {
            if gpu_read.contains(&i) {
                upload_inputs.push(Transfer {
                    value: i,
                    bytes: loc[&i].1,
                    why: "graph input".into(),
                });
            }
        }
        let mut download_before: HashMap<usize, Vec<Transfer>> = HashMap::new();
        let mut upload_after: HashMap<usize, Vec<Transfer>> = HashMap::new();
        let mut downloaded: HashSet<ValueId> = HashSet::new();
        for &k in &layout.schedule {
            let n = &m.body.nodes[k];
            if let GpuStepKind::If { .. } = steps[k].kind {
                // The host reads the condition to choose the branch.
                if let Some(c) = n.input(0) {
                    if gpu_made.contains(&c) && downloaded.insert(c) {
                        download_before.entry(k).or_default().push(Transfer {
                            value: c,
                            bytes: loc[&c].1,
                            why: format!("the condition of {}", n.describe()),
                        });
                    }
                }
            }
            if let GpuStepKind::Cpu { .. } = steps[k].kind {
                let mut reads = HashSet::new();
                reads_of(n, &mut reads);
                let mut reads: Vec<ValueId> = reads.into_iter().collect();
                reads.sort_by_key(|v| v.0);
                for v in reads {
                    if gpu_made.contains(&v) && downloaded.insert(v) {
                        download_before.entry(k).or_default().push(Transfer {
                            value: v,
                            bytes: loc[&v].1,
                            why: format!("read by {}", n.describe()),
                        });
                    }
                }
                for &o in &n.outputs {
                    if gpu_read.contains(&o) {
                        let bytes = loc
                            .get(&o)
                            .map(|l| l.1)
                            .ok_or("internal: upload without a place")?;
                        upload_after.entry(k).or_default().push(Transfer {
                            value: o,
                            bytes,
                            why: "read by the gpu".into(),
                        });
                    }
                }
            }
        }
        let mut download_outputs = vec![];
        for &o in &m.body.outputs {
            if gpu_made.contains(&o)
                && !downloaded.contains(&o)
                && !download_outputs.iter().any(|t: &Transfer| t.value == o)
            {
                download_outputs.push(Transfer {
                    value: o,
                    bytes: loc[&o].1,
                    why: "graph output".into(),
                });
            }
        }
        // Pipelines and bind groups.
        let mut b = Binder {
            gpu: &gpu,
            loc: &loc,
            arena: &arena,
            own: &own,
            dummy: &dummy,
            usage,
            cache: HashMap::new(),
            layouts: HashMap::new(),
            checks: vec![],
        };
        let mut compiled = vec![];
        for st in &steps {
            let n = &m.body.nodes[st.node];
            compiled.push(match &st.kind {
                GpuStepKind::Gpu(kernel) => Code::Plain(b.compile(n, kernel)?),
                GpuStepKind::If {
                    then_branch,
                    else_branch,
                } => {
                    let mut branch = |steps: &[BranchStep]| -> Result<Vec<Compiled>, String> {
                        let mut all = vec![];
                        for s in steps {
                            all.extend(b.compile(&s.node, &s.kernel)?);
                        }
                        Ok(all)
                    };
                    let t = branch(then_branch)?;
                    let e = branch(else_branch)?;
                    Code::If(t, e)
                }
                GpuStepKind::Cpu { .. } => Code::Plain(vec![]),
            });
        }
        let checks = b.checks;
        gpu.check("building the GPU executable")?;
        // The host keeps the constants CPU steps read.
        let mut cpu_read: HashSet<ValueId> = HashSet::new();
        for st in &steps {
            let n = &module.body.nodes[st.node];
            match st.kind {
                GpuStepKind::Cpu { .. } => reads_of(n, &mut cpu_read),
                GpuStepKind::If { .. } => cpu_read.extend(n.input(0)),
                GpuStepKind::Gpu(_) => {}
            }
        }
        cpu_read.extend(&outputs);
        let consts = Arc::new(Interpreter::take_constants_where(&mut module, |c| {
            cpu_read.contains(&c)
        }));
        // Constants only the device reads: their host bytes go.
        let device_only: Vec<ValueId> = module
            .body
            .constants
            .iter()
            .copied()
            .filter(|c| !cpu_read.contains(c) && loc.contains_key(c))
            .collect();
        for c in device_only {
            module.elide_constant(c);
        }
        let queries = 2 * steps.len() as u32;
        let query_set = (gpu.timestamps && queries > 0 && queries <= wgpu::QUERY_SET_MAX_QUERIES)
            .then(|| {
                gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("step times"),
                    ty: wgpu::QueryType::Timestamp,
                    count: queries,
                })
            });
        Ok(GpuExecutable {
            checks,
            query_set,
            module,
            consts,
            gpu,
            steps,
            schedule: layout.schedule,
            compiled,
            arena,
            arena_bytes: layout.arena_bytes,
            arena_values: layout.offsets.len(),
            own,
            loc,
            upload_inputs,
            download_before,
            upload_after,
            download_outputs,
            run_lock: Mutex::new(()),
            limits: kiln_ir::Limits::default(),
        })
    }

    /// CPU steps work within `limits` (allocations, loop iterations).
    pub fn with_limits(mut self, limits: kiln_ir::Limits) -> GpuExecutable {
        self.limits = limits;
        self
    }

    /// Transfers between host and device in one run (graph inputs and
    /// outputs included).
    pub fn transfer_count(&self) -> usize {
        self.upload_inputs.len()
            + self.download_before.values().map(Vec::len).sum::<usize>()
            + self.upload_after.values().map(Vec::len).sum::<usize>()
            + self.download_outputs.len()
    }

    fn place(&self, v: ValueId) -> Result<(&wgpu::Buffer, u64, u64), String> {
        let (l, bytes) = *self
            .loc
            .get(&v)
            .ok_or("internal: value without a device place")?;
        Ok(match l {
            Loc::Arena(off) => (&self.arena, off, bytes),
            Loc::Own(k) => (&self.own[k], 0, bytes),
        })
    }

    fn upload(&self, env: &crate::interp::Env, t: &Transfer) -> Result<(), String> {
        if t.bytes == 0 {
            return Ok(());
        }
        let v = env.get(t.value).and_then(Value::as_tensor).ok_or_else(|| {
            format!(
                "internal: %{} has no host tensor to upload",
                self.module.name(t.value)
            )
        })?;
        let d = v.to_data();
        let b = d
            .bytes()
            .ok_or("internal: upload of a tensor without bytes")?;
        let (buf, off, _) = self.place(t.value)?;
        let mut data = b.to_vec();
        data.resize(pad4(data.len() as u64) as usize, 0);
        self.gpu.queue.write_buffer(buf, off, &data);
        Ok(())
    }

    /// Read `ts` back into `env` (after what `encoder` recorded).
    fn download(
        &self,
        mut encoder: wgpu::CommandEncoder,
        ts: &[Transfer],
        env: &mut crate::interp::Env,
    ) -> Result<(), String> {
        let total: u64 = ts.iter().map(|t| pad4(t.bytes)).sum();
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: total.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut at = 0;
        for t in ts {
            if t.bytes > 0 {
                let (buf, off, _) = self.place(t.value)?;
                encoder.copy_buffer_to_buffer(buf, off, &staging, at, pad4(t.bytes));
            }
            at += pad4(t.bytes);
        }
        self.submit_and_map(encoder, &staging, "GPU readback")?;
        let slice = staging.slice(..);
        {
            let view = slice
                .get_mapped_range()
                .map_err(|e| format!("GPU readback: {e}"))?;
            let mut at = 0usize;
            for t in ts {
                let m = &self.module;
                let elem = m
                    .ty(t.value)
                    .as_tensor()
                    .map(|x| x.elem)
                    .unwrap_or(ElemType::F32);
                let shape = m.static_shape(t.value)?;
                let bytes = view[at..at + t.bytes as usize].to_vec();
                let d =
                    TensorData::from_bytes(elem, shape.iter().map(|&x| x as u64).collect(), bytes)
                        .map_err(|e| e.to_string())?;
                let tensor = Tensor::from_data(&d).map_err(|e| e.to_string())?;
                env.set(t.value, Value::tensor(tensor));
                at += pad4(t.bytes) as usize;
            }
        }
        staging.unmap();
        self.gpu.check("reading results back")
    }

    /// The run fails if a kernel flagged input its op rejects.
    fn read_checks(&self) -> Result<(), InterpError> {
        if self.checks.is_empty() {
            return Ok(());
        }
        let n = self.checks.len() as u64;
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("checks readback"),
            size: 4 * n,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.encoder();
        for (i, (_, flag, _)) in self.checks.iter().enumerate() {
            enc.copy_buffer_to_buffer(flag, 0, &staging, 4 * i as u64, 4);
        }
        let err = |m: String| InterpError::new("gpu", m);
        self.submit_and_map(enc, &staging, "checks").map_err(err)?;
        let slice = staging.slice(..);
        let failed = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| err(format!("checks: {e}")))?;
            self.checks
                .iter()
                .enumerate()
                .find(|(i, _)| view[4 * i..4 * i + 4] != [0; 4])
                .map(|(_, (node, _, msg))| InterpError::new(node.clone(), msg.clone()))
        };
        staging.unmap();
        failed.map_or(Ok(()), Err)
    }

    /// The device's own time of each GPU step's pass, read from the
    /// timestamps, into `times` (CPU steps keep their wall times).
    fn step_times(&self, q: &wgpu::QuerySet, times: &mut StepTimes) -> Result<(), String> {
        let n = 2 * self.steps.len() as u64;
        let resolve = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps"),
            size: 8 * n,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps readback"),
            size: 8 * n,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.encoder();
        enc.resolve_query_set(q, 0..n as u32, &resolve, 0);
        enc.copy_buffer_to_buffer(&resolve, 0, &staging, 0, 8 * n);
        self.submit_and_map(enc, &staging, "timestamps")?;
        let slice = staging.slice(..);
        let period = self.gpu.queue.get_timestamp_period() as f64;
        {
            let view = slice
                .get_mapped_range()
                .map_err(|e| format!("timestamps: {e}"))?;
            let stamp = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&view[8 * i..8 * i + 8]);
                u64::from_le_bytes(b)
            };
            for (k, st) in self.steps.iter().enumerate() {
                if let GpuStepKind::Gpu(_) = st.kind {
                    let ticks = stamp(2 * k + 1).saturating_sub(stamp(2 * k));
                    times[k] = std::time::Duration::from_nanos((ticks as f64 * period) as u64);
                }
            }
        }
        staging.unmap();
        Ok(())
    }

    /// Submit `enc` and map `staging` (which it copies into) for reading,
    /// waiting for both.
    fn submit_and_map(
        &self,
        enc: wgpu::CommandEncoder,
        staging: &wgpu::Buffer,
        what: &str,
    ) -> Result<(), String> {
        self.gpu.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.gpu.wait()?;
        rx.recv()
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{what}: {e}"))
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    fn run_inner(
        &self,
        inputs: &HashMap<String, Value>,
        mut times: Option<&mut StepTimes>,
    ) -> Result<Vec<Value>, InterpError> {
        let _guard = self
            .run_lock
            .lock()
            .map_err(|_| InterpError::new("gpu", "a run panicked"))?;
        let m = &self.module;
        let err = |msg: String| InterpError::new("gpu", msg);
        let interp = Interpreter::with_constants(m, self.consts.clone()).with_limits(self.limits);
        let mut env = interp.bind_body(inputs)?;
        for t in &self.upload_inputs {
            self.upload(&env, t).map_err(err)?;
        }
        for (_, flag, _) in &self.checks {
            self.gpu.queue.write_buffer(flag, 0, &[0; 4]);
        }
        let mut pending: Option<wgpu::CommandEncoder> = None;
        for &k in &self.schedule {
            let node = &m.body.nodes[k];
            let start = times.as_ref().map(|_| Instant::now());
            match &self.steps[k].kind {
                GpuStepKind::Gpu(_) => {
                    let enc = pending.get_or_insert_with(|| self.encoder());
                    // Profiles time the step's pass on the device itself
                    // where it can; else each step is its own submission.
                    let stamps = match (&self.query_set, times.is_some()) {
                        (Some(q), true) => Some(wgpu::ComputePassTimestampWrites {
                            query_set: q,
                            beginning_of_pass_write_index: Some(2 * k as u32),
                            end_of_pass_write_index: Some(2 * k as u32 + 1),
                        }),
                        _ => None,
                    };
                    let stamped = stamps.is_some();
                    {
                        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: None,
                            timestamp_writes: stamps,
                        });
                        if let Code::Plain(list) = &self.compiled[k] {
                            record(&mut pass, list);
                        }
                    }
                    if times.is_some() && !stamped {
                        // Per-step times: submit and wait after each step.
                        if let Some(enc) = pending.take() {
                            self.gpu.queue.submit([enc.finish()]);
                        }
                        self.gpu.wait().map_err(err)?;
                    }
                }
                GpuStepKind::If { .. } => {
                    // The condition crosses to the host (if the device
                    // made it); the chosen branch joins the recording.
                    let enc = pending.take().unwrap_or_else(|| self.encoder());
                    match self.download_before.get(&k) {
                        Some(ts) => self
                            .download(enc, ts, &mut env)
                            .map_err(|e| InterpError::new(node.describe(), e))?,
                        None => pending = Some(enc),
                    }
                    let cond = node
                        .input(0)
                        .and_then(|c| env.get(c))
                        .and_then(Value::as_tensor)
                        .ok_or_else(|| InterpError::new(node.describe(), "no condition"))?;
                    if cond.len() != 1 {
                        return Err(InterpError::new(
                            node.describe(),
                            "the condition is not one value",
                        ));
                    }
                    let taken = cond.to_f64().first().is_some_and(|&c| c != 0.0);
                    if let Code::If(t, e) = &self.compiled[k] {
                        let enc = pending.get_or_insert_with(|| self.encoder());
                        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: None,
                            timestamp_writes: None,
                        });
                        record(&mut pass, if taken { t } else { e });
                    }
                }
                GpuStepKind::Cpu { .. } => {
                    let enc = pending.take().unwrap_or_else(|| self.encoder());
                    match self.download_before.get(&k) {
                        Some(ts) => self
                            .download(enc, ts, &mut env)
                            .map_err(|e| InterpError::new(node.describe(), e))?,
                        None => {
                            self.gpu.queue.submit([enc.finish()]);
                        }
                    }
                    interp.run_node(node, &mut env)?;
                    for t in self.upload_after.get(&k).into_iter().flatten() {
                        self.upload(&env, t)
                            .map_err(|e| InterpError::new(node.describe(), e))?;
                    }
                }
            }
            if let (Some(t), Some(s)) = (times.as_mut(), start) {
                t[k] += s.elapsed();
            }
        }
        let enc = pending.take().unwrap_or_else(|| self.encoder());
        self.download(enc, &self.download_outputs, &mut env)
            .map_err(err)?;
        if let (Some(t), Some(q)) = (times, &self.query_set) {
            self.step_times(q, t).map_err(err)?;
        }
        self.read_checks()?;
        self.gpu.check("running").map_err(err)?;
        interp.body_outputs(&env)
    }
}

/// How a report shows an `If` on the device.
fn branches_what(t: &[BranchStep], e: &[BranchStep]) -> String {
    let ops = |b: &[BranchStep]| {
        b.iter()
            .map(|s| s.kernel.describe.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "branch on the host's copy of the condition: then [{}], else [{}]",
        ops(t),
        ops(e)
    )
}

/// Record `list`'s dispatches (a shader with no workgroups is skipped).
fn record(pass: &mut wgpu::ComputePass, list: &[Compiled]) {
    for c in list {
        if c.groups.contains(&0) {
            continue;
        }
        pass.set_pipeline(&c.pipeline);
        pass.set_bind_group(0, &c.bind_group, &[]);
        pass.dispatch_workgroups(c.groups[0], c.groups[1], c.groups[2]);
    }
}

fn create_init(gpu: &Gpu, data: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
    let buf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: data.len().max(4) as u64,
        usage,
        mapped_at_creation: false,
    });
    gpu.queue.write_buffer(&buf, 0, data);
    buf
}

fn bind_group_layout(gpu: &Gpu, count: usize) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> = (0..count)
        .map(|i| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: false },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    gpu.device
        .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: None,
            entries: &entries,
        })
}

fn pipeline(
    gpu: &Gpu,
    wgsl: &str,
    bgl: &wgpu::BindGroupLayout,
) -> Result<wgpu::ComputePipeline, String> {
    let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = gpu
        .device
        .create_shader_module(wgpu::ShaderModuleDescriptor {
            label: None,
            source: wgpu::ShaderSource::Wgsl(wgsl.into()),
        });
    let layout = gpu
        .device
        .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(bgl)],
            immediate_size: 0,
        });
    let p = gpu
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: None,
            layout: Some(&layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(format!("shader rejected by the device: {e}"));
    }
    Ok(p)
}

impl Executable for GpuExecutable {
    fn backend(&self) -> &'static str {
        "gpu"
    }

    fn module(&self) -> &Module {
        &self.module
    }

    fn threads(&self) -> usize {
        1
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
        times.resize(self.steps.len(), Default::default());
        self.run_inner(inputs, Some(times))
    }

    fn steps(&self) -> Vec<StepInfo> {
        self.schedule
            .iter()
            .map(|&k| {
                let st = &self.steps[k];
                match &st.kind {
                    GpuStepKind::Gpu(kernel) => StepInfo {
                        node: k,
                        placement: Placement::Native,
                        what: kernel.describe.clone(),
                        flops: kernel.flops,
                        bytes: None,
                    },
                    GpuStepKind::If {
                        then_branch,
                        else_branch,
                    } => StepInfo {
                        node: k,
                        placement: Placement::Native,
                        what: branches_what(then_branch, else_branch),
                        flops: 0.0,
                        bytes: None,
                    },
                    GpuStepKind::Cpu { why } => StepInfo {
                        node: k,
                        placement: Placement::Interp,
                        what: why.clone(),
                        flops: 0.0,
                        bytes: None,
                    },
                }
            })
            .collect()
    }

    fn report(&self) -> String {
        let m = &self.module;
        let mut out = format!("# adapter: {}\n", self.gpu.adapter());
        let name = |v: ValueId| m.name(v).to_string();
        let line = |dir: &str, t: &Transfer| {
            format!(
                "transfer  %{} {dir} {} bytes ({})\n",
                name(t.value),
                t.bytes,
                t.why
            )
        };
        for t in &self.upload_inputs {
            out.push_str(&line("cpu → gpu", t));
        }
        let mut cpu = 0;
        for &k in &self.schedule {
            let st = &self.steps[k];
            let n = &m.body.nodes[k];
            let first = n
                .outputs
                .first()
                .map(|&o| name(o))
                .unwrap_or_else(|| "?".into());
            for t in self.download_before.get(&k).into_iter().flatten() {
                out.push_str(&line("gpu → cpu", t));
            }
            match &st.kind {
                GpuStepKind::Gpu(kernel) => {
                    out.push_str(&format!("gpu  %{first} ({}): {}\n", n.op, kernel.describe))
                }
                GpuStepKind::If {
                    then_branch,
                    else_branch,
                } => out.push_str(&format!(
                    "gpu  %{first} ({}): {}\n",
                    n.op,
                    branches_what(then_branch, else_branch)
                )),
                GpuStepKind::Cpu { why } => {
                    cpu += 1;
                    out.push_str(&format!("cpu  %{first} ({}): {why}\n", n.op));
                }
            }
            for t in self.upload_after.get(&k).into_iter().flatten() {
                out.push_str(&line("cpu → gpu", t));
            }
        }
        for t in &self.download_outputs {
            out.push_str(&line("gpu → cpu", t));
        }
        let total = self.steps.len();
        out.push_str(&format!(
            "# {total} steps: {} on the gpu, {cpu} on the cpu, {} transfers\n",
            total - cpu,
            self.transfer_count()
        ));
        out
    }

    fn adapter(&self) -> Option<String> {
        Some(self.gpu.adapter())
    }

    fn transfers(&self) -> Option<usize> {
        Some(self.transfer_count())
    }

    fn memory(&self) -> MemoryUse {
        MemoryUse {
            arena_bytes: self.arena_bytes as usize,
            arena_values: self.arena_values,
            unplanned: vec![],
        }
    }
}
