//! Data movement as shaders: one strided copy (what Reshape, Transpose,
//! Slice, Expand, Concat and Split all are: a walk over a shape with a
//! source and a destination stride per dim), Gather, and Cast between
//! f32, i32 and i64. Elements move as 32-bit words, one or two per element,
//! so the copy is the same for every 4- and 8-byte type; 8- and 16-bit
//! elements, packed four or two to a word, move a destination word per
//! thread (gathered from wherever its elements come from), so no two
//! threads write one word.

use std::fmt::Write;

use kiln_ir::{ElemType, Node};

use crate::gpu::wgsl::{
    grid_for, grid_per_word, int_read, lit, packed_bits, packed_bytes, packed_raw, per_word, Bind,
    Dispatch, GpuKernel, Shader, WG,
};

/// 32-bit words per element of `e`, for the types that move a word at a
/// time.
pub fn words(e: ElemType) -> Option<usize> {
    match e {
        ElemType::F32 | ElemType::I32 | ElemType::U32 => Some(1),
        ElemType::I64 | ElemType::U64 | ElemType::F64 => Some(2),
        _ => None,
    }
}

/// Bytes per element of `e`, for every type the GPU moves (whole words,
/// or packed 8- and 16-bit integers).
pub fn elem_bytes(e: ElemType) -> Option<usize> {
    words(e)
        .map(|w| 4 * w)
        .or_else(|| packed_bytes(e).map(|b| b as usize))
}

/// One side of a strided copy: a binding, a base element offset and an
/// element stride per walked dim (negative for reversed slices).
#[derive(Clone, Debug)]
pub struct Side {
    pub bind: Bind,
    pub base: i64,
    pub strides: Vec<i64>,
}

/// Row-major strides of a shape.
pub fn strides_of(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![0i64; shape.len()];
    let mut acc = 1i64;
    for d in (0..shape.len()).rev() {
        s[d] = acc;
        acc *= shape[d] as i64;
    }
    s
}

/// Walk `shape`, copying element `src[...]` to `dst[...]` (elements of
/// `eb` bytes). Packed elements need a contiguous destination.
pub fn strided_copy(
    n: &Node,
    eb: usize,
    shape: &[usize],
    src: &Side,
    dst: &Side,
) -> Result<Dispatch, String> {
    if eb < 4 {
        let contiguous = dst.base == 0
            && (0..shape.len()).all(|k| shape[k] == 1 || dst.strides[k] == strides_of(shape)[k]);
        if !contiguous {
            return Err("a strided copy of packed elements into a strided destination".into());
        }
        return packed_walk(n, eb as u32, shape, src, dst.bind);
    }
    let elem_words = eb / 4;
    let total: usize = shape.iter().product();
    let mut sh = Shader::new(n);
    let s = sh.bind(src.bind, "u32");
    let d = sh.bind(dst.bind, "u32");
    let mut body = format!(
        "if (gid >= {total}u) {{ return; }}\nvar so: i32 = {};\nvar dof: i32 = {};\n",
        src.base, dst.base
    );
    let mut inner = 1usize;
    for k in (0..shape.len()).rev() {
        if shape[k] == 1 {
            continue;
        }
        let c = format!("i32((gid / {inner}u) % {}u)", shape[k]);
        if src.strides[k] != 0 {
            let _ = writeln!(body, "so = so + {c} * {};", src.strides[k]);
        }
        if dst.strides[k] != 0 {
            let _ = writeln!(body, "dof = dof + {c} * {};", dst.strides[k]);
        }
        inner *= shape[k];
    }
    for w in 0..elem_words {
        let _ = writeln!(
            body,
            "{d}[u32(dof) * {elem_words}u + {w}u] = {s}[u32(so) * {elem_words}u + {w}u];"
        );
    }
    Ok(sh.finish(WG, &body, grid_for(total as u64)?))
}

