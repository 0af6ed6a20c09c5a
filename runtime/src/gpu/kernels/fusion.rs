//! Fusion regions as compute shaders, from the same [`Plan`] the Cranelift
//! generator reads: an elementwise DAG is one thread per element, a
//! trailing Softmax/LogSoftmax/LayerNormalization/Reduce one workgroup per
//! row (a tree in workgroup memory), and an epilogue becomes a WGSL
//! function `epi(e, acc)` that a matmul or conv shader applies to each
//! element before it stores it.

use std::fmt::Write;

use kiln_ir::{Module, Node, Region};

use crate::fusion_plan::{self, Expr, Kind, Plan, RedOp, Src};
use crate::gpu::wgsl::{grid, grid_for, lit, op_expr, Bind, GpuKernel, Shader, H_TREE, ROW_WG, WG};

/// How the expressions of a plan read their leaves.
struct Leaves {
    /// The array name of each leaf, or an expression standing for it.
    read: Vec<LeafRead>,
}

enum LeafRead {
    Array(String),
    /// The value is this WGSL expression (an anchor's accumulator).
    Expr(String),
}

fn bind_leaves(
    sh: &mut Shader,
    plan: &Plan,
    region_binds: &[Bind],
    data: &mut Vec<Vec<u8>>,
    substitute: Option<(usize, &str)>,
) -> Result<Leaves, String> {
    let mut read = vec![];
    let mut const_bind: Vec<Option<String>> = vec![None; plan.consts.len()];
    for leaf in &plan.leaves {
        read.push(match leaf.src {
            Src::Input(i) if substitute.is_some_and(|(k, _)| k == i) => {
                LeafRead::Expr(substitute.map(|s| s.1.to_string()).unwrap_or_default())
            }
            Src::Input(i) => {
                let b = *region_binds
                    .get(i)
                    .ok_or("internal: region input without a binding")?;
                LeafRead::Array(sh.bind(b, "f32"))
            }
            Src::Const(c) => {
                if const_bind[c].is_none() {
                    let bytes: Vec<u8> = plan.consts[c]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect();
                    data.push(bytes);
                    const_bind[c] = Some(sh.bind(Bind::Data(data.len() - 1), "f32"));
                }
                LeafRead::Array(const_bind[c].clone().unwrap_or_default())
            }
        });
    }
    Ok(Leaves { read })
}

/// Statements computing `roots` at row `r`, run element `i` (WGSL `u32`s in
/// scope); returns them and each root's expression.
fn emit(
    sh: &mut Shader,
    plan: &Plan,
    leaves: &Leaves,
    roots: &[usize],
    tag: &str,
) -> (String, Vec<String>) {
    let mut s = String::new();
    // The row's coordinates over the collapsed outer dims.
    let mut inner_prod = 1usize;
    let mut coords = vec![String::new(); plan.outer.len()];
    for d in (0..plan.outer.len()).rev() {
        coords[d] = format!("((r / {inner_prod}u) % {}u)", plan.outer[d]);
        inner_prod *= plan.outer[d];
    }
    // Which exprs the roots need.
    let mut need = vec![false; plan.exprs.len()];
    let mut stack: Vec<usize> = roots.to_vec();
    while let Some(e) = stack.pop() {
        if std::mem::replace(&mut need[e], true) {
            continue;
        }
        if let Expr::Node(_, args) = &plan.exprs[e] {
            stack.extend(args);
        }
    }
    for (j, e) in plan.exprs.iter().enumerate() {
        if !need[j] {
            continue;
        }
        let v = match e {
            Expr::Imm(x) => lit(*x),
            Expr::Leaf(k) => match &leaves.read[*k] {
                LeafRead::Expr(x) => x.clone(),
                LeafRead::Array(a) => {
                    let l = &plan.leaves[*k];
                    let mut off: Vec<String> = l
                        .outer_strides
                        .iter()
                        .zip(&coords)
                        .filter(|(&st, _)| st != 0)
                        .map(|(st, c)| format!("{c} * {st}u"))
                        .collect();
                    if l.inner_stride != 0 {
                        off.push("i".into());
                    }
                    if off.is_empty() {
                        off.push("0u".into());
                    }
                    format!("{a}[{}]", off.join(" + "))
                }
            },
            Expr::Node(op, args) => {
                let a: Vec<String> = args.iter().map(|k| format!("{tag}{k}")).collect();
                op_expr(sh, op, &a)
            }
        };
        let _ = writeln!(s, "let {tag}{j}: f32 = {v};");
    }
    (s, roots.iter().map(|r| format!("{tag}{r}")).collect())
}

