//! Canonical op forms: older ONNX op versions rewritten into the newest.
//!
//! Kiln's IR has one form per op, the newest ONNX version's (opset 22 for
//! the default domain). Where an older version's semantics differ, the
//! importer rewrites it here: attributes that later became inputs turn into
//! constant operands (Squeeze axes, Slice starts, Pad pads, Clip bounds, ...),
//! retired ops map to their successors (Upsample -> Resize, Scatter ->
//! ScatterElements), and changed semantics are spelled out with other ops
//! (Softmax-1's 2-D coercion, GroupNormalization-18's per-group scale).
//! Each rule names the opset below which it applies.

use std::sync::Arc;

use kiln_ir::{Attr, Dim, ElemType, Module, Node, Region, TensorData, Type, ValueId};

/// Where canonical nodes go: the module (for new values), the region being
/// built, and the opset of the node's domain.
pub struct CanonCtx<'a> {
    pub m: &'a mut Module,
    pub region: &'a mut Region,
    pub opset: i64,
}

impl CanonCtx<'_> {
    /// Append a node and infer its result types.
    pub fn push(&mut self, node: Node) -> Result<(), String> {
        crate::infer::infer_and_refine(self.m, &node)?;
        self.region.nodes.push(node);
        Ok(())
    }

    pub(super) fn constant(&mut self, hint: &str, data: TensorData) -> ValueId {
        let id = self.m.add_constant_unique(hint, Arc::new(data));
        self.region.constants.push(id);
        id
    }

    fn const_i64(
        &mut self,
        hint: &str,
        values: &[i64],
        shape: Vec<u64>,
    ) -> Result<ValueId, String> {
        let d = TensorData::from_i64(shape, values).map_err(|e| e.to_string())?;
        Ok(self.constant(hint, d))
    }

    pub(super) fn const_1d(&mut self, hint: &str, values: &[i64]) -> Result<ValueId, String> {
        self.const_i64(hint, values, vec![values.len() as u64])
    }

    /// A scalar constant of the element type of `like` (f32 if unknown).
    pub(super) fn const_scalar_like(
        &mut self,
        hint: &str,
        value: f64,
        like: Option<ValueId>,
    ) -> Result<ValueId, String> {
        let elem = like
            .and_then(|v| self.m.ty(v).as_tensor().map(|t| t.elem))
            .unwrap_or(ElemType::F32);
        let bytes: Vec<u8> = match elem {
            ElemType::F64 => value.to_le_bytes().to_vec(),
            ElemType::F16 => half::f16::from_f64(value).to_le_bytes().to_vec(),
            ElemType::BF16 => half::bf16::from_f64(value).to_le_bytes().to_vec(),
            ElemType::I64 => (value as i64).to_le_bytes().to_vec(),
            ElemType::I32 => (value as i32).to_le_bytes().to_vec(),
            ElemType::I16 => (value as i16).to_le_bytes().to_vec(),
            ElemType::I8 => vec![value as i8 as u8],
            ElemType::U8 => vec![value as u8],
            ElemType::U16 => (value as u16).to_le_bytes().to_vec(),
            ElemType::U32 => (value as u32).to_le_bytes().to_vec(),
            ElemType::U64 => (value as u64).to_le_bytes().to_vec(),
            _ => (value as f32).to_le_bytes().to_vec(),
        };
        let elem = if bytes.len() == 4 && !matches!(elem, ElemType::I32 | ElemType::U32) {
            ElemType::F32
        } else {
            elem
        };
        let d = TensorData::from_bytes(elem, vec![], bytes).map_err(|e| e.to_string())?;
        Ok(self.constant(hint, d))
    }

    pub(super) fn fresh(&mut self, hint: &str) -> ValueId {
        self.m
            .add_value_unique(hint, super::tensor::placeholder_type())
    }

    pub(super) fn rank(&self, v: Option<ValueId>) -> Option<usize> {
        v.and_then(|v| self.m.ty(v).as_tensor().and_then(|t| t.rank()))
    }

    fn dim(&self, v: Option<ValueId>, i: usize) -> Option<Dim> {
        v.and_then(|v| self.m.ty(v).as_tensor()?.shape.as_ref()?.get(i).cloned())
    }
}

