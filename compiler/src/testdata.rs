//! Test data on disk: ONNX `TensorProto`/`SequenceProto`/`OptionalProto`
//! `.pb` files (the backend-test format) and numpy `.npy` files, read into
//! run-time values and written back.

use std::path::Path;

use kiln_interp::{Data, Tensor, Value};
use kiln_ir::{ElemType, Type};
use prost::Message;

use crate::onnx::proto;
use crate::onnx::tensor::{elem_to_onnx, tensor_from_proto, DataSource};

fn tensor_value(t: &proto::TensorProto) -> Result<Value, String> {
    let d = tensor_from_proto(t, &DataSource::default()).map_err(|e| e.to_string())?;
    Ok(Value::tensor(
        Tensor::from_data(&d).map_err(|e| e.to_string())?,
    ))
}

fn sequence_value(s: &proto::SequenceProto) -> Result<Value, String> {
    let mut items = Vec::new();
    for t in &s.tensor_values {
        items.push(tensor_value(t)?);
    }
    for q in &s.sequence_values {
        items.push(sequence_value(q)?);
    }
    for o in &s.optional_values {
        items.push(optional_value(o)?);
    }
    if !s.map_values.is_empty() || !s.sparse_tensor_values.is_empty() {
        return Err("sequences of maps or sparse tensors are not supported".into());
    }
    Ok(Value::Sequence(items))
}

fn optional_value(o: &proto::OptionalProto) -> Result<Value, String> {
    let inner = if let Some(t) = &o.tensor_value {
        Some(tensor_value(t)?)
    } else if let Some(s) = &o.sequence_value {
        Some(sequence_value(s)?)
    } else if let Some(q) = &o.optional_value {
        Some(optional_value(q)?)
    } else {
        None
    };
    Ok(Value::Optional(inner.map(Box::new)))
}

/// Decode a `.pb` holding a value of type `ty` (which proto message it is
/// depends on the type, as in ONNX's backend-test runner).
pub fn decode_pb(bytes: &[u8], ty: &Type) -> Result<Value, String> {
    let bad = |e: prost::DecodeError| format!("not a valid protobuf: {e}");
    match ty {
        Type::Tensor(_) | Type::Map(..) => {
            tensor_value(&proto::TensorProto::decode(bytes).map_err(bad)?)
        }
        Type::Sequence(_) => sequence_value(&proto::SequenceProto::decode(bytes).map_err(bad)?),
        Type::Optional(_) => optional_value(&proto::OptionalProto::decode(bytes).map_err(bad)?),
    }
}

/// Read a value from a `.pb` (typed by `ty`) or `.npy` file.
pub fn read_value(path: &Path, ty: &Type) -> Result<Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v = if path.extension().and_then(|e| e.to_str()) == Some("npy") {
        read_npy(&bytes).map(Value::tensor)
    } else {
        decode_pb(&bytes, ty)
    };
    v.map(|v| reinterpret_bits(v, ty))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Tools without bfloat16 or float8 in numpy store such tensors as the
/// unsigned integers of the same width (ONNX's own test data does): when
/// the declared type says otherwise, take the bits as the declared type.
fn reinterpret_bits(v: Value, ty: &Type) -> Value {
    let (Value::Tensor(t), Some(want)) = (&v, ty.as_tensor().map(|t| t.elem)) else {
        return v;
    };
    let data = match (&t.data, want) {
        (Data::U16(b), ElemType::BF16) => {
            Data::BF16(b.iter().map(|&x| half::bf16::from_bits(x)).collect())
        }
        (Data::U16(b), ElemType::F16) => {
            Data::F16(b.iter().map(|&x| half::f16::from_bits(x)).collect())
        }
        (Data::U8(b), k) if k.is_float8() => Data::F8(k, b.clone()),
        _ => return v,
    };
    Value::tensor(Tensor {
        shape: t.shape.clone(),
        data,
    })
}

/// The name stored in a `.pb` TensorProto (empty when none).
pub fn pb_tensor_name(bytes: &[u8]) -> Option<String> {
    proto::TensorProto::decode(bytes)
        .ok()
        .map(|t| t.name().to_string())
}

/// A tensor as a TensorProto named `name`.
pub fn tensor_proto(t: &Tensor, name: &str) -> proto::TensorProto {
    let d = t.to_data();
    let mut p = proto::TensorProto {
        name: Some(name.to_string()),
        dims: d.shape.iter().map(|&x| x as i64).collect(),
        data_type: Some(elem_to_onnx(d.elem)),
        ..Default::default()
    };
    match &d.payload {
        kiln_ir::Payload::Strings(s) => p.string_data = s.to_vec(),
        kiln_ir::Payload::Bytes(b) => p.raw_data = Some(prost::bytes::Bytes::copy_from_slice(b)),
        kiln_ir::Payload::Elided => {}
    }
    p
}

