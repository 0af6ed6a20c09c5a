//! The quantized path on the GPU: QuantizeLinear, DequantizeLinear and
//! DynamicQuantizeLinear, 8-bit MaxPool and `kiln.Lookup`, and the integer products
//! (QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger) on WGSL's
//! `dot4I8Packed`. 8- and 16-bit values stay packed in 32-bit words (see
//! `wgsl::per_word`); scales and zero points are read from their operands
//! in the shader, so run-time ones work as constant ones do.
//!
//! The products: with `x = xs + ox` (`xs` signed 8-bit: an unsigned byte
//! with its top bit flipped is `x - 128`, so `ox` is 128 for u8 and 0 for
//! i8) and likewise `w = ws + ow`,
//! `Σ (x - zx)(w - zw) = Σ xs·ws + b·Σ xs + a·Σ ws + K·a·b` with
//! `a = ox - zx`, `b = ow - zw`: three `dot4I8Packed` per four products
//! (the sums against `0x01010101`), exact in i32 for any mix of u8 and i8
//! operands and zero points, whichever `dot4I8Packed` the adapter has (a
//! hardware dot product or naga's polyfill). Padding, in the window or up
//! to a multiple of four, reads `x = zx`, which adds nothing.

use std::fmt::Write;

use kiln_ir::{ElemType, Node};

use super::dense::{self, pool_window, window_tap, ConvGeom, PoolWindow, Store};
use crate::gpu::wgsl::{
    float_read, grid_for, grid_per_word, int_range, int_read, packed_bits, packed_bytes,
    packed_raw, per_word, Bind, GpuKernel, Shader, H_F16, H_TREE, ROW_WG, WG,
};

/// How a quantization parameter spreads over a tensor viewed as
/// `[outer, axis, inner]`: one value, one per position along the axis,
/// or one per block of `block` positions along it (the parameter then
/// has the tensor's shape with the axis divided into blocks).
#[derive(Clone, Copy, Debug)]
pub struct ParamSplit {
    pub outer: usize,
    pub axis: usize,
    pub inner: usize,
    /// 0: per tensor (`axis` unused); 1: per axis; more: blocked.
    pub block: usize,
}

impl ParamSplit {
    /// The parameter's index for element `e` (a `u32` expression).
    fn index(&self, e: &str) -> String {
        let e = format!("({e})");
        let (a, inner) = (self.axis, self.inner);
        match self.block {
            0 => "0u".into(),
            1 => format!("(({e} / {inner}u) % {a}u)"),
            b => format!(
                "((({e} / ({inner}u * {a}u)) * {nb}u + (({e} / {inner}u) % {a}u) / {b}u) * {inner}u + {e} % {inner}u)",
                nb = a.div_ceil(b)
            ),
        }
    }
}

/// `QuantizeLinear`: `y = saturate(round_half_even(x / scale) + zp)` into
/// `y_type`; a NaN quantizes to the zero point.
pub fn quantize(
    n: &Node,
    total: usize,
    split: ParamSplit,
    zp: Option<ElemType>,
    y_type: ElemType,
) -> Result<GpuKernel, String> {
    let bits = packed_bits(y_type).ok_or_else(|| format!("QuantizeLinear to {y_type}"))?;
    let (lo, hi) = int_range(y_type)?;
    let mut sh = Shader::new(n);
    let x = sh.bind(Bind::Operand(0), "u32");
    let s = sh.bind(Bind::Operand(1), "u32");
    let y = sh.bind(Bind::Result(0), "u32");
    let p = split.index("e");
    let z = match zp {
        Some(t) => {
            let zb = sh.bind(Bind::Operand(2), "u32");
            int_read(&zb, &p, t)?
        }
        None => "0".into(),
    };
    let lane = format!(
        "let q = bitcast<f32>({x}[e]) / bitcast<f32>({s}[{p}]);\n\
         let r = select(round(q), 0.0, knan(q));\n\
         let v = bitcast<u32>(i32(clamp(r + f32({z}), {lo}.0, {hi}.0)));"
    );
    let d = sh.finish(
        WG,
        &per_word(&y, total, bits, &lane),
        grid_per_word(total, bits)?,
    );
    Ok(GpuKernel::single(d, format!("quantize to {y_type}"), 0.0))
}