/// A kernel for a closed region (a `kiln.Fusion` body or a one-node
/// region): `region_binds[i]` binds region input `i`; results bind the
/// node's results in order.
pub fn region_kernel(
    m: &Module,
    n: &Node,
    region: &Region,
    shapes: &[Vec<usize>],
    region_binds: &[Bind],
) -> Result<GpuKernel, String> {
    let outs: Vec<Bind> = (0..region.outputs.len()).map(Bind::Result).collect();
    region_kernel_to(m, n, region, shapes, region_binds, &outs)
}

/// [`region_kernel`] writing region output `j` to `outs[j]`.
pub fn region_kernel_to(
    m: &Module,
    n: &Node,
    region: &Region,
    shapes: &[Vec<usize>],
    region_binds: &[Bind],
    outs: &[Bind],
) -> Result<GpuKernel, String> {
    let plan = fusion_plan::plan(m, region, shapes)?;
    let mut sh = Shader::new(n);
    let mut data = vec![];
    let leaves = bind_leaves(&mut sh, &plan, region_binds, &mut data, None)?;
    let rows = plan.rows() as u64;
    let inner = plan.inner as u64;
    let dispatch = match &plan.kind {
        Kind::Elementwise { roots } => {
            let total = rows * inner;
            let (stmts, vals) = emit(&mut sh, &plan, &leaves, roots, "x");
            let mut body = format!(
                "if (gid >= {total}u) {{ return; }}\nlet r = gid / {inner}u;\nlet i = gid % {inner}u;\n{stmts}"
            );
            for (j, v) in vals.iter().enumerate() {
                let out = sh.bind(
                    *outs
                        .get(j)
                        .ok_or("internal: region output without a binding")?,
                    "f32",
                );
                let _ = writeln!(body, "{out}[gid] = {v};");
            }
            sh.finish(WG, &body, grid_for(total)?)
        }
        kind => {
            let out = sh.bind(
                *outs
                    .first()
                    .ok_or("internal: region output without a binding")?,
                "f32",
            );
            row_kernel(&mut sh, &plan, &leaves, kind, &out)?;
            let body = "row_main(wgi, li);".to_string();
            sh.finish(ROW_WG, &body, grid(rows)?)
        }
    };
    Ok(GpuKernel {
        dispatches: vec![dispatch],
        data,
        scratch: vec![],
        check: None,
        describe: plan.describe.clone(),
        flops: 0.0,
    })
}

