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
    /// The instruction set of generated code.
    pub target_cpu: kiln_runtime::cpu::jit::TargetCpu,
}

impl Default for CpuOptions {
    fn default() -> CpuOptions {
        CpuOptions {
            opt_level: 2,
            threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            target_cpu: Default::default(),
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
    super::optimize_static(&mut s, opts.opt_level)?;
    let steps = s
        .body
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Step {
            node: i,
            kind: match lower_node(&s, n, opts.target_cpu) {
                Ok(((kernel, what, flops), captured)) => StepKind::Native {
                    kernel,
                    what,
                    flops,
                    captured,
                },
                Err(why) => StepKind::Interp { why },
            },
        })
        .collect();
    Executable::new(s, steps, opts.threads)
}

/// A lowered node: its kernel, a description, its flops per run.
pub(super) type Lowered = (Box<dyn NativeKernel>, String, f64);

/// The lowering table: a native kernel for `n` and the operands it holds
/// itself, or why there is none.
fn lower_node(
    m: &Module,
    n: &Node,
    target: kiln_runtime::cpu::jit::TargetCpu,
) -> Result<(Lowered, Vec<usize>), String> {
    let plain = |l: Result<Lowered, String>| l.map(|l| (l, vec![]));
    match n.op.as_str() {
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Identity" => plain(reshape(m, n)),
        "Transpose" => plain(transpose(m, n)),
        "Gather" => plain(gather(m, n)),
        "Concat" => plain(concat(m, n)),
        "Cast" => plain(cast(m, n)),
        "Expand" => plain(expand(m, n)),
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" => {
            // The generated loop covers trailing axes (with producers
            // fused); any axes at all fall back to the odometer kernel.
            super::cpu_native::single_node_loop(m, n, target)
                .or_else(|_| reduce(m, n))
                .map(|l| (l, vec![]))
        }
        "kiln.Fusion" => super::cpu_native::fusion(m, n, target),
        "MatMul" | "Gemm" | "Conv" => super::cpu_native::dense(m, n),
        "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" => {
            plain(super::cpu_native::pool(m, n))
        }
        op => super::cpu_native::single_node_loop(m, n, target)
            .map(|l| (l, vec![]))
            .map_err(|e| format!("no native kernel for {op} ({e})")),
    }
}

/// The static shape of a tensor value.
pub(super) fn static_shape(m: &Module, v: ValueId) -> Result<Vec<usize>, String> {
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
        if let Data::F32(v) = &x.data {
            // Into a recycled buffer: a fresh one pays its page faults on
            // every run (MiniLM's 196 KB head reshapes: 0.21 -> 0.14 ms a
            // run in all).
            let mut out = kiln_runtime::cpu::buffers::output(v.len());
            out.copy_from_slice(v);
            let t = Tensor::new(self.out.clone(), Data::F32(out));
            return Ok(vec![t.map_err(|e| e.to_string())?]);
        }
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
    let out = static_shape(m, *out)?;
    Ok((Box::new(Reshape { out }), format!("{} (copy)", n.op), 0.0))
}

/// Apply a generic movement function to the data of the element types the
/// movement kernels take (f32, i64, i32); `None` for others.
macro_rules! movable {
    ($d:expr, |$v:ident| $body:expr) => {
        match $d {
            Data::F32($v) => Some(Data::F32($body)),
            Data::I64($v) => Some(Data::I64($body)),
            Data::I32($v) => Some(Data::I32($body)),
            _ => None,
        }
    };
}

fn movable_elem(m: &Module, v: ValueId) -> Result<(), String> {
    match m.ty(v).as_tensor().map(|t| t.elem) {
        Some(kiln_ir::ElemType::F32 | kiln_ir::ElemType::I64 | kiln_ir::ElemType::I32) => Ok(()),
        Some(e) => Err(format!("no native movement of {e}")),
        None => Err("not a tensor".into()),
    }
}

fn operand<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor, String> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| format!("operand {i} is missing"))
}