/// `DequantizeLinear`: `y = (x - zp) · scale` from 8-, 16- or 32-bit
/// integers.
pub fn dequantize(
    n: &Node,
    total: usize,
    split: ParamSplit,
    x_type: ElemType,
    zp: Option<ElemType>,
) -> Result<GpuKernel, String> {
    let mut sh = Shader::new(n);
    let x = sh.bind(Bind::Operand(0), "u32");
    let s = sh.bind(Bind::Operand(1), "u32");
    let y = sh.bind(Bind::Result(0), "u32");
    let p = split.index("gid");
    let z = match zp {
        Some(t) => {
            let zb = sh.bind(Bind::Operand(2), "u32");
            int_read(&zb, &p, t)?
        }
        None => "0".into(),
    };
    let body = format!(
        "if (gid >= {total}u) {{ return; }}\n\
         {y}[gid] = bitcast<u32>(f32({} - {z}) * bitcast<f32>({s}[{p}]));",
        int_read(&x, "gid", x_type)?
    );
    let d = sh.finish(WG, &body, grid_for(total as u64)?);
    Ok(GpuKernel::single(d, format!("dequantize {x_type}"), 0.0))
}

/// `DynamicQuantizeLinear` of `total` f32 values to u8: one workgroup
/// finds the range (widened to hold 0) and writes the scale and zero
/// point, then every element is quantized with them.
pub fn dynamic_quantize(n: &Node, total: usize) -> Result<GpuKernel, String> {
    let mut sh = Shader::new(n);
    sh.helper(H_TREE);
    let x = sh.bind(Bind::Operand(0), "u32");
    let sc = sh.bind(Bind::Result(1), "u32");
    let zp = sh.bind(Bind::Result(2), "u32");
    // The ONNX reference: scale = (max - min) / 255, zero point =
    // saturate(round(-min / scale)); an all-zero input gives scale 0 and
    // zero point 0 (and quantizes to 0, as the interpreter does).
    let body = format!(
        "var lo = 0.0; var hi = 0.0;\n\
         for (var i = li; i < {total}u; i = i + {ROW_WG}u) {{ let v = bitcast<f32>({x}[i]); lo = min(lo, v); hi = max(hi, v); }}\n\
         let mn = -tree_max(li, -lo); let mx = tree_max(li, hi);\n\
         if (li == 0u) {{\n\
           let scale = (mx - mn) / 255.0;\n\
           var z = 0.0; if (scale != 0.0) {{ z = clamp(round((0.0 - mn) / scale), 0.0, 255.0); }}\n\
           {sc}[0] = bitcast<u32>(scale); {zp}[0] = u32(z);\n\
         }}"
    );
    let first = sh.finish(ROW_WG, &body, [1, 1, 1]);
    let mut sh = Shader::new(n);
    let x = sh.bind(Bind::Operand(0), "u32");
    let sc = sh.bind(Bind::Result(1), "u32");
    let zp = sh.bind(Bind::Result(2), "u32");
    let y = sh.bind(Bind::Result(0), "u32");
    let lane = format!(
        "let scale = bitcast<f32>({sc}[0]);\n\
         var r = 0.0; if (scale != 0.0) {{ r = round(bitcast<f32>({x}[e]) / scale); }}\n\
         r = select(r, 0.0, knan(r));\n\
         let v = u32(clamp(r + f32({zp}[0] & 0xffu), 0.0, 255.0));"
    );
    let second = sh.finish(WG, &per_word(&y, total, 8, &lane), grid_per_word(total, 8)?);
    Ok(GpuKernel {
        dispatches: vec![first, second],
        describe: "dynamic quantize to u8".into(),
        ..Default::default()
    })
}

