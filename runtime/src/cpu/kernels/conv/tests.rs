//! Tests of the conv plans: plans against a naive direct convolution on
//! LCG data (tolerance: relative 1e-4 of the sum of |terms| of each
//! output's accumulation), and the strategy choice on its own.
use super::super::common::testing::{check, lcg};
use super::super::packed::PackedB;
use super::super::rows::Isa;
use super::super::smallk;
use super::plan::*;

/// Naive N-D conv: returns (values, sum of |terms|).
fn reference(
    xs: &[usize],
    ws: &[usize],
    a: &ConvAttrs,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
    let sd = xs.len() - 2;
    let (n, c, m, g) = (xs[0], xs[1], ws[0], a.group);
    let (cg, mg) = (c / g, m / g);
    let osz: Vec<usize> = (0..sd)
        .map(|i| {
            (xs[2 + i] + a.pads[i] + a.pads[sd + i] - a.dilations[i] * (ws[2 + i] - 1) - 1)
                / a.strides[i]
                + 1
        })
        .collect();
    let ovol: usize = osz.iter().product();
    let ivol: usize = xs[2..].iter().product();
    let kvol: usize = ws[2..].iter().product();
    let mut shape = vec![n, m];
    shape.extend(&osz);
    let (mut out, mut sc) = (vec![0.0; n * m * ovol], vec![0.0; n * m * ovol]);
    for ni in 0..n {
        for oc in 0..m {
            let gi = oc / mg;
            for op in 0..ovol {
                // Unravel the output position.
                let mut o = vec![0; sd];
                let mut r = op;
                for d in (0..sd).rev() {
                    o[d] = r % osz[d];
                    r /= osz[d];
                }
                let b = bias.map_or(0.0, |b| b[oc] as f64);
                let (mut s, mut t) = (b, b.abs());
                for ci in 0..cg {
                    'tap: for kp in 0..kvol {
                        let mut kk = vec![0; sd];
                        let mut r = kp;
                        for d in (0..sd).rev() {
                            kk[d] = r % ws[2 + d];
                            r /= ws[2 + d];
                        }
                        let mut ii = 0;
                        for d in 0..sd {
                            let i = (o[d] * a.strides[d] + kk[d] * a.dilations[d]) as isize
                                - a.pads[d] as isize;
                            if i < 0 || i >= xs[2 + d] as isize {
                                continue 'tap;
                            }
                            ii = ii * xs[2 + d] + i as usize;
                        }
                        let xv = x[((ni * c) + gi * cg + ci) * ivol + ii] as f64;
                        let wv = w[(oc * cg + ci) * kvol + kp] as f64;
                        s += xv * wv;
                        t += (xv * wv).abs();
                    }
                }
                out[(ni * m + oc) * ovol + op] = s as f32;
                sc[(ni * m + oc) * ovol + op] = t as f32;
            }
        }
    }
    (shape, out, sc)
}

