//! Reductions over any axes, softmax over any axis, and ArgMax/ArgMin:
//! one thread per output element walking its reduced elements (the
//! fusion plan's row kernels take trailing axes in a workgroup each;
//! these take the rest, as in mean pooling over a sequence or a DFL
//! softmax over channels).

use std::fmt::Write;

use kiln_ir::Node;

use crate::gpu::wgsl::{grid, grid_for, lit, Bind, GpuKernel, Shader, H_TREE, ROW_WG, WG};

/// What a reduction computes: the CPU backend's enum, one list of ONNX's
/// Reduce* family.
pub use crate::cpu::reduce::ReduceOp;

/// Elements of the kept dims and of the reduced dims of `x`.
fn extents(x: &[usize], reduced: &[bool]) -> (usize, usize) {
    let (mut kept, mut count) = (1, 1);
    for (&d, &r) in x.iter().zip(reduced) {
        if r {
            count *= d;
        } else {
            kept *= d;
        }
    }
    (kept, count)
}

/// The statements that place output element `gid` (over the kept dims of
/// `x`) at its first input element `base`, and the offsets and extents
/// of the reduced dims.
fn split_dims(x: &[usize], reduced: &[bool]) -> (String, Vec<(usize, usize)>) {
    let mut s = "var base = 0u;\n".to_string();
    let mut inner = 1usize;
    let mut stride = 1usize;
    let mut red = vec![];
    for d in (0..x.len()).rev() {
        if reduced[d] {
            red.push((x[d], stride));
        } else {
            let _ = writeln!(
                s,
                "base = base + ((gid / {inner}u) % {}u) * {stride}u;",
                x[d]
            );
            inner *= x[d];
        }
        stride *= x[d];
    }
    (s, red)
}

/// A nested loop over the reduced dims running `body` with `at` the
/// element's offset.
fn walk(red: &[(usize, usize)], body: &str) -> String {
    let mut s = String::new();
    let mut at = vec!["base".to_string()];
    for (k, (n, st)) in red.iter().enumerate() {
        let _ = writeln!(s, "for (var r{k} = 0u; r{k} < {n}u; r{k} = r{k} + 1u) {{");
        at.push(format!("r{k} * {st}u"));
    }
    let _ = writeln!(s, "let at = {};\n{body}", at.join(" + "));
    s.push_str(&"}\n".repeat(red.len()));
    s
}