/// One workgroup per row: reductions as trees in workgroup memory.
fn row_kernel(
    sh: &mut Shader,
    plan: &Plan,
    leaves: &Leaves,
    kind: &Kind,
    out: &str,
) -> Result<(), String> {
    let rows = plan.rows();
    let inner = plan.inner;
    let n = ROW_WG;
    sh.helper(H_TREE);
    let mut f = String::new();
    let val_fn = |sh: &mut Shader, f: &mut String, name: &str, root: usize| {
        let (stmts, v) = emit(sh, plan, leaves, &[root], "x");
        let _ = write!(
            f,
            "fn {name}(r: u32, i: u32) -> f32 {{\n{stmts}return {};\n}}\n",
            v[0]
        );
    };
    let ninf = lit(f32::NEG_INFINITY);
    // A wrapped grid may have a few workgroups past the last row: they
    // redo the last row (the same values to the same places) instead of
    // returning, which would put the barriers in non-uniform control flow.
    let guard = format!("let r = min(r0, {}u);", rows.max(1) - 1);
    match kind {
        Kind::Softmax { x, log } => {
            val_fn(sh, &mut f, "vx", *x);
            let store = if *log {
                "(vx(r, i) - mx) - log(s)"
            } else {
                "exp(vx(r, i) - mx) / s"
            };
            let _ = write!(
                f,
                "fn row_main(r0: u32, li: u32) {{\n{guard}\n\
                 var m = {ninf};\nfor (var i = li; i < {inner}u; i = i + {n}u) {{ let v = vx(r, i); m = select(max(m, v), m + v, knan(m) || knan(v)); }}\n\
                 let mx = tree_max(li, m);\n\
                 var a = 0.0;\nfor (var i = li; i < {inner}u; i = i + {n}u) {{ a = a + exp(vx(r, i) - mx); }}\n\
                 let s = tree_sum(li, a);\n\
                 for (var i = li; i < {inner}u; i = i + {n}u) {{ {out}[r * {inner}u + i] = {store}; }}\n}}\n"
            );
        }
        Kind::LayerNorm {
            x,
            scale,
            bias,
            eps,
        } => {
            val_fn(sh, &mut f, "vx", *x);
            val_fn(sh, &mut f, "vscale", *scale);
            let b = match bias {
                Some(b) => {
                    val_fn(sh, &mut f, "vbias", *b);
                    "vbias(r, i)"
                }
                None => "0.0",
            };
            let _ = write!(
                f,
                "fn row_main(r0: u32, li: u32) {{\n{guard}\n\
                 var a = 0.0;\nfor (var i = li; i < {inner}u; i = i + {n}u) {{ a = a + vx(r, i); }}\n\
                 let mean = tree_sum(li, a) / {inner}.0;\n\
                 var q = 0.0;\nfor (var i = li; i < {inner}u; i = i + {n}u) {{ let d = vx(r, i) - mean; q = q + d * d; }}\n\
                 let rstd = 1.0 / sqrt(tree_sum(li, q) / {inner}.0 + {eps});\n\
                 for (var i = li; i < {inner}u; i = i + {n}u) {{ {out}[r * {inner}u + i] = (vx(r, i) - mean) * rstd * vscale(r, i) + {b}; }}\n}}\n",
                eps = lit(*eps)
            );
        }
        Kind::Reduce { x, op } => {
            val_fn(sh, &mut f, "vx", *x);
            let (init, acc, tree, fin) = match op {
                RedOp::Sum => ("0.0".to_string(), "a = a + v;", "tree_sum", "t".to_string()),
                RedOp::Mean => (
                    "0.0".to_string(),
                    "a = a + v;",
                    "tree_sum",
                    // The mean of nothing is NaN.
                    if inner == 0 {
                        lit(f32::NAN)
                    } else {
                        format!("t / {}", lit(inner as f32))
                    },
                ),
                RedOp::Max => (
                    ninf.clone(),
                    "a = select(max(a, v), a + v, knan(a) || knan(v));",
                    "tree_max",
                    "t".to_string(),
                ),
            };
            let _ = write!(
                f,
                "fn row_main(r0: u32, li: u32) {{\n{guard}\n\
                 var a = {init};\nfor (var i = li; i < {inner}u; i = i + {n}u) {{ let v = vx(r, i); {acc} }}\n\
                 let t = {tree}(li, a);\n\
                 if (li == 0u) {{ {out}[r] = {fin}; }}\n}}\n"
            );
        }
        Kind::Elementwise { .. } => return Err("internal: not a row kernel".into()),
    }
    sh.fns.push_str(&f);
    Ok(())
}

/// A fused epilogue: the region after the anchor, its input shapes, the
/// binding of each region input, and which region input is the anchor's
/// result.
pub struct Epilogue<'a> {
    pub m: &'a Module,
    pub region: &'a Region,
    pub shapes: &'a [Vec<usize>],
    pub binds: &'a [Bind],
    pub anchor_input: usize,
}

/// An epilogue region over an anchor's result as a WGSL function
/// `fn epi(e: u32, acc: f32) -> f32` (e: the element's flat index in the
/// result) added to `sh`. Region input `anchor_input` is the anchor's
/// result; the region must be elementwise with one output of `out_shape`.
pub(crate) fn epilogue_fn(
    sh: &mut Shader,
    e: &Epilogue,
    out_shape: &[usize],
    data: &mut Vec<Vec<u8>>,
) -> Result<String, String> {
    let plan = fusion_plan::plan(e.m, e.region, e.shapes)?;
    let Kind::Elementwise { roots } = &plan.kind else {
        return Err("unsupported: an epilogue that reduces".into());
    };
    if roots.len() != 1 || plan.out_shapes.first().map(Vec::as_slice) != Some(out_shape) {
        return Err("unsupported: an epilogue of another shape or several results".into());
    }
    let leaves = bind_leaves(sh, &plan, e.binds, data, Some((e.anchor_input, "acc")))?;
    let (stmts, v) = emit(sh, &plan, &leaves, roots, "y");
    let _ = write!(
        sh.fns,
        "fn epi(e: u32, acc: f32) -> f32 {{\nlet r = e / {inner}u;\nlet i = e % {inner}u;\n{stmts}return {};\n}}\n",
        v[0],
        inner = plan.inner.max(1)
    );
    Ok(plan.describe.clone())
}
