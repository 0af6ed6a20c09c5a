//! onnxruntime's `com.microsoft` quantized ops, imported as standard ops:
//! each test builds a one-op model, runs it on the interpreter and on the
//! cpu backend (every step native), and checks both against the formula
//! of onnxruntime's contrib-op documentation written out here.
//!
//! Tolerance: quantized results within one step (onnxruntime rounds
//! `x / scale` of an f32 sum; the sum's own f32 rounding may land a value
//! on the other side of a midpoint); f32 results to 1e-5 relative.

use std::collections::HashMap;

use kiln_compiler::compile::{compile, Target};
use kiln_compiler::lower::cpu::CpuOptions;
use kiln_compiler::onnx::{import_model_bytes, proto};
use kiln_runtime::{Data, Interpreter, Tensor, Value};
use kiln_tests::*;

const U8: i32 = 2;
const I8: i32 = 3;

fn bytes_tensor(name: &str, elem: i32, dims: &[i64], values: &[u8]) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(elem),
        raw_data: Some(values.to_vec().into()),
        ..Default::default()
    }
}

fn i32_tensor(name: &str, dims: &[i64], values: &[i32]) -> proto::TensorProto {
    proto::TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(6),
        int32_data: values.to_vec(),
        ..Default::default()
    }
}

/// A model whose last node is `com.microsoft.<op>`.
fn model(b: OnnxBuilder) -> Vec<u8> {
    let mut m = b.model();
    let g = m.graph.as_mut().expect("graph");
    g.node.last_mut().expect("a node").domain = Some("com.microsoft".into());
    m.opset_import.push(proto::OperatorSetIdProto {
        domain: Some("com.microsoft".into()),
        version: Some(1),
    });
    prost::Message::encode_to_vec(&m)
}

/// The single output on the interpreter and on the cpu backend (which
/// must run every step natively), as f64.
fn run(bytes: &[u8], inputs: &[(&str, Tensor)]) -> [Vec<f64>; 2] {
    let m = import_model_bytes(bytes, None, &Default::default()).expect("imports");
    kiln_ir::verify::verify(&m).expect("verifies");
    let inputs: HashMap<String, Value> = inputs
        .iter()
        .map(|(k, t)| (k.to_string(), Value::Tensor(std::sync::Arc::new(t.clone()))))
        .collect();
    let interp = Interpreter::new(&m).run(&inputs).expect("interprets");
    let exe = compile(
        &m,
        &Target::Cpu(CpuOptions::default()),
        &kiln_compiler::lower::shapes_of(&inputs),
    )
    .expect("compiles");
    let report = exe.report();
    assert!(
        report.trim_end().ends_with("0 on the interpreter"),
        "{report}"
    );
    let cpu = exe.run(&inputs).expect("runs");
    let f = |v: &Value| v.as_tensor().expect("a tensor").to_f64();
    [f(&interp[0]), f(&cpu[0])]
}

/// `|got - want| <= tol` for quantized results (`tol` steps), `<= tol ·
/// max(|want|, 1)` for f32 ones (`tol` below 1).
fn assert_within(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let bound = |w: f64| {
        if tol >= 1.0 {
            tol
        } else {
            tol * w.abs().max(1.0)
        }
    };
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= bound(*w),
            "{what}: element {i}: got {g}, want {w}"
        );
    }
}

fn u8s(shape: &[usize], seed: u32) -> (Tensor, Vec<u8>) {
    let n: usize = shape.iter().product();
    let v: Vec<u8> = (0..n as u32)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 97) >> 7) as u8)
        .collect();
    (
        Tensor::new(shape.to_vec(), Data::U8(v.clone())).expect("tensor"),
        v,
    )
}

/// ONNX QuantizeLinear to u8: round half to even, saturate.
fn q_u8(x: f32, scale: f32, zero: i32) -> f64 {
    ((x / scale).round_ties_even() as i32 + zero).clamp(0, 255) as f64
}