#[allow(clippy::too_many_arguments)]
fn case(
    xs: &[usize],
    ws: &[usize],
    strides: &[usize],
    dil: &[usize],
    pads: &[usize],
    group: usize,
    with_bias: bool,
    want_strategy: Strategy,
) {
    let attrs = ConvAttrs {
        strides: strides.to_vec(),
        dilations: dil.to_vec(),
        pads: pads.to_vec(),
        group,
    };
    let x = lcg(11, xs.iter().product());
    let w = lcg(12, ws.iter().product());
    let b = lcg(13, ws[0]);
    let bias = with_bias.then_some(&b[..]);
    let (shape, want, sc) = reference(xs, ws, &attrs, &x, &w, bias);
    for (konst, block_floats) in [
        (false, IM2COL_BLOCK_FLOATS),
        (true, IM2COL_BLOCK_FLOATS),
        (false, 1),
        (true, 7 * ws[1..].iter().product::<usize>()),
    ] {
        let mut plan = ConvPlan::new(xs, ws, with_bias, &attrs, konst.then_some(&w[..])).unwrap();
        // Tiny blocks: one output position, or 7 positions that straddle
        // output rows.
        plan.block_floats = block_floats.min(IM2COL_BLOCK_FLOATS);
        // With them, the implicit GEMM takes k blocks of 5 and units
        // of one 16-position strip.
        if block_floats < IM2COL_BLOCK_FLOATS {
            if let Some(sh) = plan.shifted.as_mut() {
                sh.kc = 5;
                sh.unit_strips = Some(1);
            }
        }
        // Half the runs take the portable row kernels and the `gemm`
        // crate, half the detected ISA's row kernels and the
        // small-k kernel where eligible, the `gemm` crate otherwise.
        if !konst {
            plan.isa = Isa::Portable;
            plan.small_k = false;
        }
        assert_eq!(plan.out_shape(), &shape[..]);
        // Small-channel shapes expected as Im2col may plan Direct; both
        // strategies are then checked.
        let chosen = plan.strategy;
        if chosen == Transposed {
            assert!(konst && matches!(want_strategy, Pointwise | Im2col));
        } else if chosen == Shifted {
            assert!(smallk::available(), "Shifted without AVX2/FMA");
            assert!(matches!(want_strategy, Pointwise | Im2col));
        } else if !(want_strategy == Im2col && chosen == Direct) {
            assert_eq!(chosen, want_strategy, "{xs:?} {ws:?} {attrs:?}");
        }
        // (A transposed plan keeps no unpacked weights to fall back on.)
        let strategies = if chosen == Transposed {
            vec![chosen]
        } else {
            vec![chosen, want_strategy]
        };
        for strategy in strategies {
            plan.strategy = strategy;
            for threads in [1, 2] {
                let mut out = vec![f32::NAN; want.len()];
                let w_arg: &[f32] = if konst { &[] } else { &w };
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| plan.run(&x, w_arg, bias, &mut out, threads));
                let what =
                    format!("conv x{xs:?} w{ws:?} {attrs:?} t{threads} c{konst} {strategy:?}");
                check(&out, &want, &sc, &what);
                // An epilogue sees every element exactly once, finished.
                let seen: Vec<AtomicU32> = (0..want.len()).map(|_| AtomicU32::new(0)).collect();
                let epilogue = |o: *mut f32, lo: usize, hi: usize| {
                    for (i, s) in seen.iter().enumerate().take(hi).skip(lo) {
                        s.fetch_add(1, Ordering::Relaxed);
                        // SAFETY: o is valid for the whole output; the
                        // range is this call's alone.
                        unsafe { *o.add(i) = 2.0 * *o.add(i) };
                    }
                };
                let mut out = vec![f32::NAN; want.len()];
                pool.install(|| {
                    plan.run_with_epilogue(&x, w_arg, bias, &mut out, threads, Some(&epilogue))
                });
                assert!(
                    seen.iter().all(|s| s.load(Ordering::Relaxed) == 1),
                    "{what}"
                );
                let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
                let sc2: Vec<f32> = sc.iter().map(|v| 2.0 * v).collect();
                check(&out, &twice, &sc2, &format!("{what} with epilogue"));
            }
        }
    }
}

use std::sync::atomic::{AtomicU32, Ordering};
use Strategy::*;

/// Batch 1, small image, many output channels: at 2 threads the
/// units split output channels (uneven blocks: 40 = 13 + 13 + 14).
#[test]
fn conv_channel_split() {
    case(
        &[1, 40, 5, 6],
        &[40, 40, 1, 1],
        &[1, 1],
        &[1, 1],
        &[0, 0, 0, 0],
        1,
        true,
        Pointwise,
    );
    case(
        &[1, 16, 4, 4],
        &[48, 16, 1, 1],
        &[1, 1],
        &[1, 1],
        &[0, 0, 0, 0],
        1,
        false,
        Pointwise,
    );
    case(
        &[1, 600, 7, 7],
        &[64, 600, 1, 1],
        &[1, 1],
        &[1, 1],
        &[0, 0, 0, 0],
        1,
        true,
        Pointwise,
    );
}

