//! Recycled f32 buffers for what lives outside the arena: kernel scratch
//! (a fusion anchor's result before its loop, a split reduction's
//! producers) and results the memory plan does not place (values
//! interpreted steps touch, graph outputs). A fresh zeroed allocation
//! costs a memset (or page faults) over the whole buffer; the executable
//! hands each freed f32 tensor's buffer back here and scratch takes one of
//! a fitting size, so a steady-state run reuses the memory the previous
//! one used.
//!
//! A recycled buffer holds stale values: only kernels that write every
//! element of their result may take one ([`output`]'s contract).
//! Buffers are kept per thread (an executable runs its steps on one pool
//! thread), the most recent 16 of them within 16 MB.

use std::cell::RefCell;
use std::sync::Arc;

use crate::{Data, Value};

/// Buffers kept per thread.
const MAX_KEPT: usize = 16;
/// Bytes kept per thread: reuse must not raise a run's peak memory much
/// (a kept buffer that no later result fits is memory the allocator could
/// have handed out again). The oldest go first.
const MAX_KEPT_BYTES: usize = 16 << 20;

thread_local! {
    static FREE: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of `n` f32s with unspecified contents (stale values from an
/// earlier result, or zeros): for a kernel that overwrites all of it.
/// Takes the smallest kept buffer that fits without wasting more than its
/// own size, else allocates.
pub fn output(n: usize) -> Vec<f32> {
    let found = FREE.with(|f| {
        let mut f = f.borrow_mut();
        let best = f
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= n && b.capacity() <= 2 * n.max(1024))
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        best.map(|i| f.swap_remove(i))
    });
    match found {
        Some(mut b) => {
            if b.len() >= n {
                b.truncate(n);
            } else {
                b.resize(n, 0.0);
            }
            b
        }
        None => vec![0.0; n],
    }
}

/// Keeps the buffer of `v` for [`output`] if `v` is an f32 tensor that no
/// one else holds; otherwise just drops it.
pub fn recycle(v: Value) {
    let Value::Tensor(t) = v else { return };
    let Ok(t) = Arc::try_unwrap(t) else { return };
    let Data::F32(b) = t.data else { return };
    give_back(b);
}

/// Keeps a scratch buffer for [`output`] (if it is worth keeping).
pub fn give_back(b: Vec<f32>) {
    if b.capacity() < 1024 {
        return;
    }
    if b.capacity() * 4 > MAX_KEPT_BYTES {
        return;
    }
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        f.push(b);
        while f.len() > MAX_KEPT
            || f.iter().map(|x| x.capacity() * 4).sum::<usize>() > MAX_KEPT_BYTES
        {
            f.remove(0);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    #[test]
    fn reuses_a_fitting_buffer_and_never_a_shared_one() {
        let t = Tensor::new(vec![4096], Data::F32(vec![7.0; 4096])).unwrap();
        let p = match &t.data {
            Data::F32(v) => v.as_ptr(),
            _ => unreachable!(),
        };
        recycle(Value::tensor(t));
        // Too small a request would waste it; a fitting one gets it back.
        let small = output(100);
        assert_ne!(small.as_ptr(), p);
        let b = output(3000);
        assert_eq!((b.as_ptr(), b.len()), (p, 3000));
        // A tensor someone else still holds is not taken.
        let shared = Value::tensor(Tensor::new(vec![4096], Data::F32(vec![1.0; 4096])).unwrap());
        let keep = shared.clone();
        recycle(shared);
        assert!(output(4096).iter().all(|&x| x == 0.0));
        drop(keep);
    }
}