/// `kiln.Lookup`: `y[i] = table[x[i] - lowest]` over 8-bit values (the
/// index is a u8's bits, or an i8's with the top bit flipped), the table
/// a 256-byte operand.
pub fn lookup(n: &Node, total: usize, x: ElemType) -> Result<GpuKernel, String> {
    let flip = match x {
        ElemType::U8 => 0,
        ElemType::I8 => 0x80,
        e => return Err(format!("a lookup of {e}")),
    };
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "u32");
    let tb = sh.bind(Bind::Operand(1), "u32");
    let yb = sh.bind(Bind::Result(0), "u32");
    let lane = format!(
        "let t = {} ^ {flip}u;\nlet v = {};",
        packed_raw(&xb, "e", 8),
        packed_raw(&tb, "t", 8)
    );
    let d = sh.finish(
        WG,
        &per_word(&yb, total, 8, &lane),
        grid_per_word(total, 8)?,
    );
    Ok(GpuKernel::single(d, "lookup (8-bit)".into(), 0.0))
}

/// MaxPool of 8- or 16-bit integers over N-d windows (`x` [N, C,
/// spatial...]); padding never wins.
#[allow(clippy::too_many_arguments)]
pub fn max_pool(
    n: &Node,
    e: ElemType,
    x: &[usize],
    y: &[usize],
    kernel: &[usize],
    strides: &[usize],
    dilations: &[usize],
    pads: &[usize],
) -> Result<GpuKernel, String> {
    let bits = 8 * packed_bytes(e).ok_or_else(|| format!("MaxPool of {e}"))?;
    let (lo, _) = int_range(e)?;
    let PoolWindow {
        osp,
        isp,
        ksp,
        total,
        tap,
        inside,
        at,
    } = pool_window(x, y, kernel, strides, dilations, pads)?;
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "u32");
    let yb = sh.bind(Bind::Result(0), "u32");
    let lane = format!(
        "let op = e % {osp}u; let base = (e / {osp}u) * {isp}u;\nvar a = {lo};\n\
         for (var kt = 0u; kt < {ksp}u; kt = kt + 1u) {{\n{tap}if ({inside}) {{ a = max(a, {}); }}\n}}\n\
         let v = bitcast<u32>(a);",
        int_read(&xb, &format!("base + {at}"), e)?
    );
    let d = sh.finish(
        WG,
        &per_word(&yb, total, bits, &lane),
        grid_per_word(total, bits)?,
    );
    Ok(GpuKernel::single(
        d,
        format!("MaxPool {kernel:?} of {e}"),
        0.0,
    ))
}

/// Weights kept quantized (`kiln.DequantMatMul`'s W [K, N],
/// `kiln.DequantLSTM`'s W and R): 4-, 8- or 16-bit integers, their
/// scale, zero point and how those spread over them.
#[derive(Clone, Copy, Debug)]
pub struct QuantWeights {
    pub w: Bind,
    pub elem: ElemType,
    pub scale: Bind,
    pub zp: Option<(Bind, ElemType)>,
    pub split: ParamSplit,
}

/// Element `i` (a `u32` expression) of quantized weights, dequantized:
/// `(w[i] - zp[p]) · scale[p]` as an f32 expression.
pub(crate) fn weight_read(sh: &mut Shader, q: &QuantWeights, i: &str) -> Result<String, String> {
    let wb = sh.bind(q.w, "u32");
    let sb = sh.bind(q.scale, "u32");
    let p = q.split.index(i);
    let z = match q.zp {
        Some((b, t)) => {
            let zb = sh.bind(b, "u32");
            int_read(&zb, &p, t)?
        }
        None => "0".into(),
    };
    Ok(format!(
        "(f32({} - {z}) * bitcast<f32>({sb}[{p}]))",
        int_read(&wb, i, q.elem)?
    ))
}

