//! Kernels: movement ops (being written).

use super::KernelFn;

pub fn lookup(op: &str) -> Option<KernelFn> {
    let _ = op;
    None
}