struct Transpose {
    shape: Vec<usize>,
    perm: Vec<usize>,
    out: Vec<usize>,
}

impl NativeKernel for Transpose {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let x = operand(inputs, 0)?;
        let d = movable!(&x.data, |v| kiln_runtime::cpu::movement::transpose(
            v,
            &self.shape,
            &self.perm
        ))
        .ok_or("unsupported element type")?;
        Ok(vec![
            Tensor::new(self.out.clone(), d).map_err(|e| e.to_string())?
        ])
    }
}

fn transpose(m: &Module, n: &Node) -> Result<Lowered, String> {
    let x = n.input(0).ok_or("no operand")?;
    movable_elem(m, x)?;
    let shape = static_shape(m, x)?;
    let r = shape.len();
    let perm: Vec<usize> = match n.attrs.get("perm").and_then(kiln_ir::Attr::as_ints) {
        Some(p) => p
            .iter()
            .map(|&a| usize::try_from(a).map_err(|e| e.to_string()))
            .collect::<Result<_, _>>()?,
        None => (0..r).rev().collect(),
    };
    let mut seen = vec![false; r];
    if perm.len() != r
        || perm
            .iter()
            .any(|&a| a >= r || std::mem::replace(&mut seen[a], true))
    {
        return Err(format!("perm {perm:?} is not a permutation of {r} axes"));
    }
    let out = static_shape(m, *n.outputs.first().ok_or("no result")?)?;
    let what = format!("Transpose {perm:?}");
    Ok((Box::new(Transpose { shape, perm, out }), what, 0.0))
}

struct Gather {
    outer: usize,
    rows: usize,
    row_len: usize,
    out: Vec<usize>,
}

impl NativeKernel for Gather {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let x = operand(inputs, 0)?;
        let idx = operand(inputs, 1)?;
        let idx: Vec<i64> = match &idx.data {
            Data::I64(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&i| i as i64).collect(),
            _ => return Err("indices must be i64 or i32".into()),
        };
        let d = match &x.data {
            Data::F32(v) => Data::F32(kiln_runtime::cpu::movement::gather(
                v,
                self.outer,
                self.rows,
                self.row_len,
                &idx,
            )?),
            Data::I64(v) => Data::I64(kiln_runtime::cpu::movement::gather(
                v,
                self.outer,
                self.rows,
                self.row_len,
                &idx,
            )?),
            Data::I32(v) => Data::I32(kiln_runtime::cpu::movement::gather(
                v,
                self.outer,
                self.rows,
                self.row_len,
                &idx,
            )?),
            _ => return Err("unsupported element type".into()),
        };
        Ok(vec![
            Tensor::new(self.out.clone(), d).map_err(|e| e.to_string())?
        ])
    }
}

/// The node's `axis` attribute (default 0), made non-negative for rank `r`.
fn axis_attr(n: &Node, r: i64) -> Result<usize, String> {
    let axis = n
        .attrs
        .get("axis")
        .and_then(kiln_ir::Attr::as_int)
        .unwrap_or(0);
    let axis = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&axis) {
        return Err(format!("axis {axis} out of range"));
    }
    Ok(axis as usize)
}

fn gather(m: &Module, n: &Node) -> Result<Lowered, String> {
    let x = n.input(0).ok_or("no data operand")?;
    movable_elem(m, x)?;
    let shape = static_shape(m, x)?;
    let r = shape.len() as i64;
    let a = axis_attr(n, r)?;
    let out = static_shape(m, *n.outputs.first().ok_or("no result")?)?;
    let k = Gather {
        outer: shape[..a].iter().product(),
        rows: shape[a],
        row_len: shape[a + 1..].iter().product(),
        out,
    };
    Ok((Box::new(k), format!("Gather axis {a}"), 0.0))
}

struct Concat {
    outer: usize,
    inner: Vec<usize>,
    out: Vec<usize>,
}

