//! Host tensors: typed, dense, row-major storage that kernels compute on,
//! with lossless conversion from and to the IR's byte-level `TensorData`.

use std::sync::Arc;

use half::{bf16, f16};
use kiln_ir::{ElemType, Payload, TensorData};

use crate::f8;

/// Element storage, one variant per element type. Sub-byte integers are
/// unpacked (one element per entry); float8 values keep their bit patterns.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    F64(Vec<f64>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    /// Float8 bit patterns; the element type says which format.
    F8(ElemType, Vec<u8>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I16(Vec<i16>),
    I8(Vec<i8>),
    U64(Vec<u64>),
    U32(Vec<u32>),
    U16(Vec<u16>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
    Str(Vec<String>),
    I4(Vec<i8>),
    U4(Vec<u8>),
    C64(Vec<[f32; 2]>),
    C128(Vec<[f64; 2]>),
}

/// A dense host tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

/// Errors converting tensors.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} elements, data has {got}")]
    Length {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("constant data was elided from the text it was read from: no values to compute with")]
    Elided,
    #[error("{0}")]
    Data(String),
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

macro_rules! each_data {
    ($d:expr, $v:ident => $e:expr) => {
        match $d {
            Data::F32($v) => $e,
            Data::F64($v) => $e,
            Data::F16($v) => $e,
            Data::BF16($v) => $e,
            Data::F8(_, $v) => $e,
            Data::I64($v) => $e,
            Data::I32($v) => $e,
            Data::I16($v) => $e,
            Data::I8($v) => $e,
            Data::U64($v) => $e,
            Data::U32($v) => $e,
            Data::U16($v) => $e,
            Data::U8($v) => $e,
            Data::Bool($v) => $e,
            Data::Str($v) => $e,
            Data::I4($v) => $e,
            Data::U4($v) => $e,
            Data::C64($v) => $e,
            Data::C128($v) => $e,
        }
    };
}
#[allow(unused_imports)]
pub(crate) use each_data;

impl Data {
    pub fn elem(&self) -> ElemType {
        match self {
            Data::F32(_) => ElemType::F32,
            Data::F64(_) => ElemType::F64,
            Data::F16(_) => ElemType::F16,
            Data::BF16(_) => ElemType::BF16,
            Data::F8(k, _) => *k,
            Data::I64(_) => ElemType::I64,
            Data::I32(_) => ElemType::I32,
            Data::I16(_) => ElemType::I16,
            Data::I8(_) => ElemType::I8,
            Data::U64(_) => ElemType::U64,
            Data::U32(_) => ElemType::U32,
            Data::U16(_) => ElemType::U16,
            Data::U8(_) => ElemType::U8,
            Data::Bool(_) => ElemType::Bool,
            Data::Str(_) => ElemType::String,
            Data::I4(_) => ElemType::I4,
            Data::U4(_) => ElemType::U4,
            Data::C64(_) => ElemType::C64,
            Data::C128(_) => ElemType::C128,
        }
    }

    pub fn len(&self) -> usize {
        each_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` zeros (false, empty strings) of element type `elem`.
    pub fn zeros(elem: ElemType, n: usize) -> Data {
        // Each type's zeros allocated directly (zeroed pages): going
        // through f64 values cost more than the integer product whose
        // i32 result it allocated.
        match elem {
            ElemType::F32 => Data::F32(vec![0.0; n]),
            ElemType::F64 => Data::F64(vec![0.0; n]),
            ElemType::F16 => Data::F16(vec![f16::ZERO; n]),
            ElemType::BF16 => Data::BF16(vec![bf16::ZERO; n]),
            ElemType::I64 => Data::I64(vec![0; n]),
            ElemType::I32 => Data::I32(vec![0; n]),
            ElemType::I16 => Data::I16(vec![0; n]),
            ElemType::I8 => Data::I8(vec![0; n]),
            ElemType::I4 => Data::I4(vec![0; n]),
            ElemType::U64 => Data::U64(vec![0; n]),
            ElemType::U32 => Data::U32(vec![0; n]),
            ElemType::U16 => Data::U16(vec![0; n]),
            ElemType::U8 => Data::U8(vec![0; n]),
            ElemType::U4 => Data::U4(vec![0; n]),
            ElemType::String => Data::Str(vec![String::new(); n]),
            ElemType::Bool => Data::Bool(vec![false; n]),
            ElemType::C64 => Data::C64(vec![[0.0; 2]; n]),
            ElemType::C128 => Data::C128(vec![[0.0; 2]; n]),
            // Float8 zero is the all-zero bit pattern in every format.
            k if k.is_float8() => Data::F8(k, vec![0; n]),
            k => Data::from_f64(k, &vec![0.0; n]),
        }
    }

    /// Values converted to f64 (bool: 0/1; complex: real part; strings:
    /// parsed, NaN when not a number).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F64(v) => v.clone(),
            Data::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::F8(k, v) => v.iter().map(|&b| f8::decode(*k, b) as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I16(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I8(v) | Data::I4(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U16(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U8(v) | Data::U4(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
            Data::Str(v) => v
                .iter()
                .map(|s| s.trim().parse().unwrap_or(f64::NAN))
                .collect(),
            Data::C64(v) => v.iter().map(|c| c[0] as f64).collect(),
            Data::C128(v) => v.iter().map(|c| c[0]).collect(),
        }
    }

    /// Values converted to i64 (floats truncated toward zero, saturating;
    /// NaN becomes 0).
    pub fn to_i64(&self) -> Vec<i64> {
        match self {
            Data::I64(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I16(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I8(v) | Data::I4(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U64(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U8(v) | Data::U4(v) => v.iter().map(|&x| x as i64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as i64).collect(),
            Data::Str(v) => v.iter().map(|s| s.trim().parse().unwrap_or(0)).collect(),
            other => other.to_f64().into_iter().map(|x| x as i64).collect(),
        }
    }

    /// Build data of type `elem` from f64 values, rounding floats to the
    /// target precision (float8: nearest, saturating) and converting to
    /// integers the way a C cast does after truncation (wrapping).
    pub fn from_f64(elem: ElemType, v: &[f64]) -> Data {
        match elem {
            ElemType::F32 => Data::F32(v.iter().map(|&x| x as f32).collect()),
            ElemType::F64 => Data::F64(v.to_vec()),
            ElemType::F16 => Data::F16(v.iter().map(|&x| f16::from_f64(x)).collect()),
            ElemType::BF16 => Data::BF16(v.iter().map(|&x| bf16::from_f64(x)).collect()),
            k if k.is_float8() => Data::F8(
                k,
                v.iter().map(|&x| f8::encode(k, x as f32, true)).collect(),
            ),
            ElemType::Bool => Data::Bool(v.iter().map(|&x| x != 0.0).collect()),
            ElemType::String => Data::Str(v.iter().map(|x| format!("{x}")).collect()),
            ElemType::C64 => Data::C64(v.iter().map(|&x| [x as f32, 0.0]).collect()),
            ElemType::C128 => Data::C128(v.iter().map(|&x| [x, 0.0]).collect()),
            int => Data::from_i64(int, &v.iter().map(|&x| f64_to_i64(x)).collect::<Vec<_>>()),
        }
    }

    /// Build data of type `elem` from i64 values (wrapping to the width;
    /// i4/u4 wrap to 4 bits).
    pub fn from_i64(elem: ElemType, v: &[i64]) -> Data {
        match elem {
            ElemType::I64 => Data::I64(v.to_vec()),
            ElemType::I32 => Data::I32(v.iter().map(|&x| x as i32).collect()),
            ElemType::I16 => Data::I16(v.iter().map(|&x| x as i16).collect()),
            ElemType::I8 => Data::I8(v.iter().map(|&x| x as i8).collect()),
            ElemType::U64 => Data::U64(v.iter().map(|&x| x as u64).collect()),
            ElemType::U32 => Data::U32(v.iter().map(|&x| x as u32).collect()),
            ElemType::U16 => Data::U16(v.iter().map(|&x| x as u16).collect()),
            ElemType::U8 => Data::U8(v.iter().map(|&x| x as u8).collect()),
            ElemType::I4 => Data::I4(v.iter().map(|&x| ((x as i8) << 4) >> 4).collect()),
            ElemType::U4 => Data::U4(v.iter().map(|&x| (x as u8) & 0x0f).collect()),
            ElemType::Bool => Data::Bool(v.iter().map(|&x| x != 0).collect()),
            ElemType::String => Data::Str(v.iter().map(|x| x.to_string()).collect()),
            f => Data::from_f64(f, &v.iter().map(|&x| x as f64).collect::<Vec<_>>()),
        }
    }

    /// Gather elements by index (`out[i] = self[idx[i]]`), any type.
    pub fn gather(&self, idx: &[usize]) -> Data {
        fn g<T: Clone>(v: &[T], idx: &[usize]) -> Vec<T> {
            idx.iter().map(|&i| v[i].clone()).collect()
        }
        match self {
            Data::F32(v) => Data::F32(g(v, idx)),
            Data::F64(v) => Data::F64(g(v, idx)),
            Data::F16(v) => Data::F16(g(v, idx)),
            Data::BF16(v) => Data::BF16(g(v, idx)),
            Data::F8(k, v) => Data::F8(*k, g(v, idx)),
            Data::I64(v) => Data::I64(g(v, idx)),
            Data::I32(v) => Data::I32(g(v, idx)),
            Data::I16(v) => Data::I16(g(v, idx)),
            Data::I8(v) => Data::I8(g(v, idx)),
            Data::U64(v) => Data::U64(g(v, idx)),
            Data::U32(v) => Data::U32(g(v, idx)),
            Data::U16(v) => Data::U16(g(v, idx)),
            Data::U8(v) => Data::U8(g(v, idx)),
            Data::Bool(v) => Data::Bool(g(v, idx)),
            Data::Str(v) => Data::Str(g(v, idx)),
            Data::I4(v) => Data::I4(g(v, idx)),
            Data::U4(v) => Data::U4(g(v, idx)),
            Data::C64(v) => Data::C64(g(v, idx)),
            Data::C128(v) => Data::C128(g(v, idx)),
        }
    }

    /// Concatenate data of the same type.
    pub fn concat(parts: &[&Data]) -> Option<Data> {
        let first = parts.first()?;
        let elem = first.elem();
        if parts.iter().any(|p| p.elem() != elem) {
            return None;
        }
        // Append variant by variant: a detour through f64/i64 would lose
        // precision.
        let mut out = (*first).clone();
        for p in &parts[1..] {
            match (&mut out, p) {
                (Data::F32(a), Data::F32(b)) => a.extend_from_slice(b),
                (Data::F64(a), Data::F64(b)) => a.extend_from_slice(b),
                (Data::F16(a), Data::F16(b)) => a.extend_from_slice(b),
                (Data::BF16(a), Data::BF16(b)) => a.extend_from_slice(b),
                (Data::F8(_, a), Data::F8(_, b)) => a.extend_from_slice(b),
                (Data::I64(a), Data::I64(b)) => a.extend_from_slice(b),
                (Data::I32(a), Data::I32(b)) => a.extend_from_slice(b),
                (Data::I16(a), Data::I16(b)) => a.extend_from_slice(b),
                (Data::I8(a), Data::I8(b)) => a.extend_from_slice(b),
                (Data::U64(a), Data::U64(b)) => a.extend_from_slice(b),
                (Data::U32(a), Data::U32(b)) => a.extend_from_slice(b),
                (Data::U16(a), Data::U16(b)) => a.extend_from_slice(b),
                (Data::U8(a), Data::U8(b)) => a.extend_from_slice(b),
                (Data::Bool(a), Data::Bool(b)) => a.extend_from_slice(b),
                (Data::Str(a), Data::Str(b)) => a.extend_from_slice(b),
                (Data::I4(a), Data::I4(b)) => a.extend_from_slice(b),
                (Data::U4(a), Data::U4(b)) => a.extend_from_slice(b),
                (Data::C64(a), Data::C64(b)) => a.extend_from_slice(b),
                (Data::C128(a), Data::C128(b)) => a.extend_from_slice(b),
                _ => return None,
            }
        }
        Some(out)
    }
}

/// f64 to i64 as a C cast after truncation, NaN to 0, saturating at the
/// i64 range (callers wrap further to narrower types).
pub fn f64_to_i64(x: f64) -> i64 {
    if x.is_nan() {
        0
    } else {
        x.trunc() as i64
    }
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Data) -> Result<Tensor, TensorError> {
        let expected = numel(&shape);
        if expected != data.len() {
            return Err(TensorError::Length {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(Tensor { shape, data })
    }

    pub fn scalar(data: Data) -> Tensor {
        Tensor {
            shape: vec![],
            data,
        }
    }

    pub fn elem(&self) -> ElemType {
        self.data.elem()
    }

    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn zeros(elem: ElemType, shape: Vec<usize>) -> Tensor {
        let n = numel(&shape);
        Tensor {
            shape,
            data: Data::zeros(elem, n),
        }
    }

    pub fn from_f32(shape: Vec<usize>, v: Vec<f32>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, Data::F32(v))
    }

    pub fn from_i64(shape: Vec<usize>, v: Vec<i64>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, Data::I64(v))
    }

    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        strides(&self.shape)
    }

    pub fn to_f64(&self) -> Vec<f64> {
        self.data.to_f64()
    }

    pub fn to_i64(&self) -> Vec<i64> {
        self.data.to_i64()
    }

    /// A copy with another shape of the same element count.
    pub fn reshaped(&self, shape: Vec<usize>) -> Result<Tensor, TensorError> {
        Tensor::new(shape, self.data.clone())
    }

    /// Convert from the IR's byte-level constant data.
    pub fn from_data(d: &TensorData) -> Result<Tensor, TensorError> {
        let shape: Vec<usize> = d.shape.iter().map(|&x| x as usize).collect();
        let n = numel(&shape);
        let bytes = match &d.payload {
            Payload::Elided => return Err(TensorError::Elided),
            Payload::Strings(s) => {
                let v = s
                    .iter()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect();
                return Tensor::new(shape, Data::Str(v));
            }
            Payload::Bytes(b) => &b[..],
        };
        fn chunks<const W: usize, T>(b: &[u8], f: impl Fn([u8; W]) -> T) -> Vec<T> {
            b.chunks_exact(W)
                .map(|c| {
                    let mut a = [0u8; W];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        let data = match d.elem {
            ElemType::F32 => Data::F32(chunks(bytes, f32::from_le_bytes)),
            ElemType::F64 => Data::F64(chunks(bytes, f64::from_le_bytes)),
            ElemType::F16 => Data::F16(chunks(bytes, f16::from_le_bytes)),
            ElemType::BF16 => Data::BF16(chunks(bytes, bf16::from_le_bytes)),
            k if k.is_float8() => Data::F8(k, bytes.to_vec()),
            ElemType::I64 => Data::I64(chunks(bytes, i64::from_le_bytes)),
            ElemType::I32 => Data::I32(chunks(bytes, i32::from_le_bytes)),
            ElemType::I16 => Data::I16(chunks(bytes, i16::from_le_bytes)),
            ElemType::I8 => Data::I8(bytes.iter().map(|&b| b as i8).collect()),
            ElemType::U64 => Data::U64(chunks(bytes, u64::from_le_bytes)),
            ElemType::U32 => Data::U32(chunks(bytes, u32::from_le_bytes)),
            ElemType::U16 => Data::U16(chunks(bytes, u16::from_le_bytes)),
            ElemType::U8 => Data::U8(bytes.to_vec()),
            ElemType::Bool => Data::Bool(bytes.iter().map(|&b| b != 0).collect()),
            ElemType::I4 => Data::I4(
                (0..n)
                    .map(|i| (((bytes[i / 2] >> (4 * (i % 2))) << 4) as i8) >> 4)
                    .collect(),
            ),
            ElemType::U4 => Data::U4(
                (0..n)
                    .map(|i| (bytes[i / 2] >> (4 * (i % 2))) & 0x0f)
                    .collect(),
            ),
            ElemType::C64 => Data::C64(chunks(bytes, |b: [u8; 8]| {
                [
                    f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    f32::from_le_bytes([b[4], b[5], b[6], b[7]]),
                ]
            })),
            ElemType::C128 => Data::C128(chunks(bytes, |b: [u8; 16]| {
                let mut lo = [0u8; 8];
                let mut hi = [0u8; 8];
                lo.copy_from_slice(&b[..8]);
                hi.copy_from_slice(&b[8..]);
                [f64::from_le_bytes(lo), f64::from_le_bytes(hi)]
            })),
            other => return Err(TensorError::Data(format!("cannot hold {other} data"))),
        };
        Tensor::new(shape, data)
    }

    /// Convert to the IR's byte-level constant data.
    pub fn to_data(&self) -> TensorData {
        let shape: Vec<u64> = self.shape.iter().map(|&x| x as u64).collect();
        let bytes: Vec<u8> = match &self.data {
            Data::Str(v) => {
                return TensorData {
                    elem: ElemType::String,
                    shape,
                    payload: Payload::Strings(
                        v.iter()
                            .map(|s| s.as_bytes().to_vec())
                            .collect::<Vec<_>>()
                            .into(),
                    ),
                }
            }
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F8(_, v) | Data::U8(v) => v.clone(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I8(v) => v.iter().map(|&x| x as u8).collect(),
            Data::U64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::U16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8).collect(),
            Data::I4(v) => pack4(&v.iter().map(|&x| x as u8).collect::<Vec<_>>()),
            Data::U4(v) => pack4(v),
            Data::C64(v) => v
                .iter()
                .flat_map(|c| c[0].to_le_bytes().into_iter().chain(c[1].to_le_bytes()))
                .collect(),
            Data::C128(v) => v
                .iter()
                .flat_map(|c| c[0].to_le_bytes().into_iter().chain(c[1].to_le_bytes()))
                .collect(),
        };
        TensorData {
            elem: self.elem(),
            shape,
            payload: Payload::Bytes(Arc::from(bytes)),
        }
    }
}

fn pack4(v: &[u8]) -> Vec<u8> {
    v.chunks(2)
        .map(|c| (c[0] & 0x0f) | (c.get(1).copied().unwrap_or(0) << 4))
        .collect()
}

/// Row-major strides of a shape, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ir_data_round_trips() {
        for elem in ElemType::ALL {
            if elem == ElemType::String {
                continue;
            }
            let t = Tensor::new(vec![3], Data::from_i64(elem, &[1, -2, 3])).expect("tensor");
            let back = Tensor::from_data(&t.to_data()).expect("back");
            assert_eq!(back, t, "{elem}");
        }
        let s = Tensor::new(vec![2], Data::Str(vec!["a".into(), "bc".into()])).expect("tensor");
        assert_eq!(Tensor::from_data(&s.to_data()).expect("back"), s);
    }
}