/// `kiln.DequantMatMul`: the tiled GEMM of [`dense::matmul`] with W
/// read as `(w[i] - zp[p]) · scale[p]` as its tiles are loaded, so the
/// weights stay packed in device memory at their stored width.
pub fn dequant_matmul(
    n: &Node,
    a_shape: &[usize],
    w_shape: &[usize],
    out_shape: &[usize],
    a: Bind,
    q: QuantWeights,
    store: Store,
) -> Result<GpuKernel, String> {
    if w_shape.len() != 2 {
        return Err("weights that are not a matrix".into());
    }
    let mut load = |sh: &mut Shader, i: &str| weight_read(sh, &q, i);
    let mut k = dense::matmul_with(n, a_shape, w_shape, out_shape, a, &mut load, store)?;
    k.describe = format!("{} of {} weights", k.describe, q.elem);
    Ok(k)
}

/// The 8-bit operands of an integer product and their zero points.
#[derive(Clone, Copy, Debug)]
pub struct IntOperands {
    pub x: ElemType,
    pub w: ElemType,
    /// Binding and type of each zero point (absent: 0), and whether it
    /// has one value per output channel/column (else one).
    pub x_zp: Option<(Bind, ElemType)>,
    pub w_zp: Option<(Bind, ElemType, bool)>,
}

/// What an integer product writes: the exact i32 sums
/// (`ConvInteger`/`MatMulInteger`), or 8-bit values requantized with
/// `(acc + bias) · (x_scale · w_scale / y_scale)`, rounded half to even,
/// plus the result's zero point, saturated (`QLinearConv`; `QLinearMatMul`
/// wraps, as ONNX's reference does).
#[derive(Clone, Copy, Debug)]
pub enum IntOut {
    I32,
    Requantize {
        y: ElemType,
        /// The scales' type: f32, or f16.
        scale_type: ElemType,
        x_scale: Bind,
        /// The weight's scale, and whether per channel/column.
        w_scale: (Bind, bool),
        y_scale: Bind,
        y_zp: Option<(Bind, ElemType)>,
        bias: Option<Bind>,
    },
}

/// The shape of an integer product: `k` terms per output; `out` the
/// code that sets, from the output element `e`, `xi(kk)`/`wi(kk)` bases
/// and the channel/column `ch` that per-channel parameters follow.
struct Product {
    total: usize,
    k: usize,
    /// Code run once per output element: defines `ch` (u32) and whatever
    /// `x_at`/`w_at` use.
    prologue: String,
    /// Code run per term `kk` (< k): defines `xin` (bool: inside the
    /// input, else padding) and `xidx`, `widx` (u32 element indices).
    term: String,
    flops: f64,
    describe: String,
}