impl NativeKernel for Concat {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let parts: Vec<&Tensor> = (0..inputs.len())
            .map(|i| operand(inputs, i))
            .collect::<Result<_, _>>()?;
        let n = self.out.iter().product();
        // Every element is written: f32 results take a recycled buffer.
        macro_rules! cat {
            ($var:ident, $out:expr) => {{
                let mut v = vec![];
                for p in &parts {
                    match &p.data {
                        Data::$var(d) => v.push(d.as_slice()),
                        _ => return Err("operands differ in type".into()),
                    }
                }
                let mut out = $out;
                kiln_runtime::cpu::movement::concat(&v, self.outer, &self.inner, &mut out);
                Data::$var(out)
            }};
        }
        let d = match parts.first().map(|p| &p.data) {
            Some(Data::F32(_)) => cat!(F32, kiln_runtime::cpu::buffers::output(n)),
            Some(Data::I64(_)) => cat!(I64, vec![0; n]),
            Some(Data::I32(_)) => cat!(I32, vec![0; n]),
            _ => return Err("unsupported element type".into()),
        };
        Ok(vec![
            Tensor::new(self.out.clone(), d).map_err(|e| e.to_string())?
        ])
    }
}

fn concat(m: &Module, n: &Node) -> Result<Lowered, String> {
    let out_v = *n.outputs.first().ok_or("no result")?;
    movable_elem(m, out_v)?;
    let out = static_shape(m, out_v)?;
    let r = out.len() as i64;
    let a = axis_attr(n, r)?;
    let mut inner = vec![];
    for v in &n.inputs {
        let v = v.ok_or("omitted operand")?;
        let s = static_shape(m, v)?;
        inner.push(s[a..].iter().product());
    }
    let k = Concat {
        outer: out[..a].iter().product(),
        inner,
        out,
    };
    Ok((Box::new(k), format!("Concat axis {a}"), 0.0))
}

/// Cast to f32 from the integer and bool types (exact or rounded to
/// nearest, as `as` does), or f32 to f32.
struct CastToF32 {
    out: Vec<usize>,
}

impl NativeKernel for CastToF32 {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let x = operand(inputs, 0)?;
        let v: Vec<f32> = match &x.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&a| a as f32).collect(),
            Data::I32(v) => v.iter().map(|&a| a as f32).collect(),
            Data::Bool(v) => v.iter().map(|&a| a as u8 as f32).collect(),
            _ => return Err("unsupported cast".into()),
        };
        Ok(vec![
            Tensor::new(self.out.clone(), Data::F32(v)).map_err(|e| e.to_string())?
        ])
    }
}

fn cast(m: &Module, n: &Node) -> Result<Lowered, String> {
    use kiln_ir::ElemType as E;
    let x = n.input(0).ok_or("no operand")?;
    let out_v = *n.outputs.first().ok_or("no result")?;
    let from = m.ty(x).as_tensor().map(|t| t.elem);
    let to = m.ty(out_v).as_tensor().map(|t| t.elem);
    match (from, to) {
        (Some(E::F32 | E::I64 | E::I32 | E::Bool), Some(E::F32)) => {}
        (f, t) => return Err(format!("no native cast {f:?} -> {t:?}")),
    }
    let out = static_shape(m, out_v)?;
    Ok((Box::new(CastToF32 { out }), "Cast to f32".into(), 0.0))
}

struct Expand {
    in_shape: Vec<usize>,
    out: Vec<usize>,
}

impl NativeKernel for Expand {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        use kiln_runtime::cpu::reduce::broadcast;
        let x = operand(inputs, 0)?;
        let d = match &x.data {
            Data::Bool(v) => Data::Bool(broadcast(v, &self.in_shape, &self.out)),
            d => movable!(d, |v| broadcast(v, &self.in_shape, &self.out))
                .ok_or("unsupported element type")?,
        };
        Ok(vec![
            Tensor::new(self.out.clone(), d).map_err(|e| e.to_string())?
        ])
    }
}