/// Small maps (fewer than 64 positions, not a multiple of 16) with
/// constant weights and 32+ output channels: channels in the lanes.
/// Padded 3x3, pointwise, strided, dilated and batched.
#[test]
fn conv_small_maps_transposed() {
    type S = &'static [usize];
    #[rustfmt::skip]
    let shapes: [(S, S, S, S, S, Strategy); 5] = [
        (&[1, 40, 7, 7], &[48, 40, 3, 3], &[1, 1], &[1, 1], &[1, 1, 1, 1], Im2col),
        (&[1, 64, 5, 5], &[40, 64, 1, 1], &[1, 1], &[1, 1], &[0, 0, 0, 0], Pointwise),
        (&[1, 24, 13, 13], &[32, 24, 1, 1], &[2, 2], &[1, 1], &[0, 0, 0, 0], Im2col),
        (&[2, 8, 12, 12], &[33, 8, 3, 3], &[2, 2], &[2, 2], &[2, 1, 1, 2], Im2col),
        (&[1, 5, 9], &[70, 5, 3], &[1], &[1], &[1, 1], Im2col),
    ];
    for (xs, ws, st, dil, pads, want) in shapes {
        for bias in [false, true] {
            case(xs, ws, st, dil, pads, 1, bias, want);
        }
        if !PackedB::available() {
            continue;
        }
        // The plan is the transposed one, and it clamps (a folded Relu).
        let attrs = ConvAttrs {
            strides: st.to_vec(),
            dilations: dil.to_vec(),
            pads: pads.to_vec(),
            group: 1,
        };
        let x = lcg(11, xs.iter().product());
        let w = lcg(12, ws.iter().product());
        let b = lcg(13, ws[0]);
        let mut plan = ConvPlan::new(xs, ws, true, &attrs, Some(&w)).unwrap();
        assert_eq!(plan.strategy, Strategy::Transposed, "{xs:?} {ws:?}");
        assert!(plan.fuse_clamp(0.0, f32::INFINITY));
        let (_, want, sc) = reference(xs, ws, &attrs, &x, &w, Some(&b));
        let want: Vec<f32> = want.iter().map(|v| v.max(0.0)).collect();
        let mut out = vec![f32::NAN; want.len()];
        plan.run(&x, &[], Some(&b), &mut out, 1);
        check(&out, &want, &sc, &format!("{xs:?} {ws:?} + Relu"));
    }
}

