//! Constant tensor data: initializers, `Constant` values and tensor attributes.
//!
//! Data is held behind an `Arc`, so a constant is stored once and cloning a
//! module (or a pass copying a constant) never copies its bytes.

use std::sync::Arc;

use crate::types::ElemType;

/// The bytes of a constant tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// Dense little-endian storage; sub-byte types packed two per byte, low
    /// nibble first; bool one byte per element (0 or 1).
    Bytes(Arc<[u8]>),
    /// One byte string per element.
    Strings(Arc<[Vec<u8>]>),
    /// The values are not present: a constant read back from text printed
    /// with large constants elided. Type and name survive, data does not;
    /// nothing can be computed from it.
    Elided,
}

/// A constant tensor: element type, static shape and data.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    pub elem: ElemType,
    pub shape: Vec<u64>,
    pub payload: Payload,
}

/// Errors building a constant whose data does not match its type.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorDataError {
    #[error("shape {shape:?} has more elements than can be addressed")]
    TooLarge { shape: Vec<u64> },
    #[error("{elem} tensor of shape {shape:?} needs {expected} bytes, got {got}")]
    ByteLength {
        elem: ElemType,
        shape: Vec<u64>,
        expected: u64,
        got: u64,
    },
    #[error("string tensor of shape {shape:?} needs {expected} strings, got {got}")]
    StringCount {
        shape: Vec<u64>,
        expected: u64,
        got: u64,
    },
    #[error("{0} data must be given as strings")]
    StringsExpected(ElemType),
    #[error("{0} data cannot be given as strings")]
    BytesExpected(ElemType),
}

/// A byte buffer of `len` bytes written by `fill`, allocated once and
/// shared: big constants are built in place rather than in a `Vec` copied
/// into an `Arc` (folding a model's weights would otherwise touch every
/// byte twice).
pub fn build_bytes(len: usize, fill: impl FnOnce(&mut [u8])) -> Arc<[u8]> {
    let zeroed = Arc::<[u8]>::new_zeroed_slice(len);
    // SAFETY: every bit pattern, all-zero included, is a valid `u8`.
    let mut bytes = unsafe { zeroed.assume_init() };
    if let Some(b) = Arc::get_mut(&mut bytes) {
        advise_huge_pages(b);
        fill(b);
    }
    bytes
}

/// Ask Linux to back the 2 MiB-aligned interior of a fresh, untouched
/// buffer with huge pages: filling 100 MB of weights then takes 50 page
/// faults instead of 25,000 (the faults, not the copying, dominated
/// folding ResNet-50's weights). Advice only: failure changes nothing.
#[cfg(target_os = "linux")]
fn advise_huge_pages(b: &mut [u8]) {
    const HUGE: usize = 2 << 20;
    let start = b.as_mut_ptr() as usize;
    let first = start.next_multiple_of(HUGE);
    let end = (start + b.len()) / HUGE * HUGE;
    if end > first {
        // SAFETY: the range lies inside `b`, which this function borrows
        // mutably; MADV_HUGEPAGE does not change its contents.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: &mut [u8]) {}

/// `unit` repeated to fill `out` (whose length is a multiple of it), by
/// doubling copies: memcpy speed for a splat of any element size.
pub fn fill_repeating(out: &mut [u8], unit: &[u8]) {
    if unit.is_empty() || out.len() < unit.len() {
        return;
    }
    out[..unit.len()].copy_from_slice(unit);
    let mut filled = unit.len();
    while filled < out.len() {
        let n = filled.min(out.len() - filled);
        out.copy_within(0..n, filled);
        filled += n;
    }
}

/// Number of elements of a static shape, or `None` on overflow.
pub fn shape_numel(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
}

impl TensorData {
    /// A dense numeric constant; checks the byte length against the shape.
    pub fn from_bytes(
        elem: ElemType,
        shape: Vec<u64>,
        bytes: impl Into<Arc<[u8]>>,
    ) -> Result<TensorData, TensorDataError> {
        let bytes = bytes.into();
        let n = shape_numel(&shape).ok_or_else(|| TensorDataError::TooLarge {
            shape: shape.clone(),
        })?;
        let expected = elem
            .storage_bytes(n)
            .ok_or(TensorDataError::BytesExpected(elem))?;
        if expected != bytes.len() as u64 {
            return Err(TensorDataError::ByteLength {
                elem,
                shape,
                expected,
                got: bytes.len() as u64,
            });
        }
        Ok(TensorData {
            elem,
            shape,
            payload: Payload::Bytes(bytes),
        })
    }

    /// A string constant; checks the count against the shape.
    pub fn from_strings(
        shape: Vec<u64>,
        strings: Vec<Vec<u8>>,
    ) -> Result<TensorData, TensorDataError> {
        let n = shape_numel(&shape).ok_or_else(|| TensorDataError::TooLarge {
            shape: shape.clone(),
        })?;
        if n != strings.len() as u64 {
            return Err(TensorDataError::StringCount {
                shape,
                expected: n,
                got: strings.len() as u64,
            });
        }
        Ok(TensorData {
            elem: ElemType::String,
            shape,
            payload: Payload::Strings(strings.into()),
        })
    }

    /// A constant whose values were elided from text.
    pub fn elided(elem: ElemType, shape: Vec<u64>) -> TensorData {
        TensorData {
            elem,
            shape,
            payload: Payload::Elided,
        }
    }

    pub fn from_f32(shape: Vec<u64>, values: &[f32]) -> Result<TensorData, TensorDataError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorData::from_bytes(ElemType::F32, shape, bytes)
    }

    pub fn from_i64(shape: Vec<u64>, values: &[i64]) -> Result<TensorData, TensorDataError> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        TensorData::from_bytes(ElemType::I64, shape, bytes)
    }

    pub fn numel(&self) -> u64 {
        shape_numel(&self.shape).unwrap_or(u64::MAX)
    }

    pub fn is_elided(&self) -> bool {
        matches!(self.payload, Payload::Elided)
    }

    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// Storage size in bytes (strings: their total length).
    pub fn byte_size(&self) -> u64 {
        match &self.payload {
            Payload::Bytes(b) => b.len() as u64,
            Payload::Strings(s) => s.iter().map(|x| x.len() as u64).sum(),
            Payload::Elided => self.elem.storage_bytes(self.numel()).unwrap_or(0),
        }
    }

    /// The values as i64, for integer and bool constants (shape operands,
    /// axes, pads). `None` for other types or elided data.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        let b = self.bytes()?;
        let v = match self.elem {
            ElemType::I64 => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect(),
            ElemType::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap_or_default()) as i64)
                .collect(),
            ElemType::I16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes(c.try_into().unwrap_or_default()) as i64)
                .collect(),
            ElemType::U64 => b
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()) as i64)
                .collect(),
            ElemType::U32 => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().unwrap_or_default()) as i64)
                .collect(),
            ElemType::U16 => b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes(c.try_into().unwrap_or_default()) as i64)
                .collect(),
            ElemType::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
            ElemType::U8 | ElemType::Bool => b.iter().map(|&x| x as i64).collect(),
            _ => return None,
        };
        Some(v)
    }

    /// The values as f64, for float constants of f32/f64/f16/bf16 and all
    /// integer types.
    pub fn to_f64_vec(&self) -> Option<Vec<f64>> {
        let b = self.bytes()?;
        Some(match self.elem {
            ElemType::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()) as f64)
                .collect(),
            ElemType::F64 => b
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect(),
            ElemType::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            ElemType::BF16 => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            _ => self.to_i64_vec()?.into_iter().map(|x| x as f64).collect(),
        })
    }
}