fn expand(m: &Module, n: &Node) -> Result<Lowered, String> {
    let x = n.input(0).ok_or("no operand")?;
    if m.ty(x).as_tensor().map(|t| t.elem) != Some(kiln_ir::ElemType::Bool) {
        movable_elem(m, x)?;
    }
    let in_shape = static_shape(m, x)?;
    let out = static_shape(m, *n.outputs.first().ok_or("no result")?)?;
    if in_shape.len() > out.len() {
        return Err("expand to a lower rank".into());
    }
    Ok((Box::new(Expand { in_shape, out }), "Expand".into(), 0.0))
}

struct Reduce {
    shape: Vec<usize>,
    axes: Vec<usize>,
    op: kiln_runtime::cpu::reduce::ReduceOp,
    out: Vec<usize>,
}

impl NativeKernel for Reduce {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let x = operand(inputs, 0)?;
        let Data::F32(v) = &x.data else {
            return Err("reduction of non-f32".into());
        };
        let r = kiln_runtime::cpu::reduce::reduce(v, &self.shape, &self.axes, self.op);
        Ok(vec![
            Tensor::new(self.out.clone(), Data::F32(r)).map_err(|e| e.to_string())?
        ])
    }
}

fn reduce(m: &Module, n: &Node) -> Result<Lowered, String> {
    let x = n.input(0).ok_or("no operand")?;
    if m.ty(x).as_tensor().map(|t| t.elem) != Some(kiln_ir::ElemType::F32) {
        return Err("reduction of non-f32".into());
    }
    let shape = static_shape(m, x)?;
    let out = static_shape(m, *n.outputs.first().ok_or("no result")?)?;
    reduce_of_shape(m, n, shape, out)
}

/// The odometer reduction of node `n` over an f32 operand of `shape` (static,
/// given by the caller: inside a fusion body the node's own types may be
/// symbolic), giving `out`.
pub(super) fn reduce_of_shape(
    m: &Module,
    n: &Node,
    shape: Vec<usize>,
    out: Vec<usize>,
) -> Result<Lowered, String> {
    use kiln_runtime::cpu::reduce::ReduceOp;
    let r = shape.len() as i64;
    let axes: Option<Vec<i64>> = match n.input(1) {
        Some(a) => Some(
            m.constant(a)
                .and_then(|d| d.to_i64_vec())
                .ok_or("axes are not constant")?,
        ),
        None => n
            .attrs
            .get("axes")
            .and_then(kiln_ir::Attr::as_ints)
            .map(<[i64]>::to_vec),
    };
    let noop = n
        .attrs
        .get("noop_with_empty_axes")
        .and_then(kiln_ir::Attr::as_int)
        .unwrap_or(0)
        != 0;
    let axes: Vec<usize> = match axes {
        Some(a) if !a.is_empty() => {
            let mut v = vec![];
            for x in a {
                let x = if x < 0 { x + r } else { x };
                if !(0..r).contains(&x) {
                    return Err(format!("axis {x} out of range"));
                }
                if !v.contains(&(x as usize)) {
                    v.push(x as usize);
                }
            }
            v
        }
        _ if noop => return Err("noop reduction".into()),
        _ => (0..shape.len()).collect(),
    };
    let op = match n.op.as_str() {
        "ReduceSum" => ReduceOp::Sum,
        "ReduceMean" => ReduceOp::Mean,
        "ReduceMax" => ReduceOp::Max,
        "ReduceMin" => ReduceOp::Min,
        op => return Err(format!("{op} is not a reduction")),
    };
    let kept: usize = (0..shape.len())
        .filter(|a| !axes.contains(a))
        .map(|a| shape[a])
        .product();
    if out.iter().product::<usize>() != kept {
        return Err(format!(
            "reduction of {shape:?} over {axes:?} cannot give {out:?}"
        ));
    }
    let what = format!("{} over axes {axes:?}", n.op);
    Ok((
        Box::new(Reduce {
            shape,
            axes,
            op,
            out,
        }),
        what,
        0.0,
    ))
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