/// A fused residual (then a fused Relu) on the implicit GEMM and the
/// transposed product: partial strips, several k blocks, batch 2, one
/// and two threads; the plan refuses it on other strategies and after
/// a clamp.
#[test]
fn conv_fused_residual() {
    if !smallk::available() {
        return;
    }
    type S = &'static [usize];
    #[rustfmt::skip]
    let shapes: [(S, S, S, S, Strategy); 4] = [
        (&[1, 8, 9, 11], &[24, 8, 3, 3], &[1, 1], &[1, 1, 1, 1], Strategy::Shifted),
        (&[2, 16, 6, 7], &[20, 16, 1, 1], &[1, 1], &[0, 0, 0, 0], Strategy::Shifted),
        (&[1, 12, 11, 11], &[40, 12, 3, 3], &[2, 2], &[1, 1, 1, 1], Strategy::Transposed),
        (&[2, 40, 7, 7], &[64, 40, 1, 1], &[1, 1], &[0, 0, 0, 0], Strategy::Transposed),
    ];
    for (xs, ws, st, pads, strategy) in shapes {
        let attrs = ConvAttrs {
            strides: st.to_vec(),
            dilations: vec![1, 1],
            pads: pads.to_vec(),
            group: 1,
        };
        let x = lcg(11, xs.iter().product());
        let w = lcg(12, ws.iter().product());
        let b = lcg(13, ws[0]);
        let (_, conv, sc) = reference(xs, ws, &attrs, &x, &w, Some(&b));
        let res = lcg(14, conv.len());
        for relu in [false, true] {
            for kc in [None, Some(5)] {
                let mut plan = ConvPlan::new(xs, ws, true, &attrs, Some(&w)).unwrap();
                assert_eq!(plan.strategy, strategy, "{xs:?} {ws:?}");
                if let (Some(kc), Some(sh)) = (kc, plan.shifted.as_mut()) {
                    sh.kc = kc;
                }
                assert!(plan.fuse_residual() && plan.has_residual());
                assert!(!plan.fuse_residual());
                if relu {
                    assert!(plan.fuse_clamp(0.0, f32::INFINITY));
                }
                let want: Vec<f32> = conv
                    .iter()
                    .zip(&res)
                    .map(|(c, r)| if relu { (c + r).max(0.0) } else { c + r })
                    .collect();
                let sc: Vec<f32> = sc.iter().zip(&res).map(|(s, r)| s + r.abs()).collect();
                for threads in [1, 2] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut out = vec![f32::NAN; want.len()];
                    pool.install(|| {
                        plan.run_fused(&x, &[], Some(&b), Some(&res), &mut out, threads, None)
                    });
                    let what = format!("{xs:?} {ws:?} relu {relu} kc {kc:?} t{threads}");
                    check(&out, &want, &sc, &what);
                }
            }
        }
    }
    // Not on other strategies, nor after a clamp.
    let a = ConvAttrs {
        group: 4,
        ..Default::default()
    };
    let mut depthwise = ConvPlan::new(&[1, 4, 5, 5], &[4, 1, 3, 3], false, &a, None).unwrap();
    assert!(!depthwise.fuse_residual());
    let a = ConvAttrs {
        group: 1,
        ..Default::default()
    };
    let mut clamped = ConvPlan::new(&[1, 8, 9, 9], &[24, 8, 1, 1], false, &a, None).unwrap();
    if clamped.fuse_clamp(0.0, 1.0) {
        assert!(!clamped.fuse_residual());
    }
}

#[test]
fn conv_2d() {
    case(
        &[1, 3, 7, 9],
        &[4, 3, 3, 3],
        &[1, 1],
        &[1, 1],
        &[0, 0, 0, 0],
        1,
        false,
        Im2col,
    );
    case(
        &[2, 3, 7, 9],
        &[5, 3, 3, 3],
        &[1, 1],
        &[1, 1],
        &[1, 1, 1, 1],
        1,
        true,
        Im2col,
    );
    case(
        &[1, 4, 11, 10],
        &[6, 4, 3, 2],
        &[2, 3],
        &[1, 1],
        &[1, 0, 2, 1],
        1,
        true,
        Im2col,
    );
    case(
        &[2, 4, 12, 13],
        &[6, 2, 3, 3],
        &[1, 2],
        &[2, 1],
        &[2, 1, 0, 3],
        2,
        true,
        Im2col,
    );
    case(
        &[1, 6, 9, 9],
        &[3, 2, 1, 1],
        &[1, 1],
        &[1, 1],
        &[0, 0, 0, 0],
        3,
        true,
        Pointwise,
    );
    case(
        &[3, 5, 4, 6],
        &[7, 5, 1, 1],
        &[1, 1],
        &[1, 1],
        &[0, 0, 0, 0],
        1,
        false,
        Pointwise,
    );
    case(
        &[1, 5, 8, 6],
        &[7, 5, 1, 1],
        &[2, 2],
        &[1, 1],
        &[0, 0, 0, 0],
        1,
        true,
        Im2col,
    );
    case(
        &[1, 5, 8, 6],
        &[7, 5, 1, 1],
        &[1, 1],
        &[1, 1],
        &[1, 0, 0, 1],
        1,
        true,
        Im2col,
    );
    case(
        &[1, 1, 1, 1],
        &[1, 1, 1, 1],
        &[1, 1],
        &[1, 1],
        &[0, 0, 0, 0],
        1,
        true,
        Pointwise,
    );
    case(
        &[1, 2, 1, 5],
        &[3, 2, 1, 3],
        &[1, 1],
        &[1, 1],
        &[0, 1, 0, 1],
        1,
        false,
        Im2col,
    );
    // Kernel bigger than the input, covered by padding.
    case(
        &[1, 2, 2, 2],
        &[3, 2, 5, 5],
        &[1, 1],
        &[1, 1],
        &[2, 2, 2, 2],
        1,
        true,
        Im2col,
    );
    // Big enough for threaded gemm and threaded im2col at batch 1.
    case(
        &[1, 16, 20, 20],
        &[32, 16, 3, 3],
        &[1, 1],
        &[1, 1],
        &[1, 1, 1, 1],
        1,
        true,
        Im2col,
    );
    case(
        &[1, 64, 20, 20],
        &[64, 64, 1, 1],
        &[1, 1],
        &[1, 1],
        &[0, 0, 0, 0],
        1,
        true,
        Pointwise,
    );
}

