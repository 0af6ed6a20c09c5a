//! Planning the quantized path's steps: QuantizeLinear, DequantizeLinear
//! and DynamicQuantizeLinear between f32 and 8-bit values, and the integer
//! products (QLinearConv, ConvInteger, QLinearMatMul, MatMulInteger) with
//! constant 8-bit weights packed once here. What a plan cannot take
//! (blocked or 16-bit quantization, run-time weights of a conv, 3-D convs)
//! stays on the interpreter, with the reason in the report.

use std::sync::Arc;

use kiln_ir::{Attr, ElemType, Module, Node, ValueId};
use kiln_runtime::cpu::kernels::qconv::{QConvGeometry, QConvOut, QConvPlan};
use kiln_runtime::cpu::kernels::qgemm::{Int8, Packed};
use kiln_runtime::cpu::steps::quant::{
    int8_of, AxisSplit, Dequantize, DynamicQuantize, Lookup8, QConv, QMatB, QMatMul, QMatOut,
    Quantize,
};
use kiln_runtime::cpu::NativeStep;

use crate::lower::common::conv_attrs;

fn elem(m: &Module, v: ValueId) -> Option<ElemType> {
    m.ty(v).as_tensor().map(|t| t.elem)
}

fn operand(n: &Node, i: usize) -> Result<ValueId, String> {
    n.input(i).ok_or_else(|| format!("operand {i} is missing"))
}

/// A constant's values as f32.
fn const_f32s(m: &Module, v: ValueId) -> Result<Vec<f32>, String> {
    m.constant(v)
        .and_then(|d| d.to_f64_vec())
        .map(|v| v.into_iter().map(|x| x as f32).collect())
        .ok_or_else(|| format!("%{} is not a constant", m.name(v)))
}

/// A constant's values as i32 (zero points, biases); zero when omitted.
fn const_i32s(m: &Module, v: Option<ValueId>) -> Result<Vec<i32>, String> {
    let Some(v) = v else { return Ok(vec![0]) };
    m.constant(v)
        .and_then(|d| d.to_i64_vec())
        .map(|v| v.into_iter().map(|x| x as i32).collect())
        .ok_or_else(|| format!("%{} is not a constant", m.name(v)))
}

/// A constant 8-bit tensor's bytes and type.
fn const_bytes(m: &Module, v: ValueId) -> Result<(&[u8], Int8), String> {
    let t = int8_of(elem(m, v).ok_or("not a tensor")?)?;
    let d = m
        .constant(v)
        .ok_or_else(|| format!("%{} is not a constant", m.name(v)))?;
    Ok((d.bytes().ok_or("weights are elided")?, t))
}

/// How a parameter of `params` values spreads over a tensor of `shape`
/// along `axis` (per tensor when there is one value).
fn axis_split(n: &Node, shape: &[usize], params: usize) -> Result<AxisSplit, String> {
    let total: usize = shape.iter().product();
    if params == 1 && block_size(n) == 0 {
        return Ok(AxisSplit {
            outer: 1,
            axis: 1,
            inner: total,
        });
    }
    let r = shape.len() as i64;
    let axis = n.attrs.get("axis").and_then(Attr::as_int).unwrap_or(1);
    let axis = if axis < 0 { axis + r } else { axis };
    if !(0..r).contains(&axis) {
        return Err(format!("axis {axis} out of range"));
    }
    let a = axis as usize;
    Ok(AxisSplit {
        outer: shape[..a].iter().product(),
        axis: shape[a],
        inner: shape[a + 1..].iter().product(),
    })
}

/// The element count of a parameter operand (scale), from its static
/// shape.
fn params_of(m: &Module, v: ValueId) -> Result<usize, String> {
    Ok(m.static_shape(v)?.iter().product())
}

pub(super) fn quantize(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = operand(n, 0)?;
    if elem(m, x) != Some(ElemType::F32) {
        return Err("QuantizeLinear of non-f32".into());
    }
    let out = *n.outputs.first().ok_or("no result")?;
    int8_of(elem(m, out).ok_or("no result type")?)?;
    if block_size(n) > 0 {
        return Err("blocked QuantizeLinear runs on the interpreter".into());
    }
    let split = axis_split(n, &m.static_shape(x)?, params_of(m, operand(n, 1)?)?)?;
    Ok(NativeStep::new(
        Box::new(Quantize { split }),
        "QuantizeLinear",
        0.0,
    ))
}

/// `kiln.Lookup` of 8-bit values by a constant table of 256 bytes.
pub(super) fn lookup(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = int8_of(elem(m, operand(n, 0)?).ok_or("no operand type")?)?;
    let t = operand(n, 1)?;
    int8_of(elem(m, t).ok_or("no table type")?)?;
    let bytes = m
        .constant(t)
        .and_then(|d| d.bytes())
        .ok_or("the table is not a constant")?;
    let table: [u8; 256] = bytes
        .try_into()
        .map_err(|_| format!("the table has {} values, not 256", bytes.len()))?;
    let flip = if x == Int8::I8 { 0x80 } else { 0 };
    Ok(NativeStep::new(
        Box::new(Lookup8 { table, flip }),
        "Lookup (8-bit)",
        0.0,
    ))
}

