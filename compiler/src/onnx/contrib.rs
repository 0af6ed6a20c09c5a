//! onnxruntime's `com.microsoft` quantized ops, spelled out in standard
//! ONNX ops at import, as onnxruntime's contrib-op documentation defines
//! them: the QOperator ops (`QLinearAdd`, `QLinearMul`, `QLinearSigmoid`,
//! `QLinearLeakyRelu`, `QLinearConcat`, `QLinearGlobalAveragePool`,
//! `QLinearSoftmax`, `QGemm`) as `DequantizeLinear → op → QuantizeLinear`;
//! the dynamic ones (`MatMulIntegerToFloat`, `DynamicQuantizeMatMul`) as
//! the exact integer product (`MatMulInteger`) scaled to f32; the
//! weight-only `MatMulNBits` as a blocked 4/8-bit `DequantizeLinear` of
//! its weights feeding a `MatMul`; `DynamicQuantizeLSTM` as an `LSTM` on
//! its dequantized weights.
//!
//! One form for each meaning: after import a QOperator model is a QDQ
//! model, so the interpreter runs it with the standard ops' reference
//! semantics and `fold-qdq` makes both formats integer code alike.

use std::sync::Arc;

use kiln_ir::{Attr, ElemType, Node, TensorData, ValueId};

use super::canon::{add_canonical, hint, tensor_type, CanonCtx};

/// The ops this module expands (IR names).
pub const EXPANDED: &[&str] = &[
    "com.microsoft.QLinearAdd",
    "com.microsoft.QLinearMul",
    "com.microsoft.QLinearSigmoid",
    "com.microsoft.QLinearLeakyRelu",
    "com.microsoft.QLinearConcat",
    "com.microsoft.QLinearGlobalAveragePool",
    "com.microsoft.QLinearSoftmax",
    "com.microsoft.QGemm",
    "com.microsoft.MatMulIntegerToFloat",
    "com.microsoft.DynamicQuantizeMatMul",
    "com.microsoft.MatMulNBits",
    "com.microsoft.DynamicQuantizeLSTM",
];

/// Append the standard-op form of `node` (one of [`EXPANDED`]).
pub fn expand(cx: &mut CanonCtx, node: Node) -> Result<(), String> {
    let op = node.op.strip_prefix("com.microsoft.").unwrap_or(&node.op);
    match op {
        "QLinearAdd" | "QLinearMul" => qlinear_binary(cx, &node, &op[7..]),
        "QLinearSigmoid" => qlinear_unary(cx, &node, Node::new("Sigmoid", vec![], vec![])),
        "QLinearLeakyRelu" => {
            let mut n = Node::new("LeakyRelu", vec![], vec![]);
            let alpha = node.attr("alpha").and_then(Attr::as_float).unwrap_or(0.01);
            n.attrs.insert("alpha".into(), Attr::Float(alpha));
            qlinear_unary(cx, &node, n)
        }
        "QLinearGlobalAveragePool" => qlinear_global_average_pool(cx, &node),
        "QLinearSoftmax" => qlinear_softmax(cx, &node),
        "QLinearConcat" => qlinear_concat(cx, &node),
        "QGemm" => qgemm(cx, &node),
        "MatMulIntegerToFloat" => {
            let [a, b, sa, sb, za, zb, bias] = operands(&node, 2)?;
            integer_matmul_to_float(cx, &node, [a, b], [sa, sb], [za, zb], bias, result(&node)?)
        }
        "DynamicQuantizeMatMul" => {
            let [a, b, sb, zb, bias] = operands(&node, 3)?;
            let (aq, sa, za) = (
                fresh(cx, &node, "a_q"),
                fresh(cx, &node, "a_scale"),
                fresh(cx, &node, "a_zero"),
            );
            cx.push(Node::new(
                "DynamicQuantizeLinear",
                vec![a],
                vec![aq, sa, za],
            ))?;
            integer_matmul_to_float(
                cx,
                &node,
                [Some(aq), b],
                [Some(sa), sb],
                [Some(za), zb],
                bias,
                result(&node)?,
            )
        }
        "MatMulNBits" => matmul_nbits(cx, &node),
        "DynamicQuantizeLSTM" => dynamic_quantize_lstm(cx, &node),
        _ => Err(format!("`{}` has no expansion", node.op)),
    }
}

