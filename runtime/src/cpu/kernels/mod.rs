//! Hand-written kernels the JIT-compiled code calls: dense matmul, convolution and transposed convolution, pooling.
//!
//! Each op is a plan built once from static shapes (validating them and
//! choosing a strategy) and run many times; plans are immutable, `Send` and
//! `Sync`, and may run from several threads at once. `threads` tells a run
//! how many workers of the current rayon pool it may use.

mod common;
pub(crate) use common::transpose_any;
mod conv;
mod conv_transpose;
pub mod dequant;
mod implicit;
pub(crate) mod matmul;
pub(crate) mod packed;
mod pool;
pub mod qconv;
pub mod qgemm;
mod rows;
mod smallk;
mod weights;

pub use common::Epilogue;
pub(crate) use common::{for_each_unit, parallelism};
pub use conv::{ConvAttrs, ConvEpilogues, ConvPlan};
pub use conv_transpose::{ConvTransposeAttrs, ConvTransposePlan};
pub use dequant::{DequantMatMulPlan, QuantB, QuantBits, QuantGrid};
pub use matmul::{GemmPlan, MatMulPlan};
pub use packed::FoldedStore;
pub use pool::{PoolAttrs, PoolKind, PoolPlan};
pub use weights::ConstWeights;

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
        check::<DequantMatMulPlan>();
    }
}

#[cfg(test)]
mod bench {
    //! Throughput check on ResNet-50 / transformer shapes; run with
    //! `cargo test --release -p kiln-runtime cpu::kernels::bench -- --ignored --nocapture`.
    use std::time::Instant;

