"""Builds quantized versions of the shared models with onnxruntime's own tools.

Nothing here is committed: the models go to `target/quant-models/<name>/`
(override with the first argument), each laid out like an ONNX backend test
(`model.onnx`, `test_data_set_0/input_N.pb`, `output_N.pb`) so `kiln
conformance` and `../shared/bench/compare.sh` read them. Expected outputs
are onnxruntime's on the *quantized* model (all optimizations), the engine
users compare Kiln with, except on CPUs where onnxruntime's int8 kernels
saturate (x86 without VNNI) so much that they miss the conformance
criterion: there a QDQ model's come from its unoptimized session (the
reference arithmetic, Dequantize → f32 op → Quantize) and its QOperator
twin is left out (the script says so).

What it makes, from `../shared/models` and `../shared/zoo/models`:
- `<cnn>_qdq`: `quantize_static`, QDQ format, u8 activations, s8 symmetric
  per-channel weights, MinMax calibration on 16 seeded perturbations of the
  test input (the way a user calibrates on a few samples);
- `<cnn>_qop`: the same in QOperator format (`QLinearConv`, the
  `com.microsoft` QLinear ops);
- `minilm_l3_dyn`: `quantize_dynamic` (`DynamicQuantizeLinear` +
  `MatMulInteger`);
- `minilm_l3_nbits4`: `MatMulNBitsQuantizer`, 4-bit blocks of 32;
- `minilm_l3_w8`: weight-only int8 written as `Cast(int8) * scale`, the
  form embedding exporters write (no onnxruntime tool makes it): every
  f32 matrix of 4096 or more values becomes a symmetric int8 constant
  with a scale per column, or per row for a table that a Gather reads
  (a scale per token).
- `bilstm_dyn`: a two-layer bidirectional LSTM (seeded random weights,
  input [50, 1, 64], hidden 128) through `quantize_dynamic`, which writes
  `com.microsoft.DynamicQuantizeLSTM`.

Run: .venv-bench/bin/python tests/models/make_quant_models.py
(needs onnx, onnxruntime >= 1.20, onnx_ir, numpy).
"""
import os
import shutil
import sys

import logging

import numpy as np
import onnx
import onnx.version_converter
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat,
                                      QuantType, quantize_dynamic,
                                      quantize_static)
from onnxruntime.quantization.matmul_nbits_quantizer import \
    MatMulNBitsQuantizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "quant-models")

CNNS = [
    ("squeezenet_rand", os.path.join(SHARED, "models", "squeezenet_rand")),
    ("ppocr_mobile_v2_cls", os.path.join(SHARED, "models", "ppocr_mobile_v2_cls")),
    ("squeezenet1_1", os.path.join(SHARED, "zoo", "models", "squeezenet1_1")),
    ("mobilenet_v3_small", os.path.join(SHARED, "zoo", "models", "mobilenet_v3_small")),
    ("shufflenet_v2_x1_0", os.path.join(SHARED, "zoo", "models", "shufflenet_v2_x1_0")),
]
MINILM = os.path.join(SHARED, "models", "minilm_l3")


def read_inputs(folder):
    """The test inputs of `folder`, by graph input name."""
    model = onnx.load(os.path.join(folder, "model.onnx"), load_external_data=False)
    names = [i.name for i in model.graph.input]
    d = os.path.join(folder, "test_data_set_0")
    out = {}
    for k, name in enumerate(names):
        p = os.path.join(d, f"input_{k}.pb")
        if os.path.exists(p):
            t = onnx.TensorProto()
            with open(p, "rb") as f:
                t.ParseFromString(f.read())
            out[t.name or name] = numpy_helper.to_array(t)
    return out


class Perturbed(CalibrationDataReader):
    """Seeded perturbations of one input set: float inputs get noise of a
    tenth of their spread; integer inputs (token ids, masks) stay."""

    def __init__(self, inputs, n=16, seed=20261206):
        rng = np.random.default_rng(seed)
        self.sets = []
        for _ in range(n):
            s = {}
            for k, v in inputs.items():
                if v.dtype.kind == "f":
                    s[k] = (v + rng.standard_normal(v.shape).astype(v.dtype) * (v.std() * 0.1 + 1e-3)).astype(v.dtype)
                else:
                    s[k] = v
            self.sets.append(s)
        self.it = iter(self.sets)

    def get_next(self):
        return next(self.it, None)