#[test]
fn conv_depthwise_lanes() {
    // Small maps with many channels: channels in the lanes, a partial
    // last slab (72 = 64 + 8, 100 = 64 + 36) and maps whose sizes are no
    // multiple of 8 (the 8x8 transposes' edges).
    case(
        &[1, 72, 7, 7],
        &[72, 1, 5, 5],
        &[1, 1],
        &[1, 1],
        &[2, 2, 2, 2],
        72,
        true,
        Depthwise,
    );
    case(
        &[2, 100, 13, 11],
        &[100, 1, 3, 3],
        &[2, 2],
        &[1, 1],
        &[1, 1, 1, 1],
        100,
        false,
        Depthwise,
    );
    // A stride-1 3x3 over a map past the small-map bound, rows under 32
    // (`small_taps_mid_rows`), asymmetric pads.
    case(
        &[1, 40, 21, 30],
        &[40, 1, 3, 3],
        &[1, 1],
        &[1, 1],
        &[1, 0, 0, 1],
        40,
        true,
        Depthwise,
    );
}

#[test]
fn conv_depthwise() {
    case(
        &[1, 8, 9, 11],
        &[8, 1, 3, 3],
        &[1, 1],
        &[1, 1],
        &[1, 1, 1, 1],
        8,
        true,
        Depthwise,
    );
    case(
        &[2, 4, 10, 9],
        &[4, 1, 3, 5],
        &[2, 2],
        &[1, 2],
        &[0, 2, 1, 3],
        4,
        false,
        Depthwise,
    );
    case(
        &[1, 3, 7, 7],
        &[6, 1, 3, 3],
        &[1, 3],
        &[2, 1],
        &[2, 0, 1, 1],
        3,
        true,
        Depthwise,
    );
    case(
        &[1, 5, 12],
        &[5, 1, 4],
        &[3],
        &[1],
        &[2, 1],
        5,
        true,
        Depthwise,
    );
    case(
        &[1, 3, 4, 5, 6],
        &[3, 1, 2, 3, 2],
        &[1, 2, 1],
        &[2, 1, 1],
        &[1, 0, 1, 0, 1, 1],
        3,
        true,
        Depthwise,
    );
    // Taps that never land in the input (all padding).
    case(
        &[1, 2, 3, 2],
        &[2, 1, 1, 4],
        &[1, 1],
        &[1, 1],
        &[0, 0, 0, 2],
        2,
        true,
        Depthwise,
    );
    case(
        &[1, 2, 3, 2],
        &[2, 1, 3, 3],
        &[1, 1],
        &[1, 3],
        &[0, 4, 0, 4],
        2,
        true,
        Depthwise,
    );
    case(
        &[1, 2, 3, 2],
        &[3, 2, 1, 4],
        &[1, 1],
        &[1, 1],
        &[0, 0, 0, 2],
        1,
        true,
        Im2col,
    );
    case(
        &[1, 2, 3, 2],
        &[3, 2, 3, 3],
        &[1, 2],
        &[1, 3],
        &[1, 4, 0, 4],
        1,
        true,
        Im2col,
    );
    case(
        &[1, 32, 17, 17],
        &[32, 1, 3, 3],
        &[2, 2],
        &[1, 1],
        &[1, 1, 1, 1],
        32,
        true,
        Depthwise,
    );
}

