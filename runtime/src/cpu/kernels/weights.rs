//! Constant weights as kernel plans hold them: one buffer per constant,
//! shared by every plan that reads it, with each packed layout made once
//! and shared too. Exports reuse weights (tied embeddings, ResNet's light
//! export with equal filters in many convs); a copy, or a packing, per
//! reader held ResNet-50-light's 46 MB of weights as 100 MB.

use std::sync::{Arc, Mutex};

use super::packed::PackedB;

/// Where the values live.
#[derive(Clone, Debug)]
enum Storage {
    Floats(Arc<[f32]>),
    /// A constant's little-endian bytes, read in place (checked: aligned
    /// for f32, a whole number of them, on a little-endian host).
    Bytes(Arc<[u8]>),
}

/// A packing made: its view (`k`, `n`, row and column strides) and panels.
type Packing = ([usize; 4], Arc<PackedB>);

/// A constant f32 tensor's values, shared, with the packings made so far.
#[derive(Clone, Debug)]
pub struct ConstWeights {
    data: Storage,
    packings: Arc<Mutex<Vec<Packing>>>,
}

impl ConstWeights {
    pub fn new(data: Arc<[f32]>) -> ConstWeights {
        ConstWeights {
            data: Storage::Floats(data),
            packings: Arc::default(),
        }
    }

    /// The f32 values a constant's little-endian bytes hold, sharing the
    /// bytes where they can be read in place (no copy: plans and the IR
    /// hold one buffer), converted otherwise.
    pub fn from_le_bytes(bytes: Arc<[u8]>) -> ConstWeights {
        let in_place = cfg!(target_endian = "little")
            && bytes.len().is_multiple_of(4)
            && (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<f32>());
        if in_place {
            return ConstWeights {
                data: Storage::Bytes(bytes),
                packings: Arc::default(),
            };
        }
        ConstWeights::new(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    }

    pub fn from_slice(w: &[f32]) -> ConstWeights {
        ConstWeights::new(w.into())
    }

    /// The `k x n` matrix `w[i·rs + j·cs]` in panels, packed by the first
    /// plan that asks and shared with the rest.
    pub(crate) fn packed(&self, k: usize, n: usize, rs: usize, cs: usize) -> Arc<PackedB> {
        let key = [k, n, rs, cs];
        // A poisoned lock only means another plan panicked while packing:
        // the list itself is still whole.
        let mut made = self.packings.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, p)) = made.iter().find(|(k2, _)| *k2 == key) {
            return p.clone();
        }
        let p = Arc::new(PackedB::new(k, n, self, rs, cs));
        made.push((key, p.clone()));
        p
    }
}

impl std::ops::Deref for ConstWeights {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        match &self.data {
            Storage::Floats(f) => f,
            // SAFETY: `from_le_bytes` stored bytes only where they are
            // aligned for f32, a whole number of them, and in the host's
            // byte order; every bit pattern is a valid f32; the Arc keeps
            // them alive and unchanged (shared, so never written) for the
            // borrow.
            Storage::Bytes(b) => unsafe {
                std::slice::from_raw_parts(b.as_ptr().cast::<f32>(), b.len() / 4)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_packing_per_view() {
        let w = ConstWeights::from_slice(&(0..64).map(|i| i as f32).collect::<Vec<_>>());
        let copy = w.clone();
        let a = w.packed(8, 8, 8, 1);
        let b = copy.packed(8, 8, 8, 1);
        assert!(Arc::ptr_eq(&a, &b));
        let t = w.packed(8, 8, 1, 8);
        assert!(!Arc::ptr_eq(&a, &t));
    }

    #[test]
    fn bytes_read_in_place_or_converted() {
        let vals = [1.5f32, -2.0, 3.25, 0.0];
        let bytes: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let w = ConstWeights::from_le_bytes(bytes.clone().into());
        assert_eq!(&w[..], &vals);
        // A misaligned view is converted, not read in place.
        let mut shifted = vec![0u8];
        shifted.extend(&bytes);
        let arc: Arc<[u8]> = shifted.into();
        let odd: Arc<[u8]> = arc[1..].into();
        assert_eq!(&ConstWeights::from_le_bytes(odd)[..], &vals);
    }
}