#[test]
fn qlinear_add_and_mul_broadcast() {
    for op in ["QLinearAdd", "QLinearMul"] {
        let b = OnnxBuilder::new("qadd", 17)
            .input("a", tensor_type(U8, &["2", "3", "4"]))
            .input("b", tensor_type(U8, &["4"]))
            .initializer(f32_tensor("sa", &[], &[0.05]))
            .initializer(bytes_tensor("za", U8, &[], &[120]))
            .initializer(f32_tensor("sb", &[], &[0.02]))
            .initializer(bytes_tensor("zb", U8, &[], &[130]))
            .initializer(f32_tensor("sc", &[], &[0.07]))
            .initializer(bytes_tensor("zc", U8, &[], &[100]))
            .node(op, &["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], &["c"])
            .output("c", tensor_type(U8, &["2", "3", "4"]));
        let (ta, a) = u8s(&[2, 3, 4], 1);
        let (tb, bv) = u8s(&[4], 2);
        let want: Vec<f64> = (0..24)
            .map(|i| {
                let x = (a[i] as i32 - 120) as f32 * 0.05;
                let y = (bv[i % 4] as i32 - 130) as f32 * 0.02;
                q_u8(if op == "QLinearAdd" { x + y } else { x * y }, 0.07, 100)
            })
            .collect();
        for got in run(&model(b), &[("a", ta), ("b", tb)]) {
            assert_within(&got, &want, 1.0, op);
        }
    }
}

#[test]
fn qlinear_concat_requantizes_each_input() {
    let b = OnnxBuilder::new("qcat", 17)
        .input("x", tensor_type(U8, &["1", "2", "3"]))
        .input("y", tensor_type(U8, &["1", "1", "3"]))
        .initializer(f32_tensor("s", &[], &[0.1]))
        .initializer(bytes_tensor("z", U8, &[], &[128]))
        .initializer(f32_tensor("sx", &[], &[0.05]))
        .initializer(bytes_tensor("zx", U8, &[], &[100]))
        .initializer(f32_tensor("sy", &[], &[0.2]))
        .initializer(bytes_tensor("zy", U8, &[], &[140]))
        .node_with(
            "QLinearConcat",
            &["s", "z", "x", "sx", "zx", "y", "sy", "zy"],
            &["c"],
            vec![attr_int("axis", 1)],
        )
        .output("c", tensor_type(U8, &["1", "3", "3"]));
    let (tx, x) = u8s(&[1, 2, 3], 3);
    let (ty, y) = u8s(&[1, 1, 3], 4);
    let mut want: Vec<f64> = x
        .iter()
        .map(|&v| q_u8((v as i32 - 100) as f32 * 0.05, 0.1, 128))
        .collect();
    want.extend(
        y.iter()
            .map(|&v| q_u8((v as i32 - 140) as f32 * 0.2, 0.1, 128)),
    );
    for got in run(&model(b), &[("x", tx), ("y", ty)]) {
        assert_within(&got, &want, 1.0, "QLinearConcat");
    }
}

#[test]
fn qlinear_unary_ops_and_pooling() {
    let sigmoid = |x: f32| 1.0 / (1.0 + (-x).exp());
    let leaky = |x: f32| if x < 0.0 { 0.1 * x } else { x };
    for (op, f) in [
        ("QLinearSigmoid", &sigmoid as &dyn Fn(f32) -> f32),
        ("QLinearLeakyRelu", &leaky),
    ] {
        let b = OnnxBuilder::new("qunary", 17)
            .input("x", tensor_type(U8, &["2", "8"]))
            .initializer(f32_tensor("sx", &[], &[0.04]))
            .initializer(bytes_tensor("zx", U8, &[], &[128]))
            .initializer(f32_tensor("sy", &[], &[0.01]))
            .initializer(bytes_tensor("zy", U8, &[], &[60]))
            .node_with(
                op,
                &["x", "sx", "zx", "sy", "zy"],
                &["y"],
                vec![attr_float("alpha", 0.1)],
            )
            .output("y", tensor_type(U8, &["2", "8"]));
        let (tx, x) = u8s(&[2, 8], 5);
        let want: Vec<f64> = x
            .iter()
            .map(|&v| q_u8(f((v as i32 - 128) as f32 * 0.04), 0.01, 60))
            .collect();
        for got in run(&model(b), &[("x", tx)]) {
            assert_within(&got, &want, 1.0, op);
        }
    }
    // Global average pooling, channels first and channels last.
    for channels_last in [0, 1] {
        let (shape, out) = if channels_last == 1 {
            (["1", "3", "4", "2"], ["1", "1", "1", "2"])
        } else {
            (["1", "2", "3", "4"], ["1", "2", "1", "1"])
        };
        let b = OnnxBuilder::new("qgap", 17)
            .input("x", tensor_type(U8, &shape))
            .initializer(f32_tensor("sx", &[], &[0.03]))
            .initializer(bytes_tensor("zx", U8, &[], &[10]))
            .initializer(f32_tensor("sy", &[], &[0.02]))
            .initializer(bytes_tensor("zy", U8, &[], &[5]))
            .node_with(
                "QLinearGlobalAveragePool",
                &["x", "sx", "zx", "sy", "zy"],
                &["y"],
                vec![attr_int("channels_last", channels_last)],
            )
            .output("y", tensor_type(U8, &out));
        let dims: Vec<usize> = shape.iter().map(|d| d.parse().unwrap()).collect();
        let (tx, x) = u8s(&dims, 6);
        let want: Vec<f64> = (0..2)
            .map(|c| {
                let vals: Vec<f32> = (0..12)
                    .map(|i| {
                        let at = if channels_last == 1 {
                            i * 2 + c
                        } else {
                            c * 12 + i
                        };
                        (x[at] as i32 - 10) as f32 * 0.03
                    })
                    .collect();
                q_u8(vals.iter().sum::<f32>() / 12.0, 0.02, 5)
            })
            .collect();
        for got in run(&model(b), &[("x", tx)]) {
            assert_within(&got, &want, 1.0, "QLinearGlobalAveragePool");
        }
    }
}

#[test]
fn qlinear_softmax_over_the_last_axis() {
    let b = OnnxBuilder::new("qsoftmax", 17)
        .input("x", tensor_type(U8, &["2", "5"]))
        .initializer(f32_tensor("sx", &[], &[0.1]))
        .initializer(bytes_tensor("zx", U8, &[], &[128]))
        .initializer(f32_tensor("sy", &[], &[1.0 / 256.0]))
        .initializer(bytes_tensor("zy", U8, &[], &[0]))
        .node_with(
            "QLinearSoftmax",
            &["x", "sx", "zx", "sy", "zy"],
            &["y"],
            vec![attr_int("axis", -1), attr_int("opset", 13)],
        )
        .output("y", tensor_type(U8, &["2", "5"]));
    let (tx, x) = u8s(&[2, 5], 7);
    let mut want = vec![];
    for row in x.chunks(5) {
        let e: Vec<f32> = row
            .iter()
            .map(|&v| ((v as i32 - 128) as f32 * 0.1).exp())
            .collect();
        let s: f32 = e.iter().sum();
        want.extend(e.iter().map(|v| q_u8(v / s, 1.0 / 256.0, 0)));
    }
    for got in run(&model(b), &[("x", tx)]) {
        assert_within(&got, &want, 1.0, "QLinearSoftmax");
    }
}

/// `QGemm` with transB, an i32 bias and a quantized result, and with an
/// f32 result; `MatMulIntegerToFloat` with per-column scales and zero
/// points; `DynamicQuantizeMatMul`.
#[test]
fn integer_products_to_float_and_back() {
    let (m, k, n) = (3usize, 5usize, 4usize);
    let (ta, a) = u8s(&[m, k], 8);
    let w: Vec<u8> = (0..n * k).map(|i| (i * 37 % 255) as u8).collect();
    let bias = [100, -200, 300, 0];
    let acc = |i: usize, j: usize, za: i32, zb: i32, b_nk: bool| -> i32 {
        (0..k)
            .map(|kk| {
                let bv = if b_nk { w[j * k + kk] } else { w[kk * n + j] } as i8 as i32;
                (a[i * k + kk] as i32 - za) * (bv - zb)
            })
            .sum()
    };
    for quantized in [true, false] {
        let mut b = OnnxBuilder::new("qgemm", 17)
            .input("a", tensor_type(U8, &["3", "5"]))
            .initializer(f32_tensor("sa", &[], &[0.02]))
            .initializer(bytes_tensor("za", U8, &[], &[128]))
            .initializer(bytes_tensor("w", I8, &[4, 5], &w))
            .initializer(f32_tensor("sw", &[], &[0.03]))
            .initializer(bytes_tensor("zw", I8, &[], &[0]))
            .initializer(i32_tensor("c", &[4], &bias))
            .initializer(f32_tensor("sy", &[], &[0.05]))
            .initializer(bytes_tensor("zy", U8, &[], &[128]));
        let ins: &[&str] = if quantized {
            &["a", "sa", "za", "w", "sw", "zw", "c", "sy", "zy"]
        } else {
            &["a", "sa", "za", "w", "sw", "zw", "c"]
        };
        b = b
            .node_with(
                "QGemm",
                ins,
                &["y"],
                vec![attr_int("transB", 1), attr_float("alpha", 0.5)],
            )
            .output(
                "y",
                tensor_type(if quantized { U8 } else { F32 }, &["3", "4"]),
            );
        let want: Vec<f64> = (0..m * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                let y = (acc(i, j, 128, 0, true) + bias[j]) as f32 * 0.5 * 0.02 * 0.03;
                if quantized {
                    q_u8(y, 0.05, 128)
                } else {
                    y as f64
                }
            })
            .collect();
        for got in run(&model(b), &[("a", ta.clone())]) {
            assert_within(&got, &want, if quantized { 1.0 } else { 1e-5 }, "QGemm");
        }
    }
    // MatMulIntegerToFloat: B [K, N] with per-column scales and zeros.
    let sb = [0.01f32, 0.02, 0.03, 0.04];
    let zb = [0u8, 1, 2, 3];
    let b = OnnxBuilder::new("mmitf", 17)
        .input("a", tensor_type(U8, &["3", "5"]))
        .initializer(bytes_tensor("w", I8, &[5, 4], &w))
        .initializer(f32_tensor("sa", &[], &[0.02]))
        .initializer(f32_tensor("sb", &[4], &sb))
        .initializer(bytes_tensor("za", U8, &[], &[120]))
        .initializer(bytes_tensor("zb", I8, &[4], &zb))
        .initializer(f32_tensor("bias", &[4], &[1.0, -1.0, 0.5, 0.0]))
        .node(
            "MatMulIntegerToFloat",
            &["a", "w", "sa", "sb", "za", "zb", "bias"],
            &["y"],
        )
        .output("y", tensor_type(F32, &["3", "4"]));
    let bias_f = [1.0f32, -1.0, 0.5, 0.0];
    let want: Vec<f64> = (0..m * n)
        .map(|e| {
            let (i, j) = (e / n, e % n);
            (acc(i, j, 120, zb[j] as i32, false) as f32 * 0.02 * sb[j] + bias_f[j]) as f64
        })
        .collect();
    for got in run(&model(b), &[("a", ta)]) {
        assert_within(&got, &want, 1e-5, "MatMulIntegerToFloat");
    }
    // DynamicQuantizeMatMul: A quantized as DynamicQuantizeLinear does.
    let af: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin() * 2.0).collect();
    let b = OnnxBuilder::new("dqmm", 17)
        .input("a", tensor_type(F32, &["3", "5"]))
        .initializer(bytes_tensor("w", I8, &[5, 4], &w))
        .initializer(f32_tensor("sb", &[], &[0.03]))
        .node("DynamicQuantizeMatMul", &["a", "w", "sb"], &["y"])
        .output("y", tensor_type(F32, &["3", "4"]));
    let (lo, hi) = af
        .iter()
        .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
    let scale = (hi - lo) / 255.0;
    let zero = (-lo / scale).round_ties_even().clamp(0.0, 255.0) as i32;
    let aq: Vec<i32> = af
        .iter()
        .map(|&v| ((v / scale).round_ties_even() as i32 + zero).clamp(0, 255))
        .collect();
    let want: Vec<f64> = (0..m * n)
        .map(|e| {
            let (i, j) = (e / n, e % n);
            let s: i32 = (0..k)
                .map(|kk| (aq[i * k + kk] - zero) * (w[kk * n + j] as i8 as i32))
                .sum();
            (s as f32 * scale * 0.03) as f64
        })
        .collect();
    let ta = Tensor::from_f32(vec![3, 5], af).expect("tensor");
    for got in run(&model(b), &[("a", ta)]) {
        assert_within(&got, &want, 1e-5, "DynamicQuantizeMatMul");
    }
}