def session(model_path, optimized=True):
    so = ort.SessionOptions()
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])


def saturating_reference(model_path, inputs):
    """For a QDQ model: the outputs of onnxruntime's unoptimized session
    (Dequantize, f32 op, Quantize: the reference arithmetic) when its
    optimized session differs from them by more than the conformance
    criterion allows, else None. That happens on x86 CPUs without VNNI,
    where onnxruntime's u8 x s8 kernels use `vpmaddubsw`, whose i16 pair
    sums saturate (onnxruntime's quantization docs: `reduce_range`);
    its outputs then are not the model's."""
    fast, ref = session(model_path), session(model_path, optimized=False)
    feed = {i.name: inputs[i.name] for i in fast.get_inputs()}
    a, b = fast.run(None, feed), ref.run(None, feed)
    for x, y in zip(a, b):
        span = float(y.max() - y.min()) or 1.0
        if np.abs(x.astype(np.float64) - y).mean() > 1e-3 * span:
            return b
    return None


def write_case(name, model_path, inputs, outs=None):
    """test_data_set_0 for a quantized model: the inputs and onnxruntime's
    outputs on it (or `outs`)."""
    d = os.path.join(OUT, name, "test_data_set_0")
    os.makedirs(d, exist_ok=True)
    sess = session(model_path)
    feed = {i.name: inputs[i.name] for i in sess.get_inputs()}
    if outs is None:
        outs = sess.run(None, feed)
    else:
        print(f"{name}: expected outputs from onnxruntime's reference arithmetic "
              "(its optimized int8 kernels saturate on this CPU)")
    for k, i in enumerate(sess.get_inputs()):
        t = numpy_helper.from_array(feed[i.name], i.name)
        open(os.path.join(d, f"input_{k}.pb"), "wb").write(t.SerializeToString())
    for k, (o, v) in enumerate(zip(sess.get_outputs(), outs)):
        t = numpy_helper.from_array(v, o.name)
        open(os.path.join(d, f"output_{k}.pb"), "wb").write(t.SerializeToString())
    print(f"{name}: {os.path.getsize(model_path) / 1e6:.1f} MB")


def cast_scale_int8(model):
    """`model` with every large f32 matrix stored as int8 and rebuilt as
    `Cast(q) * scale` (see the module docs)."""
    g = model.graph
    gathered = {n.input[0] for n in g.node if n.op_type == "Gather"}
    keep, nodes = [], []
    for init in g.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim != 2 or w.size < 4096:
            keep.append(init)
            continue
        axis = 1 if init.name in gathered else 0
        scale = np.maximum(np.abs(w).max(axis=axis, keepdims=True), 1e-12) / 127.0
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        qn, sn, cn = init.name + "_q", init.name + "_scale", init.name + "_f32"
        keep.append(numpy_helper.from_array(q, qn))
        keep.append(numpy_helper.from_array(scale.astype(np.float32), sn))
        nodes.append(onnx.helper.make_node("Cast", [qn], [cn], to=onnx.TensorProto.FLOAT))
        nodes.append(onnx.helper.make_node("Mul", [cn, sn], [init.name]))
    del g.initializer[:]
    g.initializer.extend(keep)
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)
    onnx.checker.check_model(model)
    return model


