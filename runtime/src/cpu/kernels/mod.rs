//! Hand-written kernels the JIT-compiled code calls: dense matmul and convolution (the `gemm` crate), pooling.
//!
//! Each op is a plan built once from static shapes (validating them and
//! choosing a strategy) and run many times; plans are immutable, `Send` and
//! `Sync`, and may run from several threads at once. `threads` tells a run
//! how many workers of the current rayon pool it may use.

mod conv;
mod matmul;
mod pool;

pub use conv::{ConvAttrs, ConvPlan};
pub use matmul::{GemmPlan, MatMulPlan};
pub use pool::{PoolAttrs, PoolKind, PoolPlan};

#[cfg(test)]
mod tests {
    use super::*;

    /// Plans are shared by concurrent runs.
    #[test]
    fn plans_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<MatMulPlan>();
        check::<GemmPlan>();
        check::<ConvPlan>();
        check::<PoolPlan>();
    }
}

#[cfg(test)]
mod bench {
    //! Throughput check on ResNet-50 / transformer shapes; run with
    //! `cargo test --release -p kiln-runtime cpu::kernels::bench -- --ignored --nocapture`.
    use std::time::Instant;

    use super::matmul::tests::lcg;
    use super::*;

    /// Best-of GFLOP/s of `f` (each call does `flops`) on a `threads` pool.
    fn gflops(flops: f64, threads: usize, f: &(dyn Fn(usize) + Sync)) -> f64 {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            f(threads); // warm-up: scratch, page faults, gemm's caches
            let mut best = f64::INFINITY;
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < 1.0 {
                let t = Instant::now();
                f(threads);
                best = best.min(t.elapsed().as_secs_f64());
            }
            flops / best / 1e9
        })
    }

    fn conv(name: &str, xs: &[usize], ws: &[usize], pads: usize, group: usize) {
        let sd = xs.len() - 2;
        let attrs = ConvAttrs {
            strides: vec![1; sd],
            dilations: vec![1; sd],
            pads: vec![pads; 2 * sd],
            group,
        };
        let x = lcg(1, xs.iter().product());
        let w = lcg(2, ws.iter().product());
        let b = lcg(3, ws[0]);
        let plan = ConvPlan::new(xs, ws, true, &attrs, Some(&w)).unwrap();
        let mut out = vec![0.0; plan.out_shape().iter().product()];
        let out = std::sync::Mutex::new(&mut out[..]);
        for t in [1, 2] {
            let g = gflops(plan.flops(), t, &|t| {
                plan.run(&x, &[], Some(&b), &mut out.lock().unwrap(), t)
            });
            println!("{name:40} threads {t}: {g:7.1} GFLOP/s");
        }
    }

    #[test]
    #[ignore]
    fn throughput() {
        conv(
            "conv 3x3 x[1,64,56,56] w[64,64,3,3] p1",
            &[1, 64, 56, 56],
            &[64, 64, 3, 3],
            1,
            1,
        );
        conv(
            "conv 1x1 x[1,256,56,56] w[64,256,1,1]",
            &[1, 256, 56, 56],
            &[64, 256, 1, 1],
            0,
            1,
        );
        conv(
            "depthwise 3x3 x[1,144,56,56] p1",
            &[1, 144, 56, 56],
            &[144, 1, 3, 3],
            1,
            144,
        );
        for (name, m) in [
            ("matmul [128,384]x[384,1536]", 128),
            ("matmul [1,384]x[384,1536]", 1),
        ] {
            let a = lcg(4, m * 384);
            let b = lcg(5, 384 * 1536);
            let plan = MatMulPlan::new(&[m, 384], &[384, 1536], Some(&b)).unwrap();
            let mut out = vec![0.0; m * 1536];
            let out = std::sync::Mutex::new(&mut out[..]);
            for t in [1, 2] {
                let g = gflops(plan.flops(), t, &|t| {
                    plan.run(&a, &[], &mut out.lock().unwrap(), t)
                });
                println!("{name:40} threads {t}: {g:7.1} GFLOP/s");
            }
        }
    }
}