/// The node's first `N` operand slots (absent ones `None`), requiring the
/// first `required`.
fn operands<const N: usize>(node: &Node, required: usize) -> Result<[Option<ValueId>; N], String> {
    let v: [Option<ValueId>; N] = std::array::from_fn(|i| node.input(i));
    if let Some(i) = v[..required].iter().position(Option::is_none) {
        return Err(format!("{} needs operand {i}", node.op));
    }
    Ok(v)
}

fn result(node: &Node) -> Result<ValueId, String> {
    node.outputs
        .first()
        .copied()
        .ok_or_else(|| "the node has no result".into())
}

fn fresh(cx: &mut CanonCtx, node: &Node, what: &str) -> ValueId {
    cx.fresh(&hint(node, what))
}

fn elem_of(cx: &CanonCtx, v: Option<ValueId>, what: &str) -> Result<ElemType, String> {
    v.and_then(|v| tensor_type(cx.m, v).map(|t| t.elem))
        .ok_or_else(|| format!("the element type of {what} must be known"))
}

/// A zero point: the given one, or a 0 of `elem` (the contrib ops' default
/// is 0 of the quantized operand's type; `QuantizeLinear` without one would
/// make u8).
fn zero_point(
    cx: &mut CanonCtx,
    node: &Node,
    z: Option<ValueId>,
    elem: ElemType,
) -> Result<ValueId, String> {
    match z {
        Some(z) => Ok(z),
        None => {
            let d = TensorData::from_bytes(
                elem,
                vec![],
                vec![0; elem.storage_bytes(1).unwrap_or(1) as usize],
            )
            .map_err(|e| e.to_string())?;
            Ok(cx.constant(&hint(node, "zero"), d))
        }
    }
}

/// `DequantizeLinear(x, scale, zero)` into a new value.
fn dequantize(
    cx: &mut CanonCtx,
    node: &Node,
    x: Option<ValueId>,
    scale: Option<ValueId>,
    zero: Option<ValueId>,
    what: &str,
) -> Result<ValueId, String> {
    let y = fresh(cx, node, what);
    cx.push(Node::new("DequantizeLinear", vec![x, scale, zero], vec![y]))?;
    Ok(y)
}

/// `QuantizeLinear(x, scale, zero)` into the node's result, the zero point
/// defaulting to 0 of `elem`.
fn quantize_into(
    cx: &mut CanonCtx,
    node: &Node,
    x: ValueId,
    scale: Option<ValueId>,
    zero: Option<ValueId>,
    elem: ElemType,
) -> Result<(), String> {
    let z = zero_point(cx, node, zero, elem)?;
    cx.push(Node::new(
        "QuantizeLinear",
        vec![Some(x), scale, Some(z)],
        vec![result(node)?],
    ))
}

/// `QLinearAdd`/`QLinearMul(A, A_scale, A_zero?, B, B_scale, B_zero?,
/// C_scale, C_zero?)`: `C = Q(DQ(A) ⊕ DQ(B))`, broadcasting.
fn qlinear_binary(cx: &mut CanonCtx, node: &Node, op: &str) -> Result<(), String> {
    let [a, sa, za, b, sb, zb, sc, zc] = operands(node, 7)?;
    let elem = elem_of(cx, a, "A")?;
    let da = dequantize(cx, node, a, sa, za, "a")?;
    let db = dequantize(cx, node, b, sb, zb, "b")?;
    let y = fresh(cx, node, "float");
    cx.push(Node::new(op, vec![Some(da), Some(db)], vec![y]))?;
    quantize_into(cx, node, y, sc, zc, elem)
}

/// `QLinear<Op>(X, X_scale, X_zero?, Y_scale, Y_zero?)`: `Y = Q(op(DQ(X)))`
/// (`op`'s operands so far follow X).
fn qlinear_unary(cx: &mut CanonCtx, node: &Node, mut op: Node) -> Result<(), String> {
    let [x, sx, zx, sy, zy] = operands(node, 4)?;
    let elem = elem_of(cx, x, "X")?;
    let dx = dequantize(cx, node, x, sx, zx, "x")?;
    let y = fresh(cx, node, "float");
    op.inputs.insert(0, Some(dx));
    op.outputs = vec![y];
    cx.push(op)?;
    quantize_into(cx, node, y, sy, zy, elem)
}