/// The source offset `so` (an `i32`) of element `e` of a walk over
/// `shape`.
fn source_offset(shape: &[usize], src: &Side, e: &str) -> String {
    let mut s = format!("var so: i32 = {};\n", src.base);
    let mut inner = 1usize;
    for k in (0..shape.len()).rev() {
        if shape[k] == 1 {
            continue;
        }
        if src.strides[k] != 0 {
            let _ = writeln!(
                s,
                "so = so + i32(({e} / {inner}u) % {}u) * {};",
                shape[k], src.strides[k]
            );
        }
        inner *= shape[k];
    }
    s
}

/// Walk `shape` into the contiguous `dst` from `src`, for packed elements
/// of `eb` bytes: a destination word per thread.
fn packed_walk(
    n: &Node,
    eb: u32,
    shape: &[usize],
    src: &Side,
    dst: Bind,
) -> Result<Dispatch, String> {
    let total: usize = shape.iter().product();
    let mut sh = Shader::new(n);
    let x = sh.bind(src.bind, "u32");
    let y = sh.bind(dst, "u32");
    let lane = format!(
        "{}let v = {};",
        source_offset(shape, src, "e"),
        packed_raw(&x, "u32(so)", 8 * eb)
    );
    Ok(sh.finish(
        WG,
        &per_word(&y, total, 8 * eb, &lane),
        grid_per_word(total, 8 * eb)?,
    ))
}

/// Concat of packed elements of `eb` bytes along `axis` of the result
/// `ys`, operand `i` of extent `parts[i]` there: one walk over the
/// result's words, each element read from the operand its coordinate
/// falls in.
pub fn packed_concat(
    n: &Node,
    eb: u32,
    ys: &[usize],
    axis: usize,
    parts: &[usize],
) -> Result<GpuKernel, String> {
    let total: usize = ys.iter().product();
    let inner: usize = ys[axis + 1..].iter().product();
    let a = ys[axis];
    let mut sh = Shader::new(n);
    let y = sh.bind(Bind::Result(0), "u32");
    let mut lane = format!(
        "let inn = e % {inner}u; let c = (e / {inner}u) % {a}u; let o = e / ({inner}u * {a}u);\nvar v = 0u;\n"
    );
    let mut at = 0usize;
    let mut first = true;
    for (i, &p) in parts.iter().enumerate() {
        if p == 0 {
            continue;
        }
        let x = sh.bind(Bind::Operand(i), "u32");
        let idx = format!("(o * {p}u + c - {at}u) * {inner}u + inn");
        let _ = writeln!(
            lane,
            "{}if (c < {}u) {{ v = {}; }}",
            if first { "" } else { "else " },
            at + p,
            packed_raw(&x, &idx, 8 * eb)
        );
        first = false;
        at += p;
    }
    if at != a {
        return Err("concat parts do not cover the axis".into());
    }
    let d = sh.finish(
        WG,
        &per_word(&y, total, 8 * eb, &lane),
        grid_per_word(total, 8 * eb)?,
    );
    Ok(copies(
        vec![d],
        format!("concat of {} on axis {axis}", parts.len()),
    ))
}

/// A kernel of copies.
pub fn copies(dispatches: Vec<Dispatch>, describe: String) -> GpuKernel {
    GpuKernel {
        dispatches,
        data: vec![],
        scratch: vec![],
        check: None,
        describe,
        flops: 0.0,
    }
}