/// The shaders of an integer product.
fn product(n: &Node, ops: IntOperands, out: IntOut, p: Product) -> Result<GpuKernel, String> {
    for t in [ops.x, ops.w] {
        if !matches!(t, ElemType::U8 | ElemType::I8) {
            return Err(format!("integer products of {t}"));
        }
    }
    let mut sh = Shader::new(n);
    let xb = sh.bind(Bind::Operand(0), "u32");
    let wi = match out {
        IntOut::I32 => 1,
        IntOut::Requantize { .. } => 3,
    };
    let wb = sh.bind(Bind::Operand(wi), "u32");
    let flip = |t: ElemType| if t == ElemType::U8 { 128 } else { 0 };
    let (ox, ow) = (flip(ops.x), flip(ops.w));
    let zx = match ops.x_zp {
        Some((b, t)) => {
            let zb = sh.bind(b, "u32");
            int_read(&zb, "0u", t)?
        }
        None => "0".into(),
    };
    let zw = match ops.w_zp {
        Some((b, t, per)) => {
            let zb = sh.bind(b, "u32");
            int_read(&zb, if per { "ch" } else { "0u" }, t)?
        }
        None => "0".into(),
    };
    let kp = p.k.div_ceil(4) * 4;
    let byte =
        |buf: &str, idx: &str| format!("(({buf}[({idx}) >> 2u] >> ((({idx}) & 3u) * 8u)) & 0xffu)");
    let compute = format!(
        "{prologue}\
         let zx = {zx}; let zw = {zw};\n\
         let a = {ox} - zx; let b = {ow} - zw;\n\
         // x = zx where padded: its flipped byte.\n\
         let xpad = u32(zx - {ox}) & 0xffu;\n\
         var acc = 0; var sx = 0; var sw = 0;\n\
         for (var k0 = 0u; k0 < {kp}u; k0 = k0 + 4u) {{\n\
           var px = 0u; var pw = 0u;\n\
           for (var j = 0u; j < 4u; j = j + 1u) {{\n\
             let kk = k0 + j;\n\
             var xv = xpad; var wv = 0u;\n\
             if (kk < {k}u) {{\n{term}\
               wv = {wread} ^ {ow}u;\n\
               if (xin) {{ xv = {xread} ^ {ox}u; }}\n\
             }}\n\
             px = px | (xv << (j * 8u)); pw = pw | (wv << (j * 8u));\n\
           }}\n\
           acc = acc + dot4I8Packed(px, pw);\n\
           sx = sx + dot4I8Packed(px, 0x01010101u); sw = sw + dot4I8Packed(pw, 0x01010101u);\n\
         }}\n\
         let sum = acc + b * sx + a * sw + {kp} * a * b;\n",
        prologue = p.prologue,
        k = p.k,
        term = p.term,
        wread = byte(&wb, "widx"),
        xread = byte(&xb, "xidx"),
    );
    let d = match out {
        IntOut::I32 => {
            let y = sh.bind(Bind::Result(0), "u32");
            let body = format!(
                "if (gid >= {total}u) {{ return; }}\nlet e = gid;\n{compute}{y}[gid] = bitcast<u32>(sum);",
                total = p.total
            );
            sh.finish(WG, &body, grid_for(p.total as u64)?)
        }
        IntOut::Requantize {
            y,
            scale_type,
            x_scale,
            w_scale,
            y_scale,
            y_zp,
            bias,
        } => {
            let bits = 8 * packed_bytes(y).ok_or_else(|| format!("requantized results of {y}"))?;
            let (lo, hi) = int_range(y)?;
            let xs = sh.bind(x_scale, "u32");
            let ws = sh.bind(w_scale.0, "u32");
            let ys = sh.bind(y_scale, "u32");
            sh.helper(H_F16);
            let f = |b: &str, i: &str| float_read(b, i, scale_type);
            let zy = match y_zp {
                Some((b, t)) => {
                    let zb = sh.bind(b, "u32");
                    int_read(&zb, "0u", t)?
                }
                None => "0".into(),
            };
            let bias = match bias {
                Some(b) => {
                    let bb = sh.bind(b, "u32");
                    format!("bitcast<i32>({bb}[ch])")
                }
                None => "0".into(),
            };
            // QLinearMatMul wraps a value outside the result type, as
            // ONNX's reference and node tests define it
            // (`np.rint(y).astype(dtype)`); QLinearConv saturates.
            let store = if n.op == "QLinearMatMul" {
                format!("i32(r) + {zy}")
            } else {
                format!("i32(clamp(r + f32({zy}), {lo}.0, {hi}.0))")
            };
            let lane = format!(
                "{compute}let scale = {r}({r}({} * {}) / {});\n\
                 let r = round(f32(sum + {bias}) * scale);\n\
                 let v = bitcast<u32>({store});",
                f(&xs, "0u")?,
                f(&ws, if w_scale.1 { "ch" } else { "0u" })?,
                f(&ys, "0u")?,
                // f16 scales multiply in f16, as ONNX's reference does.
                r = if scale_type == ElemType::F16 {
                    "kr16"
                } else {
                    ""
                },
            );
            let y = sh.bind(Bind::Result(0), "u32");
            sh.finish(
                WG,
                &per_word(&y, p.total, bits, &lane),
                grid_per_word(p.total, bits)?,
            )
        }
    };
    Ok(GpuKernel::single(d, p.describe, p.flops))
}

