//! The resource limits ([`kiln_ir::Limits`]) of the run in progress on
//! this thread. The interpreter sets them for the extent of each run
//! (`Interpreter::with_limits`); kernels check every allocation whose size
//! comes from data (ConstantOfShape's shape, Expand, Tile, Range, a
//! broadcast) and every loop iteration against them before doing the
//! work. Thread-local, so the shape helpers that every kernel family
//! shares need no extra argument: a run, and its regions, stay on the
//! thread that started it.

use std::cell::Cell;

use kiln_ir::{ElemType, LimitError, Limits};

thread_local! {
    static CURRENT: Cell<Limits> = Cell::new(Limits::default());
}

/// Restores the limits that were current when dropped (also on unwind).
struct Restore(Limits);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// Run `f` with `limits` current on this thread.
pub fn scoped<R>(limits: Limits, f: impl FnOnce() -> R) -> R {
    let _restore = Restore(CURRENT.with(|c| c.replace(limits)));
    f()
}

/// The limits current on this thread.
pub fn current() -> Limits {
    CURRENT.with(Cell::get)
}

/// The element count of a result of `elem` and `shape` about to be
/// allocated, checked against the current limits.
pub fn alloc(
    what: impl FnOnce() -> String,
    elem: ElemType,
    shape: &[usize],
) -> Result<usize, LimitError> {
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    current().tensor(what, elem, &dims)?;
    // Within the limit, so it fits a usize.
    Ok(shape.iter().product())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_scoped_to_the_run() {
        let small = Limits {
            tensor_bytes: 1024,
            ..Limits::default()
        };
        assert!(alloc(|| "x".into(), ElemType::F32, &[1024]).is_ok());
        scoped(small, || {
            let e = alloc(|| "x".into(), ElemType::F32, &[1024]).unwrap_err();
            assert!(e.to_string().contains("4096 bytes"), "{e}");
        });
        assert!(alloc(|| "x".into(), ElemType::F32, &[1024]).is_ok());
    }
}