/// `op` over the dims of `x` marked in `reduced`; the result has the kept
/// dims' elements in order (keepdims only changes its shape).
pub fn reduce(
    n: &Node,
    op: ReduceOp,
    x: &[usize],
    reduced: &[bool],
    src: Bind,
) -> Result<GpuKernel, String> {
    let (total, count) = extents(x, reduced);
    let mut sh = Shader::new(n);
    let xb = sh.bind(src, "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let (place, red) = split_dims(x, reduced);
    let nan_max = "if (knan(v) || knan(a)) { a = a + v; } else { a = max(a, v); }";
    let nan_min = "if (knan(v) || knan(a)) { a = a + v; } else { a = min(a, v); }";
    let (init, step, fin) = match op {
        ReduceOp::Sum => ("0.0".into(), "a = a + v;", "a".to_string()),
        // The mean of nothing is NaN (a driver may fold 0/0 to anything).
        ReduceOp::Mean if count == 0 => ("0.0".into(), "a = a + v;", lit(f32::NAN)),
        ReduceOp::Mean => (
            "0.0".into(),
            "a = a + v;",
            format!("a / {}", lit(count as f32)),
        ),
        ReduceOp::Max => (lit(f32::NEG_INFINITY), nan_max, "a".into()),
        ReduceOp::Min => (lit(f32::INFINITY), nan_min, "a".into()),
        ReduceOp::Prod => ("1.0".into(), "a = a * v;", "a".into()),
        ReduceOp::L1 => ("0.0".into(), "a = a + abs(v);", "a".into()),
        ReduceOp::L2 => ("0.0".into(), "a = a + v * v;", "sqrt(a)".into()),
        ReduceOp::SumSquare => ("0.0".into(), "a = a + v * v;", "a".into()),
        ReduceOp::LogSum => ("0.0".into(), "a = a + v;", "log(a)".into()),
        ReduceOp::LogSumExp => ("0.0".into(), "a = a + exp(v - m);", "m + log(a)".into()),
    };
    let mut body = format!("if (gid >= {total}u) {{ return; }}\n{place}");
    if op == ReduceOp::LogSumExp {
        // Shift by the maximum so that exp cannot overflow.
        let _ = write!(
            body,
            "var m = {};\n{}if (m == {} || knan(m)) {{ m = 0.0; }}\n",
            lit(f32::NEG_INFINITY),
            walk(&red, &format!("let v = {xb}[at]; m = max(m, v);")),
            lit(f32::NEG_INFINITY)
        );
    }
    let _ = write!(
        body,
        "var a = {init};\n{}{yb}[gid] = {fin};",
        walk(&red, &format!("let v = {xb}[at]; {step}"))
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel::single(
        d,
        format!("{op:?} over {} of {x:?}", count),
        0.0,
    ))
}

/// (Log)Softmax or Hardmax-free softmax over `axis` of `x`: one thread
/// per (outer, inner) pair, three passes along the axis.
pub fn softmax_axis(n: &Node, x: &[usize], axis: usize, log: bool) -> Result<GpuKernel, String> {
    let outer: usize = x[..axis].iter().product();
    let a = x[axis];
    let inner: usize = x[axis + 1..].iter().product();
    let total = outer * inner;
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let store = if log {
        "(v - m) - log(s)"
    } else {
        "exp(v - m) / s"
    };
    let body = format!(
        "if (gid >= {total}u) {{ return; }}\nlet base = (gid / {inner}u) * {a}u * {inner}u + gid % {inner}u;\n\
         var m = {ninf};\nfor (var k = 0u; k < {a}u; k = k + 1u) {{ let v = {xb}[base + k * {inner}u]; if (knan(v) || knan(m)) {{ m = m + v; }} else {{ m = max(m, v); }} }}\n\
         var s = 0.0;\nfor (var k = 0u; k < {a}u; k = k + 1u) {{ s = s + exp({xb}[base + k * {inner}u] - m); }}\n\
         for (var k = 0u; k < {a}u; k = k + 1u) {{ let v = {xb}[base + k * {inner}u]; {yb}[base + k * {inner}u] = {store}; }}",
        ninf = lit(f32::NEG_INFINITY)
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel::single(
        d,
        format!(
            "{} over axis {axis}",
            if log { "LogSoftmax" } else { "Softmax" }
        ),
        0.0,
    ))
}

/// ArgMax/ArgMin over `axis` (i64 indices, the first or, with
/// `select_last_index`, the last extreme; NaN counts as the extreme, as
/// numpy's argmax).
pub fn arg_extreme(
    n: &Node,
    x: &[usize],
    axis: usize,
    max: bool,
    last: bool,
) -> Result<GpuKernel, String> {
    let outer: usize = x[..axis].iter().product();
    let a = x[axis];
    let inner: usize = x[axis + 1..].iter().product();
    let total = outer * inner;
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let yb = sh.bind(Bind::Result(0), "u32");
    // The interpreter's rule: the first index whose value is strictly
    // better than the best so far, or (select_last_index) any value the
    // best is not strictly better than; NaN is better than any number.
    let take = match (max, last) {
        (true, false) => "!knan(b) && (knan(v) || v > b)",
        (false, false) => "!knan(b) && (knan(v) || v < b)",
        (true, true) => "knan(v) || (!knan(b) && v >= b)",
        (false, true) => "knan(v) || (!knan(b) && v <= b)",
    };
    let body = format!(
        "if (gid >= {total}u) {{ return; }}\nlet base = (gid / {inner}u) * {a}u * {inner}u + gid % {inner}u;\n\
         var b = {xb}[base]; var bi = 0u;\n\
         for (var k = 1u; k < {a}u; k = k + 1u) {{ let v = {xb}[base + k * {inner}u]; if ({take}) {{ b = v; bi = k; }} }}\n\
         {yb}[gid * 2u] = bi; {yb}[gid * 2u + 1u] = 0u;"
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel::single(
        d,
        format!("{} over axis {axis}", n.op),
        0.0,
    ))
}

/// GroupNormalization (InstanceNormalization is one group per channel):
/// one workgroup per (batch, group) row of `C/groups × spatial` elements,
/// mean and variance as trees, then `(x − mean)·rstd·scale + bias` with
/// the element's channel's (or, for per-group parameters, its group's)
/// scale and bias.
pub fn group_norm(
    n: &Node,
    x: &[usize],
    groups: usize,
    eps: f32,
    per_group_params: bool,
) -> Result<GpuKernel, String> {
    if x.len() < 2 || groups == 0 || !x[1].is_multiple_of(groups) {
        return Err(format!("{groups} groups of {x:?}"));
    }
    let c = x[1];
    let spatial: usize = x[2..].iter().product();
    let rows = x[0] * groups;
    let inner = c / groups * spatial;
    let mut sh = Shader::new(n);
    sh.helper(H_TREE);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let sb = sh.bind(Bind::Operand(1), "f32");
    let bb = sh.bind(Bind::Operand(2), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let param = if per_group_params {
        format!("r % {groups}u")
    } else {
        format!("(r % {groups}u) * {}u + i / {spatial}u", c / groups)
    };
    let w = ROW_WG;
    let body = format!(
        "let r = min(wgi, {last}u);\nlet base = r * {inner}u;\n\
         var a = 0.0;\nfor (var i = li; i < {inner}u; i = i + {w}u) {{ a = a + {xb}[base + i]; }}\n\
         let mean = tree_sum(li, a) / {inner}.0;\n\
         var q = 0.0;\nfor (var i = li; i < {inner}u; i = i + {w}u) {{ let d = {xb}[base + i] - mean; q = q + d * d; }}\n\
         let rstd = 1.0 / sqrt(tree_sum(li, q) / {inner}.0 + {eps});\n\
         for (var i = li; i < {inner}u; i = i + {w}u) {{ let p = {param}; {yb}[base + i] = ({xb}[base + i] - mean) * rstd * {sb}[p] + {bb}[p]; }}",
        last = rows.max(1) - 1,
        eps = lit(eps)
    );
    let d = sh.finish(w, &body, grid(rows as u64)?);
    Ok(GpuKernel::single(
        d,
        format!("{} ({groups} groups)", n.op),
        0.0,
    ))
}

/// Hardmax over `axis`: 1.0 at the first maximum (a NaN counts as one, as
/// ArgMax), 0.0 elsewhere.
pub fn hardmax(n: &Node, x: &[usize], axis: usize) -> Result<GpuKernel, String> {
    let outer: usize = x[..axis].iter().product();
    let a = x[axis];
    let inner: usize = x[axis + 1..].iter().product();
    let total = outer * inner;
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let body = format!(
        "if (gid >= {total}u) {{ return; }}\nlet base = (gid / {inner}u) * {a}u * {inner}u + gid % {inner}u;\n\
         var b = {xb}[base]; var bi = 0u;\n\
         for (var k = 1u; k < {a}u; k = k + 1u) {{ let v = {xb}[base + k * {inner}u]; if (!knan(b) && (knan(v) || v > b)) {{ b = v; bi = k; }} }}\n\
         for (var k = 0u; k < {a}u; k = k + 1u) {{ {yb}[base + k * {inner}u] = select(0.0, 1.0, k == bi); }}"
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel::single(
        d,
        format!("Hardmax over axis {axis}"),
        0.0,
    ))
}

/// LayerNormalization over the trailing `inner` elements of each of
/// `rows` rows, with its optional Mean and InvStdDev results (the fusion
/// plan's row kernel takes the common one-result form). `scale` and
/// `bias` hold `inner` values or one.
pub fn layer_norm(
    n: &Node,
    rows: usize,
    inner: usize,
    eps: f32,
    scale_len: usize,
    bias_len: Option<usize>,
) -> Result<GpuKernel, String> {
    let mut sh = Shader::new(n);
    sh.helper(H_TREE);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let at = |len: usize| if len == 1 { "0u" } else { "i" };
    let sb = sh.bind(Bind::Operand(1), "f32");
    let scale = format!("{sb}[{}]", at(scale_len));
    let bias = match bias_len {
        Some(l) => format!("{}[{}]", sh.bind(Bind::Operand(2), "f32"), at(l)),
        None => "0.0".into(),
    };
    let yb = sh.bind(Bind::Result(0), "f32");
    let mut stats = String::new();
    if n.outputs.len() > 1 {
        let _ = write!(
            stats,
            "if (li == 0u) {{ {}[r] = mean; ",
            sh.bind(Bind::Result(1), "f32")
        );
        if n.outputs.len() > 2 {
            let _ = write!(stats, "{}[r] = rstd; ", sh.bind(Bind::Result(2), "f32"));
        }
        stats.push('}');
    }
    let w = ROW_WG;
    let body = format!(
        "let r = min(wgi, {last}u);\nlet base = r * {inner}u;\n\
         var a = 0.0;\nfor (var i = li; i < {inner}u; i = i + {w}u) {{ a = a + {xb}[base + i]; }}\n\
         let mean = tree_sum(li, a) / {inner}.0;\n\
         var q = 0.0;\nfor (var i = li; i < {inner}u; i = i + {w}u) {{ let d = {xb}[base + i] - mean; q = q + d * d; }}\n\
         let rstd = 1.0 / sqrt(tree_sum(li, q) / {inner}.0 + {eps});\n\
         for (var i = li; i < {inner}u; i = i + {w}u) {{ {yb}[base + i] = ({xb}[base + i] - mean) * rstd * {scale} + {bias}; }}\n{stats}",
        last = rows.max(1) - 1,
        eps = lit(eps)
    );
    let d = sh.finish(w, &body, grid(rows as u64)?);
    Ok(GpuKernel::single(
        d,
        format!("LayerNormalization over {inner}"),
        0.0,
    ))
}

/// BatchNormalization in inference with statistics that are values (not
/// constants the fusion plan folds): per channel of `x` [N, C, ...].
pub fn batch_norm(n: &Node, x: &[usize], eps: f32) -> Result<GpuKernel, String> {
    if x.len() < 2 {
        return Err("BatchNormalization needs N and C dims".into());
    }
    let total: usize = x.iter().product();
    let c = x[1];
    let spatial: usize = x[2..].iter().product();
    let mut sh = Shader::new(n);
    let b: Vec<String> = (0..5).map(|i| sh.bind(Bind::Operand(i), "f32")).collect();
    let yb = sh.bind(Bind::Result(0), "f32");
    let body = format!(
        "if (gid >= {total}u) {{ return; }}\nlet c = (gid / {spatial}u) % {c}u;\n\
         {yb}[gid] = ({x}[gid] - {mean}[c]) / sqrt({var}[c] + {eps}) * {s}[c] + {bias}[c];",
        x = b[0],
        s = b[1],
        bias = b[2],
        mean = b[3],
        var = b[4],
        eps = lit(eps)
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel::single(d, "BatchNormalization".into(), 0.0))
}

/// LRN across channels: `x / (bias + alpha/size · Σ x²)^beta` over the
/// `size` channels around each one.
pub fn lrn(
    n: &Node,
    x: &[usize],
    size: usize,
    alpha: f32,
    beta: f32,
    bias: f32,
) -> Result<GpuKernel, String> {
    if x.len() < 2 || size == 0 {
        return Err("LRN needs N and C dims and a size".into());
    }
    let total: usize = x.iter().product();
    let c = x[1];
    let spatial: usize = x[2..].iter().product();
    let (lo, hi) = ((size - 1) / 2, size - 1 - (size - 1) / 2);
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let body = format!(
        "if (gid >= {total}u) {{ return; }}\nlet c = i32((gid / {spatial}u) % {c}u);\nlet base = gid - u32(c) * {spatial}u;\n\
         var s = 0.0;\nfor (var k = max(0, c - {lo}); k <= min({last}, c + {hi}); k = k + 1) {{ let v = {xb}[base + u32(k) * {spatial}u]; s = s + v * v; }}\n\
         {yb}[gid] = {xb}[gid] / pow({bias} + {a} * s, {beta});",
        last = c as i64 - 1,
        bias = lit(bias),
        a = lit(alpha / size as f32),
        beta = lit(beta)
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel::single(d, format!("LRN size {size}"), 0.0))
}

/// MeanVarianceNormalization over the dims marked in `reduced`:
/// `(x − mean) / (sqrt(max(E[x²] − mean², 0)) + 1e-9)`, as the ONNX
/// function (and the interpreter) compute it. Two shaders: the sums of
/// each kept index into scratch, then the elements.
pub fn mvn(n: &Node, x: &[usize], reduced: &[bool]) -> Result<GpuKernel, String> {
    let (kept_n, count) = extents(x, reduced);
    let total: usize = x.iter().product();
    // 1. mean and mean of squares per kept index.
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let st = sh.bind(Bind::Scratch(0), "f32");
    let (place, red) = split_dims(x, reduced);
    let body = format!(
        "if (gid >= {kept_n}u) {{ return; }}\n{place}var s1 = 0.0; var s2 = 0.0;\n{}\
         let mean = s1 / {c}; {st}[2u * gid] = mean; {st}[2u * gid + 1u] = s2 / {c} - mean * mean;",
        walk(
            &red,
            &format!("let v = {xb}[at]; s1 = s1 + v; s2 = s2 + v * v;")
        ),
        c = lit(count as f32)
    );
    let first = sh.finish(WG, &body, grid_for(kept_n as u64)?);
    // 2. each element, with its kept index's statistics.
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let st = sh.bind(Bind::Scratch(0), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let mut kept = String::from("var kidx = 0u;\n");
    let mut inner = 1usize;
    let mut kstride = 1usize;
    for d in (0..x.len()).rev() {
        if !reduced[d] {
            let _ = writeln!(
                kept,
                "kidx = kidx + ((gid / {inner}u) % {}u) * {kstride}u;",
                x[d]
            );
            kstride *= x[d];
        }
        inner *= x[d];
    }
    let body = format!(
        "if (gid >= {total}u) {{ return; }}\n{kept}let mean = {st}[2u * kidx]; let var_ = max({st}[2u * kidx + 1u], 0.0);\n\
         {yb}[gid] = ({xb}[gid] - mean) / (sqrt(var_) + 1e-9);"
    );
    let second = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel {
        dispatches: vec![first, second],
        data: vec![],
        scratch: vec![4 * 2 * kept_n as u64],
        check: None,
        describe: "MeanVarianceNormalization".into(),
        flops: 0.0,
    })
}

/// Det of each trailing n×n matrix: Gaussian elimination with partial
/// pivoting in a thread's private memory (n at most 16), as the
/// interpreter.
pub fn det(n: &Node, batch: usize, size: usize) -> Result<GpuKernel, String> {
    if size == 0 || size > 16 {
        return Err(format!("Det of {size}×{size} matrices on the gpu"));
    }
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let nn = size * size;
    let body = format!(
        "if (gid >= {batch}u) {{ return; }}\nvar m: array<f32, {nn}>;\nfor (var i = 0u; i < {nn}u; i = i + 1u) {{ m[i] = {xb}[gid * {nn}u + i]; }}\n\
         var d = 1.0;\n\
         for (var c = 0u; c < {size}u; c = c + 1u) {{\n\
           var p = c; for (var i = c + 1u; i < {size}u; i = i + 1u) {{ if (abs(m[i * {size}u + c]) > abs(m[p * {size}u + c])) {{ p = i; }} }}\n\
           if (m[p * {size}u + c] == 0.0) {{ d = 0.0; break; }}\n\
           if (p != c) {{ for (var j = 0u; j < {size}u; j = j + 1u) {{ let t = m[p * {size}u + j]; m[p * {size}u + j] = m[c * {size}u + j]; m[c * {size}u + j] = t; }} d = -d; }}\n\
           let piv = m[c * {size}u + c]; d = d * piv;\n\
           for (var i = c + 1u; i < {size}u; i = i + 1u) {{ let f = m[i * {size}u + c] / piv; for (var j = c; j < {size}u; j = j + 1u) {{ m[i * {size}u + j] = m[i * {size}u + j] - f * m[c * {size}u + j]; }} }}\n\
         }}\n{yb}[gid] = d;"
    );
    let d = sh.finish(WG, &body, grid_for(batch as u64)?);
    Ok(GpuKernel::single(d, format!("Det {size}×{size}"), 0.0))
}

/// Range of f32: `start + i·delta` (start and delta read on the device;
/// the count is the result's static size).
pub fn range(n: &Node, count: usize) -> Result<GpuKernel, String> {
    let mut sh = Shader::new(n);
    let s = sh.bind(Bind::Operand(0), "f32");
    let d = sh.bind(Bind::Operand(2), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let body =
        format!("if (gid >= {count}u) {{ return; }}\n{yb}[gid] = {s}[0] + f32(gid) * {d}[0];");
    let disp = sh.finish(WG, &body, grid_for(count as u64)?);
    Ok(GpuKernel {
        dispatches: vec![disp],
        data: vec![],
        scratch: vec![],
        check: None,
        describe: "Range".into(),
        flops: 0.0,
    })
}