def bilstm(path):
    """A two-layer bidirectional LSTM with seeded weights, saved at `path`;
    its test inputs."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(20261206)
    seq, batch, inp, hid = 50, 1, 64, 128
    nodes, inits = [], []
    x = "x"
    for layer, width in enumerate([inp, 2 * hid]):
        w = (rng.standard_normal((2, 4 * hid, width)) / np.sqrt(width)).astype(np.float32)
        r = (rng.standard_normal((2, 4 * hid, hid)) / np.sqrt(hid)).astype(np.float32)
        b = (rng.standard_normal((2, 8 * hid)) * 0.1).astype(np.float32)
        names = [f"w{layer}", f"r{layer}", f"b{layer}"]
        inits += [numpy_helper.from_array(a, n) for a, n in zip([w, r, b], names)]
        y = f"y{layer}"
        nodes.append(helper.make_node("LSTM", [x] + names, [y], hidden_size=hid,
                                      direction="bidirectional"))
        # [seq, 2, batch, hid] -> [seq, batch, 2 * hid]
        t = f"t{layer}"
        nodes.append(helper.make_node("Transpose", [y], [t], perm=[0, 2, 1, 3]))
        shape = f"shape{layer}"
        inits.append(numpy_helper.from_array(np.array([seq, batch, 2 * hid], np.int64), shape))
        x = f"h{layer}"
        nodes.append(helper.make_node("Reshape", [t, shape], [x]))
    g = helper.make_graph(nodes, "bilstm",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, inp])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [seq, batch, 2 * hid])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return {"x": rng.standard_normal((seq, batch, inp)).astype(np.float32)}


def main():
    logging.getLogger().setLevel(logging.WARNING)
    ort.set_default_logger_severity(3)
    os.makedirs(OUT, exist_ok=True)
    for name, folder in CNNS:
        if not os.path.isdir(folder):
            print(f"skip {name}: {folder} is missing")
            continue
        src = os.path.join(folder, "model.onnx")
        inputs = read_inputs(folder)
        m = onnx.load(src)
        opset = max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
        if opset < 13:
            # Per-channel DequantizeLinear (its `axis`) needs opset 13.
            src = os.path.join(OUT, f"{name}_f32_opset13.onnx")
            onnx.save(onnx.version_converter.convert_version(m, 13), src)
        # Where onnxruntime's int8 kernels saturate, the QDQ model is judged
        # against its reference outputs, and the QOperator model, which
        # runs the same kernels even unoptimized, has no trustworthy
        # expected outputs: it is left out, saying so.
        reference = None
        for fmt, suffix in [(QuantFormat.QDQ, "qdq"), (QuantFormat.QOperator, "qop")]:
            dst_dir = os.path.join(OUT, f"{name}_{suffix}")
            os.makedirs(dst_dir, exist_ok=True)
            dst = os.path.join(dst_dir, "model.onnx")
            try:
                quantize_static(src, dst, Perturbed(inputs), quant_format=fmt, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            except Exception as e:  # the tool's own limits: say so, go on
                print(f"skip {name}_{suffix}: quantize_static failed: {e!r}")
                continue
            if fmt == QuantFormat.QDQ:
                reference = saturating_reference(dst, inputs)
            elif reference is not None:
                shutil.rmtree(dst_dir)
                print(f"skip {name}_{suffix}: onnxruntime's int8 kernels saturate on this "
                      "CPU and a QOperator model has no reference path to check them by")
                continue
            write_case(f"{name}_{suffix}", dst, inputs, reference)
    if os.path.isdir(MINILM):
        src = os.path.join(MINILM, "model.onnx")
        inputs = read_inputs(MINILM)
        dst_dir = os.path.join(OUT, "minilm_l3_dyn")
        os.makedirs(dst_dir, exist_ok=True)
        dst = os.path.join(dst_dir, "model.onnx")
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        write_case("minilm_l3_dyn", dst, inputs)

        dst_dir = os.path.join(OUT, "minilm_l3_nbits4")
        os.makedirs(dst_dir, exist_ok=True)
        dst = os.path.join(dst_dir, "model.onnx")
        q = MatMulNBitsQuantizer(onnx.load(src), block_size=32, is_symmetric=False, bits=4)
        q.process()
        q.model.save_model_to_file(dst, use_external_data_format=False)
        write_case("minilm_l3_nbits4", dst, inputs)

        dst_dir = os.path.join(OUT, "minilm_l3_w8")
        os.makedirs(dst_dir, exist_ok=True)
        dst = os.path.join(dst_dir, "model.onnx")
        onnx.save(cast_scale_int8(onnx.load(src)), dst)
        write_case("minilm_l3_w8", dst, inputs)


    src = os.path.join(OUT, "bilstm_f32.onnx")
    inputs = bilstm(src)
    dst_dir = os.path.join(OUT, "bilstm_dyn")
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, "model.onnx")
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM"])
    write_case("bilstm_dyn", dst, inputs)


if __name__ == "__main__":
    main()
