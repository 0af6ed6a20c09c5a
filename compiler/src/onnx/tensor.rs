//! Conversion of ONNX tensors and types into IR constants and types.
//!
//! Every size is checked before anything is allocated: a TensorProto whose
//! dims promise more elements than its data holds is an error, and external
//! data is read only after its extent has been checked against the file.

use std::path::{Component, Path};
use std::sync::Arc;

use kiln_ir::types::{Dim, SymExpr};
use kiln_ir::{ElemType, TensorData, TensorType, Type};

use super::proto::{self, tensor_proto::DataType, type_proto};

/// An error converting a tensor or type; the importer adds which node or
/// initializer it came from.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("unsupported tensor data type code {0}")]
    DataType(i32),
    #[error("negative dimension {0}")]
    NegativeDim(i64),
    #[error(transparent)]
    Limit(#[from] kiln_ir::LimitError),
    #[error("{0}")]
    Data(#[from] kiln_ir::tensor::TensorDataError),
    #[error("{field} holds {got} values, shape {shape:?} needs {expected}")]
    Count {
        field: &'static str,
        got: usize,
        expected: u64,
        shape: Vec<u64>,
    },
    #[error("external data: {0}")]
    External(String),
    #[error("tensor segments are not supported")]
    Segment,
    #[error("type has no value (neither tensor, sequence, optional nor map)")]
    EmptyType,
    #[error("{0} types are not supported")]
    UnsupportedType(&'static str),
}

pub fn elem_from_onnx(code: i32) -> Result<ElemType, TensorError> {
    let dt = DataType::try_from(code).map_err(|_| TensorError::DataType(code))?;
    Ok(match dt {
        DataType::Float => ElemType::F32,
        DataType::Uint8 => ElemType::U8,
        DataType::Int8 => ElemType::I8,
        DataType::Uint16 => ElemType::U16,
        DataType::Int16 => ElemType::I16,
        DataType::Int32 => ElemType::I32,
        DataType::Int64 => ElemType::I64,
        DataType::String => ElemType::String,
        DataType::Bool => ElemType::Bool,
        DataType::Float16 => ElemType::F16,
        DataType::Double => ElemType::F64,
        DataType::Uint32 => ElemType::U32,
        DataType::Uint64 => ElemType::U64,
        DataType::Complex64 => ElemType::C64,
        DataType::Complex128 => ElemType::C128,
        DataType::Bfloat16 => ElemType::BF16,
        DataType::Float8e4m3fn => ElemType::F8E4M3FN,
        DataType::Float8e4m3fnuz => ElemType::F8E4M3FNUZ,
        DataType::Float8e5m2 => ElemType::F8E5M2,
        DataType::Float8e5m2fnuz => ElemType::F8E5M2FNUZ,
        DataType::Uint4 => ElemType::U4,
        DataType::Int4 => ElemType::I4,
        DataType::Undefined => return Err(TensorError::DataType(code)),
    })
}

/// The ONNX TensorProto data type code of an element type.
pub fn elem_to_onnx(t: ElemType) -> i32 {
    (match t {
        ElemType::F32 => DataType::Float,
        ElemType::U8 => DataType::Uint8,
        ElemType::I8 => DataType::Int8,
        ElemType::U16 => DataType::Uint16,
        ElemType::I16 => DataType::Int16,
        ElemType::I32 => DataType::Int32,
        ElemType::I64 => DataType::Int64,
        ElemType::String => DataType::String,
        ElemType::Bool => DataType::Bool,
        ElemType::F16 => DataType::Float16,
        ElemType::F64 => DataType::Double,
        ElemType::U32 => DataType::Uint32,
        ElemType::U64 => DataType::Uint64,
        ElemType::C64 => DataType::Complex64,
        ElemType::C128 => DataType::Complex128,
        ElemType::BF16 => DataType::Bfloat16,
        ElemType::F8E4M3FN => DataType::Float8e4m3fn,
        ElemType::F8E4M3FNUZ => DataType::Float8e4m3fnuz,
        ElemType::F8E5M2 => DataType::Float8e5m2,
        ElemType::F8E5M2FNUZ => DataType::Float8e5m2fnuz,
        ElemType::U4 => DataType::Uint4,
        ElemType::I4 => DataType::Int4,
    }) as i32
}

fn dims_u64(dims: &[i64]) -> Result<Vec<u64>, TensorError> {
    dims.iter()
        .map(|&d| u64::try_from(d).map_err(|_| TensorError::NegativeDim(d)))
        .collect()
}

/// A type whose element type and shape are not known yet; inference
/// replaces it.
pub fn placeholder_type() -> Type {
    Type::Tensor(TensorType::unranked(ElemType::F32))
}

/// Where a model's tensor bytes come from: the folder its external data
/// is read from, and the mapped model file that `raw_data` fields point
/// into (whose pages are released as each tensor is copied out, so a
/// model's weights are resident once while it is imported, not twice);
/// and how large a tensor may be.
#[derive(Clone, Copy, Default)]
pub struct DataSource<'a> {
    pub dir: Option<&'a Path>,
    pub file: Option<&'a super::mapped::MappedModel>,
    pub limits: kiln_ir::Limits,
}

/// Convert a TensorProto to constant data.
pub fn tensor_from_proto(
    t: &proto::TensorProto,
    root: &DataSource<'_>,
) -> Result<TensorData, TensorError> {
    if t.segment.is_some() {
        return Err(TensorError::Segment);
    }
    let elem = elem_from_onnx(t.data_type())?;
    let shape = dims_u64(&t.dims)?;
    let what = || format!("tensor of shape {shape:?}");
    let n = match kiln_ir::tensor::shape_numel(&shape) {
        Some(n) => n,
        None => return Err(root.limits.bytes(what, u64::MAX).unwrap_err().into()),
    };
    if elem == ElemType::String {
        check_count("string_data", t.string_data.len(), n, &shape)?;
        return Ok(TensorData::from_strings(shape, t.string_data.clone())?);
    }
    let nbytes = root
        .limits
        .bytes(what, elem.storage_bytes(n).unwrap_or(u64::MAX))?;
    if t.data_location() == proto::tensor_proto::DataLocation::External {
        let bytes = read_external(t, root, nbytes)?;
        return Ok(TensorData::from_bytes(elem, shape, bytes)?);
    }
    if let Some(raw) = &t.raw_data {
        if raw.len() as u64 != nbytes {
            // from_bytes words the error.
            return Ok(TensorData::from_bytes(elem, shape, &raw[..])?);
        }
        let bytes = kiln_ir::tensor::build_bytes(raw.len(), |b| b.copy_from_slice(raw));
        if let Some(file) = root.file {
            file.release(raw);
        }
        return Ok(TensorData::from_bytes(elem, shape, bytes)?);
    }
    let bytes: Vec<u8> = match elem {
        ElemType::F32 => {
            check_count("float_data", t.float_data.len(), n, &shape)?;
            t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        ElemType::C64 => {
            check_count("float_data", t.float_data.len(), n * 2, &shape)?;
            t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        ElemType::F64 => {
            check_count("double_data", t.double_data.len(), n, &shape)?;
            t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        ElemType::C128 => {
            check_count("double_data", t.double_data.len(), n * 2, &shape)?;
            t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        ElemType::I64 => {
            check_count("int64_data", t.int64_data.len(), n, &shape)?;
            t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        ElemType::U64 | ElemType::U32 => {
            check_count("uint64_data", t.uint64_data.len(), n, &shape)?;
            if elem == ElemType::U64 {
                t.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect()
            } else {
                t.uint64_data
                    .iter()
                    .flat_map(|&v| (v as u32).to_le_bytes())
                    .collect()
            }
        }
        ElemType::I4 | ElemType::U4 => {
            // int32_data holds one packed byte per entry (two elements each).
            let packed = n.div_ceil(2);
            check_count("int32_data", t.int32_data.len(), packed, &shape)?;
            t.int32_data.iter().map(|&v| v as u8).collect()
        }
        // Everything else of 16 bits or less travels in int32_data, one
        // element (its bit pattern) per entry.
        _ => {
            check_count("int32_data", t.int32_data.len(), n, &shape)?;
            let w = elem.bit_width().unwrap_or(32) / 8;
            t.int32_data
                .iter()
                .flat_map(|&v| v.to_le_bytes().into_iter().take(w as usize))
                .collect()
        }
    };
    Ok(TensorData::from_bytes(elem, shape, bytes)?)
}

fn check_count(
    field: &'static str,
    got: usize,
    expected: u64,
    shape: &[u64],
) -> Result<(), TensorError> {
    if got as u64 != expected {
        return Err(TensorError::Count {
            field,
            got,
            expected,
            shape: shape.to_vec(),
        });
    }
    Ok(())
}

fn read_external(
    t: &proto::TensorProto,
    root: &DataSource<'_>,
    nbytes: u64,
) -> Result<Vec<u8>, TensorError> {
    use std::io::{Read, Seek, SeekFrom};
    let ext = |msg: String| TensorError::External(msg);
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        match kv.key() {
            "location" => location = Some(kv.value().to_string()),
            "offset" => {
                offset = kv
                    .value()
                    .parse()
                    .map_err(|_| ext(format!("bad offset `{}`", kv.value())))?
            }
            "length" => {
                length = Some(
                    kv.value()
                        .parse::<u64>()
                        .map_err(|_| ext(format!("bad length `{}`", kv.value())))?,
                )
            }
            _ => {}
        }
    }
    let location = location.ok_or_else(|| ext("no `location` key".into()))?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ext(format!(
            "location `{location}` leaves the model's folder"
        )));
    }
    let dir = root.dir.ok_or_else(|| {
        ext(format!(
            "`{location}`: the model was not loaded from a file, so external data has no folder"
        ))
    })?;
    let path = dir.join(rel);
    // Symlinks could still lead out of the folder: compare canonical paths.
    let canon_dir = dir
        .canonicalize()
        .map_err(|e| ext(format!("{}: {e}", dir.display())))?;
    let canon = path
        .canonicalize()
        .map_err(|e| ext(format!("{}: {e}", path.display())))?;
    if !canon.starts_with(&canon_dir) {
        return Err(ext(format!(
            "location `{location}` leaves the model's folder"
        )));
    }
    let len = length.unwrap_or(nbytes);
    if len != nbytes {
        return Err(ext(format!(
            "`{location}`: length {len} but the tensor needs {nbytes} bytes"
        )));
    }
    let mut f =
        std::fs::File::open(&canon).map_err(|e| ext(format!("{}: {e}", canon.display())))?;
    let size = f.metadata().map_err(|e| ext(e.to_string()))?.len();
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(ext(format!(
            "`{location}`: bytes {offset}..{} are past the end of the file ({size} bytes)",
            offset.saturating_add(len)
        )));
    }
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| ext(e.to_string()))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact(&mut buf).map_err(|e| ext(e.to_string()))?;
    Ok(buf)
}

/// Convert a sparse tensor to a dense constant.
pub fn sparse_to_dense(
    s: &proto::SparseTensorProto,
    root: &DataSource<'_>,
) -> Result<TensorData, TensorError> {
    let values = s.values.as_ref().ok_or(TensorError::EmptyType)?;
    let values = tensor_from_proto(values, root)?;
    let elem = values.elem;
    let shape = dims_u64(&s.dims)?;
    let what = || format!("sparse tensor of dense shape {shape:?}");
    let n = match kiln_ir::tensor::shape_numel(&shape) {
        Some(n) => n,
        None => return Err(root.limits.bytes(what, u64::MAX).unwrap_err().into()),
    };
    // Checked before anything is built from the indices.
    let nbytes = root
        .limits
        .bytes(what, elem.storage_bytes(n).unwrap_or(u64::MAX))?;
    let nnz = values.numel();
    let idx = match &s.indices {
        Some(i) => tensor_from_proto(i, root)?
            .to_i64_vec()
            .ok_or(TensorError::UnsupportedType("sparse index"))?,
        None => vec![],
    };
    // Linear indices: either [NNZ] already, or [NNZ, rank] coordinates.
    let linear: Vec<u64> = if idx.len() as u64 == nnz {
        idx.iter().map(|&i| i as u64).collect()
    } else if idx.len() as u64 == nnz * shape.len() as u64 {
        idx.chunks(shape.len().max(1))
            .map(|c| {
                // An invalid coordinate maps past the end, caught below.
                c.iter()
                    .zip(&shape)
                    .try_fold(0u64, |acc, (&i, &d)| {
                        let i = u64::try_from(i).ok().filter(|&i| i < d)?;
                        acc.checked_mul(d)?.checked_add(i)
                    })
                    .unwrap_or(u64::MAX)
            })
            .collect()
    } else {
        return Err(TensorError::Count {
            field: "sparse indices",
            got: idx.len(),
            expected: nnz,
            shape,
        });
    };
    if linear.iter().any(|&i| i >= n) {
        return Err(TensorError::External("sparse index out of range".into()));
    }
    let w = match elem.bit_width() {
        Some(b) if b % 8 == 0 => (b / 8) as usize,
        _ => return Err(TensorError::UnsupportedType("sub-byte or string sparse")),
    };
    let src = values.bytes().unwrap_or(&[]);
    if src.len() < linear.len() * w {
        return Err(TensorError::External(
            "sparse values shorter than the indices".into(),
        ));
    }
    // Zeroed lazily by the allocator (no huge pages asked for): only the
    // pages holding nonzeros become resident.
    // SAFETY: every bit pattern, all-zero included, is a valid `u8`.
    let mut dense = unsafe { Arc::<[u8]>::new_zeroed_slice(nbytes as usize).assume_init() };
    if let Some(out) = Arc::get_mut(&mut dense) {
        for (k, &i) in linear.iter().enumerate() {
            let i = i as usize;
            out[i * w..(i + 1) * w].copy_from_slice(&src[k * w..(k + 1) * w]);
        }
    }
    Ok(TensorData::from_bytes(elem, shape, dense)?)
}

/// A dim_param name as an IR symbol (any string; the printer quotes names
/// that are not identifiers).
fn dim_from_proto(d: &proto::tensor_shape_proto::Dimension) -> Dim {
    use proto::tensor_shape_proto::dimension::Value;
    match &d.value {
        Some(Value::DimValue(v)) if *v >= 0 => Dim::Known(*v as u64),
        // Some exporters write `?` for "unknown": that is no symbol.
        Some(Value::DimParam(p)) if !p.is_empty() && p != "?" => Dim::Sym(SymExpr::symbol(p)),
        _ => Dim::Unknown,
    }
}

pub fn type_from_proto(t: &proto::TypeProto) -> Result<Type, TensorError> {
    match t.value.as_ref().ok_or(TensorError::EmptyType)? {
        type_proto::Value::TensorType(tt) => {
            let elem = elem_from_onnx(tt.elem_type())?;
            let shape = tt
                .shape
                .as_ref()
                .map(|s| s.dim.iter().map(dim_from_proto).collect());
            Ok(Type::Tensor(TensorType {
                elem,
                shape,
                quant: None,
            }))
        }
        type_proto::Value::SequenceType(s) => {
            let inner = s.elem_type.as_deref().ok_or(TensorError::EmptyType)?;
            Ok(Type::Sequence(Box::new(type_from_proto(inner)?)))
        }
        type_proto::Value::OptionalType(o) => {
            let inner = o.elem_type.as_deref().ok_or(TensorError::EmptyType)?;
            Ok(Type::Optional(Box::new(type_from_proto(inner)?)))
        }
        type_proto::Value::MapType(m) => {
            let key = elem_from_onnx(m.key_type())?;
            let v = m.value_type.as_deref().ok_or(TensorError::EmptyType)?;
            Ok(Type::Map(key, Box::new(type_from_proto(v)?)))
        }
        type_proto::Value::SparseTensorType(_) => {
            Err(TensorError::UnsupportedType("sparse tensor"))
        }
        type_proto::Value::OpaqueType(_) => Err(TensorError::UnsupportedType("opaque")),
    }
}

/// Shared constant data from a TensorProto.
pub fn shared_tensor(
    t: &proto::TensorProto,
    root: &DataSource<'_>,
) -> Result<Arc<TensorData>, TensorError> {
    tensor_from_proto(t, root).map(Arc::new)
}