/// `MatMulNBits`, 4 and 8 bits, K not a multiple of the block, with and
/// without zero points: `A · Wᵀ` with `W[n][k] = (q - zero) · scale` per
/// block of 16 along K.
#[test]
fn matmul_nbits_dequantizes_blocks() {
    let (m, k, n, block) = (2usize, 40usize, 3usize, 16usize);
    let blocks = k.div_ceil(block);
    let af: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.11).cos()).collect();
    let scales: Vec<f32> = (0..n * blocks).map(|i| 0.01 + i as f32 * 0.002).collect();
    for (bits, with_zero) in [(4usize, true), (4, false), (8, true)] {
        let levels = 1usize << bits;
        let q: Vec<u8> = (0..n * blocks * block)
            .map(|i| (i * 7 % levels) as u8)
            .collect();
        let zeros: Vec<u8> = (0..n * blocks).map(|i| (i * 5 % levels) as u8).collect();
        let pack = |v: &[u8], per_row: usize| -> Vec<u8> {
            if bits == 8 {
                return v.to_vec();
            }
            v.chunks(per_row)
                .flat_map(|row| {
                    row.chunks(2)
                        .map(|p| p[0] | p.get(1).map_or(0, |h| h << 4))
                        .collect::<Vec<u8>>()
                })
                .collect()
        };
        let blob = block * bits / 8;
        let mut b = OnnxBuilder::new("nbits", 17)
            .input("a", tensor_type(F32, &["2", "40"]))
            .initializer(bytes_tensor(
                "b",
                U8,
                &[n as i64, blocks as i64, blob as i64],
                &pack(&q, block),
            ))
            .initializer(f32_tensor("s", &[(n * blocks) as i64], &scales));
        let zero_bytes = pack(&zeros, blocks);
        let mut ins = vec!["a", "b", "s"];
        if with_zero {
            b = b.initializer(bytes_tensor(
                "z",
                U8,
                &[zero_bytes.len() as i64],
                &zero_bytes,
            ));
            ins.push("z");
        }
        let b = b
            .node_with(
                "MatMulNBits",
                &ins,
                &["y"],
                vec![
                    attr_int("K", k as i64),
                    attr_int("N", n as i64),
                    attr_int("bits", bits as i64),
                    attr_int("block_size", block as i64),
                ],
            )
            .output("y", tensor_type(F32, &["2", "3"]));
        let wv = |j: usize, kk: usize| -> f32 {
            let blk = kk / block;
            let z = if with_zero {
                zeros[j * blocks + blk] as i32
            } else {
                (levels / 2) as i32
            };
            (q[(j * blocks + blk) * block + kk % block] as i32 - z) as f32
                * scales[j * blocks + blk]
        };
        let want: Vec<f64> = (0..m * n)
            .map(|e| {
                let (i, j) = (e / n, e % n);
                (0..k)
                    .map(|kk| af[i * k + kk] as f64 * wv(j, kk) as f64)
                    .sum()
            })
            .collect();
        let ta = Tensor::from_f32(vec![2, 40], af.clone()).expect("tensor");
        for got in run(&model(b), &[("a", ta)]) {
            assert_within(&got, &want, 1e-5, &format!("MatMulNBits {bits} bits"));
        }
    }
}