/// `QLinearGlobalAveragePool(X, x_scale, x_zero, y_scale, y_zero;
/// channels_last)`: the mean over the spatial dims (dims 1..r-1 when
/// channels are last, kept as 1s).
fn qlinear_global_average_pool(cx: &mut CanonCtx, node: &Node) -> Result<(), String> {
    if node
        .attr("channels_last")
        .and_then(Attr::as_int)
        .unwrap_or(0)
        == 0
    {
        return qlinear_unary(cx, node, Node::new("GlobalAveragePool", vec![], vec![]));
    }
    let r = cx
        .rank(node.input(0))
        .ok_or("QLinearGlobalAveragePool with channels last needs a known rank")?;
    if r < 3 {
        return Err(format!(
            "QLinearGlobalAveragePool needs rank 3 or more, got {r}"
        ));
    }
    let axes: Vec<i64> = (1..r as i64 - 1).collect();
    let axes = cx.const_1d("global_pool_axes", &axes)?;
    let mut mean = Node::new("ReduceMean", vec![Some(axes)], vec![]);
    mean.attrs.insert("keepdims".into(), Attr::Int(1));
    qlinear_unary(cx, node, mean)
}

/// `QLinearSoftmax(X, X_scale, x_zero, y_scale, y_zero; axis, opset)`:
/// Softmax with the semantics of the `opset` it names (before 13: the
/// input coerced to 2-D at `axis`).
fn qlinear_softmax(cx: &mut CanonCtx, node: &Node) -> Result<(), String> {
    let [x, sx, zx, sy, zy] = operands(node, 4)?;
    let elem = elem_of(cx, x, "X")?;
    let opset = node
        .attr("opset")
        .and_then(Attr::as_int)
        .ok_or("QLinearSoftmax needs its `opset` attribute")?;
    let axis = node.attr("axis").and_then(Attr::as_int).unwrap_or(-1);
    let dx = dequantize(cx, node, x, sx, zx, "x")?;
    let y = fresh(cx, node, "float");
    let mut sm = Node::new("Softmax", vec![Some(dx)], vec![y]);
    sm.attrs.insert("axis".into(), Attr::Int(axis));
    let saved = cx.opset;
    cx.opset = opset;
    let pushed = add_canonical(cx, sm);
    cx.opset = saved;
    pushed?;
    quantize_into(cx, node, y, sy, zy, elem)
}

/// `QLinearConcat(Y_scale, Y_zero, (X, X_scale, X_zero)...; axis)`.
fn qlinear_concat(cx: &mut CanonCtx, node: &Node) -> Result<(), String> {
    let (sy, zy) = (node.input(0), node.input(1));
    let rest = &node.inputs[2.min(node.inputs.len())..];
    if rest.is_empty() || !rest.len().is_multiple_of(3) || sy.is_none() || zy.is_none() {
        return Err(
            "QLinearConcat takes Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) triples"
                .into(),
        );
    }
    let elem = elem_of(cx, zy, "Y_zero_point")?;
    let mut parts = vec![];
    for (i, t) in rest.chunks(3).enumerate() {
        parts.push(Some(dequantize(
            cx,
            node,
            t[0],
            t[1],
            t[2],
            &format!("x{i}"),
        )?));
    }
    let y = fresh(cx, node, "float");
    let mut cat = Node::new("Concat", parts, vec![y]);
    let axis = node
        .attr("axis")
        .and_then(Attr::as_int)
        .ok_or("QLinearConcat needs `axis`")?;
    cat.attrs.insert("axis".into(), Attr::Int(axis));
    cx.push(cat)?;
    quantize_into(cx, node, y, sy, zy, elem)
}