/// Encode a value as the `.pb` message for it.
pub fn encode_pb(v: &Value, name: &str) -> Vec<u8> {
    fn seq(items: &[Value], name: &str) -> proto::SequenceProto {
        let mut s = proto::SequenceProto {
            name: Some(name.to_string()),
            ..Default::default()
        };
        for it in items {
            match it {
                Value::Tensor(t) => {
                    s.elem_type = Some(proto::sequence_proto::DataType::Tensor as i32);
                    s.tensor_values.push(tensor_proto(t, ""));
                }
                Value::Sequence(inner) => {
                    s.elem_type = Some(proto::sequence_proto::DataType::Sequence as i32);
                    s.sequence_values.push(seq(inner, ""));
                }
                Value::Optional(_) => {
                    s.elem_type = Some(proto::sequence_proto::DataType::Optional as i32);
                    s.optional_values.push(opt(it, ""));
                }
            }
        }
        s
    }
    fn opt(v: &Value, name: &str) -> proto::OptionalProto {
        let mut o = proto::OptionalProto {
            name: Some(name.to_string()),
            ..Default::default()
        };
        if let Value::Optional(Some(inner)) = v {
            match &**inner {
                Value::Tensor(t) => {
                    o.elem_type = Some(proto::optional_proto::DataType::Tensor as i32);
                    o.tensor_value = Some(tensor_proto(t, ""));
                }
                Value::Sequence(items) => {
                    o.elem_type = Some(proto::optional_proto::DataType::Sequence as i32);
                    o.sequence_value = Some(seq(items, ""));
                }
                inner @ Value::Optional(_) => {
                    o.elem_type = Some(proto::optional_proto::DataType::Optional as i32);
                    o.optional_value = Some(Box::new(opt(inner, "")));
                }
            }
        }
        o
    }
    match v {
        Value::Tensor(t) => tensor_proto(t, name).encode_to_vec(),
        Value::Sequence(items) => seq(items, name).encode_to_vec(),
        Value::Optional(_) => opt(v, name).encode_to_vec(),
    }
}

/// Parse a numpy `.npy` file (format 1.0-3.0, C order, little-endian or
/// single-byte types).
pub fn read_npy(bytes: &[u8]) -> Result<Tensor, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (bad magic)".into());
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("truncated .npy header")?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[i..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or("no descr")?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err("Fortran-order arrays are not supported".into());
    }
    let shape_txt = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or("no shape")?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad shape `{shape_txt}`"))
        })
        .collect::<Result<_, _>>()?;
    let elem = match descr.trim_start_matches(['<', '|', '=']) {
        "f4" => ElemType::F32,
        "f8" => ElemType::F64,
        "f2" => ElemType::F16,
        "i8" => ElemType::I64,
        "i4" => ElemType::I32,
        "i2" => ElemType::I16,
        "i1" => ElemType::I8,
        "u8" => ElemType::U64,
        "u4" => ElemType::U32,
        "u2" => ElemType::U16,
        "u1" => ElemType::U8,
        "b1" => ElemType::Bool,
        _ => return Err(format!("unsupported .npy dtype `{descr}`")),
    };
    if descr.starts_with('>') {
        return Err("big-endian .npy data is not supported".into());
    }
    let n: usize = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or("shape overflows")?;
    let body = &bytes[start + hlen..];
    let width = elem.bit_width().unwrap_or(8) as usize / 8;
    let needed = n.checked_mul(width).ok_or("shape overflows")?;
    if body.len() != needed {
        return Err(format!(
            "data holds {} bytes, shape {shape:?} of {elem} needs {needed}",
            body.len(),
        ));
    }
    let d = kiln_ir::TensorData::from_bytes(
        elem,
        shape.iter().map(|&x| x as u64).collect(),
        body.to_vec(),
    )
    .map_err(|e| e.to_string())?;
    Tensor::from_data(&d).map_err(|e| e.to_string())
}

/// One line about a value: type, shape and, for numbers, min/max/mean.
pub fn summarize(v: &Value) -> String {
    match v {
        Value::Tensor(t) => {
            let head = format!("{}{:?}", t.elem(), t.shape);
            if matches!(t.data, Data::Str(_)) || t.is_empty() {
                return head;
            }
            let x = t.to_f64();
            let min = x.iter().copied().fold(f64::INFINITY, f64::min);
            let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mean = x.iter().sum::<f64>() / x.len() as f64;
            format!("{head} min={min:.6} max={max:.6} mean={mean:.6}")
        }
        Value::Sequence(items) => format!("sequence of {} values", items.len()),
        Value::Optional(None) => "empty optional".into(),
        Value::Optional(Some(inner)) => format!("optional {}", summarize(inner)),
    }
}