/// A name hint for a value made for `node`: its name (or op) and `what`.
pub(super) fn hint(node: &Node, what: &str) -> String {
    let base = if node.name.is_empty() {
        node.op.to_lowercase()
    } else {
        node.name.clone()
    };
    format!("{base}_{what}")
}

/// Move an ints attribute into operand `pos` as an i64[n] constant (the
/// operand list is padded with `none` up to it). Absent attribute: nothing.
fn attr_to_input(cx: &mut CanonCtx, node: &mut Node, attr: &str, pos: usize) -> Result<(), String> {
    let Some(a) = node.attrs.remove(attr) else {
        return Ok(());
    };
    let values: Vec<i64> = match a {
        Attr::Ints(v) => v,
        Attr::Int(v) => vec![v],
        other => {
            return Err(format!(
                "attribute `{attr}` must be ints, got {}",
                other.kind()
            ))
        }
    };
    let id = cx.const_1d(&hint(node, attr), &values)?;
    set_input(node, pos, Some(id));
    Ok(())
}

fn set_input(node: &mut Node, pos: usize, v: Option<ValueId>) {
    if node.inputs.len() <= pos {
        node.inputs.resize(pos + 1, None);
    }
    node.inputs[pos] = v;
}

/// Attributes that older versions had and the canonical form dropped with
/// no change of meaning for inference (`consumed_inputs` was an in-place
/// hint, `is_test`/`spatial` always-true flags, `broadcast` the pre-7
/// opt-in to what is now the rule).
fn drop_legacy_attrs(node: &mut Node) {
    for a in ["consumed_inputs", "is_test"] {
        node.attrs.remove(a);
    }
}

const REDUCE_OPS_18: [&str; 9] = [
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
];