/// `QGemm(A, a_scale, a_zero, B, b_scale, b_zero, C?, y_scale?, y_zero?;
/// alpha, transA, transB)`: the exact integer product and the i32 bias C,
/// both at scale `alpha·a_scale·b_scale`, in f32, then quantized when
/// `y_scale` is given.
fn qgemm(cx: &mut CanonCtx, node: &Node) -> Result<(), String> {
    let [a, sa, za, b, sb, zb, c, sy, zy] = operands(node, 6)?;
    let alpha = node.attr("alpha").and_then(Attr::as_float).unwrap_or(1.0);
    let trans = |name: &str| node.attr(name).and_then(Attr::as_int).unwrap_or(0) != 0;
    let transpose =
        |cx: &mut CanonCtx, v: Option<ValueId>, what: &str| -> Result<Option<ValueId>, String> {
            let t = fresh(cx, node, what);
            let mut n = Node::new("Transpose", vec![v], vec![t]);
            n.attrs.insert("perm".into(), Attr::Ints(vec![1, 0]));
            cx.push(n)?;
            Ok(Some(t))
        };
    let a = if trans("transA") {
        transpose(cx, a, "a_t")?
    } else {
        a
    };
    let b = if trans("transB") {
        transpose(cx, b, "b_t")?
    } else {
        b
    };
    let acc = fresh(cx, node, "acc");
    cx.push(Node::new("MatMulInteger", vec![a, b, za, zb], vec![acc]))?;
    let y = match sy {
        Some(_) => fresh(cx, node, "float"),
        None => result(node)?,
    };
    let scale = product_scale(cx, node, sa, sb, alpha)?;
    // C joins in f32: an i32 Add would keep the scaling chain out of the
    // CPU backend's generated loops (f32 only); the sums stay exact to
    // f32's 24 bits either way.
    let bias = match c {
        Some(c) => Some(scaled(cx, node, c, scale, "c", None)?),
        None => None,
    };
    scale_to_float(cx, node, acc, scale, bias, y)?;
    if sy.is_some() {
        quantize_into(cx, node, y, sy, zy, ElemType::U8)?;
    }
    Ok(())
}

/// `a_scale · b_scale (· alpha)` as a value (folded when both are constant).
fn product_scale(
    cx: &mut CanonCtx,
    node: &Node,
    sa: Option<ValueId>,
    sb: Option<ValueId>,
    alpha: f32,
) -> Result<ValueId, String> {
    let s = fresh(cx, node, "scale");
    cx.push(Node::new("Mul", vec![sa, sb], vec![s]))?;
    if alpha == 1.0 {
        return Ok(s);
    }
    let a = cx.const_scalar_like(&hint(node, "alpha"), alpha as f64, Some(s))?;
    let s2 = fresh(cx, node, "scale_alpha");
    cx.push(Node::new("Mul", vec![Some(s), Some(a)], vec![s2]))?;
    Ok(s2)
}

/// `f32(v) · scale` into `y`, or into a new value.
fn scaled(
    cx: &mut CanonCtx,
    node: &Node,
    v: ValueId,
    scale: ValueId,
    what: &str,
    y: Option<ValueId>,
) -> Result<ValueId, String> {
    let f = fresh(cx, node, &format!("{what}_f32"));
    let mut cast = Node::new("Cast", vec![Some(v)], vec![f]);
    cast.attrs.insert("to".into(), Attr::Int(1));
    cx.push(cast)?;
    let y = y.unwrap_or_else(|| fresh(cx, node, &format!("{what}_scaled")));
    cx.push(Node::new("Mul", vec![Some(f), Some(scale)], vec![y]))?;
    Ok(y)
}

/// `y = f32(acc) · scale (+ bias)`.
fn scale_to_float(
    cx: &mut CanonCtx,
    node: &Node,
    acc: ValueId,
    scale: ValueId,
    bias: Option<ValueId>,
    y: ValueId,
) -> Result<(), String> {
    match bias {
        None => scaled(cx, node, acc, scale, "acc", Some(y)).map(|_| ()),
        Some(bias) => {
            let s = scaled(cx, node, acc, scale, "acc", None)?;
            cx.push(Node::new("Add", vec![Some(s), Some(bias)], vec![y]))
        }
    }
}

/// `(A - a_zero)(B - b_zero) · a_scale · b_scale + bias` in f32, the
/// product exact in i32 (`b_scale`/`b_zero` one or per column).
fn integer_matmul_to_float(
    cx: &mut CanonCtx,
    node: &Node,
    [a, b]: [Option<ValueId>; 2],
    [sa, sb]: [Option<ValueId>; 2],
    [za, zb]: [Option<ValueId>; 2],
    bias: Option<ValueId>,
    y: ValueId,
) -> Result<(), String> {
    let acc = fresh(cx, node, "acc");
    cx.push(Node::new("MatMulInteger", vec![a, b, za, zb], vec![acc]))?;
    let scale = product_scale(cx, node, sa, sb, 1.0)?;
    scale_to_float(cx, node, acc, scale, bias, y)
}

