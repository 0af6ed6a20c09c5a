//! Elementwise regions over mixed element types (f32, i32, i64, bool):
//! masks, comparisons, `Where`, logic, integer arithmetic and casts, which
//! the f32-only fusion plan does not describe. Every value of the region
//! is evaluated at the output element (an elementwise region's values all
//! broadcast to its result), each operand read through its own broadcast
//! offsets. f32 nodes go through a one-node fusion plan, so an op's
//! meaning stays in one place; the typed table here covers the rest.
//! A thread makes four elements when a result is bool (bytes, packed
//! four to a word: a thread owns its word).

use std::collections::HashMap;
use std::fmt::Write;

use kiln_ir::{Attr, ElemType, Module, Node, Region, ValueId};

use crate::fusion_plan::{self, Expr, Src};
use crate::gpu::wgsl::{grid_for, lit, op_expr, Bind, GpuKernel, Shader, WG};

/// How a value of each element type lives in WGSL.
fn wgsl_ty(e: ElemType) -> Result<&'static str, String> {
    Ok(match e {
        ElemType::F32 => "f32",
        ElemType::I32 => "i32",
        ElemType::I64 => "vec2<u32>",
        ElemType::Bool => "bool",
        other => return Err(format!("{other} values in a gpu region")),
    })
}

/// Reading element `o` of array `a` holding `e` data.
fn read(a: &str, e: ElemType, o: &str) -> String {
    match e {
        ElemType::F32 => format!("bitcast<f32>({a}[{o}])"),
        ElemType::I32 => format!("bitcast<i32>({a}[{o}])"),
        ElemType::I64 => format!("vec2<u32>({a}[2u * ({o})], {a}[2u * ({o}) + 1u])"),
        _ => format!("((({a}[({o}) / 4u] >> ((({o}) % 4u) * 8u)) & 0xffu) != 0u)"),
    }
}

const H_I64: &str = "fn lt64(a: vec2<u32>, b: vec2<u32>) -> bool { let x = bitcast<i32>(a.y); let y = bitcast<i32>(b.y); return x < y || (x == y && a.x < b.x); }\n\
fn eq64(a: vec2<u32>, b: vec2<u32>) -> bool { return a.x == b.x && a.y == b.y; }";

/// The typed table: `n`'s value from its operands' (expression, type).
fn typed_op(
    sh: &mut Shader,
    n: &Node,
    a: &[(String, ElemType)],
    out: ElemType,
) -> Result<String, String> {
    let arg = |i: usize| {
        a.get(i)
            .cloned()
            .ok_or_else(|| format!("{}: operand {i} is missing", n.describe()))
    };
    let (x, tx) = arg(0)?;
    let cmp = |sh: &mut Shader, op: &str| -> Result<String, String> {
        let (y, ty) = arg(1)?;
        if tx != ty {
            return Err("comparison of mixed types".into());
        }
        Ok(match tx {
            ElemType::I64 => {
                sh.helper(H_I64);
                match op {
                    "==" => format!("eq64({x}, {y})"),
                    "<" => format!("lt64({x}, {y})"),
                    ">" => format!("lt64({y}, {x})"),
                    "<=" => format!("!lt64({y}, {x})"),
                    _ => format!("!lt64({x}, {y})"),
                }
            }
            ElemType::Bool if op != "==" => return Err("ordering of bools".into()),
            _ => format!("({x} {op} {y})"),
        })
    };
    Ok(match n.op.as_str() {
        "Identity" => x,
        "Equal" => cmp(sh, "==")?,
        "Less" => cmp(sh, "<")?,
        "Greater" => cmp(sh, ">")?,
        "LessOrEqual" => cmp(sh, "<=")?,
        "GreaterOrEqual" => cmp(sh, ">=")?,
        "Not" if tx == ElemType::Bool => format!("(!{x})"),
        "And" | "Or" | "Xor" if tx == ElemType::Bool => {
            let (y, _) = arg(1)?;
            let o = match n.op.as_str() {
                "And" => "&&",
                "Or" => "||",
                _ => "!=",
            };
            format!("({x} {o} {y})")
        }
        "Where" => {
            let (t, _) = arg(1)?;
            let (f, _) = arg(2)?;
            format!("select({f}, {t}, {x})")
        }
        "IsNaN" if tx == ElemType::F32 => format!("(knan({x}))"),
        "IsInf" if tx == ElemType::F32 => {
            let neg = n
                .attr("detect_negative")
                .and_then(Attr::as_int)
                .unwrap_or(1)
                != 0;
            let pos = n
                .attr("detect_positive")
                .and_then(Attr::as_int)
                .unwrap_or(1)
                != 0;
            format!(
                "(({x} == {} && {pos}) || ({x} == {} && {neg}))",
                lit(f32::INFINITY),
                lit(f32::NEG_INFINITY)
            )
        }
        "Add" | "Sub" | "Mul" | "Max" | "Min" if tx == ElemType::I32 => {
            let (y, _) = arg(1)?;
            match n.op.as_str() {
                "Add" => format!("({x} + {y})"),
                "Sub" => format!("({x} - {y})"),
                "Mul" => format!("({x} * {y})"),
                "Max" => format!("max({x}, {y})"),
                _ => format!("min({x}, {y})"),
            }
        }
        "Neg" if tx == ElemType::I32 => format!("(-{x})"),
        "Abs" if tx == ElemType::I32 => format!("abs({x})"),
        "Cast" | "CastLike" => {
            sh.helper(crate::gpu::kernels::movement::H_I64_TO_F32);
            cast(&x, tx, out)?
        }
        op => return Err(format!("{op} of {tx} in a gpu region")),
    })
}