/// Gather along `axis`: `data` [outer, A, inner], indices of `ni`
/// elements (i32 or i64, negative counting from the end). An index out of
/// range sets the kernel's check flag, and the run fails as on the
/// interpreter and the cpu backend.
pub fn gather(
    n: &Node,
    eb: usize,
    data_shape: &[usize],
    axis: usize,
    ni: usize,
    index_words: usize,
) -> Result<GpuKernel, String> {
    let outer: usize = data_shape[..axis].iter().product();
    let a = data_shape[axis];
    let inner: usize = data_shape[axis + 1..].iter().product();
    let total = outer * ni * inner;
    // The index as an i32 (an i64 outside i32's range becomes i32::MIN,
    // out of range for any axis), negative ones counted from the end.
    let index = |sh: &mut Shader, j: &str| -> String {
        let ix = sh.bind(Bind::Operand(1), "u32");
        let mut s = format!("var q = bitcast<i32>({ix}[{j} * {index_words}u]);\n");
        if index_words == 2 {
            let _ = writeln!(
                s,
                "let hi = bitcast<i32>({ix}[{j} * 2u + 1u]); if (!((hi == 0 && q >= 0) || (hi == -1 && q < 0))) {{ q = {}; }}",
                i32::MIN
            );
        }
        let _ = write!(
            s,
            "if (q < 0 && q != {min}) {{ q = q + {a}; }}\nlet ok = q >= 0 && q < {a};\n",
            min = i32::MIN
        );
        s
    };
    let mut dispatches = vec![];
    // Every index is checked, even where the result is empty (as the
    // interpreter checks them up front).
    if ni > 0 {
        let mut sh = Shader::new(n);
        let flag = sh.bind(Bind::Scratch(0), "u32");
        let body = format!(
            "if (gid >= {ni}u) {{ return; }}\n{}if (!ok) {{ {flag}[0] = 1u; }}",
            index(&mut sh, "gid")
        );
        dispatches.push(sh.finish(WG, &body, grid_for(ni as u64)?));
    }
    if total > 0 && eb < 4 {
        let mut sh = Shader::new(n);
        let x = sh.bind(Bind::Operand(0), "u32");
        let y = sh.bind(Bind::Result(0), "u32");
        let lane = format!(
            "let inn = e % {inner}u; let j = (e / {inner}u) % {ni}u; let o = e / ({inner}u * {ni}u);\n{}\
             let src = (o * {a}u + u32(max(q, 0))) * {inner}u + inn;\nlet v = select(0u, {}, ok);",
            index(&mut sh, "j"),
            packed_raw(&x, "src", 8 * eb as u32)
        );
        let body = per_word(&y, total, 8 * eb as u32, &lane);
        dispatches.push(sh.finish(WG, &body, grid_per_word(total, 8 * eb as u32)?));
    } else if total > 0 {
        let elem_words = eb / 4;
        let mut sh = Shader::new(n);
        let x = sh.bind(Bind::Operand(0), "u32");
        let y = sh.bind(Bind::Result(0), "u32");
        let mut body = format!(
            "if (gid >= {total}u) {{ return; }}\nlet inn = gid % {inner}u; let j = (gid / {inner}u) % {ni}u; let o = gid / ({inner}u * {ni}u);\n{}\
             let src = (o * {a}u + u32(max(q, 0))) * {inner}u + inn;\n",
            index(&mut sh, "j")
        );
        for w in 0..elem_words {
            let _ = writeln!(
                body,
                "{y}[gid * {elem_words}u + {w}u] = select(0u, {x}[src * {elem_words}u + {w}u], ok);"
            );
        }
        dispatches.push(sh.finish(WG, &body, grid_for(total as u64)?));
    }
    let mut k = copies(dispatches, format!("gather axis {axis}"));
    k.scratch.push(4);
    k.check = Some((
        0,
        format!("Gather: an index is out of range for a dim of size {a}"),
    ));
    Ok(k)
}

/// An i64 (low and high words) as the nearest-ish f32: exact where it
/// fits an i32, else hi·2³² + lo within an ulp.
pub(crate) const H_I64_TO_F32: &str = "fn i64_to_f32(lo: u32, hi: u32) -> f32 {\n\
  let l = bitcast<i32>(lo);\n\
  if ((hi == 0u && l >= 0) || (hi == 0xffffffffu && l < 0)) { return f32(l); }\n\
  return f32(bitcast<i32>(hi)) * 4294967296.0 + f32(lo);\n}";

