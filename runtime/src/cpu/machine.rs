//! What this machine can do, measured rather than assumed: the FMA peak of
//! one core with 256-bit and with 512-bit vectors, and the memory
//! bandwidth a streaming copy reaches. Sessions land on different CPUs:
//! Zen 4 executes a 512-bit FMA as two 256-bit halves, Zen 5 at full width
//! (twice the throughput), and cpuid reports AVX-512 on both; only timing
//! the instructions tells them apart. `kiln profile` states every
//! kernel's speed against these figures.
//!
//! Each measurement is short (tens of milliseconds) and taken once per
//! process.

use std::sync::OnceLock;
use std::time::Instant;

/// The measured figures.
#[derive(Clone, Debug)]
pub struct Machine {
    /// The CPU's model name (`/proc/cpuinfo`), or `unknown`.
    pub model: String,
    /// FMA peak of one core with 256-bit vectors (AVX2), GFLOP/s; 0 where
    /// the CPU has no AVX2/FMA.
    pub fma256_gflops: f64,
    /// The same with 512-bit vectors, where the CPU has AVX-512.
    pub fma512_gflops: Option<f64>,
    /// A streaming copy through memory (64 MiB each way) on one core,
    /// GB/s counting bytes read and written.
    pub bandwidth_gbs: f64,
}

impl Machine {
    /// The measured figures, measured on first use.
    pub fn get() -> &'static Machine {
        static MACHINE: OnceLock<Machine> = OnceLock::new();
        MACHINE.get_or_init(measure)
    }

    /// The best one-core FMA peak, GFLOP/s.
    pub fn peak_gflops(&self) -> f64 {
        self.fma512_gflops.unwrap_or(0.0).max(self.fma256_gflops)
    }

    /// Whether 512-bit FMAs run at full width: twice the 256-bit rate
    /// (within a margin for noise). `None` without AVX-512.
    pub fn avx512_full_width(&self) -> Option<bool> {
        self.fma512_gflops.map(|w| w > 1.5 * self.fma256_gflops)
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        let width = match self.avx512_full_width() {
            Some(true) => ", 512-bit FMA at full width",
            Some(false) => ", 512-bit FMA as two 256-bit halves",
            None => "",
        };
        let w512 = self
            .fma512_gflops
            .map(|g| format!(", 512-bit {g:.0}"))
            .unwrap_or_default();
        format!(
            "{}: FMA peak per core {:.0} GFLOP/s (256-bit {:.0}{w512}){width}; memory {:.1} GB/s per core",
            self.model,
            self.peak_gflops(),
            self.fma256_gflops,
            self.bandwidth_gbs
        )
    }
}

fn measure() -> Machine {
    Machine {
        model: model_name(),
        fma256_gflops: best_of(5, fma256),
        fma512_gflops: has_avx512().then(|| best_of(5, fma512)),
        bandwidth_gbs: bandwidth(),
    }
}

fn best_of(n: usize, f: fn() -> f64) -> f64 {
    (0..n).map(|_| f()).fold(0.0, f64::max)
}

fn model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// FMA iterations per measurement: 12 independent chains (enough to
/// cover the FMA latency of 4 cycles on 2 pipes), about 10 ms.
const FMA_ITERS: usize = 200_000;
const CHAINS: usize = 12;

/// GFLOP/s of 256-bit FMAs on this core (0 without AVX2/FMA).
fn fma256() -> f64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        let start = Instant::now();
        // SAFETY: AVX2 and FMA detected above.
        let sink = unsafe { fma256_loop(FMA_ITERS) };
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        return (FMA_ITERS * CHAINS * 8 * 2) as f64 / secs / 1e9;
    }
    0.0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma256_loop(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    let mut out = [0f32; 8];
    // SAFETY: `out` holds 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    out.iter().sum()
}

/// GFLOP/s of 512-bit FMAs on this core.
fn fma512() -> f64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        let start = Instant::now();
        // SAFETY: AVX-512F detected above.
        let sink = unsafe { fma512_loop(FMA_ITERS) };
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        return (FMA_ITERS * CHAINS * 16 * 2) as f64 / secs / 1e9;
    }
    0.0
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma512_loop(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    _mm512_reduce_add_ps(s)
}

/// GB/s (read plus written) of copying 64 MiB, best of three, after a
/// first copy that faults the pages in.
fn bandwidth() -> f64 {
    const N: usize = 16 << 20;
    let src = vec![1.0f32; N];
    let mut dst = vec![0.0f32; N];
    dst.copy_from_slice(&src);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let start = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        let secs = start.elapsed().as_secs_f64();
        std::hint::black_box(&dst);
        best = best.max((2 * N * 4) as f64 / secs / 1e9);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_plausible() {
        let m = Machine::get();
        assert!(m.bandwidth_gbs > 0.1 && m.bandwidth_gbs < 10_000.0, "{m:?}");
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // A core does at least a few and at most a few hundred.
            assert!(m.fma256_gflops > 2.0 && m.fma256_gflops < 1000.0, "{m:?}");
        }
        assert!(m.describe().contains("GFLOP/s"));
    }
}