/// `DynamicQuantizeLSTM` is the ONNX `LSTM` of its dequantized weights:
/// W `[D, input, 4·hidden]` and R `[D, hidden, 4·hidden]` (LSTM's layout
/// transposed) with scales and zero points per direction or per direction
/// and gate row. The reference is a standard LSTM node given the weights
/// dequantized and transposed here, on Kiln's interpreter (the LSTM kernel
/// the node suite checks); bidirectional, with bias, initial states and
/// the LSTM's three results.
#[test]
fn dynamic_quantize_lstm_is_the_lstm_of_its_dequantized_weights() {
    let (seq, batch, input, hidden, dirs) = (5usize, 2usize, 3usize, 4usize, 2usize);
    let g = 4 * hidden;
    let xf: Vec<f32> = (0..seq * batch * input)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let bias: Vec<f32> = (0..dirs * 2 * g)
        .map(|i| (i as f32 * 0.21).cos() * 0.1)
        .collect();
    let h0: Vec<f32> = (0..dirs * batch * hidden)
        .map(|i| (i as f32 * 0.5).cos() * 0.3)
        .collect();
    for (elem, per_row) in [(I8, true), (U8, false)] {
        let q = |rows: usize, salt: usize| -> Vec<u8> {
            (0..dirs * rows * g)
                .map(|i| ((i * 37 + salt) % 251) as u8)
                .collect()
        };
        let (wq, rq) = (q(input, 3), q(hidden, 11));
        let params = if per_row { dirs * g } else { dirs };
        let pdims: Vec<i64> = if per_row {
            vec![dirs as i64, g as i64]
        } else {
            vec![dirs as i64]
        };
        let ws: Vec<f32> = (0..params).map(|i| 0.004 + 0.0003 * i as f32).collect();
        let rs: Vec<f32> = (0..params).map(|i| 0.003 + 0.0002 * i as f32).collect();
        let zero = |salt: usize| -> Vec<u8> {
            (0..params)
                .map(|i| {
                    if elem == I8 {
                        ((i * salt % 7) as i8 - 3) as u8
                    } else {
                        (120 + i * salt % 9) as u8
                    }
                })
                .collect()
        };
        let (wz, rz) = (zero(3), zero(5));
        let val = |b: u8| if elem == I8 { b as i8 as f32 } else { b as f32 };
        // LSTM's layout [D, 4·hidden, cols] of (q - z) · s.
        let dequant = |q: &[u8], z: &[u8], s: &[f32], cols: usize| -> Vec<f32> {
            let mut out = vec![0f32; dirs * g * cols];
            for d in 0..dirs {
                for r in 0..g {
                    let p = if per_row { d * g + r } else { d };
                    for c in 0..cols {
                        out[(d * g + r) * cols + c] =
                            (val(q[(d * cols + c) * g + r]) - val(z[p])) * s[p];
                    }
                }
            }
            out
        };
        let wf = dequant(&wq, &wz, &ws, input);
        let rf = dequant(&rq, &rz, &rs, hidden);
        let common = |b: OnnxBuilder| {
            b.input("x", tensor_type(F32, &["5", "2", "3"]))
                .initializer(f32_tensor("b", &[dirs as i64, 2 * g as i64], &bias))
                .initializer(f32_tensor(
                    "h0",
                    &[dirs as i64, batch as i64, hidden as i64],
                    &h0,
                ))
        };
        let attrs = || {
            vec![
                attr_int("hidden_size", hidden as i64),
                attr_string("direction", "bidirectional"),
            ]
        };
        let outputs = |b: OnnxBuilder| {
            b.output("y", tensor_type(F32, &["5", "2", "2", "4"]))
                .output("yh", tensor_type(F32, &["2", "2", "4"]))
                .output("yc", tensor_type(F32, &["2", "2", "4"]))
        };
        let quant = outputs(
            common(OnnxBuilder::new("dqlstm", 17))
                .initializer(bytes_tensor(
                    "w",
                    elem,
                    &[dirs as i64, input as i64, g as i64],
                    &wq,
                ))
                .initializer(bytes_tensor(
                    "r",
                    elem,
                    &[dirs as i64, hidden as i64, g as i64],
                    &rq,
                ))
                .initializer(f32_tensor("ws", &pdims, &ws))
                .initializer(bytes_tensor("wz", elem, &pdims, &wz))
                .initializer(f32_tensor("rs", &pdims, &rs))
                .initializer(bytes_tensor("rz", elem, &pdims, &rz))
                .node_with(
                    "DynamicQuantizeLSTM",
                    &["x", "w", "r", "b", "", "h0", "", "", "ws", "wz", "rs", "rz"],
                    &["y", "yh", "yc"],
                    attrs(),
                ),
        );
        let float = outputs(
            common(OnnxBuilder::new("lstm", 17))
                .initializer(f32_tensor("w", &[dirs as i64, g as i64, input as i64], &wf))
                .initializer(f32_tensor(
                    "r",
                    &[dirs as i64, g as i64, hidden as i64],
                    &rf,
                ))
                .node_with(
                    "LSTM",
                    &["x", "w", "r", "b", "", "h0"],
                    &["y", "yh", "yc"],
                    attrs(),
                ),
        )
        .bytes();
        let x = Tensor::from_f32(vec![seq, batch, input], xf.clone()).expect("tensor");
        let want = {
            let m = import_model_bytes(&float, None, &Default::default()).expect("imports");
            let ins: HashMap<String, Value> = [(
                "x".to_string(),
                Value::Tensor(std::sync::Arc::new(x.clone())),
            )]
            .into();
            Interpreter::new(&m).run(&ins).expect("interprets")[0]
                .as_tensor()
                .expect("a tensor")
                .to_f64()
        };
        for got in run(&model(quant), &[("x", x)]) {
            assert_within(&got, &want, 1e-5, &format!("DynamicQuantizeLSTM {elem}"));
        }
    }
}

