//! Equal constants held once. Exports repeat weights (ResNet's light
//! export builds 53 conv filters with `ConstantOfShape`, most of them
//! equal), and folding BatchNormalization into equal filters makes equal
//! results again; each would otherwise be its own buffer until CSE merges
//! the values, by which time the peak memory has been paid. Passes that
//! create constants in bulk intern them here as they are made.

use std::collections::HashMap;
use std::sync::Arc;

use crate::module::{Module, Region, ValueId};
use crate::tensor::{Payload, TensorData};
use crate::types::ElemType;

/// Constants smaller than this are not worth a lookup.
const MIN_BYTES: usize = 4096;
/// Bytes sampled, evenly spaced, for a constant's key.
const SAMPLES: usize = 64;

/// Type, shape and a sample of the bytes: equal constants have equal keys,
/// and unequal ones rarely do (they are then compared in full).
#[derive(Hash, PartialEq, Eq)]
struct Key {
    elem: ElemType,
    shape: Vec<u64>,
    sample: [u8; SAMPLES],
}

fn key(d: &TensorData) -> Option<Key> {
    let Payload::Bytes(b) = &d.payload else {
        return None;
    };
    if b.len() < MIN_BYTES {
        return None;
    }
    let mut sample = [0u8; SAMPLES];
    for (i, s) in sample.iter_mut().enumerate() {
        *s = b[i * (b.len() - 1) / (SAMPLES - 1)];
    }
    Some(Key {
        elem: d.elem,
        shape: d.shape.clone(),
        sample,
    })
}

/// Constants by content. The pool names constants by value id and holds
/// no data itself, so a constant a pass stops using is freed as soon as
/// its value lets go of it.
#[derive(Default)]
pub struct ConstantPool {
    by_key: HashMap<Key, Vec<ValueId>>,
}

impl ConstantPool {
    /// A pool of the module's listed constants (nested regions included).
    pub fn of_module(m: &Module) -> ConstantPool {
        let mut pool = ConstantPool::default();
        fn walk(m: &Module, r: &Region, pool: &mut ConstantPool) {
            for &c in &r.constants {
                if let Some(k) = m.constant(c).and_then(|d| key(d)) {
                    pool.by_key.entry(k).or_default().push(c);
                }
            }
            for n in &r.nodes {
                for (_, sub) in n.regions() {
                    walk(m, sub, pool);
                }
            }
        }
        walk(m, &m.body, &mut pool);
        pool
    }

    /// `d`, or the data of an equal constant of `m` already in the pool
    /// (then `d` is dropped and its memory freed at once).
    fn intern(&self, m: &Module, k: &Key, d: TensorData) -> Arc<TensorData> {
        let equal = self.by_key.get(k).and_then(|ids| {
            ids.iter()
                .filter_map(|&id| m.constant(id))
                .find(|x| x.payload == d.payload)
        });
        match equal {
            Some(x) => x.clone(),
            None => Arc::new(d),
        }
    }

    /// Make `v` the constant `d`, sharing an equal constant's data.
    pub fn set_constant(&mut self, m: &mut Module, v: ValueId, d: TensorData) {
        match key(&d) {
            Some(k) => {
                let data = self.intern(m, &k, d);
                m.set_constant(v, Some(data));
                self.by_key.entry(k).or_default().push(v);
            }
            None => m.set_constant(v, Some(Arc::new(d))),
        }
    }

    /// A new constant value `d` (not yet listed in any region), sharing an
    /// equal constant's data.
    pub fn add_constant(&mut self, m: &mut Module, hint: &str, d: TensorData) -> ValueId {
        match key(&d) {
            Some(k) => {
                let data = self.intern(m, &k, d);
                let v = m.add_constant_unique(hint, data);
                self.by_key.entry(k).or_default().push(v);
                v
            }
            None => m.add_constant_unique(hint, Arc::new(d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(v: f32, n: usize) -> TensorData {
        let bytes: Vec<u8> = (0..n).flat_map(|_| v.to_le_bytes()).collect();
        TensorData::from_bytes(ElemType::F32, vec![n as u64], bytes).unwrap()
    }

    fn data(m: &Module, v: ValueId) -> Arc<TensorData> {
        m.constant(v).unwrap().clone()
    }

    #[test]
    fn equal_constants_share_one_buffer() {
        let mut m = Module::new("t");
        let mut pool = ConstantPool::of_module(&m);
        let a = pool.add_constant(&mut m, "a", filled(1.0, 4096));
        let b = pool.add_constant(&mut m, "b", filled(1.0, 4096));
        let c = pool.add_constant(&mut m, "c", filled(2.0, 4096));
        assert!(Arc::ptr_eq(&data(&m, a), &data(&m, b)));
        assert!(!Arc::ptr_eq(&data(&m, a), &data(&m, c)));
        // Same samples, different bytes elsewhere: compared in full.
        let mut d = filled(1.0, 4096);
        let mut bytes = d.bytes().unwrap().to_vec();
        bytes[5] ^= 1;
        d.payload = Payload::Bytes(bytes.into());
        let d = pool.add_constant(&mut m, "d", d);
        assert!(!Arc::ptr_eq(&data(&m, a), &data(&m, d)));
        // Small constants are not looked up.
        let s1 = pool.add_constant(&mut m, "s1", filled(1.0, 4));
        let s2 = pool.add_constant(&mut m, "s2", filled(1.0, 4));
        assert!(!Arc::ptr_eq(&data(&m, s1), &data(&m, s2)));
        // A value set later joins too.
        let e = m.add_value_unique("e", m.ty(a).clone());
        pool.set_constant(&mut m, e, filled(2.0, 4096));
        assert!(Arc::ptr_eq(&data(&m, c), &data(&m, e)));
    }
}