/// The row kernels' fast paths: widths not a multiple of the 8-float
/// chunk, fused tap counts and the tap-by-tap fallback (11 taps),
/// strides 2 and 3 (phase split, odd and even pads), dilation 2,
/// asymmetric pads, channel multipliers, and a plane set big enough to
/// thread.
#[test]
fn conv_depthwise_rows() {
    type S = &'static [usize];
    #[rustfmt::skip]
    let cases: &[(S, S, S, S, S, usize)] = &[
        (&[1, 2, 5, 29], &[2, 1, 2, 11], &[1, 2], &[1, 1], &[1, 5, 0, 6], 2),
        (&[1, 4, 9, 37], &[4, 1, 3, 3], &[1, 1], &[1, 1], &[1, 1, 1, 1], 4),
        (&[2, 3, 11, 53], &[3, 1, 5, 5], &[2, 2], &[1, 1], &[2, 2, 2, 2], 3),
        (&[1, 2, 8, 41], &[2, 1, 3, 7], &[2, 2], &[1, 2], &[1, 3, 0, 5], 2),
        (&[1, 3, 6, 35], &[6, 1, 2, 9], &[1, 3], &[1, 1], &[0, 4, 1, 4], 3),
        (&[1, 2, 5, 19], &[2, 1, 1, 4], &[1, 1], &[1, 2], &[0, 2, 0, 1], 2),
        (&[1, 2, 4, 17], &[2, 1, 2, 2], &[2, 2], &[2, 1], &[1, 0, 1, 1], 2),
        (&[1, 2, 3, 16], &[2, 1, 3, 1], &[1, 2], &[1, 1], &[1, 0, 1, 0], 2),
        (&[6, 5, 3, 12], &[5, 1, 5, 5], &[1, 1], &[1, 1], &[2, 2, 2, 2], 5),
        (&[1, 64, 40, 41], &[64, 1, 5, 5], &[1, 1], &[1, 1], &[2, 2, 2, 2], 64),
        (&[1, 64, 40, 41], &[64, 1, 3, 3], &[2, 2], &[1, 1], &[1, 1, 1, 1], 64),
        // Rows of several 64-position register blocks, the last partial
        // (the AVX-512 plane kernel), stride 2 with odd and even pads.
        (&[1, 3, 6, 150], &[3, 1, 3, 3], &[1, 1], &[1, 1], &[1, 1, 1, 1], 3),
        (&[1, 2, 7, 301], &[4, 1, 3, 3], &[2, 2], &[1, 1], &[1, 1, 1, 1], 2),
        (&[1, 2, 9, 260], &[2, 1, 5, 5], &[2, 2], &[1, 1], &[2, 2, 2, 2], 2),
    ];
    for &(xs, ws, st, dil, pads, g) in cases {
        case(xs, ws, st, dil, pads, g, true, Depthwise);
    }
}

/// Small-channel convs (first convs on RGB) take the direct row loop.
#[test]
fn conv_direct() {
    type S = &'static [usize];
    #[rustfmt::skip]
    let cases: &[(S, S, S, S, S)] = &[
        (&[6, 3, 48, 37], &[8, 3, 3, 3], &[2, 2], &[1, 1], &[1, 1, 1, 1]),
        (&[2, 3, 30, 29], &[16, 3, 7, 7], &[2, 2], &[1, 1], &[3, 3, 3, 3]),
        (&[2, 4, 9, 21], &[5, 4, 3, 2], &[1, 3], &[2, 2], &[2, 0, 1, 1]),
        (&[3, 2, 11], &[3, 2, 5], &[2], &[1], &[2, 1]),
    ];
    for &(xs, ws, st, dil, pads) in cases {
        case(xs, ws, st, dil, pads, 1, true, Direct);
    }
    // Zero-width input, all padding: rows exist but hold no data.
    case(
        &[2, 3, 3, 0],
        &[4, 3, 2, 2],
        &[1, 1],
        &[1, 1],
        &[0, 1, 0, 1],
        1,
        true,
        Direct,
    );
    case(
        &[1, 2, 3, 0],
        &[2, 1, 1, 2],
        &[1, 2],
        &[1, 1],
        &[0, 1, 0, 1],
        2,
        true,
        Depthwise,
    );
}