/// `MatMulNBits(A, B, scales, zero_points?, g_idx?, bias?; K, N, bits,
/// block_size)`: B is `[N][blocks][block_size·bits/8]` bytes (low nibble
/// first for 4 bits), scales `[N·blocks]`, zero points packed like B's
/// rows (default `2^(bits-1)`). Becomes `A · W + bias` with `W =
/// DequantizeLinear(Wq [K, N], scales [blocks, N], zero [blocks, N], axis
/// 0, block_size)`, transposed here once rather than on every run: the
/// weights stay 4/8-bit constants.
fn matmul_nbits(cx: &mut CanonCtx, node: &Node) -> Result<(), String> {
    let [a, b, scales, zeros, g_idx, bias] = operands(node, 3)?;
    if g_idx.is_some() {
        return Err("MatMulNBits with g_idx (act-order) is not supported".into());
    }
    let int = |name: &str| -> Result<usize, String> {
        node.attr(name)
            .and_then(Attr::as_int)
            .filter(|&v| v > 0)
            .map(|v| v as usize)
            .ok_or_else(|| format!("MatMulNBits needs a positive `{name}`"))
    };
    let (k, n, bits, block) = (int("K")?, int("N")?, int("bits")?, int("block_size")?);
    if bits != 4 && bits != 8 {
        return Err(format!(
            "MatMulNBits with {bits} bits is not supported (4 or 8)"
        ));
    }
    if block < 16 || !block.is_power_of_two() {
        return Err(format!(
            "MatMulNBits block_size {block} must be a power of two, at least 16"
        ));
    }
    let blocks = k.div_ceil(block);
    let blob = block * bits / 8;
    let zero_row = (blocks * bits).div_ceil(8);
    let sizes = |per_row: usize| n.checked_mul(per_row);
    let (Some(b_len), Some(params), Some(z_len)) =
        (sizes(blocks * blob), sizes(blocks), sizes(zero_row))
    else {
        return Err(format!("MatMulNBits: N {n} × K {k} is too large"));
    };
    let constant = |cx: &CanonCtx, v: Option<ValueId>, what: &str| {
        v.and_then(|v| cx.m.constant(v).cloned())
            .ok_or_else(|| format!("MatMulNBits needs a constant {what}"))
    };
    let bq: Arc<TensorData> = constant(cx, b, "B")?;
    let bytes = bq.bytes().ok_or("MatMulNBits: B has no data")?;
    if bq.elem != ElemType::U8 || bytes.len() != b_len {
        return Err(format!("MatMulNBits: B must be u8 [{n}, {blocks}, {blob}]"));
    }
    // The first `count` values of each row of `per_row` bytes, transposed:
    // `[count][rows]`.
    let columns = |bytes: &[u8], per_row: usize, count: usize| -> Vec<u8> {
        let rows = bytes.len() / per_row;
        let mut t = vec![0u8; rows * count];
        for (r, row) in bytes.chunks_exact(per_row).enumerate() {
            for i in 0..count {
                t[i * rows + r] = if bits == 8 {
                    row[i]
                } else {
                    (row[i / 2] >> (4 * (i % 2))) & 15
                };
            }
        }
        t
    };
    let (qt, default_zero) = if bits == 4 {
        (ElemType::U4, 8u8)
    } else {
        (ElemType::U8, 128u8)
    };
    let pack = |values: &[u8], rows: usize| -> Result<TensorData, String> {
        let data = if bits == 8 {
            values.to_vec()
        } else {
            values
                .chunks(2)
                .map(|p| p[0] | p.get(1).map_or(0, |h| h << 4))
                .collect()
        };
        TensorData::from_bytes(qt, vec![rows as u64, n as u64], data).map_err(|e| e.to_string())
    };
    let wq = pack(&columns(bytes, blocks * blob, k), k)?;
    let wq = cx.constant(&hint(node, "weights"), wq);
    let s = constant(cx, scales, "scales")?;
    let scale_bytes = s.bytes().ok_or("MatMulNBits: scales have no data")?;
    let width = s.elem.storage_bytes(1).unwrap_or(0) as usize;
    if s.numel() != params as u64 || width == 0 || !s.elem.is_float() {
        return Err(format!("MatMulNBits: scales must be {params} floats"));
    }
    // Scales [N, blocks] → [blocks, N], element by element of `width` bytes.
    let mut st = vec![0u8; scale_bytes.len()];
    for (e, v) in scale_bytes.chunks_exact(width).enumerate() {
        let (row, blk) = (e / blocks, e % blocks);
        st[(blk * n + row) * width..][..width].copy_from_slice(v);
    }
    let st = TensorData::from_bytes(s.elem, vec![blocks as u64, n as u64], st)
        .map_err(|e| e.to_string())?;
    let sv = cx.constant(&hint(node, "scales"), st);
    let zero = match zeros {
        None => pack(&vec![default_zero; params], blocks)?,
        Some(z) => {
            let zd = constant(cx, Some(z), "zero_points")?;
            if zd.elem != ElemType::U8 {
                return Err("MatMulNBits with float zero points is not supported".into());
            }
            let zb = zd.bytes().ok_or("MatMulNBits: zero points have no data")?;
            if zb.len() != z_len {
                return Err(format!("MatMulNBits: zero points must be u8 [{z_len}]"));
            }
            pack(&columns(zb, zero_row, blocks), blocks)?
        }
    };
    let zv = cx.constant(&hint(node, "zero"), zero);
    let w = fresh(cx, node, "w");
    let mut dq = Node::new(
        "DequantizeLinear",
        vec![Some(wq), Some(sv), Some(zv)],
        vec![w],
    );
    dq.attrs.insert("axis".into(), Attr::Int(0));
    dq.attrs
        .insert("block_size".into(), Attr::Int(block as i64));
    cx.push(dq)?;
    let y = result(node)?;
    match bias {
        None => cx.push(Node::new("MatMul", vec![a, Some(w)], vec![y])),
        Some(bias) => {
            let p = fresh(cx, node, "product");
            cx.push(Node::new("MatMul", vec![a, Some(w)], vec![p]))?;
            cx.push(Node::new("Add", vec![Some(p), Some(bias)], vec![y]))
        }
    }
}