/// The `block_size` of a blocked quantization (0: none).
fn block_size(n: &Node) -> usize {
    n.attrs
        .get("block_size")
        .and_then(Attr::as_int)
        .unwrap_or(0)
        .max(0) as usize
}

pub(super) fn dequantize(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = operand(n, 0)?;
    let block = block_size(n);
    match elem(m, x) {
        Some(ElemType::U8 | ElemType::I8 | ElemType::I32) => {}
        Some(ElemType::U4 | ElemType::I4) if block > 0 => {}
        e => return Err(format!("no native DequantizeLinear of {e:?}")),
    }
    let out = *n.outputs.first().ok_or("no result")?;
    if elem(m, out) != Some(ElemType::F32) {
        return Err("DequantizeLinear to non-f32".into());
    }
    let split = axis_split(n, &m.static_shape(x)?, params_of(m, operand(n, 1)?)?)?;
    Ok(NativeStep::new(
        Box::new(Dequantize { split, block }),
        "DequantizeLinear",
        0.0,
    ))
}

pub(super) fn dynamic_quantize(m: &Module, n: &Node) -> Result<NativeStep, String> {
    if elem(m, operand(n, 0)?) != Some(ElemType::F32) {
        return Err("DynamicQuantizeLinear of non-f32".into());
    }
    Ok(NativeStep::new(
        Box::new(DynamicQuantize),
        "DynamicQuantizeLinear",
        0.0,
    ))
}

/// A 1-D or 2-D window parameter as 2-D: a 1-D conv or pool is one of
/// height 1 (`one` is the height's value: 1 for sizes, 0 for pads).
fn two(v: &[usize], one: usize) -> [usize; 2] {
    if v.len() == 1 {
        [one, v[0]]
    } else {
        [v[0], v[1]]
    }
}

/// The saturation range of an 8-bit result type.
fn range(t: Int8) -> (i32, i32) {
    match t {
        Int8::U8 => (0, 255),
        Int8::I8 => (-128, 127),
    }
}

/// QLinearConv (operands x, x_scale, x_zp, w, w_scale, w_zp, y_scale,
/// y_zp, bias) and ConvInteger (x, w, x_zp, w_zp).
pub(super) fn conv(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let qlinear = n.op == "QLinearConv";
    let (wi, xzi, wzi) = if qlinear { (3, 2, 5) } else { (1, 2, 3) };
    let x = operand(n, 0)?;
    let w = operand(n, wi)?;
    let x_type = int8_of(elem(m, x).ok_or("no operand type")?)?;
    let (wb, w_type) = const_bytes(m, w)?;
    let xs = m.static_shape(x)?;
    let ws = m.static_shape(w)?;
    let out_v = *n.outputs.first().ok_or("no result")?;
    let os = m.static_shape(out_v)?;
    if !(xs.len() == 3 || xs.len() == 4) {
        return Err("quantized conv of rank other than 3 or 4".into());
    }
    let attrs = conv_attrs(n, &xs, &ws)?;
    let sp = xs.len() - 2;
    let g = QConvGeometry {
        x: if sp == 1 {
            [xs[0], xs[1], 1, xs[2]]
        } else {
            [xs[0], xs[1], xs[2], xs[3]]
        },
        m: ws[0],
        kernel: two(&ws[2..], 1),
        strides: two(&attrs.strides, 1),
        dilations: two(&attrs.dilations, 1),
        pads: two(&attrs.pads[..sp], 0),
        out: two(&os[2..], 1),
        group: attrs.group,
    };
    // The x zero point: planned when constant, else read at run time.
    let xz_v = n.input(xzi);
    let (x_zero, x_zero_operand) = match xz_v {
        Some(v) if m.constant(v).is_none() => (0, Some(xzi)),
        v => (const_i32s(m, v)?[0], None),
    };
    let w_zero = const_i32s(m, n.input(wzi))?;
    let mut captured = vec![wi, wzi];
    let (bias, out, what) = if qlinear {
        let xs_ = const_f32s(m, operand(n, 1)?)?;
        let wsc = const_f32s(m, operand(n, 4)?)?;
        let ys = const_f32s(m, operand(n, 6)?)?;
        if xs_.len() != 1 || ys.len() != 1 || !(wsc.len() == 1 || wsc.len() == g.m) {
            return Err("QLinearConv scales: x and y one value, w one or per channel".into());
        }
        let yz = const_i32s(m, n.input(7))?;
        let y_type = int8_of(elem(m, out_v).ok_or("no result type")?)?;
        let (lo, hi) = range(y_type);
        let mult = (0..g.m)
            .map(|c| xs_[0] * wsc[if wsc.len() == 1 { 0 } else { c }] / ys[0])
            .collect();
        let bias = match n.input(8) {
            Some(b) => {
                captured.push(8);
                const_i32s(m, Some(b))?
            }
            None => vec![0; g.m],
        };
        captured.extend([1, 4, 6, 7]);
        let out = QConvOut::Requant {
            mult,
            zero: yz[0],
            lo,
            hi,
        };
        (bias, out, "QLinearConv")
    } else {
        (vec![0; g.m], QConvOut::I32, "ConvInteger")
    };
    if x_zero_operand.is_none() {
        captured.push(xzi);
    }
    let plan = QConvPlan::new(g, x_type, x_zero, wb, w_type, &w_zero, bias, out)?;
    let ops = plan.ops();
    let what = format!("{what} {}x{}", ws[2], ws.get(3).copied().unwrap_or(1));
    Ok(NativeStep {
        kernel: Box::new(QConv {
            plan,
            x_zero_operand,
        }),
        what,
        flops: ops,
        captured: captured
            .into_iter()
            .filter(|&i| n.input(i).is_some())
            .collect(),
    })
}