    use super::common::testing::lcg;
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
        conv_s(name, xs, ws, pads, group, 1);
    }

    fn conv_s(name: &str, xs: &[usize], ws: &[usize], pads: usize, group: usize, stride: usize) {
        // `KILN_CONV=text` runs only the shapes whose name holds it (to
        // profile one).
        let only = std::env::var("KILN_CONV").unwrap_or_default();
        if !name.contains(&only) {
            return;
        }
        let sd = xs.len() - 2;
        let attrs = ConvAttrs {
            strides: vec![stride; sd],
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
        for (path, plan) in [
            ("", plan.clone()),
            (" (im2col + small-k)", plan.clone().without_shifted()),
            (" (im2col + gemm crate)", plan.without_small_k()),
        ] {
            for t in [1, 2] {
                let g = gflops(plan.flops(), t, &|t| {
                    plan.run(&x, &w, Some(&b), &mut out.lock().unwrap(), t)
                });
                println!("{name:40} threads {t}: {g:7.1} GFLOP/s{path}");
            }
        }
    }

    /// Pooling time in microseconds (best of), and the input's GB/s.
    fn pool(name: &str, kind: PoolKind, xs: &[usize], attrs: &PoolAttrs) {
        let x = lcg(6, xs.iter().product());
        let plan = PoolPlan::new(kind, xs, attrs).unwrap();
        let mut out = vec![0.0; plan.out_shape().iter().product()];
        let out = std::sync::Mutex::new(&mut out[..]);
        for t in [1, 2] {
            // "flops" = input bytes, so the figure reads as GB/s.
            let bytes = 4.0 * x.len() as f64;
            let g = gflops(bytes, t, &|t| plan.run(&x, &mut out.lock().unwrap(), t));
            println!(
                "{name:40} threads {t}: {:8.1} us {g:6.1} GB/s",
                bytes / g / 1e3
            );
        }
    }

    #[test]
    #[ignore]
    fn small_k() {
        conv_s(
            "squeezenet conv1 x[1,3,224,224] w[64,3,3,3] s2",
            &[1, 3, 224, 224],
            &[64, 3, 3, 3],
            0,
            1,
            2,
        );
        conv_s(
            "mobilenet conv1 x[1,3,224,224] w[16,3,3,3] s2 p1",
            &[1, 3, 224, 224],
            &[16, 3, 3, 3],
            1,
            1,
            2,
        );
        conv_s(
            "resnet conv1 x[1,3,224,224] w[64,3,7,7] s2",
            &[1, 3, 224, 224],
            &[64, 3, 7, 7],
            3,
            1,
            2,
        );
        conv(
            "1x1 16->64 x[1,16,55,55]",
            &[1, 16, 55, 55],
            &[64, 16, 1, 1],
            0,
            1,
        );
        conv(
            "1x1 32->128 x[1,32,27,27]",
            &[1, 32, 27, 27],
            &[128, 32, 1, 1],
            0,
            1,
        );
        conv(
            "1x1 64->16 x[1,64,55,55]",
            &[1, 64, 55, 55],
            &[16, 64, 1, 1],
            0,
            1,
        );
        conv(
            "1x1 128->32 x[1,128,27,27]",
            &[1, 128, 27, 27],
            &[32, 128, 1, 1],
            0,
            1,
        );
        conv(
            "3x3 16->64 x[1,16,55,55] p1",
            &[1, 16, 55, 55],
            &[64, 16, 3, 3],
            1,
            1,
        );
        conv(
            "3x3 32->128 x[1,32,27,27] p1",
            &[1, 32, 27, 27],
            &[128, 32, 3, 3],
            1,
            1,
        );
        conv(
            "1x1 256->64 x[1,256,13,13]",
            &[1, 256, 13, 13],
            &[64, 256, 1, 1],
            0,
            1,
        );
        conv(
            "1x1 256->64 x[1,256,56,56]",
            &[1, 256, 56, 56],
            &[64, 256, 1, 1],
            0,
            1,
        );
        conv(
            "3x3 48->192 x[1,48,13,13] p1",
            &[1, 48, 13, 13],
            &[192, 48, 3, 3],
            1,
            1,
        );
        conv(
            "1x1 512->128 x[1,512,28,28]",
            &[1, 512, 28, 28],
            &[128, 512, 1, 1],
            0,
            1,
        );
        conv(
            "1x1 512->1000 x[1,512,13,13]",
            &[1, 512, 13, 13],
            &[1000, 512, 1, 1],
            0,
            1,
        );
        conv(
            "3x3 64->64 x[2,64,56,56] p1",
            &[2, 64, 56, 56],
            &[64, 64, 3, 3],
            1,
            1,
        );
        conv(
            "3x3 256->256 x[2,256,14,14] p1",
            &[2, 256, 14, 14],
            &[256, 256, 3, 3],
            1,
            1,
        );
        conv(
            "3x3 64->64 x[1,64,56,56] p1",
            &[1, 64, 56, 56],
            &[64, 64, 3, 3],
            1,
            1,
        );
        conv(
            "3x3 128->128 x[1,128,28,28] p1",
            &[1, 128, 28, 28],
            &[128, 128, 3, 3],
            1,
            1,
        );
        conv(
            "3x3 256->256 x[1,256,14,14] p1",
            &[1, 256, 14, 14],
            &[256, 256, 3, 3],
            1,
            1,
        );
        conv(
            "3x3 512->512 x[1,512,7,7] p1",
            &[1, 512, 7, 7],
            &[512, 512, 3, 3],
            1,
            1,
        );
        conv(
            "1x1 1024->2048 x[1,1024,7,7]",
            &[1, 1024, 7, 7],
            &[2048, 1024, 1, 1],
            0,
            1,
        );
    }

    /// MobileNetV2's pointwise convs: short reductions on big maps, and
    /// wide ones on 14x14 and 7x7 maps.
    #[test]
    #[ignore]
    fn mobile_pointwise() {
        for (c, hw, m) in [
            (16, 112, 96),
            (32, 112, 16),
            (24, 56, 144),
            (96, 14, 576),
            (576, 14, 96),
            (160, 7, 960),
            (960, 7, 320),
            (320, 7, 1280),
        ] {
            conv(
                &format!("pointwise {c}->{m} at {hw}x{hw}"),
                &[1, c, hw, hw],
                &[m, c, 1, 1],
                0,
                1,
            );
        }
    }

    /// Depthwise convs of mobile nets (MobileNetV3-Small's shapes): 3x3
    /// and 5x5, stride 1 and 2, from 112x112 down to 7x7.
    #[test]
    #[ignore]
    fn mobile_depthwise() {
        for (c, hw, k, s) in [
            (16, 112, 3, 2),
            (72, 56, 3, 2),
            (16, 56, 3, 2),
            (88, 28, 3, 1),
            (96, 28, 5, 2),
            (240, 14, 5, 1),
            (576, 7, 5, 1),
            (144, 56, 3, 1),
            (32, 112, 3, 1),
        ] {
            let name = format!("depthwise {k}x{k} s{s} {c} ch at {hw}x{hw}");
            if !name.contains(&std::env::var("KILN_CONV").unwrap_or_default()) {
                continue;
            }
            let attrs = ConvAttrs {
                strides: vec![s; 2],
                dilations: vec![1; 2],
                pads: vec![k / 2; 4],
                group: c,
            };
            let (xs, ws) = ([1, c, hw, hw], [c, 1, k, k]);
            let x = lcg(1, xs.iter().product());
            let w = lcg(2, ws.iter().product());
            let b = lcg(3, c);
            let plan = ConvPlan::new(&xs, &ws, true, &attrs, Some(&w)).unwrap();
            let mut out = vec![0.0; plan.out_shape().iter().product()];
            let out = std::sync::Mutex::new(&mut out[..]);
            for t in [1, 2] {
                let g = gflops(plan.flops(), t, &|t| {
                    plan.run(&x, &w, Some(&b), &mut out.lock().unwrap(), t)
                });
                let us = plan.flops() / g / 1e3;
                println!("{name:40} threads {t}: {g:7.1} GFLOP/s {us:7.1} us");
            }
        }
    }

    #[test]
    #[ignore]
    fn small_kernels() {
        conv(
            "depthwise 5x5 x[6,200,3,12] p2",
            &[6, 200, 3, 12],
            &[200, 1, 5, 5],
            2,
            200,
        );
        conv(
            "depthwise 5x5 x[6,88,6,24] p2",
            &[6, 88, 6, 24],
            &[88, 1, 5, 5],
            2,
            88,
        );
        conv(
            "depthwise 3x3 x[1,144,56,56] p1",
            &[1, 144, 56, 56],
            &[144, 1, 3, 3],
            1,
            144,
        );
        conv_s(
            "depthwise 3x3 s2 x[1,72,56,56] p1",
            &[1, 72, 56, 56],
            &[72, 1, 3, 3],
            1,
            72,
            2,
        );
        conv_s(
            "depthwise 3x3 s2 x[1,144,56,56] p1",
            &[1, 144, 56, 56],
            &[144, 1, 3, 3],
            1,
            144,
            2,
        );
        conv_s(
            "first conv x[6,3,48,192] w[8,3,3,3] s2",
            &[6, 3, 48, 192],
            &[8, 3, 3, 3],
            1,
            1,
            2,
        );
        conv_s(
            "first conv x[1,3,224,224] w[64,3,7,7] s2",
            &[1, 3, 224, 224],
            &[64, 3, 7, 7],
            3,
            1,
            2,
        );
        let max3 = PoolAttrs {
            kernel: vec![3, 3],
            strides: vec![2, 2],
            ..Default::default()
        };
        pool(
            "maxpool 3x3 s2 x[1,96,109,109]",
            PoolKind::Max,
            &[1, 96, 109, 109],
            &max3,
        );
        let max2 = PoolAttrs {
            kernel: vec![2, 2],
            strides: vec![2, 2],
            ..Default::default()
        };
        pool(
            "maxpool 2x2 s2 x[6,64,24,96]",
            PoolKind::Max,
            &[6, 64, 24, 96],
            &max2,
        );
        let avg3 = PoolAttrs {
            kernel: vec![3, 3],
            strides: vec![1, 1],
            pads: vec![1; 4],
            ..Default::default()
        };
        pool(
            "avgpool 3x3 s1 p1 x[1,64,56,56]",
            PoolKind::Average {
                count_include_pad: false,
            },
            &[1, 64, 56, 56],
            &avg3,
        );
        pool(
            "globalavg x[1,1000,13,13]",
            PoolKind::GlobalAverage,
            &[1, 1000, 13, 13],
            &max2,
        );
        pool(
            "globalavg x[1,2048,7,7]",
            PoolKind::GlobalAverage,
            &[1, 2048, 7, 7],
            &max2,
        );
    }

    /// Weight-only products: f32 weights against 8- and 4-bit ones (the
    /// GB/s are of the weights as stored), batch 1 (a GEMV, bound by
    /// memory) and 128 rows.
    #[test]
    #[ignore]
    fn dequant_throughput() {
        for (m, k, n) in [
            (1, 4096, 4096),
            (1, 1536, 384),
            (128, 384, 1536),
            (128, 4096, 4096),
        ] {
            let a = lcg(4, m * k);
            let b = lcg(5, k * n);
            let mut out = vec![0.0; m * n];
            let out = std::sync::Mutex::new(&mut out[..]);
            let f32_plan = MatMulPlan::new(&[m, k], &[k, n], Some(&b)).unwrap();
            for t in [1, 2] {
                let g = gflops(f32_plan.flops(), t, &|t| {
                    f32_plan.run(&a, &b, &mut out.lock().unwrap(), t)
                });
                let gbs = g * 1e9 / f32_plan.flops() * (4 * k * n) as f64 / 1e9;
                println!(
                    "[{m},{k}]x[{k},{n}] f32          threads {t}: {g:7.1} GFLOP/s {gbs:6.1} GB/s"
                );
            }
            for (bits, group) in [(QuantBits::I8, k), (QuantBits::U4, 32)] {
                let groups = k.div_ceil(group);
                let q = QuantB::new(
                    k,
                    n,
                    bits,
                    |i| (i % 7) as i32,
                    &vec![0.01; groups * n],
                    &vec![3; groups * n],
                    QuantGrid {
                        group,
                        per_column: true,
                    },
                )
                .unwrap();
                let bytes = q.bytes();
                let plan = DequantMatMulPlan::new(&[m, k], q).unwrap();
                for t in [1, 2] {
                    let g = gflops(plan.flops(), t, &|t| {
                        plan.run(&a, &mut out.lock().unwrap(), t, None)
                    });
                    let gbs = g * 1e9 / plan.flops() * bytes as f64 / 1e9;
                    println!("[{m},{k}]x[{k},{n}] {bits:?} g{group:<5} threads {t}: {g:7.1} GFLOP/s {gbs:6.1} GB/s");
                }
            }
        }
    }

    /// Quantized convs (u8 activations, s8 weights, requantized to u8)
    /// on mobile-net and SqueezeNet shapes: `[c, h, w] → m`, kernel,
    /// stride, group.
    #[test]
    #[ignore]
    fn qconv_throughput() {
        use qconv::{QConvGeometry, QConvOut, QConvPlan};
        use qgemm::Int8;
        for (c, hw, m, k, s, group) in [
            (3, 224, 16, 3, 2, 1),
            (16, 56, 72, 1, 1, 1),
            (72, 28, 24, 1, 1, 1),
            (96, 7, 576, 1, 1, 1),
            (64, 55, 16, 1, 1, 1),
            (16, 55, 64, 3, 1, 1),
            (72, 56, 72, 3, 2, 72),
            (240, 14, 240, 5, 1, 240),
        ] {
            // `KILN_QCONV=c,hw,m,k` runs one shape (to profile it).
            let only = std::env::var("KILN_QCONV").unwrap_or_default();
            if !only.is_empty() && only != format!("{c},{hw},{m},{k}") {
                continue;
            }
            let p = k / 2;
            let o = (hw + 2 * p - k) / s + 1;
            let g = QConvGeometry {
                x: [1, c, hw, hw],
                m,
                kernel: [k, k],
                strides: [s, s],
                dilations: [1, 1],
                pads: [p, p],
                out: [o, o],
                group,
            };
            let x = qgemm::tests::lcg_bytes(1, c * hw * hw);
            let w = qgemm::tests::lcg_bytes(2, m * c / group * k * k);
            let out = QConvOut::Requant {
                mult: vec![0.0003; m],
                zero: 3,
                lo: 0,
                hi: 255,
            };
            let plan =
                QConvPlan::new(g, Int8::U8, 128, &w, Int8::I8, &[0], vec![7; m], out).unwrap();
            let mut y = vec![0u8; m * o * o];
            let y = std::sync::Mutex::new(&mut y[..]);
            for t in [1, 2] {
                let g = gflops(plan.ops(), t, &|t| {
                    // SAFETY: `y` holds the result's bytes.
                    unsafe { plan.run(&x, None, y.lock().unwrap().as_mut_ptr(), t) }.unwrap()
                });
                let us = plan.ops() / g / 1e3;
                println!(
                    "qconv {c:3}x{hw:3}² -> {m:3} {k}x{k} s{s} g{group:<3} threads {t}: {g:6.1} GOP/s {us:7.1} us"
                );
            }
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
        conv(
            "depthwise 5x5 x[1,240,14,14] p2",
            &[1, 240, 14, 14],
            &[240, 1, 5, 5],
            2,
            240,
        );
        conv_s(
            "depthwise 3x3 s2 x[1,72,56,56] p1",
            &[1, 72, 56, 56],
            &[72, 1, 3, 3],
            1,
            72,
            2,
        );
        for (m, k, n) in [
            (128, 384, 1536),
            (128, 1536, 384),
            (128, 384, 384),
            (1, 384, 1536),
        ] {
            let a = lcg(4, m * k);
            let b = lcg(5, k * n);
            let packed = MatMulPlan::new(&[m, k], &[k, n], Some(&b)).unwrap();
            let unpacked = MatMulPlan::new(&[m, k], &[k, n], None).unwrap();
            let mut out = vec![0.0; m * n];
            let out = std::sync::Mutex::new(&mut out[..]);
            let name = format!("matmul [{m},{k}]x[{k},{n}]");
            for (path, plan) in [("constant B", &packed), ("gemm crate", &unpacked)] {
                for t in [1, 2] {
                    let g = gflops(plan.flops(), t, &|t| {
                        plan.run(&a, &b, &mut out.lock().unwrap(), t)
                    });
                    println!("{name:40} threads {t}: {g:7.1} GFLOP/s ({path})");
                }
            }
        }
    }
}