fn cast(x: &str, from: ElemType, to: ElemType) -> Result<String, String> {
    use ElemType::*;
    Ok(match (from, to) {
        (a, b) if a == b => x.to_string(),
        (I32, F32) => format!("f32({x})"),
        (I64, F32) => format!("i64_to_f32({x}.x, {x}.y)"),
        (Bool, F32) => format!("select(0.0, 1.0, {x})"),
        (F32, I32) => format!("i32({x})"),
        (I64, I32) => format!("bitcast<i32>({x}.x)"),
        (Bool, I32) => format!("select(0, 1, {x})"),
        (F32 | I32, Bool) => format!("({x} != {})", if from == F32 { "0.0" } else { "0" }),
        (I64, Bool) => format!("({x}.x != 0u || {x}.y != 0u)"),
        (I32, I64) => format!("vec2<u32>(bitcast<u32>({x}), select(0u, 0xffffffffu, {x} < 0))"),
        (Bool, I64) => format!("vec2<u32>(select(0u, 1u, {x}), 0u)"),
        (a, b) => return Err(format!("Cast from {a} to {b} on the gpu")),
    })
}

/// A kernel for an elementwise region with values of mixed types:
/// `region_binds[i]` binds region input `i`, results the node's.
pub fn typed_region(
    m: &Module,
    n: &Node,
    region: &Region,
    region_binds: &[Bind],
) -> Result<GpuKernel, String> {
    let ty = |v: ValueId| -> Result<ElemType, String> {
        m.ty(v)
            .as_tensor()
            .map(|t| t.elem)
            .ok_or_else(|| format!("%{} is not a tensor", m.name(v)))
    };
    let out_shape = m.static_shape(*region.outputs.first().ok_or("a region without outputs")?)?;
    for &o in &region.outputs {
        if m.static_shape(o)? != out_shape {
            return Err("outputs of different shapes".into());
        }
    }
    let total: usize = out_shape.iter().product();
    let per = if region.outputs.iter().any(|&o| ty(o) == Ok(ElemType::Bool)) {
        4
    } else {
        1
    };
    let mut sh = Shader::new(n);
    let mut data: Vec<Vec<u8>> = vec![];
    // The output's coordinates, then each read value's offset.
    let mut coords = vec![String::new(); out_shape.len()];
    let mut inner = 1usize;
    for d in (0..out_shape.len()).rev() {
        coords[d] = format!("((e / {inner}u) % {}u)", out_shape[d]);
        inner *= out_shape[d];
    }
    let offset = |shape: &[usize]| -> Result<String, String> {
        if shape.len() > out_shape.len() {
            return Err(format!("{shape:?} does not broadcast to {out_shape:?}"));
        }
        let off = out_shape.len() - shape.len();
        let mut terms = vec![];
        let mut stride = 1usize;
        for d in (0..shape.len()).rev() {
            if shape[d] != 1 {
                if shape[d] != out_shape[d + off] {
                    return Err(format!("{shape:?} does not broadcast to {out_shape:?}"));
                }
                terms.push(format!("{} * {stride}u", coords[d + off]));
            }
            stride *= shape[d];
        }
        Ok(if terms.is_empty() {
            "0u".into()
        } else {
            terms.join(" + ")
        })
    };
    let mut vals: HashMap<ValueId, (String, ElemType)> = HashMap::new();
    let mut body = String::new();
    let mut count = 0usize;
    let mut fresh = || {
        count += 1;
        format!("v{count}")
    };
    let load = |sh: &mut Shader,
                data: &mut Vec<Vec<u8>>,
                body: &mut String,
                v: ValueId,
                name: String|
     -> Result<(String, ElemType), String> {
        let e = ty(v)?;
        wgsl_ty(e)?;
        let arr = match region.inputs.iter().position(|&i| i == v) {
            Some(k) => sh.bind(
                *region_binds
                    .get(k)
                    .ok_or("internal: region input without a binding")?,
                "u32",
            ),
            None => {
                let d = m
                    .constant(v)
                    .ok_or_else(|| format!("%{} is not defined in the region", m.name(v)))?;
                let mut b = d.bytes().ok_or("a constant without data")?.to_vec();
                b.resize(b.len().div_ceil(4).max(1) * 4, 0);
                data.push(b);
                sh.bind(Bind::Data(data.len() - 1), "u32")
            }
        };
        let o = offset(&m.static_shape(v)?)?;
        let _ = writeln!(body, "let {name} = {};", read(&arr, e, &o));
        Ok((name, e))
    };
    for node in &region.nodes {
        let mut args = vec![];
        for v in node.inputs.iter() {
            let Some(v) = *v else {
                return Err(format!("{}: an omitted operand", node.describe()));
            };
            let known = match vals.get(&v) {
                Some(x) => x.clone(),
                None => {
                    let name = fresh();
                    let r = load(&mut sh, &mut data, &mut body, v, name)?;
                    vals.insert(v, r.clone());
                    r
                }
            };
            args.push(known);
        }
        let out = *node.outputs.first().ok_or("a node without results")?;
        let oty = ty(out)?;
        let expr = if oty == ElemType::F32
            && args.iter().all(|a| a.1 == ElemType::F32)
            && node.op != "Identity"
        {
            f32_node(&mut sh, m, node, &args)?
        } else {
            typed_op(&mut sh, node, &args, oty)?
        };
        let name = fresh();
        let _ = writeln!(body, "let {name}: {} = {expr};", wgsl_ty(oty)?);
        vals.insert(out, (name, oty));
    }
    // The results: one element per thread, or four bools to a word.
    let mut outs = vec![];
    for (j, &o) in region.outputs.iter().enumerate() {
        let (name, e) = match vals.get(&o) {
            Some(v) => v.clone(),
            None => {
                let name = fresh();
                let r = load(&mut sh, &mut data, &mut body, o, name)?;
                vals.insert(o, r.clone());
                r
            }
        };
        outs.push((sh.bind(Bind::Result(j), "u32"), name, e));
    }
    let units = total.div_ceil(per);
    let mut main = format!("if (gid >= {units}u) {{ return; }}\n");
    if per == 1 {
        let _ = writeln!(main, "let e = gid;\n{body}");
        for (arr, name, e) in &outs {
            let _ = writeln!(
                main,
                "{}",
                match e {
                    ElemType::F32 | ElemType::I32 => format!("{arr}[e] = bitcast<u32>({name});"),
                    _ => format!("{arr}[2u * e] = {name}.x; {arr}[2u * e + 1u] = {name}.y;"),
                }
            );
        }
    } else {
        for (j, (_, _, e)) in outs.iter().enumerate() {
            let _ = writeln!(main, "var w{j} = 0u;");
            if *e != ElemType::Bool {
                return Err("a bool result beside results of other types".into());
            }
        }
        let _ = writeln!(main, "for (var k = 0u; k < 4u; k = k + 1u) {{\nlet e = gid * 4u + k;\nif (e < {total}u) {{\n{body}");
        for (j, (_, name, _)) in outs.iter().enumerate() {
            let _ = writeln!(main, "w{j} = w{j} | (select(0u, 1u, {name}) << (k * 8u));");
        }
        main.push_str("}\n}\n");
        for (j, (arr, _, _)) in outs.iter().enumerate() {
            let _ = writeln!(main, "{arr}[gid] = w{j};");
        }
    }
    let d = sh.finish(WG, &main, grid_for(units as u64)?);
    let ops: Vec<&str> = region.nodes.iter().map(|x| x.op.as_str()).collect();
    Ok(GpuKernel {
        dispatches: vec![d],
        data,
        scratch: vec![],
        check: None,
        describe: ops.join("+"),
        flops: 0.0,
    })
}