/// `DynamicQuantizeLSTM(X, W, R, B?, sequence_lens?, initial_h?,
/// initial_c?, P?, W_scale, W_zero_point, R_scale, R_zero_point)`: an
/// ONNX `LSTM` (same attributes, same results) whose weights are
/// `(W - W_zero_point) · W_scale` transposed to LSTM's layout. The
/// contrib op stores W as `[D, input, 4·hidden]` and R as `[D, hidden,
/// 4·hidden]` (LSTM's `[D, 4·hidden, ·]` transposed, gates in LSTM's
/// i, o, f, c order), with a scale and zero point per direction (`[D]`)
/// or per direction and gate row (`[D, 4·hidden]`).
///
/// What the contrib docs leave to the implementation, onnxruntime's
/// kernel also quantizes X and each step's hidden state to u8 before its
/// integer products; this form keeps them in f32, the float LSTM the
/// quantized weights stand for (onnxruntime's outputs differ from it by
/// that activation rounding, about 1e-3 of their range).
fn dynamic_quantize_lstm(cx: &mut CanonCtx, node: &Node) -> Result<(), String> {
    let ops: [Option<ValueId>; 12] = operands(node, 12).or_else(|_| {
        // Only the four parameters after the eight LSTM operands are
        // required; the optional LSTM operands may be omitted.
        let v: [Option<ValueId>; 12] = std::array::from_fn(|i| node.input(i));
        if v[0].is_none() || v[1].is_none() || v[2].is_none() || v[8..].iter().any(Option::is_none)
        {
            return Err(
                "DynamicQuantizeLSTM needs X, W, R and the four weight parameters".to_string(),
            );
        }
        Ok(v)
    })?;
    let mut weights = vec![];
    for (w, scale, zero, what) in [
        (ops[1], ops[8], ops[9], "W"),
        (ops[2], ops[10], ops[11], "R"),
    ] {
        weights.push(Some(lstm_weight(cx, node, w, scale, zero, what)?));
    }
    let mut inputs = vec![ops[0], weights[0], weights[1]];
    inputs.extend_from_slice(&ops[3..8]);
    while inputs.last() == Some(&None) {
        inputs.pop();
    }
    let mut lstm = Node::new("LSTM", inputs, node.outputs.clone());
    lstm.attrs = node.attrs.clone();
    lstm.name = node.name.clone();
    add_canonical(cx, lstm)
}