/// Cast between f32 and i32, from i64, and between those and the 4-
/// (from only), 8- and 16-bit integers (f32 → i32 truncates toward
/// zero, saturating as WGSL does; i64 → i32 wraps as numpy does;
/// out-of-range float casts are undefined in ONNX).
pub fn cast(n: &Node, from: ElemType, to: ElemType, total: usize) -> Result<GpuKernel, String> {
    let mut sh = Shader::new(n);
    let x = sh.bind(Bind::Operand(0), "u32");
    let y = sh.bind(Bind::Result(0), "u32");
    let read = match from {
        ElemType::F32 => format!("bitcast<f32>({x}[gid])"),
        ElemType::I32 => format!("f32(bitcast<i32>({x}[gid]))"),
        // Exact where the value fits an i32; else within an ulp.
        ElemType::I64 => format!("i64_to_f32({x}[gid * 2u], {x}[gid * 2u + 1u])"),
        e if packed_bits(e).is_some() => format!("f32({})", int_read(&x, "gid", e)?),
        e => return Err(format!("Cast from {e} on the gpu")),
    };
    let int_read = match from {
        ElemType::F32 => format!("i32(bitcast<f32>({x}[gid]))"),
        ElemType::I32 => format!("bitcast<i32>({x}[gid])"),
        ElemType::I64 => format!("bitcast<i32>({x}[gid * 2u])"),
        e => int_read(&x, "gid", e)?,
    };
    sh.helper(H_I64_TO_F32);
    let body = match to {
        ElemType::F32 => format!("{y}[gid] = bitcast<u32>({read});"),
        ElemType::I32 => format!("{y}[gid] = bitcast<u32>({int_read});"),
        // 8- and 16-bit results, a word per thread: floats truncate toward
        // zero and wrap (NaN to 0), as the interpreter's casts (numpy's
        // `astype`) do; integers wrap. (Out of range is undefined in ONNX;
        // beyond i32's range the device saturates first.)
        e if packed_bytes(e).is_some() => {
            let bits = 8 * packed_bytes(e).unwrap_or(1);
            let lane = if from == ElemType::F32 {
                format!(
                    "let f = bitcast<f32>({x}[e]);\nlet v = select(bitcast<u32>(i32(f)), 0u, knan(f));"
                )
            } else {
                format!("let gid = e;\nlet v = bitcast<u32>({int_read});")
            };
            let d = sh.finish(
                WG,
                &per_word(&y, total, bits, &lane),
                grid_per_word(total, bits)?,
            );
            return Ok(copies(vec![d], format!("cast {from} → {to}")));
        }
        e => return Err(format!("Cast to {e} on the gpu")),
    };
    let body = format!("if (gid >= {total}u) {{ return; }}\n{body}");
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(copies(vec![d], format!("cast {from} → {to}")))
}

/// One dim of a Resize: per output coordinate, `taps` entries of (source
/// index, weight), or `None` for the extrapolation value; `None` for the
/// whole dim when it is the identity.
pub type ResizeDim = Option<Vec<Option<Vec<(usize, f32)>>>>;