/// An f32 node's value through a one-node fusion plan over its operands
/// (each a region input, so the plan reads them as the leaves we pass).
fn f32_node(
    sh: &mut Shader,
    m: &Module,
    node: &Node,
    args: &[(String, ElemType)],
) -> Result<String, String> {
    let mut inputs = vec![];
    let mut shapes = vec![];
    for v in node.inputs.iter().flatten() {
        if !inputs.contains(v) {
            inputs.push(*v);
            shapes.push(m.static_shape(*v)?);
        }
    }
    let region = Region {
        inputs: inputs.clone(),
        constants: vec![],
        nodes: vec![node.clone()],
        outputs: node.outputs.clone(),
    };
    let plan = fusion_plan::plan(m, &region, &shapes)?;
    if !plan.consts.is_empty() {
        return Err("unsupported: a folded constant tensor in a typed region".into());
    }
    let fusion_plan::Kind::Elementwise { roots } = &plan.kind else {
        return Err("unsupported: a reduction in a typed region".into());
    };
    let arg_of = |v: ValueId| -> String {
        let k = node.inputs.iter().position(|x| *x == Some(v)).unwrap_or(0);
        args[k].0.clone()
    };
    let mut exprs: Vec<String> = vec![];
    for e in &plan.exprs {
        let s = match e {
            Expr::Imm(x) => lit(*x),
            Expr::Leaf(k) => match plan.leaves[*k].src {
                Src::Input(i) => arg_of(inputs[i]),
                Src::Const(_) => return Err("unsupported: a folded constant tensor".into()),
            },
            Expr::Node(op, a) => {
                let a: Vec<String> = a.iter().map(|&i| exprs[i].clone()).collect();
                op_expr(sh, op, &a)
            }
        };
        exprs.push(s);
    }
    let root = *roots.first().ok_or("no root")?;
    Ok(exprs[root].clone())
}
