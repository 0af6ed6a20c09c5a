//! Data movement as shaders: one strided copy (what Reshape, Transpose,
//! Slice, Expand, Concat and Split all are: a walk over a shape with a
//! source and a destination stride per dim), Gather, and Cast between
//! f32, i32 and i64. Elements move as 32-bit words, one or two per element,
//! so the copy is the same for every 4- and 8-byte type.

use std::fmt::Write;

use kiln_ir::{ElemType, Node};

use crate::gpu::wgsl::{grid_for, Bind, Dispatch, GpuKernel, Shader, WG};

/// 32-bit words per element of `e`, for the types the GPU moves.
pub fn words(e: ElemType) -> Option<usize> {
    match e {
        ElemType::F32 | ElemType::I32 | ElemType::U32 => Some(1),
        ElemType::I64 | ElemType::U64 | ElemType::F64 => Some(2),
        _ => None,
    }
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

/// Walk `shape`, copying element `src[...]` to `dst[...]`.
pub fn strided_copy(
    n: &Node,
    elem_words: usize,
    shape: &[usize],
    src: &Side,
    dst: &Side,
) -> Result<Dispatch, String> {
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

/// A kernel of copies.
pub fn copies(dispatches: Vec<Dispatch>, describe: String) -> GpuKernel {
    GpuKernel {
        dispatches,
        data: vec![],
        describe,
        flops: 0.0,
    }
}

/// Gather along `axis`: `data` [outer, A, inner], indices of `ni`
/// elements (i32 or i64, negative counting from the end). An index out of
/// range yields zeros (a device cannot fail a run; the interpreter and
/// cpu backend reject it).
pub fn gather(
    n: &Node,
    elem_words: usize,
    data_shape: &[usize],
    axis: usize,
    ni: usize,
    index_words: usize,
) -> Result<GpuKernel, String> {
    let outer: usize = data_shape[..axis].iter().product();
    let a = data_shape[axis];
    let inner: usize = data_shape[axis + 1..].iter().product();
    let total = outer * ni * inner;
    let mut sh = Shader::new(n);
    let x = sh.bind(Bind::Operand(0), "u32");
    let ix = sh.bind(Bind::Operand(1), "u32");
    let y = sh.bind(Bind::Result(0), "u32");
    let mut body = format!(
        "if (gid >= {total}u) {{ return; }}\nlet inn = gid % {inner}u; let j = (gid / {inner}u) % {ni}u; let o = gid / ({inner}u * {ni}u);\n\
         var q = bitcast<i32>({ix}[j * {index_words}u]);\n"
    );
    if index_words == 2 {
        // An i64 index outside i32's range is out of range for any axis.
        let _ = writeln!(
            body,
            "let hi = bitcast<i32>({ix}[j * 2u + 1u]); if (!((hi == 0 && q >= 0) || (hi == -1 && q < 0))) {{ q = {}; }}",
            i32::MIN
        );
    }
    let _ = write!(
        body,
        "if (q < 0 && q != {min}) {{ q = q + {a}; }}\nlet ok = q >= 0 && q < {a};\nlet src = (o * {a}u + u32(max(q, 0))) * {inner}u + inn;\n",
        min = i32::MIN
    );
    for w in 0..elem_words {
        let _ = writeln!(
            body,
            "{y}[gid * {elem_words}u + {w}u] = select(0u, {x}[src * {elem_words}u + {w}u], ok);"
        );
    }
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(copies(vec![d], format!("gather axis {axis}")))
}

/// Cast between f32 and i32 (f32 → i32 truncates toward zero, saturating
/// as WGSL does; out-of-range casts are undefined in ONNX).
pub fn cast(n: &Node, from: ElemType, to: ElemType, total: usize) -> Result<GpuKernel, String> {
    let mut sh = Shader::new(n);
    let x = sh.bind(Bind::Operand(0), "u32");
    let y = sh.bind(Bind::Result(0), "u32");
    let read = match from {
        ElemType::F32 => format!("bitcast<f32>({x}[gid])"),
        ElemType::I32 => format!("f32(bitcast<i32>({x}[gid]))"),
        ElemType::I64 => format!("f32(bitcast<i32>({x}[gid * 2u]))"),
        e => return Err(format!("Cast from {e} on the gpu")),
    };
    let int_read = match from {
        ElemType::F32 => format!("i32(bitcast<f32>({x}[gid]))"),
        ElemType::I32 => format!("bitcast<i32>({x}[gid])"),
        ElemType::I64 => format!("bitcast<i32>({x}[gid * 2u])"),
        _ => unreachable!(),
    };
    if from == ElemType::I64 {
        // Only values in i32's range survive the low word.
        return Err("Cast from i64 on the gpu".into());
    }
    let body = match to {
        ElemType::F32 => format!("{y}[gid] = bitcast<u32>({read});"),
        ElemType::I32 => format!("{y}[gid] = bitcast<u32>({int_read});"),
        e => return Err(format!("Cast to {e} on the gpu")),
    };
    let body = format!("if (gid >= {total}u) {{ return; }}\n{body}");
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(copies(vec![d], format!("cast {from} → {to}")))
}