/// Rewrite `node` (an op of the model's opset `cx.opset`) into canonical
/// form and append it (and any helper nodes) to the region.
pub fn add_canonical(cx: &mut CanonCtx, mut node: Node) -> Result<(), String> {
    drop_legacy_attrs(&mut node);
    let v = cx.opset;
    match node.op.as_str() {
        "Squeeze" | "Unsqueeze" if v < 13 => attr_to_input(cx, &mut node, "axes", 1)?,
        "ReduceSum" if v < 13 => attr_to_input(cx, &mut node, "axes", 1)?,
        op if v < 18 && REDUCE_OPS_18.contains(&op) => attr_to_input(cx, &mut node, "axes", 1)?,
        "Split" if v < 18 => {
            if v < 13 {
                attr_to_input(cx, &mut node, "split", 1)?;
            }
            if node.input(1).is_none() {
                node.attrs
                    .insert("num_outputs".into(), Attr::Int(node.outputs.len() as i64));
            }
        }
        "Slice" if v < 10 => {
            attr_to_input(cx, &mut node, "starts", 1)?;
            attr_to_input(cx, &mut node, "ends", 2)?;
            attr_to_input(cx, &mut node, "axes", 3)?;
        }
        "Pad" if v < 11 => {
            if let Some(Attr::Ints(p)) = node.attrs.remove("paddings") {
                node.attrs.insert("pads".into(), Attr::Ints(p));
            }
            attr_to_input(cx, &mut node, "pads", 1)?;
            if let Some(Attr::Float(f)) = node.attrs.remove("value") {
                let c = cx.const_scalar_like(&hint(&node, "value"), f as f64, node.input(0))?;
                set_input(&mut node, 2, Some(c));
            }
        }
        "Reshape" if v < 5 => attr_to_input(cx, &mut node, "shape", 1)?,
        "Clip" if v < 11 => {
            let x = node.input(0);
            if let Some(Attr::Float(lo)) = node.attrs.remove("min") {
                let c = cx.const_scalar_like(&hint(&node, "min"), lo as f64, x)?;
                set_input(&mut node, 1, Some(c));
            }
            if let Some(Attr::Float(hi)) = node.attrs.remove("max") {
                let c = cx.const_scalar_like(&hint(&node, "max"), hi as f64, x)?;
                set_input(&mut node, 2, Some(c));
            }
        }
        "TopK" if v < 10 => attr_to_input(cx, &mut node, "k", 1)?,
        "Dropout" if v < 12 => {
            if let Some(Attr::Float(r)) = node.attrs.remove("ratio") {
                let c = cx.const_scalar_like(&hint(&node, "ratio"), r as f64, node.input(0))?;
                set_input(&mut node, 1, Some(c));
            }
        }
        "BatchNormalization" => {
            node.attrs.remove("spatial");
        }
        "Gemm" | "Add" | "Sub" | "Mul" | "Div" | "Pow" | "And" | "Or" | "Xor" | "Equal"
        | "Greater" | "Less"
            if v < 7 =>
        {
            legacy_broadcast(cx, &mut node)?
        }
        "Concat" if v < 4 && !node.attrs.contains_key("axis") => {
            node.attrs.insert("axis".into(), Attr::Int(1));
        }
        "Scatter" => node.op = "ScatterElements".into(),
        "Upsample" => return upsample_to_resize(cx, node),
        "Resize" if v < 11 => {
            // Resize-10: (X, scales), asymmetric coordinates, floor rounding.
            let scales = node.input(1);
            node.inputs = vec![node.input(0), None, scales];
            node.attrs.insert(
                "coordinate_transformation_mode".into(),
                Attr::String("asymmetric".into()),
            );
            if node.attrs.get("mode").and_then(Attr::as_str) != Some("linear") {
                node.attrs
                    .insert("nearest_mode".into(), Attr::String("floor".into()));
            }
        }
        "Softmax" | "LogSoftmax" | "Hardmax" if v < 13 => return coerced_2d_softmax(cx, node),
        "DFT" if v < 20 => {
            let axis = match node.attrs.remove("axis") {
                Some(Attr::Int(a)) => a,
                _ => 1,
            };
            let c = cx.const_i64(&hint(&node, "axis"), &[axis], vec![])?;
            set_input(&mut node, 2, Some(c));
        }
        "GroupNormalization" if v < 21 => return group_norm_per_channel(cx, node),
        "Scan" if v < 9 => return scan8_to_scan9(cx, node),
        _ => {}
    }
    cx.push(node)
}

/// Pre-7 binary ops: `broadcast=1` with `axis` aligned B's dims at `axis`
/// of A; today's rule aligns trailing dims, so unsqueeze B's tail.
fn legacy_broadcast(cx: &mut CanonCtx, node: &mut Node) -> Result<(), String> {
    let bcast = node
        .attrs
        .remove("broadcast")
        .and_then(|a| a.as_int())
        .unwrap_or(0);
    let axis = node.attrs.remove("axis").and_then(|a| a.as_int());
    if node.op == "Gemm" || bcast == 0 {
        return Ok(());
    }
    let Some(axis) = axis else { return Ok(()) };
    let (ra, rb) = match (cx.rank(node.input(0)), cx.rank(node.input(1))) {
        (Some(a), Some(b)) => (a as i64, b as i64),
        _ => return Err("legacy broadcast with `axis` needs operands of known rank".into()),
    };
    let axis = if axis < 0 { axis + ra } else { axis };
    let trailing = ra - axis - rb;
    if trailing < 0 || axis < 0 {
        return Err(format!(
            "legacy broadcast axis {axis} does not fit ranks {ra} and {rb}"
        ));
    }
    if trailing > 0 {
        let axes: Vec<i64> = (rb..rb + trailing).collect();
        let axes_c = cx.const_1d(&hint(node, "bcast_axes"), &axes)?;
        let b = cx.fresh(&hint(node, "bcast"));
        cx.push(Node::new(
            "Unsqueeze",
            vec![node.input(1), Some(axes_c)],
            vec![b],
        ))?;
        set_input(node, 1, Some(b));
    }
    Ok(())
}