/// Resize of f32 data as a weighted sum over each dim's taps (the
/// interpreter's plan, tabulated): an element is Σ over tap combinations
/// of the weights' product times the source element, or the extrapolation
/// value where a dim has none.
pub fn resize(
    n: &Node,
    x: &[usize],
    y: &[usize],
    dims: &[ResizeDim],
    extrapolation: f32,
) -> Result<GpuKernel, String> {
    let r = x.len();
    if y.len() != r || dims.len() != r {
        return Err("resize plan of another rank".into());
    }
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    // The tables, one buffer: per dim, per output coordinate, `t` entries
    // of (index, weight bits); index u32::MAX marks the extrapolation.
    let mut table: Vec<u32> = vec![];
    let mut body = String::new();
    let total: usize = y.iter().product();
    let _ = writeln!(body, "if (gid >= {total}u) {{ return; }}\nvar acc = 0.0;");
    let mut inner = 1usize;
    let mut coord = vec![String::new(); r];
    for d in (0..r).rev() {
        coord[d] = format!("((gid / {inner}u) % {}u)", y[d]);
        inner *= y[d];
    }
    let xs = strides_of(x);
    let mut loops = String::new();
    let mut close = String::new();
    let mut weight = vec!["1.0".to_string()];
    let mut offset = vec!["0u".to_string()];
    let mut tb = None;
    let mut outside = vec!["false".to_string()];
    for d in 0..r {
        match &dims[d] {
            None => offset.push(format!("{} * {}u", coord[d], xs[d])),
            Some(coords) => {
                let t = coords
                    .iter()
                    .map(|c| c.as_ref().map_or(1, Vec::len))
                    .max()
                    .unwrap_or(1)
                    .max(1);
                let base = table.len();
                for c in coords {
                    for k in 0..t {
                        match c {
                            None => table.extend([
                                if k == 0 { u32::MAX } else { 0 },
                                if k == 0 { 1f32.to_bits() } else { 0 },
                            ]),
                            Some(taps) => match taps.get(k) {
                                Some(&(i, w)) => table.extend([i as u32, w.to_bits()]),
                                None => table.extend([0, 0]),
                            },
                        }
                    }
                }
                if tb.is_none() {
                    tb = Some(sh.bind(Bind::Data(0), "u32"));
                }
                let tbn = tb.clone().unwrap_or_default();
                let _ = writeln!(
                    loops,
                    "for (var t{d} = 0u; t{d} < {t}u; t{d} = t{d} + 1u) {{\n let e{d} = {base}u + ({} * {t}u + t{d}) * 2u;\n let i{d} = {tbn}[e{d}]; let w{d} = bitcast<f32>({tbn}[e{d} + 1u]);",
                    coord[d]
                );
                close.push_str("}\n");
                weight.push(format!("w{d}"));
                outside.push(format!("i{d} == 0xffffffffu"));
                offset.push(format!(
                    "select(i{d}, 0u, i{d} == 0xffffffffu) * {}u",
                    xs[d]
                ));
            }
        }
    }
    let _ = write!(
        body,
        "{loops}let w = {};\nif (w != 0.0) {{ if ({}) {{ acc = acc + w * {}; }} else {{ acc = acc + w * {xb}[{}]; }} }}\n{close}{yb}[gid] = acc;",
        weight.join(" * "),
        outside.join(" || "),
        lit(extrapolation),
        offset.join(" + ")
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    let data = if table.is_empty() {
        vec![]
    } else {
        vec![table.iter().flat_map(|v| v.to_le_bytes()).collect()]
    };
    Ok(GpuKernel {
        dispatches: vec![d],
        data,
        scratch: vec![],
        check: None,
        describe: "resize".into(),
        flops: 0.0,
    })
}

/// How GridSample interpolates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GridMode {
    Nearest,
    Linear,
    Cubic,
}

/// What GridSample reads outside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GridPadding {
    Zeros,
    Border,
    Reflection,
}

/// The reflection rule of GridSample's reference (`lo`, `hi` the
/// coordinate range).
const H_REFLECT: &str = "fn gs_reflect(x: f32, lo: f32, hi: f32) -> f32 {\n\
  let rng = hi - lo;\n\
  if (x < lo) { let dx = lo - x; let n = floor(dx / rng); let r = dx - n * rng; return select(hi - r, lo + r, n % 2.0 == 0.0); }\n\
  if (x > hi) { let dx = x - hi; let n = floor(dx / rng); let r = dx - n * rng; return select(lo + r, hi - r, n % 2.0 == 0.0); }\n\
  return x;\n}\n\
fn cubic_w(t0: f32, j: u32) -> f32 {\n\
  let a = -0.75; let x = abs(t0);\n\
  if (j == 0u) { return ((a * (x + 1.0) - 5.0 * a) * (x + 1.0) + 8.0 * a) * (x + 1.0) - 4.0 * a; }\n\
  if (j == 1u) { return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0; }\n\
  if (j == 2u) { return ((a + 2.0) * (1.0 - x) - (a + 3.0)) * (1.0 - x) * (1.0 - x) + 1.0; }\n\
  return ((a * (2.0 - x) - 5.0 * a) * (2.0 - x) + 8.0 * a) * (2.0 - x) - 4.0 * a;\n}";

