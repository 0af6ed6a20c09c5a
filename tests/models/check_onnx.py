"""Check a model written by `kiln quantize` or `kiln prune` the way other
tools will read it: onnx.checker (full check, with shape inference), then
onnxruntime runs it and the original model on the same seeded inputs, and
the outputs agree to a cosine of at least MIN_COSINE. With `qdq`, the
model must hold QuantizeLinear and DequantizeLinear nodes.

usage: check_onnx.py WRITTEN.onnx ORIGINAL.onnx MIN_COSINE [qdq]
"""
import sys

import numpy as np
import onnx
import onnxruntime as ort

quantized, original, min_cosine = sys.argv[1], sys.argv[2], float(sys.argv[3])
onnx.checker.check_model(onnx.load(quantized), full_check=True)
print("checker: ok")
if sys.argv[4:] == ["qdq"]:
    ops = {n.op_type for n in onnx.load(quantized).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops, ops
rng = np.random.default_rng(0)
so = ort.SessionOptions()
so.intra_op_num_threads = 1
q = ort.InferenceSession(quantized, so, providers=["CPUExecutionProvider"])
f = ort.InferenceSession(original, so, providers=["CPUExecutionProvider"])
feeds = {}
for i in f.get_inputs():
    shape = [d if isinstance(d, int) else 1 for d in i.shape]
    feeds[i.name] = rng.uniform(-1, 1, shape).astype(np.float32)
for a, b in zip(f.run(None, feeds), q.run(None, feeds)):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)
    print(f"cosine {cos:.6f}")
    assert cos >= min_cosine, cos
print("onnxruntime: ok")