#[test]
fn conv_1d_3d() {
    case(
        &[2, 3, 17],
        &[4, 3, 3],
        &[2],
        &[2],
        &[1, 3],
        1,
        true,
        Im2col,
    );
    case(
        &[1, 4, 9],
        &[6, 2, 1],
        &[1],
        &[1],
        &[0, 0],
        2,
        false,
        Pointwise,
    );
    case(
        &[1, 2, 5, 6, 7],
        &[3, 2, 3, 2, 3],
        &[1, 2, 1],
        &[1, 1, 2],
        &[1, 0, 2, 0, 1, 1],
        1,
        true,
        Im2col,
    );
    case(
        &[2, 4, 3, 4, 5],
        &[4, 2, 2, 2, 2],
        &[2, 1, 2],
        &[1, 2, 1],
        &[0, 1, 1, 1, 0, 0],
        2,
        false,
        Im2col,
    );
    case(
        &[1, 3, 2, 3, 4],
        &[5, 3, 1, 1, 1],
        &[1, 1, 1],
        &[1, 1, 1],
        &[0, 0, 0, 0, 0, 0],
        1,
        true,
        Pointwise,
    );
}

#[test]
fn conv_no_input_channels() {
    let a = ConvAttrs {
        group: 1,
        ..Default::default()
    };
    let plan = ConvPlan::new(&[1, 0, 3, 3], &[2, 0, 2, 2], true, &a, None).unwrap();
    let mut out = vec![f32::NAN; 8];
    plan.run(&[], &[], Some(&[1.5, -2.0]), &mut out, 2);
    assert_eq!(out, [1.5, 1.5, 1.5, 1.5, -2.0, -2.0, -2.0, -2.0]);
}

#[test]
fn conv_errors() {
    let a = ConvAttrs {
        group: 1,
        ..Default::default()
    };
    assert!(ConvPlan::new(&[1, 3, 5, 5], &[4, 2, 3, 3], false, &a, None).is_err());
    assert!(ConvPlan::new(&[1, 3, 2, 2], &[4, 3, 3, 3], false, &a, None).is_err());
    assert!(ConvPlan::new(&[1, 3], &[4, 3], false, &a, None).is_err());
    assert!(ConvPlan::new(&[1, 3, 5, 5], &[4, 3, 3, 3], false, &a, Some(&[0.0; 5])).is_err());
    let g0 = ConvAttrs {
        group: 0,
        ..Default::default()
    };
    assert!(ConvPlan::new(&[1, 3, 5, 5], &[4, 3, 3, 3], false, &g0, None).is_err());
    let bad = ConvAttrs {
        strides: vec![1],
        group: 1,
        ..Default::default()
    };
    assert!(ConvPlan::new(&[1, 3, 5, 5], &[4, 3, 3, 3], false, &bad, None).is_err());
    assert!(ConvPlan::new(&[1, 3, 5, 5], &[4, 3, 3, 3], true, &a, None).is_ok());
}