/// GridSample of `x` [N, C, spatial...] at the grid's points [N, points...,
/// k] (coordinates innermost dim first), following the interpreter (the
/// ONNX reference) step by step in f32: one thread per output element.
pub fn grid_sample(
    n: &Node,
    x: &[usize],
    points: usize,
    mode: GridMode,
    padding: GridPadding,
    align: bool,
) -> Result<GpuKernel, String> {
    let k = x
        .len()
        .checked_sub(2)
        .filter(|&k| k >= 1)
        .ok_or("needs spatial dims")?;
    let (nb, c) = (x[0], x[1]);
    let dims = &x[2..];
    if padding != GridPadding::Zeros && dims.contains(&0) {
        return Err("an empty image with border or reflection padding".into());
    }
    let plane: usize = dims.iter().product();
    let total = nb * c * points;
    let mut sh = Shader::new(n);
    sh.helper(H_REFLECT);
    let xb = sh.bind(Bind::Operand(0), "f32");
    let gb = sh.bind(Bind::Operand(1), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let taps = match mode {
        GridMode::Nearest => 1,
        GridMode::Linear => 2,
        GridMode::Cubic => 4,
    };
    let mut body = format!(
        "if (gid >= {total}u) {{ return; }}\nlet p = gid % {points}u; let ch = (gid / {points}u) % {c}u; let b = gid / ({points}u * {c}u);\n\
         let base = (b * {c}u + ch) * {plane}u;\n"
    );
    let dst = strides_of(dims);
    for (d, &len) in dims.iter().enumerate() {
        let (lo, hi) = if align {
            (0.0, len as f32 - 1.0)
        } else {
            (-0.5, len as f32 - 0.5)
        };
        let lenf = len as f32;
        let coord = if align {
            format!("(nv{d} + 1.0) / 2.0 * ({} - 1.0)", lit(lenf))
        } else {
            format!("((nv{d} + 1.0) * {} - 1.0) / 2.0", lit(lenf))
        };
        let _ = writeln!(
            body,
            "let nv{d} = {gb}[(b * {points}u + p) * {k}u + {}u];\nvar x{d} = {coord};",
            k - 1 - d
        );
        if mode == GridMode::Nearest {
            let _ = writeln!(body, "x{d} = round(x{d});");
        }
        match padding {
            GridPadding::Border => {
                let _ = writeln!(
                    body,
                    "if (x{d} < {} || x{d} > {}) {{ x{d} = clamp(x{d}, 0.0, {}); }}",
                    lit(lo),
                    lit(hi),
                    lit(lenf - 1.0)
                );
            }
            GridPadding::Reflection => {
                let _ = writeln!(body, "x{d} = gs_reflect(x{d}, {}, {});", lit(lo), lit(hi));
            }
            GridPadding::Zeros => {}
        }
        let _ = writeln!(body, "let f{d} = floor(x{d}); let t{d} = x{d} - f{d};");
    }
    let mut loops = String::new();
    let mut close = String::new();
    let mut weight = vec![];
    let mut inside = vec![];
    let mut at = vec![];
    for (d, &len) in dims.iter().enumerate() {
        let _ = writeln!(
            loops,
            "for (var j{d} = 0u; j{d} < {taps}u; j{d} = j{d} + 1u) {{"
        );
        close.push_str("}\n");
        let (pos, w) = match mode {
            GridMode::Nearest => (format!("i32(x{d})"), "1.0".to_string()),
            GridMode::Linear => (
                format!("i32(f{d}) + i32(j{d})"),
                format!("select(1.0 - t{d}, t{d}, j{d} == 1u)"),
            ),
            GridMode::Cubic => (
                format!("i32(f{d}) - 1 + i32(j{d})"),
                format!("cubic_w(t{d}, j{d})"),
            ),
        };
        let _ = writeln!(loops, "var i{d} = {pos};");
        match padding {
            GridPadding::Zeros => inside.push(format!("i{d} >= 0 && i{d} < {len}")),
            GridPadding::Border => {
                let _ = writeln!(loops, "i{d} = clamp(i{d}, 0, {});", len as i64 - 1);
            }
            GridPadding::Reflection => {
                let (lo, hi) = if align {
                    (0.0, len as f32 - 1.0)
                } else {
                    (-0.5, len as f32 - 0.5)
                };
                let _ = writeln!(
                    loops,
                    "i{d} = clamp(i32(gs_reflect(f32(i{d}), {}, {})), 0, {});",
                    lit(lo),
                    lit(hi),
                    len as i64 - 1
                );
            }
        }
        weight.push(w);
        at.push(format!("u32(i{d}) * {}u", dst[d]));
    }
    let cond = if inside.is_empty() {
        "true".to_string()
    } else {
        inside.join(" && ")
    };
    let _ = write!(
        body,
        "var acc = 0.0;\n{loops}if ({cond}) {{ acc = acc + {} * {xb}[base + {}]; }}\n{close}{yb}[gid] = acc;",
        weight.join(" * "),
        at.join(" + ")
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel::single(
        d,
        format!("GridSample {mode:?} {padding:?}"),
        0.0,
    ))
}

/// OneHot: `values[1]` where the index along the new axis equals the
/// element's index (negative ones counted from the end), `values[0]`
/// elsewhere, also for indices out of range (as ONNX says). Indices of
/// f32 (truncated), i32 or i64; values f32.
pub fn one_hot(
    n: &Node,
    indices: &[usize],
    index_elem: ElemType,
    axis: usize,
    depth: usize,
) -> Result<GpuKernel, String> {
    let outer: usize = indices[..axis].iter().product();
    let inner: usize = indices[axis..].iter().product();
    let total = outer * depth * inner;
    let mut sh = Shader::new(n);
    let ix = sh.bind(Bind::Operand(0), "u32");
    let vb = sh.bind(Bind::Operand(2), "f32");
    let yb = sh.bind(Bind::Result(0), "f32");
    let at = "o * {inner}u + i".replace("{inner}", &inner.to_string());
    let read = match index_elem {
        ElemType::F32 => format!("i32(trunc(bitcast<f32>({ix}[{at}])))"),
        ElemType::I32 => format!("bitcast<i32>({ix}[{at}])"),
        // Out of i32's range is out of range for any depth.
        ElemType::I64 => format!(
            "select({}, bitcast<i32>({ix}[2u * ({at})]), ({ix}[2u * ({at}) + 1u] == 0u && bitcast<i32>({ix}[2u * ({at})]) >= 0) || ({ix}[2u * ({at}) + 1u] == 0xffffffffu && bitcast<i32>({ix}[2u * ({at})]) < 0))",
            i32::MIN
        ),
        e => return Err(format!("OneHot indices of {e}")),
    };
    let body = format!(
        "if (gid >= {total}u) {{ return; }}\nlet i = gid % {inner}u; let d = i32((gid / {inner}u) % {depth}u); let o = gid / ({inner}u * {depth}u);\n\
         var q = {read};\nif (q < 0 && q != {min}) {{ q = q + {depth}; }}\n{yb}[gid] = select({vb}[0], {vb}[1], q == d);",
        min = i32::MIN
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(copies(vec![d], format!("OneHot depth {depth}")))
}