/// `DequantizeLinear(wᵀ, scale, zero)` for a constant 8-bit `w [D, rows,
/// cols]`, transposed here to LSTM's `[D, cols, rows]`, whose constant
/// scale and zero point are per direction (`[D]`, on axis 0) or per
/// direction and column (`[D, cols]`, as `[D, cols, 1]` blocks of whole
/// rows). Constant folding makes the f32 weights of it where a backend
/// wants them; `fold-weight-dq` keeps them 8-bit for the cpu backend.
fn lstm_weight(
    cx: &mut CanonCtx,
    node: &Node,
    w: Option<ValueId>,
    scale: Option<ValueId>,
    zero: Option<ValueId>,
    what: &str,
) -> Result<ValueId, String> {
    let konst = |cx: &CanonCtx, v: Option<ValueId>, part: &str| {
        v.and_then(|v| cx.m.constant(v).cloned())
            .ok_or_else(|| format!("DynamicQuantizeLSTM needs a constant {what}{part}"))
    };
    let wd = konst(cx, w, "")?;
    if !matches!(wd.elem, ElemType::I8 | ElemType::U8) || wd.shape.len() != 3 {
        return Err(format!(
            "DynamicQuantizeLSTM: {what} must be 8-bit [D, rows, cols]"
        ));
    }
    let (d, rows, cols) = (wd.shape[0], wd.shape[1], wd.shape[2]);
    let bytes = wd
        .bytes()
        .ok_or("DynamicQuantizeLSTM: a weight has no data")?;
    let (dn, rn, cn) = (d as usize, rows as usize, cols as usize);
    if bytes.len() != dn * rn * cn {
        return Err(format!(
            "DynamicQuantizeLSTM: {what} has the wrong amount of data"
        ));
    }
    let mut t = vec![0u8; bytes.len()];
    for k in 0..dn {
        for r in 0..rn {
            for c in 0..cn {
                t[(k * cn + c) * rn + r] = bytes[(k * rn + r) * cn + c];
            }
        }
    }
    let wt = TensorData::from_bytes(wd.elem, vec![d, cols, rows], t).map_err(|e| e.to_string())?;
    let wt = cx.constant(&hint(node, &format!("{what}_lstm_quantized")), wt);
    let mut per_column = false;
    let mut param = |cx: &mut CanonCtx, v: Option<ValueId>, part: &str, elem: Option<ElemType>| {
        let pd = konst(cx, v, part)?;
        let shape = match pd.shape[..] {
            [x] if x == d => vec![d],
            [x, c] if x == d && c == cols => {
                per_column = true;
                vec![d, cols, 1]
            }
            _ => {
                return Err(format!(
                    "DynamicQuantizeLSTM: {what}{part} must be [{d}] or [{d}, {cols}]"
                ))
            }
        };
        if elem.is_some_and(|e| e != pd.elem) {
            return Err(format!(
                "DynamicQuantizeLSTM: {what}{part} must have {what}'s type"
            ));
        }
        let bytes = pd
            .bytes()
            .ok_or("DynamicQuantizeLSTM: a parameter has no data")?;
        let data =
            TensorData::from_bytes(pd.elem, shape, bytes.to_vec()).map_err(|e| e.to_string())?;
        Ok::<ValueId, String>(cx.constant(&hint(node, &format!("{what}{part}")), data))
    };
    let s = param(cx, scale, "_scale", None)?;
    let z = param(cx, zero, "_zero_point", Some(wd.elem))?;
    let y = fresh(cx, node, &format!("{what}_lstm"));
    let mut dq = Node::new(
        "DequantizeLinear",
        vec![Some(wt), Some(s), Some(z)],
        vec![y],
    );
    if per_column {
        dq.attrs.insert("axis".into(), Attr::Int(2));
        dq.attrs.insert("block_size".into(), Attr::Int(rows as i64));
    } else {
        dq.attrs.insert("axis".into(), Attr::Int(0));
    }
    cx.push(dq)?;
    Ok(y)
}
