//! [`Env`]: the values of one run by `ValueId`. Its own module because
//! the interpreter fills it and the kernels hand it on to the regions they
//! run, and neither should have to name the other to do so.

use kiln_ir::ValueId;

use crate::value::Value;

/// Values by `ValueId`, and the bytes the run's steps have allocated for
/// those held now (for [`kiln_ir::Limits::memory_bytes`]).
pub struct Env {
    values: Vec<Option<Value>>,
    /// Per value: the bytes counted when a step stored it.
    counted: Vec<u64>,
    bytes: u64,
}

impl Env {
    /// An empty environment for a module with `n` values.
    pub fn new(n: usize) -> Env {
        Env {
            values: vec![None; n],
            counted: vec![0; n],
            bytes: 0,
        }
    }

    /// Take a value out (the last use of a buffer frees it).
    pub fn take(&mut self, id: ValueId) -> Option<Value> {
        if let Some(c) = self.counted.get_mut(id.index()) {
            self.bytes -= *c;
            *c = 0;
        }
        self.values.get_mut(id.index()).and_then(|v| v.take())
    }

    pub fn get(&self, id: ValueId) -> Option<&Value> {
        self.values.get(id.index()).and_then(|v| v.as_ref())
    }

    /// Store a value that is not a step's result (an input, a constant,
    /// a region argument): not counted.
    pub fn set(&mut self, id: ValueId, v: Value) {
        self.store(id, v, 0);
    }

    /// Store a step's result, counting what it allocated; returns the
    /// bytes the values held now were allocated with. A loop body's
    /// results replace the previous iteration's, which stop counting.
    pub fn set_result(&mut self, id: ValueId, v: Value) -> u64 {
        let fresh = v.fresh_bytes();
        self.store(id, v, fresh);
        self.bytes
    }

    fn store(&mut self, id: ValueId, v: Value, bytes: u64) {
        let i = id.index();
        if let (Some(slot), Some(c)) = (self.values.get_mut(i), self.counted.get_mut(i)) {
            *slot = Some(v);
            self.bytes = self.bytes - *c + bytes;
            *c = bytes;
        }
    }
}
