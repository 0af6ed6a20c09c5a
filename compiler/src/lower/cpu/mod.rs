//! The CPU backend's lowering: from a specialized module that went through
//! the cpu pipeline (optimization plus the cpu lowering passes, so every
//! rewrite shows in `--print-after-all`), one step per top-level node of a
//! [`CpuExecutable`]. This module plans; the runtime executes.
//!
//! The lowering table lives in [`lower_node`]: dense MatMul/Gemm/Conv and
//! pooling go to the kernel library (constant weights packed here, once;
//! [`dense`]), fusion regions to Cranelift (an epilogue region runs its
//! matmul/conv in the kernel library, then the generated loop over the
//! result in place; [`fusion`]), shape-only ops share or copy their
//! operand's data ([`movement`]). Everything else runs the interpreter's
//! kernel, and the executable's report lists those nodes and why.

mod control;
mod dense;
mod dynamic;
pub mod epilogue;
mod fusion;
mod movement;
mod quant;
mod recurrent;
mod tile_store;

use std::collections::{HashMap, HashSet};

use kiln_ir::{Module, Node, ValueId};
use kiln_runtime::cpu::jit::TargetCpu;
use kiln_runtime::cpu::{CpuExecutable, Layout, NativeStep, Step, StepKind};

use crate::passes::memory_plan;

pub use control::CompileFn;

/// How to compile for the CPU.
#[derive(Clone, Debug)]
pub struct CpuOptions {
    /// The pass pipeline's level (0, 1 or 2).
    pub opt_level: u8,
    /// Threads kernels may use.
    pub threads: usize,
    /// The instruction set of generated code.
    pub target_cpu: TargetCpu,
    /// The largest value and arena the executable may have, and what its
    /// interpreted steps may allocate and loop.
    pub limits: kiln_ir::Limits,
}

impl Default for CpuOptions {
    fn default() -> CpuOptions {
        CpuOptions {
            opt_level: 2,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            target_cpu: Default::default(),
            limits: Default::default(),
        }
    }
}

/// Build the executable of a module that is already specialized to static
/// shapes and has been through the cpu pipeline; intermediates go where
/// the memory plan puts them, offsets multiples of `align`.
///
/// Weights are held once: a constant that every reader's kernel captured
/// (packed into its plan) leaves the module as soon as its last reader is
/// lowered, so the packed copy replaces the original instead of joining it
/// (ResNet-50's peak memory was twice its weights). The module keeps the
/// constant's type, with its data elided.
///
/// A node with regions runs them as executables `compile` makes.
pub fn build(
    mut s: Module,
    opts: &CpuOptions,
    align: u64,
    compile: CompileFn,
) -> Result<CpuExecutable, String> {
    crate::lower::common::check_static_sizes(&s, &opts.limits)?;
    let droppable = droppable_constants(&s);
    let mut last_reader: HashMap<ValueId, usize> = HashMap::new();
    for (i, n) in s.body.nodes.iter().enumerate() {
        for &v in n.inputs.iter().flatten() {
            if droppable.contains(&v) {
                last_reader.insert(v, i);
            }
        }
    }
    // Constants some reader did not capture: they stay.
    let mut kept: HashSet<ValueId> = HashSet::new();
    let mut steps: Vec<Step> = Vec::with_capacity(s.body.nodes.len());
    let mut weights = dense::Weights::default();
    for i in 0..s.body.nodes.len() {
        let n = &s.body.nodes[i];
        let kind = match lower_node(&s, n, opts.target_cpu, &mut weights).and_then(|native| {
            // The executable gives every native result a buffer of its
            // static type (in the arena or not); a result inference left
            // dynamic (-O0 keeps shape arithmetic unfolded) runs on the
            // interpreter, which sizes results as it goes.
            for &o in &n.outputs {
                let viewable = s
                    .ty(o)
                    .as_tensor()
                    .is_some_and(|t| kiln_runtime::cpu::view::is_viewable(t.elem));
                if !viewable {
                    return Err(format!("result %{} has no native layout", s.name(o)));
                }
                s.static_shape(o)?;
            }
            Ok(native)
        }) {
            Ok(native) => StepKind::Native(native),
            // A fusion's body is code, not a region a kernel runs.
            Err(why) if n.op != "kiln.Fusion" && n.regions().next().is_some() => {
                match control::control(&s, n, opts, compile) {
                    Ok(c) => StepKind::Control(c),
                    Err(_) => StepKind::Interp { why },
                }
            }
            // Shapes that depend on data, or operands whose values decide
            // how the node runs (Resize's sizes, a reduction's axes, Slice's
            // starts) given only at run time: lowered per key when it runs.
            Err(why)
                if dynamic::has_dynamic_shape(&s, n) || dynamic::has_run_time_values(&s, n) =>
            {
                match dynamic::dynamic(&s, n, opts.target_cpu) {
                    Ok(d) => StepKind::Dynamic(d),
                    Err(e) => StepKind::Interp {
                        why: format!("{why}; {e}"),
                    },
                }
            }
            Err(why) => StepKind::Interp { why },
        };
        let mut done = vec![];
        for (k, v) in n.inputs.iter().enumerate() {
            let Some(v) = *v else { continue };
            let captured = matches!(&kind, StepKind::Native(st) if st.captured.contains(&k));
            if !captured {
                kept.insert(v);
            }
            if last_reader.get(&v) == Some(&i) && !kept.contains(&v) {
                done.push(v);
            }
        }
        steps.push(Step { node: i, kind });
        for v in done {
            if let Some(d) = s.constant(v) {
                if std::sync::Arc::strong_count(d) == 1 {
                    // No other value shares the buffer: it goes now.
                    weights.forget(d);
                }
            }
            s.elide_constant(v);
        }
    }
    let layout = layout(&s, &steps, align)?;
    opts.limits
        .total(|| "the executable's arena".to_string(), layout.arena_bytes)
        .map_err(|e| e.to_string())?;
    CpuExecutable::new(s, steps, opts.threads, layout)
}

