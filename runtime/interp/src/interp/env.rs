//! [`Env`]: the values of one run by `ValueId`. Its own module because
//! the interpreter fills it and the kernels hand it on to the regions they
//! run, and neither should have to name the other to do so.

use kiln_ir::ValueId;

use crate::value::Value;

/// Values by `ValueId`.
pub struct Env {
    values: Vec<Option<Value>>,
}

impl Env {
    /// An empty environment for a module with `n` values.
    pub fn new(n: usize) -> Env {
        Env {
            values: vec![None; n],
        }
    }

    /// Take a value out (the last use of a buffer frees it).
    pub fn take(&mut self, id: ValueId) -> Option<Value> {
        self.values.get_mut(id.index()).and_then(|v| v.take())
    }

    pub fn get(&self, id: ValueId) -> Option<&Value> {
        self.values.get(id.index()).and_then(|v| v.as_ref())
    }

    pub fn set(&mut self, id: ValueId, v: Value) {
        if let Some(slot) = self.values.get_mut(id.index()) {
            *slot = Some(v);
        }
    }
}
