"""Builds tests/models/opset24: node cases for the ops ONNX added in opsets
23 and 24 (Attention, RMSNormalization, RotaryEmbedding, Swish,
TensorScatter), which the node suite (onnx 1.17, opset <= 22) does not cover. Exporters write them
(PyTorch's dynamo exporter at opset 23 turns scaled_dot_product_attention
into Attention and RMSNorm into RMSNormalization).

Each case is a folder in the ONNX backend-test layout (model.onnx,
test_data_set_0/input_N.pb, output_N.pb). The expected outputs come from
onnx's reference implementation and are checked here against onnxruntime
where onnxruntime runs the case, so the data does not rest on one
implementation's reading of the spec.

Run: python3 tests/models/make_opset24_cases.py   (needs onnx>=1.19, numpy;
onnxruntime for the cross-check). With a folder argument it writes a
bigger decoder block there instead, to benchmark.
"""
import os
import shutil
import sys
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

try:
    import onnxruntime as ort
except ImportError:  # the cross-check is skipped, not the cases
    ort = None

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "opset24")
rng = np.random.default_rng(20261207)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def case(name, op, inputs, attrs=None, n_outputs=1, opset=24, out_names=None):
    """inputs: list of (name, array or None for an omitted optional input)."""
    attrs = attrs or {}
    in_names = [n if a is not None else "" for n, a in inputs]
    while in_names and in_names[-1] == "":
        in_names.pop()
    out_names = out_names or [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op, in_names, out_names, **attrs)
    feeds = {n: a for n, a in inputs if a is not None}
    vi = []
    for n, a in feeds.items():
        t = helper.np_dtype_to_tensor_dtype(a.dtype)
        vi.append(helper.make_tensor_value_info(n, t, list(a.shape)))
    outs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in out_names if o]
    graph = helper.make_graph([node], name, vi, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    expected = ReferenceEvaluator(model).run(None, feeds)
    # Declare the outputs' types now that they are known.
    del model.graph.output[:]
    for o, e in zip([o for o in out_names if o], expected):
        model.graph.output.append(
            helper.make_tensor_value_info(o, helper.np_dtype_to_tensor_dtype(e.dtype), list(e.shape)))
    onnx.checker.check_model(model, full_check=True)
    if ort is not None:
        try:
            sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            got = sess.run(None, feeds)
            for g, e in zip(got, expected):
                # f16 results may differ by one f16 ulp (2^-11 relative).
                tol = 2e-3 if e.dtype == np.float16 else 1e-4
                np.testing.assert_allclose(g, e, rtol=tol, atol=tol / 10, err_msg=name)
            checked = "onnxruntime agrees"
        except Exception as err:  # noqa: BLE001
            msg = str(err).splitlines()[0][:100]
            if "assert" in type(err).__name__.lower() or "Mismatch" in str(err):
                raise
            checked = f"onnxruntime does not run it ({msg})"
    else:
        checked = "onnxruntime not installed"
    d = os.path.join(OUT, name)
    os.makedirs(os.path.join(d, "test_data_set_0"))
    onnx.save(model, os.path.join(d, "model.onnx"))
    for i, (n, a) in enumerate(feeds.items()):
        t = numpy_helper.from_array(a, n)
        with open(os.path.join(d, "test_data_set_0", f"input_{i}.pb"), "wb") as f:
            f.write(t.SerializeToString())
    for i, (o, e) in enumerate(zip([o for o in out_names if o], expected)):
        t = numpy_helper.from_array(e, o)
        with open(os.path.join(d, "test_data_set_0", f"output_{i}.pb"), "wb") as f:
            f.write(t.SerializeToString())
    print(f"{name}: {checked}")


def llama_block(out_dir, name, hidden, heads, kv_heads, seq, ffn, batch=1):
    """A decoder block as LLM exporters write it at opset 24: RMSNorm,
    Q/K/V projections, RotaryEmbedding on 3-D Q and K, causal grouped-query
    Attention on 3-D operands, output projection and residual, RMSNorm,
    and a SwiGLU MLP (Swish(x W1) * (x W3)) W2 with a residual."""
    head = hidden // heads
    w = lambda *s: (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)
    inits = {
        "g1": (1 + 0.1 * rand(hidden)), "g2": (1 + 0.1 * rand(hidden)),
        "wq": w(hidden, hidden), "wk": w(hidden, kv_heads * head),
        "wv": w(hidden, kv_heads * head), "wo": w(hidden, hidden),
        "w1": w(hidden, ffn), "w3": w(hidden, ffn), "w2": w(ffn, hidden),
    }
    inv = 1.0 / (10000 ** (np.arange(0, head, 2) / head))
    ang = np.arange(2 * seq)[:, None] * inv[None, :]
    inits["cos"] = np.cos(ang).astype(np.float32)
    inits["sin"] = np.sin(ang).astype(np.float32)
    H = helper.make_node
    nodes = [
        H("RMSNormalization", ["x", "g1"], ["n1"], epsilon=1e-6),
        H("MatMul", ["n1", "wq"], ["q"]), H("MatMul", ["n1", "wk"], ["k"]),
        H("MatMul", ["n1", "wv"], ["v"]),
        H("RotaryEmbedding", ["q", "cos", "sin", "pos"], ["qr"], num_heads=heads),
        H("RotaryEmbedding", ["k", "cos", "sin", "pos"], ["kr"], num_heads=kv_heads),
        H("Attention", ["qr", "kr", "v"], ["a"], is_causal=1, q_num_heads=heads,
          kv_num_heads=kv_heads),
        H("MatMul", ["a", "wo"], ["o"]), H("Add", ["x", "o"], ["h"]),
        H("RMSNormalization", ["h", "g2"], ["n2"], epsilon=1e-6),
        H("MatMul", ["n2", "w1"], ["u"]), H("Swish", ["u"], ["su"]),
        H("MatMul", ["n2", "w3"], ["g"]), H("Mul", ["su", "g"], ["m"]),
        H("MatMul", ["m", "w2"], ["d"]), H("Add", ["h", "d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, seq, hidden]),
         helper.make_tensor_value_info("pos", TensorProto.INT64, [batch, seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, hidden])],
        [numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    feeds = {"x": rand(batch, seq, hidden),
             "pos": np.tile(np.arange(seq, dtype=np.int64) + 3, (batch, 1))}
    expected = ReferenceEvaluator(model).run(None, feeds)
    if ort is not None:
        got = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, feeds)
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4, err_msg=name)
    d = os.path.join(out_dir, name)
    os.makedirs(os.path.join(d, "test_data_set_0"))
    onnx.save(model, os.path.join(d, "model.onnx"))
    for i, (n, a) in enumerate(feeds.items()):
        with open(os.path.join(d, "test_data_set_0", f"input_{i}.pb"), "wb") as f:
            f.write(numpy_helper.from_array(a, n).SerializeToString())
    with open(os.path.join(d, "test_data_set_0", "output_0.pb"), "wb") as f:
        f.write(numpy_helper.from_array(expected[0], "y").SerializeToString())
    print(f"{name}: {'onnxruntime agrees' if ort else 'onnxruntime not installed'}")


def main():
    if len(sys.argv) > 1:
        # A bigger block to benchmark (not committed):
        #   make_opset24_cases.py DIR  ->  DIR/llama_block_bench
        llama_block(sys.argv[1], "llama_block_bench", hidden=512, heads=8, kv_heads=2,
                    seq=128, ffn=1376)
        return
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    llama_block(OUT, "llama_block", hidden=32, heads=4, kv_heads=2, seq=8, ffn=48)

    # RMSNormalization: over the last axis, over the last two, f16 input.
    case("rms_norm_last_axis", "RMSNormalization",
         [("x", rand(2, 5, 16)), ("scale", rand(16))], {"epsilon": 1e-5}, opset=23)
    case("rms_norm_axis1", "RMSNormalization",
         [("x", rand(2, 3, 4, 5)), ("scale", rand(4, 5))], {"axis": 2, "epsilon": 1e-3}, opset=23)
    case("rms_norm_f16", "RMSNormalization",
         [("x", rand(3, 8).astype(np.float16)), ("scale", rand(8).astype(np.float16))], opset=23)

    # Swish (opset 24).
    case("swish", "Swish", [("x", rand(3, 7) * 3)])
    case("swish_alpha", "Swish", [("x", rand(3, 7) * 3)], {"alpha": 1.702})

    # Attention, 4-D inputs [batch, heads, seq, head_size].
    q, k, v = rand(2, 4, 5, 8), rand(2, 4, 6, 8), rand(2, 4, 6, 8)
    case("attention_4d", "Attention", [("q", q), ("k", k), ("v", v)])
    case("attention_4d_scale_softcap", "Attention", [("q", q), ("k", k), ("v", v)],
         {"scale": 0.2, "softcap": 2.0})
    case("attention_4d_diff_head_sizes", "Attention",
         [("q", q), ("k", k), ("v", rand(2, 4, 6, 3))])
    case("attention_4d_float_mask", "Attention",
         [("q", q), ("k", k), ("v", v), ("mask", rand(5, 6))])
    bool_mask = rng.random((2, 1, 5, 6)) > 0.3
    bool_mask[..., 0] = True
    case("attention_4d_bool_mask", "Attention",
         [("q", q), ("k", k), ("v", v), ("mask", bool_mask)])
    case("attention_4d_causal", "Attention",
         [("q", q), ("k", rand(2, 4, 5, 8)), ("v", rand(2, 4, 5, 8))], {"is_causal": 1})
    # Grouped-query attention: 4 query heads share 2 key/value heads.
    case("attention_4d_gqa", "Attention",
         [("q", q), ("k", rand(2, 2, 6, 8)), ("v", rand(2, 2, 6, 8))])
    # A key/value cache: present = concat(past, new) along the sequence.
    case("attention_4d_past_causal", "Attention",
         [("q", rand(1, 2, 3, 4)), ("k", rand(1, 2, 3, 4)), ("v", rand(1, 2, 3, 4)), ("mask", None),
          ("past_key", rand(1, 2, 4, 4)), ("past_value", rand(1, 2, 4, 4))],
         {"is_causal": 1}, n_outputs=3)
    case("attention_4d_qk_output", "Attention",
         [("q", q), ("k", k), ("v", v), ("mask", rand(5, 6))],
         {"qk_matmul_output_mode": 1}, out_names=["y", "", "", "qk"])
    # A static cache: K and V hold 8 positions, of which nonpad_kv_seqlen
    # are valid per sample; causal from the end of the valid keys (the
    # first sample's first query sees no key: a zero row).
    kc, vc = rand(2, 2, 8, 4), rand(2, 2, 8, 4)
    case("attention_4d_nonpad_causal", "Attention",
         [("q", rand(2, 2, 3, 4)), ("k", kc), ("v", vc), ("mask", None), ("past_key", None),
          ("past_value", None), ("nonpad", np.array([2, 8], dtype=np.int64))],
         {"is_causal": 1})
    case("attention_4d_nonpad_mask", "Attention",
         [("q", rand(2, 2, 3, 4)), ("k", kc), ("v", vc), ("mask", rand(3, 8)), ("past_key", None),
          ("past_value", None), ("nonpad", np.array([5, 7], dtype=np.int64))])
    # 3-D inputs [batch, seq, heads * head_size] with the head counts given.
    case("attention_3d_gqa_causal", "Attention",
         [("q", rand(2, 5, 32)), ("k", rand(2, 5, 16)), ("v", rand(2, 5, 16))],
         {"q_num_heads": 4, "kv_num_heads": 2, "is_causal": 1})
    case("attention_3d_opset23", "Attention",
         [("q", rand(1, 4, 12)), ("k", rand(1, 6, 12)), ("v", rand(1, 6, 12))],
         {"q_num_heads": 3, "kv_num_heads": 3}, opset=23)

    # TensorScatter: a key/value cache [batch, heads, max_seq, head]
    # updated at each sample's write index; circular mode wraps around.
    cache = rand(2, 3, 6, 4)
    case("tensor_scatter_linear", "TensorScatter",
         [("past", cache), ("upd", rand(2, 3, 2, 4)),
          ("idx", np.array([1, 4], dtype=np.int64))])
    case("tensor_scatter_circular", "TensorScatter",
         [("past", cache), ("upd", rand(2, 3, 3, 4)),
          ("idx", np.array([5, 2], dtype=np.int64))], {"mode": "circular"})
    case("tensor_scatter_prefill_axis2", "TensorScatter",
         [("past", rand(2, 5, 4)), ("upd", rand(2, 3, 4))], {"axis": 1})

    # RotaryEmbedding: 4-D [batch, heads, seq, head] with position ids.
    cos = np.cos(np.arange(16)[:, None] * (1e-1 ** (np.arange(4) / 4))).astype(np.float32)
    sin = np.sin(np.arange(16)[:, None] * (1e-1 ** (np.arange(4) / 4))).astype(np.float32)
    pos = np.array([[0, 1, 2], [5, 6, 7]], dtype=np.int64)
    case("rotary_4d_position_ids", "RotaryEmbedding",
         [("x", rand(2, 3, 3, 8)), ("cos", cos), ("sin", sin), ("pos", pos)], opset=23)
    case("rotary_4d_interleaved", "RotaryEmbedding",
         [("x", rand(2, 3, 3, 8)), ("cos", cos), ("sin", sin), ("pos", pos)],
         {"interleaved": 1}, opset=23)
    # Partial rotation: only the first 4 of 12 features rotate.
    case("rotary_3d_partial", "RotaryEmbedding",
         [("x", rand(2, 3, 24)), ("cos", cos[:, :2].copy()), ("sin", sin[:, :2].copy()), ("pos", pos)],
         {"num_heads": 2, "rotary_embedding_dim": 4}, opset=23)
    # Without position ids the caches are per batch and position.
    case("rotary_4d_no_position_ids", "RotaryEmbedding",
         [("x", rand(2, 2, 3, 8)), ("cos", np.stack([cos[:3], cos[4:7]])),
          ("sin", np.stack([sin[:3], sin[4:7]]))], opset=23)


if __name__ == "__main__":
    main()