/// Malformed contrib ops fail to import with the node and the reason, not
/// a panic.
#[test]
fn malformed_contrib_ops_are_import_errors() {
    let nbits = |bits: i64, b_is_input: bool, blob: usize| {
        let mut m = OnnxBuilder::new("bad", 17)
            .input("a", tensor_type(F32, &["1", "32"]))
            .initializer(f32_tensor("s", &[2], &[0.1, 0.1]));
        m = if b_is_input {
            m.input("b", tensor_type(U8, &["2", "1", "16"]))
        } else {
            m.initializer(bytes_tensor(
                "b",
                U8,
                &[2, 1, blob as i64],
                &vec![0; 2 * blob],
            ))
        };
        model(
            m.node_with(
                "MatMulNBits",
                &["a", "b", "s"],
                &["y"],
                vec![
                    attr_int("K", 32),
                    attr_int("N", 2),
                    attr_int("bits", bits),
                    attr_int("block_size", 32),
                ],
            )
            .output("y", tensor_type(F32, &["1", "2"])),
        )
    };
    let concat = model(
        OnnxBuilder::new("bad", 17)
            .input("x", tensor_type(U8, &["1", "2"]))
            .initializer(f32_tensor("s", &[], &[0.1]))
            .initializer(bytes_tensor("z", U8, &[], &[0]))
            .node_with(
                "QLinearConcat",
                &["s", "z", "x", "s"],
                &["y"],
                vec![attr_int("axis", 1)],
            )
            .output("y", tensor_type(U8, &["1", "2"])),
    );
    // DynamicQuantizeLSTM whose W is a graph input, or whose scale has
    // neither a per-direction nor a per-row shape.
    let lstm = |w_is_input: bool, scale_len: usize| {
        let mut b = OnnxBuilder::new("bad", 17).input("x", tensor_type(F32, &["2", "1", "3"]));
        b = if w_is_input {
            b.input("w", tensor_type(I8, &["1", "3", "8"]))
        } else {
            b.initializer(bytes_tensor("w", I8, &[1, 3, 8], &[1; 24]))
        };
        model(
            b.initializer(bytes_tensor("r", I8, &[1, 2, 8], &[1; 16]))
                .initializer(f32_tensor("s", &[scale_len as i64], &vec![0.1; scale_len]))
                .initializer(bytes_tensor(
                    "z",
                    I8,
                    &[scale_len as i64],
                    &vec![0; scale_len],
                ))
                .node_with(
                    "DynamicQuantizeLSTM",
                    &["x", "w", "r", "", "", "", "", "", "s", "z", "s", "z"],
                    &["y"],
                    vec![attr_int("hidden_size", 2)],
                )
                .output("y", tensor_type(F32, &["2", "1", "1", "2"])),
        )
    };
    for (bytes, want) in [
        (lstm(true, 1), "needs a constant W"),
        (lstm(false, 3), "W_scale must be [1] or [1, 8]"),
        (nbits(3, false, 16), "3 bits is not supported"),
        (nbits(4, true, 16), "needs a constant B"),
        (nbits(4, false, 8), "B must be u8 [2, 1, 16]"),
        (concat, "(X, X_scale, X_zero_point) triples"),
    ] {
        let err = import_model_bytes(&bytes, None, &Default::default())
            .expect_err("a malformed contrib op must not import")
            .to_string();
        assert!(err.contains("com.microsoft."), "{err}");
        assert!(err.contains(want), "{err}");
    }
}