/// Every value a region's nodes read (nested regions included) and its
/// outputs.
fn region_uses(r: &kiln_ir::Region, out: &mut HashSet<ValueId>) {
    for n in &r.nodes {
        out.extend(n.inputs.iter().flatten());
        for (_, sub) in n.regions() {
            region_uses(sub, out);
        }
    }
    out.extend(&r.outputs);
}

/// Top-level constants only top-level nodes read (not graph outputs, not
/// used inside nested regions): those a kernel may take over.
fn droppable_constants(s: &Module) -> HashSet<ValueId> {
    let mut out: HashSet<ValueId> = s.body.constants.iter().copied().collect();
    for o in &s.body.outputs {
        out.remove(o);
    }
    fn nested(r: &kiln_ir::Region, out: &mut HashSet<ValueId>) {
        for n in &r.nodes {
            for v in n.inputs.iter().flatten() {
                out.remove(v);
            }
            for (_, sub) in n.regions() {
                nested(sub, out);
            }
        }
        for v in &r.outputs {
            out.remove(v);
        }
    }
    for n in &s.body.nodes {
        if n.op == "kiln.Fusion" {
            // A fusion body is closed: it reads only its own operands.
            continue;
        }
        for (_, sub) in n.regions() {
            nested(sub, &mut out);
        }
    }
    out
}

/// The memory plan of the lowered module as the executable runs it. A
/// node may write a result over an operand when its kernel allows aliasing
/// (an interpreted step touches no arena value at all); values with no
/// fixed size (sequences, strings) stay out of the arena, and so do values
/// an interpreted step makes or reads (nested regions included): the
/// interpreter works on tensors, and copying them in and out of the arena
/// on every step cost ssdlite's 1,023 interpreted steps 2 %.
fn layout(s: &Module, steps: &[Step], align: u64) -> Result<Layout, String> {
    let may_alias = |ni: usize| match steps.get(ni).map(|st| &st.kind) {
        Some(StepKind::Native(n)) => n.kernel.in_place(),
        Some(StepKind::Interp { .. } | StepKind::Control(_) | StepKind::Dynamic(_)) => true,
        None => false,
    };
    let mut interpreted: HashSet<ValueId> = HashSet::new();
    for st in steps {
        if !matches!(st.kind, StepKind::Native(_)) {
            let n = &s.body.nodes[st.node];
            interpreted.extend(&n.outputs);
            interpreted.extend(n.inputs.iter().flatten());
            for (_, sub) in n.regions() {
                region_uses(sub, &mut interpreted);
            }
        }
    }
    let keep_out = |v: ValueId| interpreted.contains(&v);
    let opts = memory_plan::PlanOptions {
        align,
        in_place: Some(&may_alias),
        skip_unsized: true,
        keep_out: Some(&keep_out),
        // The Concat step copies only operands not already in place.
        concat_in_place: true,
        // The Slice and Split steps skip results already in place.
        slice_in_place: true,
    };
    let plan = memory_plan::plan_with(s, &Default::default(), &opts)
        .map_err(|e| format!("memory plan: {e}"))?;
    // The plan sizes values whose shapes it could evaluate itself (shape
    // arithmetic left unfolded at -O0); the executable places only values
    // whose type in the module is static, the rest live outside the arena.
    Ok(Layout {
        schedule: plan.schedule,
        offsets: plan
            .buffers
            .iter()
            .filter(|b| s.static_shape(b.value).is_ok())
            .map(|b| (b.value, b.offset))
            .collect(),
        arena_bytes: plan.arena_bytes,
    })
}