/// Upsample-7 (scales attribute) and -9 (scales input) are Resize with
/// asymmetric coordinates; `bilinear` was an alias of `linear`.
fn upsample_to_resize(cx: &mut CanonCtx, mut node: Node) -> Result<(), String> {
    let scales = match node.attrs.remove("scales") {
        Some(Attr::Floats(s)) => {
            let bytes: Vec<u8> = s.iter().flat_map(|f| f.to_le_bytes()).collect();
            let d = TensorData::from_bytes(ElemType::F32, vec![s.len() as u64], bytes)
                .map_err(|e| e.to_string())?;
            Some(cx.constant(&hint(&node, "scales"), d))
        }
        _ => node.input(1),
    };
    let mode = match node.attrs.remove("mode").as_ref().and_then(Attr::as_str) {
        Some("linear") | Some("bilinear") => "linear",
        _ => "nearest",
    };
    node.op = "Resize".into();
    node.inputs = vec![node.input(0), None, scales];
    node.attrs.remove("width_scale");
    node.attrs.remove("height_scale");
    node.attrs.insert("mode".into(), Attr::String(mode.into()));
    node.attrs.insert(
        "coordinate_transformation_mode".into(),
        Attr::String("asymmetric".into()),
    );
    if mode == "nearest" {
        node.attrs
            .insert("nearest_mode".into(), Attr::String("floor".into()));
    }
    cx.push(node)
}

/// Softmax/LogSoftmax/Hardmax before 13 coerce the input to 2-D at `axis`
/// (default 1) and normalize over the flattened tail. When `axis` is the
/// last dim that is the modern op; otherwise Flatten, op over axis 1, and
/// Reshape back to the input's shape.
fn coerced_2d_softmax(cx: &mut CanonCtx, mut node: Node) -> Result<(), String> {
    let axis = node
        .attrs
        .remove("axis")
        .and_then(|a| a.as_int())
        .unwrap_or(1);
    let x = node.input(0);
    if let Some(r) = cx.rank(x) {
        let a = if axis < 0 { axis + r as i64 } else { axis };
        if a == r as i64 - 1 {
            node.attrs.insert("axis".into(), Attr::Int(-1));
            return cx.push(node);
        }
    }
    let flat = cx.fresh(&hint(&node, "flat"));
    let mut fl = Node::new("Flatten", vec![x], vec![flat]);
    fl.attrs.insert("axis".into(), Attr::Int(axis));
    cx.push(fl)?;
    let shape = cx.fresh(&hint(&node, "shape"));
    cx.push(Node::new("Shape", vec![x], vec![shape]))?;
    let y = *node.outputs.first().ok_or("the node has no result")?;
    let y2 = cx.fresh(&hint(&node, "2d"));
    node.inputs = vec![Some(flat)];
    node.outputs = vec![y2];
    node.attrs.insert("axis".into(), Attr::Int(1));
    cx.push(node)?;
    cx.push(Node::new("Reshape", vec![Some(y2), Some(shape)], vec![y]))
}

/// GroupNormalization-18 took scale and bias per group; 21 takes them per
/// channel: repeat each group's value over its C/G channels.
fn group_norm_per_channel(cx: &mut CanonCtx, mut node: Node) -> Result<(), String> {
    let groups = node
        .attrs
        .get("num_groups")
        .and_then(Attr::as_int)
        .ok_or("missing `num_groups`")?;
    let c = cx
        .dim(node.input(0), 1)
        .and_then(|d| d.as_known())
        .ok_or("GroupNormalization-18 needs a known channel count to convert scale and bias")?
        as i64;
    if groups <= 0 || c % groups != 0 {
        return Err(format!("num_groups {groups} does not divide {c} channels"));
    }
    let axes = cx.const_1d(&hint(&node, "g_axes"), &[1])?;
    let expand = cx.const_1d(&hint(&node, "g_expand"), &[groups, c / groups])?;
    let flat = cx.const_1d(&hint(&node, "g_flat"), &[c])?;
    for pos in [1, 2] {
        let v = node.input(pos);
        let u = cx.fresh(&hint(&node, "g_col"));
        cx.push(Node::new("Unsqueeze", vec![v, Some(axes)], vec![u]))?;
        let e = cx.fresh(&hint(&node, "g_rep"));
        cx.push(Node::new("Expand", vec![Some(u), Some(expand)], vec![e]))?;
        let r = cx.fresh(&hint(&node, "per_channel"));
        cx.push(Node::new("Reshape", vec![Some(e), Some(flat)], vec![r]))?;
        set_input(&mut node, pos, Some(r));
    }
    cx.push(node)
}