/// `QLinearConv` / `ConvInteger` (operands in ONNX order; `out` says which).
pub fn conv(n: &Node, g: &ConvGeom, ops: IntOperands, out: IntOut) -> Result<GpuKernel, String> {
    let sp =
        g.x.len()
            .checked_sub(2)
            .filter(|&s| s >= 1)
            .ok_or("conv needs spatial dims")?;
    if g.w.len() != g.x.len() || g.y.len() != g.x.len() || g.pads.len() < sp {
        return Err("conv geometry of mixed ranks".into());
    }
    let (c, m) = (g.x[1], g.w[0]);
    if g.group == 0 || c % g.group != 0 || m % g.group != 0 || g.w[1] * g.group != c {
        return Err("channels do not split into the groups".into());
    }
    let cg = c / g.group;
    let mg = m / g.group;
    let ksp: usize = g.w[2..].iter().product();
    let osp: usize = g.y[2..].iter().product();
    let isp: usize = g.x[2..].iter().product();
    let k = cg * ksp;
    let total = g.y[0] * m * osp;
    let mut pads2 = g.pads[..sp].to_vec();
    pads2.extend(vec![0; sp]);
    let (tap, inside, at) = window_tap(
        &g.x[2..],
        &g.y[2..],
        &g.w[2..],
        &g.strides,
        &g.dilations,
        &pads2,
    );
    let prologue = format!(
        "let op = e % {osp}u; let ch = (e / {osp}u) % {m}u; let img = e / ({osp}u * {m}u);\n\
         let xbase = (img * {c}u + (ch / {mg}u) * {cg}u) * {isp}u; let wbase = ch * {k}u;\n"
    );
    let term = format!(
        "let kt = kk % {ksp}u; let ci = kk / {ksp}u;\n{tap}let xin = {inside};\n\
         var xidx = 0u; if (xin) {{ xidx = xbase + ci * {isp}u + {at}; }}\n\
         let widx = wbase + kk;\n"
    );
    let p = Product {
        total,
        k,
        prologue,
        term,
        flops: 2.0 * total as f64 * k as f64,
        describe: format!("{} {:?} on dot4I8Packed", n.op, &g.w[2..]),
    };
    product(n, ops, out, p)
}