/// The lowering table: a native step for `n`, or why there is none.
fn lower_node(
    m: &Module,
    n: &Node,
    target: TargetCpu,
    weights: &mut dense::Weights,
) -> Result<NativeStep, String> {
    // Views (Reshape, Flatten, Squeeze, Unsqueeze, Identity): a copy of
    // the operand's bytes under the result's shape.
    if kiln_ir::ops::traits(&n.op).view {
        return movement::reshape(m, n);
    }
    match n.op.as_str() {
        "Transpose" => movement::transpose(m, n),
        "Gather" => movement::gather(m, n),
        "Concat" => movement::concat(m, n),
        "Slice" => movement::slice(m, n),
        "Pad" => movement::pad(m, n),
        "Split" => movement::split(m, n),
        "Resize" => movement::resize(m, n),
        "ScatterElements" | "Scatter" => movement::scatter_elements(m, n),
        "RoiAlign" => movement::roi_align(m, n),
        "GridSample" => movement::grid_sample(m, n),
        "ConstantOfShape" => movement::constant_of_shape(m, n),
        "GatherND" => movement::gather_nd(m, n),
        "TopK" => movement::top_k(m, n),
        "NonZero" => movement::non_zero(m, n),
        "NonMaxSuppression" => movement::non_max_suppression(m, n),
        "Dropout" => movement::dropout(m, n),
        "Einsum" => movement::einsum(m, n),
        "OneHot" => movement::one_hot(m, n),
        "Hardmax" => movement::hardmax(m, n),
        "ArgMax" | "ArgMin" => movement::arg_best(m, n),
        "GatherElements" => movement::gather_elements(m, n),
        "Tile" => movement::tile(m, n),
        "CumSum" => movement::cumsum(m, n),
        "ScatterND" => movement::scatter_nd(m, n),
        "TensorScatter" => movement::tensor_scatter(m, n),
        "Trilu" => movement::trilu(m, n),
        "InstanceNormalization" | "GroupNormalization" => movement::group_norm(m, n),
        "LayerNormalization" => fusion::single_node_loop(m, n, target)
            .or_else(|e| movement::layer_norm_stats(m, n).map_err(|e2| format!("{e}; {e2}"))),
        "RNN" | "GRU" | "LSTM" | "kiln.DequantLSTM" => recurrent::recurrent(m, n),
        "Cast" | "CastLike" => movement::cast(m, n),
        "Expand" => movement::expand(m, n),
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" => {
            // The generated loop covers trailing axes (with producers
            // fused); any axes at all fall back to the odometer kernel.
            fusion::single_node_loop(m, n, target).or_else(|_| movement::reduce(m, n))
        }
        // f32 products and norms are generated loops over trailing axes,
        // else the odometer kernel; on integers, the exact integer
        // reduction.
        "ReduceProd" | "ReduceL1" | "ReduceL2" | "ReduceSumSquare" | "ReduceLogSum"
        | "ReduceLogSumExp" => fusion::single_node_loop(m, n, target)
            .or_else(|e| movement::reduce(m, n).map_err(|_| e))
            .map_err(|e| format!("no native kernel for {} ({e})", n.op)),
        "Softmax" | "LogSoftmax" => {
            fusion::single_node_loop(m, n, target).or_else(|_| movement::softmax_axis(m, n))
        }
        // A region the generators refuse runs node by node, natively
        // where each node lowers; the generators' reason is the one to
        // report otherwise.
        "kiln.Fusion" => fusion::fusion(m, n, target, weights)
            .or_else(|e| fusion::unfused(m, n, target, weights).map_err(|_| e)),
        op if dense::DENSE_OPS.contains(&op) => dense::dense(m, n, weights),
        "MaxPool" | "GlobalMaxPool" => {
            dense::pool(m, n).or_else(|e| quant::max_pool(m, n).map_err(|e8| format!("{e}; {e8}")))
        }
        "AveragePool" | "GlobalAveragePool" => dense::pool(m, n),
        "QuantizeLinear" => quant::quantize(m, n),
        "DequantizeLinear" => quant::dequantize(m, n),
        "DynamicQuantizeLinear" => quant::dynamic_quantize(m, n),
        "QLinearConv" | "ConvInteger" => quant::conv(m, n),
        "QLinearMatMul" | "MatMulInteger" => quant::matmul(m, n),
        "kiln.Lookup" => quant::lookup(m, n),
        op => fusion::single_node_loop(m, n, target)
            .or_else(|e| movement::typed(m, n).map_err(|_| e))
            .map_err(|e| format!("no native kernel for {op} ({e})")),
    }
}
