"""Builds tests/models/tiny_cnn: the small model the README's main command runs.

A 28x28 one-channel image classifier with seeded random weights:
Conv(8,3x3)+Relu -> MaxPool 2x2 -> Conv(16,3x3)+Relu -> GlobalAveragePool ->
Flatten -> Gemm(10) -> Softmax. Also writes test_data_set_0 (input and the
expected output, computed here with numpy) in the ONNX backend-test layout.

Run: python3 tests/models/make_tiny_cnn.py   (needs onnx==1.17.0 and numpy)
"""
import os
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(20261128)
w1 = (rng.standard_normal((8, 1, 3, 3)) * 0.5).astype(np.float32)
b1 = (rng.standard_normal(8) * 0.1).astype(np.float32)
w2 = (rng.standard_normal((16, 8, 3, 3)) * 0.2).astype(np.float32)
b2 = (rng.standard_normal(16) * 0.1).astype(np.float32)
w3 = (rng.standard_normal((10, 16)) * 0.5).astype(np.float32)
b3 = (rng.standard_normal(10) * 0.1).astype(np.float32)

nodes = [
    helper.make_node("Conv", ["image", "conv1.w", "conv1.b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
    helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
    helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
    helper.make_node("Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
    helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
    helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
    helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
    helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["logits"], transB=1, name="fc"),
    helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
]
inits = [numpy_helper.from_array(a, n) for n, a in
         [("conv1.w", w1), ("conv1.b", b1), ("conv2.w", w2), ("conv2.b", b2), ("fc.w", w3), ("fc.b", b3)]]
graph = helper.make_graph(
    nodes, "tiny_cnn",
    [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
    [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
    inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="kiln-tests")
onnx.checker.check_model(model, full_check=True)

def conv(x, w, b):
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd), np.float64)
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", xp[:, :, i:i + h, j:j + wd], w[:, :, i, j])
    return out + b[None, :, None, None]

x = rng.random((1, 1, 28, 28)).astype(np.float32)
h = np.maximum(conv(x.astype(np.float64), w1, b1), 0)
h = h.reshape(1, 8, 14, 2, 14, 2).max(axis=(3, 5))
h = np.maximum(conv(h, w2, b2), 0).mean(axis=(2, 3))
logits = h @ w3.T.astype(np.float64) + b3
e = np.exp(logits - logits.max(axis=-1, keepdims=True))
probs = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_cnn")
os.makedirs(os.path.join(here, "test_data_set_0"), exist_ok=True)
onnx.save(model, os.path.join(here, "model.onnx"))
for name, arr, fn in [("image", x, "input_0.pb"), ("probs", probs, "output_0.pb")]:
    with open(os.path.join(here, "test_data_set_0", fn), "wb") as f:
        f.write(numpy_helper.from_array(arr, name).SerializeToString())
print("wrote", here, "probs", probs.round(4).tolist())