/// `QLinearMatMul` / `MatMulInteger` of `a` [..., M, K] and `b` [..., K,
/// N] (batch dims broadcast as in MatMul; both at least 2-D here).
pub fn matmul(
    n: &Node,
    a: &[usize],
    b: &[usize],
    y: &[usize],
    ops: IntOperands,
    out: IntOut,
) -> Result<GpuKernel, String> {
    if a.len() < 2 || b.len() < 2 || y.len() != a.len().max(b.len()) {
        return Err("integer matmul of vectors".into());
    }
    let (mm, kk) = (a[a.len() - 2], a[a.len() - 1]);
    let nn = b[b.len() - 1];
    if b[b.len() - 2] != kk || y[y.len() - 2] != mm || y[y.len() - 1] != nn {
        return Err("integer matmul of mismatched shapes".into());
    }
    let total: usize = y.iter().product();
    let r = y.len();
    // Each batch dim of the result, and the operands' strides along it (0
    // where broadcast).
    let mut a_off = String::from("0u");
    let mut b_off = String::from("0u");
    let mut inner = mm * nn;
    let (mut sa, mut sb) = (mm * kk, kk * nn);
    for d in (0..r - 2).rev() {
        let coord = format!("((e / {inner}u) % {}u)", y[d]);
        let ad = (d + a.len()).checked_sub(r).map(|i| a[i]).unwrap_or(1);
        let bd = (d + b.len()).checked_sub(r).map(|i| b[i]).unwrap_or(1);
        if ad > 1 {
            let _ = write!(a_off, " + {coord} * {sa}u");
        }
        if bd > 1 {
            let _ = write!(b_off, " + {coord} * {sb}u");
        }
        sa *= ad;
        sb *= bd;
        inner *= y[d];
    }
    // Per-column zero points and scales (b's) follow the column; a's
    // zero point is one value (per-row ones stay on the cpu).
    let prologue = format!(
        "let ch = e % {nn}u; let row = (e / {nn}u) % {mm}u;\n\
         let abase = {a_off} + row * {kk}u; let bbase = {b_off} + ch;\n"
    );
    let term = format!("let xin = true; let xidx = abase + kk; let widx = bbase + kk * {nn}u;\n");
    let p = Product {
        total,
        k: kk,
        prologue,
        term,
        flops: 2.0 * total as f64 * kk as f64,
        describe: format!("{} {mm}x{kk}x{nn} on dot4I8Packed", n.op),
    };
    product(n, ops, out, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::wgsl::validate;

    /// A node of distinct operand and result values.
    fn node(op: &str, ins: usize, outs: usize) -> Node {
        let v = |i: usize| kiln_ir::ValueId(i as u32);
        Node::new(
            op,
            (0..ins).map(|i| Some(v(i))).collect(),
            (ins..ins + outs).map(v).collect(),
        )
    }

    fn valid(k: &GpuKernel) {
        for d in &k.dispatches {
            validate(&d.wgsl).unwrap_or_else(|e| panic!("{e}\n{}", d.wgsl));
        }
    }

    #[test]
    fn quantized_shaders_validate() {
        let split = ParamSplit {
            outer: 2,
            axis: 3,
            inner: 5,
            block: 2,
        };
        let q = node("QuantizeLinear", 3, 1);
        valid(&quantize(&q, 30, split, Some(ElemType::I8), ElemType::I8).unwrap());
        valid(
            &quantize(
                &q,
                30,
                ParamSplit { block: 0, ..split },
                None,
                ElemType::U16,
            )
            .unwrap(),
        );
        let dq = node("DequantizeLinear", 3, 1);
        for t in [ElemType::U8, ElemType::I8, ElemType::I32, ElemType::I16] {
            valid(&dequantize(&dq, 30, ParamSplit { block: 1, ..split }, t, Some(t)).unwrap());
        }
        valid(&dynamic_quantize(&node("DynamicQuantizeLinear", 1, 3), 1000).unwrap());
        valid(&lookup(&node("kiln.Lookup", 2, 1), 1001, ElemType::I8).unwrap());
        let mp = node("MaxPool", 1, 1);
        valid(
            &max_pool(
                &mp,
                ElemType::U8,
                &[1, 2, 5, 5],
                &[1, 2, 2, 2],
                &[3, 3],
                &[2, 2],
                &[1, 1],
                &[0, 0, 1, 1],
            )
            .unwrap(),
        );
        let ops = IntOperands {
            x: ElemType::U8,
            w: ElemType::I8,
            x_zp: Some((Bind::Operand(2), ElemType::U8)),
            w_zp: Some((Bind::Operand(5), ElemType::I8, true)),
        };
        let out = IntOut::Requantize {
            y: ElemType::U8,
            scale_type: ElemType::F16,
            x_scale: Bind::Operand(1),
            w_scale: (Bind::Operand(4), true),
            y_scale: Bind::Operand(6),
            y_zp: Some((Bind::Operand(7), ElemType::U8)),
            bias: Some(Bind::Operand(8)),
        };
        let g = ConvGeom {
            x: vec![1, 4, 6, 6],
            w: vec![4, 2, 3, 3],
            y: vec![1, 4, 3, 3],
            strides: vec![2, 2],
            dilations: vec![1, 1],
            pads: vec![1, 1, 1, 1],
            group: 2,
        };
        valid(&conv(&node("QLinearConv", 9, 1), &g, ops, out).unwrap());
        let mi = IntOperands {
            x_zp: Some((Bind::Operand(2), ElemType::U8)),
            w_zp: None,
            ..ops
        };
        valid(
            &matmul(
                &node("MatMulInteger", 4, 1),
                &[2, 3, 5],
                &[5, 7],
                &[2, 3, 7],
                mi,
                IntOut::I32,
            )
            .unwrap(),
        );
    }
}