/// Scan-8 had a leading batch axis on every input and state and an
/// optional `sequence_lens`; Scan-9 dropped both. With batch size 1 (the
/// only case expressible without a loop) the batch axis is squeezed off
/// the operands and unsqueezed back onto the results.
fn scan8_to_scan9(cx: &mut CanonCtx, mut node: Node) -> Result<(), String> {
    if node.input(0).is_some() {
        return Err("Scan-8 with `sequence_lens` is not supported".into());
    }
    let operands: Vec<Option<ValueId>> = node.inputs.iter().skip(1).copied().collect();
    for v in &operands {
        if cx.dim(*v, 0).and_then(|d| d.as_known()) != Some(1) {
            return Err("Scan-8 is supported for batch size 1 (a known leading dim of 1)".into());
        }
    }
    if let Some(d) = node.attrs.remove("directions") {
        node.attrs.insert("scan_input_directions".into(), d);
    }
    let axes = cx.const_1d(&hint(&node, "batch_axis"), &[0])?;
    let mut inputs = Vec::new();
    for v in operands {
        let s = cx.fresh(&hint(&node, "unbatched"));
        cx.push(Node::new("Squeeze", vec![v, Some(axes)], vec![s]))?;
        inputs.push(Some(s));
    }
    let outputs = node.outputs.clone();
    let inner: Vec<ValueId> = outputs
        .iter()
        .map(|_| cx.fresh(&hint(&node, "unbatched_out")))
        .collect();
    node.inputs = inputs;
    node.outputs = inner.clone();
    cx.push(node)?;
    for (i, o) in inner.into_iter().zip(outputs) {
        cx.push(Node::new("Unsqueeze", vec![Some(i), Some(axes)], vec![o]))?;
    }
    Ok(())
}

/// The tensor a `Constant` node holds, from whichever `value*` attribute
/// it has.
pub fn constant_node_value(attrs: &kiln_ir::Attrs) -> Result<TensorData, String> {
    let (name, a) = attrs
        .iter()
        .next()
        .ok_or("Constant has no value attribute")?;
    if attrs.len() != 1 {
        return Err("Constant must have exactly one value attribute".into());
    }
    let e = |r: Result<TensorData, kiln_ir::tensor::TensorDataError>| r.map_err(|e| e.to_string());
    match (name.as_str(), a) {
        ("value" | "sparse_value", Attr::Tensor(t)) => Ok((**t).clone()),
        ("value_float", Attr::Float(f)) => e(TensorData::from_f32(vec![], &[*f])),
        ("value_floats", Attr::Floats(f)) => e(TensorData::from_f32(vec![f.len() as u64], f)),
        ("value_int", Attr::Int(i)) => e(TensorData::from_i64(vec![], &[*i])),
        ("value_ints", Attr::Ints(i)) => e(TensorData::from_i64(vec![i.len() as u64], i)),
        ("value_string", Attr::String(s)) => e(TensorData::from_strings(
            vec![],
            vec![s.as_bytes().to_vec()],
        )),
        ("value_strings", Attr::Strings(s)) => e(TensorData::from_strings(
            vec![s.len() as u64],
            s.iter().map(|x| x.as_bytes().to_vec()).collect(),
        )),
        (n, a) => Err(format!(
            "Constant attribute `{n}` of kind {} is not a value",
            a.kind()
        )),
    }
}

/// Used by inference glue: the declared type of a value, if it is a tensor.
pub fn tensor_type(m: &Module, v: ValueId) -> Option<&kiln_ir::TensorType> {
    match m.ty(v) {
        Type::Tensor(t) => Some(t),
        _ => None,
    }
}