/// QLinearMatMul (a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp) and
/// MatMulInteger (a, b, a_zp, b_zp).
pub(super) fn matmul(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let qlinear = n.op == "QLinearMatMul";
    let (ai, azi, bi, bzi) = if qlinear { (0, 2, 3, 5) } else { (0, 2, 1, 3) };
    let a = operand(n, ai)?;
    let b = operand(n, bi)?;
    int8_of(elem(m, a).ok_or("no operand type")?)?;
    let b_type = int8_of(elem(m, b).ok_or("no operand type")?)?;
    let a_shape = m.static_shape(a)?;
    let b_shape = m.static_shape(b)?;
    let out_v = *n.outputs.first().ok_or("no result")?;
    let out_shape = m.static_shape(out_v)?;
    if a_shape.len() < 2 || b_shape.len() < 2 || out_shape.len() < 2 {
        return Err("integer matmul of vectors runs on the interpreter".into());
    }
    let k = a_shape[a_shape.len() - 1];
    let nn = b_shape[b_shape.len() - 1];
    let mut captured = vec![];
    let bm = match m.constant(b) {
        Some(_) if b_shape.len() == 2 => {
            let (bytes, t) = const_bytes(m, b)?;
            // Constant weights: packed once, in the signed domain.
            captured.push(bi);
            let mut p = Packed::empty();
            p.pack_b_rows(bytes, k, nn, nn, t, false);
            QMatB::Packed(Arc::new(p))
        }
        _ => QMatB::Operand(bi),
    };
    let out = if qlinear {
        let sa = const_f32s(m, operand(n, 1)?)?;
        let sb = const_f32s(m, operand(n, 4)?)?;
        let sy = const_f32s(m, operand(n, 6)?)?;
        if sa.len() != 1 || sy.len() != 1 || !(sb.len() == 1 || sb.len() == nn) {
            return Err("QLinearMatMul scales: a and y one value, b one or per column".into());
        }
        let yz = const_i32s(m, n.input(7))?;
        int8_of(elem(m, out_v).ok_or("no result type")?)?;
        captured.extend([1, 4, 6, 7]);
        QMatOut::Requant {
            mult: sb.iter().map(|&s| sa[0] * s / sy[0]).collect(),
            zero: yz[0],
            wrap: true,
        }
    } else {
        if elem(m, out_v) != Some(ElemType::I32) {
            return Err("MatMulInteger result is not i32".into());
        }
        QMatOut::I32
    };
    let batches: usize = out_shape[..out_shape.len() - 2].iter().product();
    let mm = out_shape[out_shape.len() - 2];
    let ops = 2.0 * (batches * mm * nn * k) as f64;
    let what = format!("{} [{mm}x{k}]x[{k}x{nn}]", n.op);
    Ok(NativeStep {
        kernel: Box::new(QMatMul {
            a_shape,
            b_shape,
            out_shape,
            a: ai,
            a_zero: n.input(azi).map(|_| azi),
            b: bm,
            b_type,
            b_zero: n.input(bzi).map(|_| bzi),
            out,
        }),
        what,
        flops: ops,
        captured: captured
            .into_iter()
            .filter(|&i| n.input(i).is_some())
            .collect(),
    })
}

/// MaxPool (and GlobalMaxPool) of 8-bit values, 1-D or 2-D.
pub(super) fn max_pool(m: &Module, n: &Node) -> Result<NativeStep, String> {
    let x = operand(n, 0)?;
    int8_of(elem(m, x).ok_or("no operand type")?)?;
    if n.outputs.len() != 1 {
        return Err("MaxPool with indices".into());
    }
    let xs = m.static_shape(x)?;
    let os = m.static_shape(n.outputs[0])?;
    if !(xs.len() == 3 || xs.len() == 4) {
        return Err("8-bit pooling of rank other than 3 or 4".into());
    }
    let w = crate::lower::common::pool_window(n, &xs, n.op == "GlobalMaxPool")?;
    let sp = xs.len() - 2;
    Ok(NativeStep::new(
        Box::new(kiln_runtime::cpu::steps::quant::MaxPool8 {
            planes: xs[0] * xs[1],
            input: two(&xs[2..], 1),
            kernel: two(&w.kernel, 1),
            strides: two(&w.strides, 1),
            dilations: two(&w.dilations, 1),
            pads: two(&w.pads[..sp], 0),
            out: two(&os[2..], 1),
        }),
        format!("{} (8-bit)", n.op),
        0.0,
    ))
}