/// The choice depends on the host only through [`Host`]: the tile
/// strategies need their features, 3-D convs never take the implicit
/// GEMM, and the transposed product needs constant weights.
#[test]
fn strategy_choice() {
    let choose = |xs: &[usize], ws: &[usize], group: usize, konst: bool, host: Host| {
        let sd = xs.len() - 2;
        let attrs = ConvAttrs {
            strides: vec![1; sd],
            dilations: vec![1; sd],
            pads: vec![(ws[2] - 1) / 2; 2 * sd],
            group,
        };
        let axes = normalise(xs, ws, &attrs, None).unwrap();
        choose_strategy(xs[0], xs[1], ws[0], group, &axes, konst, host)
    };
    let all = Host {
        small_k: true,
        packed_b: true,
    };
    let none = Host {
        small_k: false,
        packed_b: false,
    };
    use Strategy::*;
    let (x3, w3) = (&[1, 64, 56, 56][..], &[64, 64, 3, 3][..]);
    assert_eq!(choose(x3, w3, 1, true, all), Shifted);
    assert_eq!(choose(x3, w3, 1, true, none), Im2col);
    let (x1, w1) = (&[1, 64, 56, 56][..], &[64, 64, 1, 1][..]);
    assert_eq!(choose(x1, w1, 1, false, all), Shifted);
    assert_eq!(choose(x1, w1, 1, false, none), Pointwise);
    // A 7x7 map: transposed with constant weights only.
    let (x7, w7) = (&[1, 512, 7, 7][..], &[512, 512, 3, 3][..]);
    assert_eq!(choose(x7, w7, 1, true, all), Transposed);
    assert_eq!(choose(x7, w7, 1, false, all), Shifted);
    let (x3d, w3d) = (&[1, 8, 6, 6, 6][..], &[16, 8, 3, 3, 3][..]);
    assert_eq!(choose(x3d, w3d, 1, false, all), Im2col);
    let (xd, wd) = (&[1, 32, 28, 28][..], &[32, 1, 3, 3][..]);
    assert_eq!(choose(xd, wd, 32, true, all), Depthwise);
    let (xr, wr) = (&[2, 3, 48, 48][..], &[8, 3, 3, 3][..]);
    assert_eq!(choose(xr, wr, 1, true, all), Direct);
}

/// `ConvPlan::epilogues` (asked before a plan exists) agrees with what a
/// plan built for the same conv accepts.
#[test]
fn epilogues_match_the_plan() {
    type Case<'a> = (&'a [usize], &'a [usize], usize, usize, usize);
    let cases: &[Case] = &[
        // (x, w, stride, pad, group)
        (&[1, 64, 56, 56], &[64, 64, 3, 3], 1, 1, 1),
        (&[1, 256, 14, 14], &[512, 256, 1, 1], 2, 0, 1),
        (&[1, 512, 7, 7], &[512, 512, 3, 3], 1, 1, 1),
        (&[1, 32, 28, 28], &[32, 1, 3, 3], 1, 1, 32),
        (&[1, 3, 224, 224], &[64, 3, 7, 7], 2, 3, 1),
        (&[2, 16, 10], &[8, 16, 3], 1, 1, 1),
        (&[1, 8, 4, 4, 4], &[8, 8, 3, 3, 3], 1, 1, 1),
    ];
    for &(x, w, stride, pad, group) in cases {
        let sd = x.len() - 2;
        let attrs = ConvAttrs {
            strides: vec![stride; sd],
            dilations: vec![1; sd],
            pads: vec![pad; 2 * sd],
            group,
        };
        let weights = lcg(3, w.iter().product());
        for konst in [false, true] {
            let e = ConvPlan::epilogues(x, w, &attrs, konst).unwrap();
            let wc = konst.then_some(weights.as_slice());
            let mut p = ConvPlan::new(x, w, true, &attrs, wc).unwrap();
            assert_eq!(
                p.fuse_residual(),
                e.residual,
                "residual {x:?} {w:?} {konst}"
            );
            let mut q = ConvPlan::new(x, w, true, &attrs, wc).unwrap();
            assert_eq!(
                q.fuse_clamp(0.0, f32::INFINITY),
                e.clamp,
                "clamp {x:?} {w:?} {konst}"
            );
            // After a residual, a clamp still rides on the tiles.
            if e.residual {
                assert_eq!(p.fuse_clamp(0.0, f32::INFINITY), e.clamp);
            }
        }
    }
}
