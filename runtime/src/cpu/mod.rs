//! The CPU backend's run-time half: the kernel library ([`kernels`]: dense
//! matmul and convolution on the `gemm` crate, pooling), the Cranelift code
//! generator for fusion regions ([`jit`]), data movement ([`movement`]), reductions and broadcasts over any axes ([`reduce`]), and the executable that runs a
//! lowered module ([`exec`]).

/// `fn` items compiled for the widest vector instructions the host has:
/// the body is instantiated three times, under `avx512f,avx512bw,avx2,fma`,
/// under `avx2,fma` and for the crate's SSE2 baseline, and the function
/// picks one at run time (`is_x86_feature_detected!` is a cached load).
/// Hand-written loops (quantization rows, GEMVs, recurrent gates) are
/// written plainly, over fixed-size lanes where it helps, and vectorize
/// under the features; the baseline has no FMA, no 8-to-32-bit widening
/// and no rounding instructions, so they ran scalar there.
macro_rules! simd_fn {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn narrow($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                if $crate::cpu::simd_wide() {
                    // SAFETY: the features are present.
                    return unsafe { wide($($arg),*) };
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the features are present.
                    return unsafe { narrow($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// Whether [`simd_fn`] bodies run their AVX-512 copy (so kernels that size
/// blocks by the registers can match it).
pub(crate) fn simd_wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) mod activation;
pub(crate) mod approx;
pub mod buffers;
pub mod control;
pub mod dynamic;
pub mod einsum;
pub mod exec;
pub mod jit;
pub mod kernels;
pub mod machine;
pub mod movement;
pub mod norm;
pub mod reduce;
pub mod resize;
pub mod rnn;
pub mod roi_align;
pub mod steps;
pub mod view;

pub use exec::{CpuExecutable, Layout, NativeKernel, NativeStep, Step, StepKind};

/// Work units per thread when a kernel splits its work: a few each, so
/// that rayon's work stealing evens out a thread that is slowed down (a
/// busy sibling core, a descheduled vCPU) instead of every step waiting
/// for its slowest of exactly `threads` equal parts.
pub(crate) const UNITS_PER_THREAD: usize = 4;
