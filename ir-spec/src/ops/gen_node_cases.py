#!/usr/bin/env python3
"""Generate ir-spec/tests/data/onnx_node_cases.txt from the ONNX node test
suite (onnx 1.17's backend/test/data/node): one case per single-node model,
with the op, attributes, operand types (small integer and float operands
carried as constants, from test_data_set_0) and the expected result types.

The `onnx_node_suite_shapes` test runs every case through the registry's
inference rules and checks each inferred type is compatible with the
expected one. Cases with graph attributes (If/Loop/Scan/SequenceMap) are
left out: their region types are not in the test data.

Line format (fields separated by single spaces, strings hex-encoded):
  case NAME / op OP / attr NAME KIND VALUE... / in TYPE [ELEM SHAPE HEXBYTES]
  / in - (omitted) / out TYPE / end
Types print as in verifier messages: f32[1,?,3], f32[*], seq<...>, opt<...>.

With `--models DIR` it instead writes tests/data/onnx_model_nodes.txt: every
node of DIR/*/model.onnx (the shared models), with types from ONNX's own
shape inference, checked the same way by `onnx_model_nodes_shapes`.
"""
import glob
import os
import sys

import numpy as np
import onnx
from onnx import numpy_helper, TensorProto

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "..", "tests", "data", "onnx_node_cases.txt")
NODE_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")

ELEM = {1: "f32", 2: "u8", 3: "i8", 4: "u16", 5: "i16", 6: "i32", 7: "i64", 8: "string",
        9: "bool", 10: "f16", 11: "f64", 12: "u32", 13: "u64", 14: "c64", 15: "c128",
        16: "bf16", 17: "f8e4m3fn", 18: "f8e4m3fnuz", 19: "f8e5m2", 20: "f8e5m2fnuz",
        21: "u4", 22: "i4"}


def type_str(tp):
    k = tp.WhichOneof("value")
    if k == "tensor_type":
        e = ELEM[tp.tensor_type.elem_type]
        if not tp.tensor_type.HasField("shape"):
            return f"{e}[*]"
        dims = []
        for d in tp.tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(str(d.dim_value))
            elif (d.HasField("dim_param") and d.dim_param.isidentifier()
                  and not d.dim_param.startswith("unk__")):
                dims.append(d.dim_param)
            else:
                dims.append("?")
        return f"{e}[{','.join(dims)}]"
    if k == "sequence_type":
        return f"seq<{type_str(tp.sequence_type.elem_type)}>"
    if k == "optional_type":
        return f"opt<{type_str(tp.optional_type.elem_type)}>"
    if k == "map_type":
        return f"map<{ELEM[tp.map_type.key_type]},{type_str(tp.map_type.value_type)}>"
    raise ValueError(k)


def tensor_fields(t):
    if t.data_type in (TensorProto.STRING,):
        return None
    arr = numpy_helper.to_array(t)
    e = ELEM.get(t.data_type)
    if e is None or e in ("u4", "i4") or e.startswith("f8") or e == "bf16":
        return None
    if e == "bool":
        arr = arr.astype(np.uint8)
    data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    shape = ",".join(str(d) for d in t.dims)
    return f"{e} [{shape}] {data.hex() or '-'}"


def attr_line(a):
    T = onnx.AttributeProto
    if a.type == T.INT:
        return f"int {a.i}"
    if a.type == T.FLOAT:
        return f"float {a.f!r}"
    if a.type == T.STRING:
        return f"string {a.s.hex() or '-'}"
    if a.type == T.INTS:
        return "ints " + " ".join(str(x) for x in a.ints)
    if a.type == T.FLOATS:
        return "floats " + " ".join(repr(x) for x in a.floats)
    if a.type == T.STRINGS:
        return "strings " + " ".join(x.hex() or "-" for x in a.strings)
    if a.type == T.TENSOR:
        f = tensor_fields(a.t)
        return None if f is None else "tensor " + f
    if a.type == T.TYPE_PROTO:
        return "type " + type_str(a.tp)
    return None


def signature_matches(m, node):
    """Does the model's version of the op have the newest form's signature?"""
    ver = {o.domain or "": o.version for o in m.opset_import}.get(node.domain or "", None)
    try:
        old = onnx.defs.get_schema(node.op_type, ver or 22, node.domain or "")
        new = onnx.defs.get_schema(node.op_type, 22 if not node.domain else 1000, node.domain or "")
    except Exception:
        return False
    return (sorted(old.attributes) == sorted(new.attributes)
            and [i.name for i in old.inputs] == [i.name for i in new.inputs]
            and [o.name for o in old.outputs] == [o.name for o in new.outputs])


def small(t):
    n = int(np.prod(t.dims)) if len(t.dims) else 1
    if t.data_type in (TensorProto.INT64, TensorProto.INT32):
        return n <= 64
    return t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE) and n <= 8


def models(model_dir, out):
    """Every node of the shared models, with operand/result types from ONNX's
    own shape inference (data propagation on) and small constants."""
    lines = []
    n = 0
    for path in sorted(glob.glob(os.path.join(model_dir, "*", "model.onnx"))):
        name = os.path.basename(os.path.dirname(path))
        m = onnx.load(path)
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
        g = m.graph
        types = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            types[vi.name] = vi.type
        data = {t.name: t for t in g.initializer if small(t)}
        for t in g.initializer:
            types.setdefault(t.name, onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)))
        for node in g.node:
            if node.op_type == "Constant":
                for a in node.attribute:
                    if a.name == "value" and small(a.t):
                        data[node.output[0]] = a.t
        for i, node in enumerate(g.node):
            if not signature_matches(m, node):
                continue
            if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
                continue
            dom = node.domain if node.domain not in ("", "ai.onnx") else ""
            op = f"{dom}.{node.op_type}" if dom else node.op_type
            attrs = [attr_line(a) for a in node.attribute]
            if None in attrs:
                continue
            if any(x and x not in types for x in list(node.input) + list(node.output)):
                continue
            lines.append(f"case {name}/{i}:{node.name or op}")
            lines.append(f"op {op}")
            lines += [f"attr {a.name} {l}" for a, l in zip(node.attribute, attrs)]
            for x in node.input:
                if not x:
                    lines.append("in -")
                    continue
                line = "in " + type_str(types[x])
                if x in data:
                    f = tensor_fields(data[x])
                    if f is not None:
                        line += " " + f
                lines.append(line)
            lines += [f"out {type_str(types[o])}" if o else "out -" for o in node.output]
            lines.append("end")
            n += 1
    with open(out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{n} model nodes -> {out}")


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--models":
        return models(sys.argv[2], os.path.join(HERE, "..", "..", "tests", "data", "onnx_model_nodes.txt"))
    lines = []
    n = 0
    for d in sorted(glob.glob(os.path.join(NODE_DIR, "*"))):
        try:
            m = onnx.load(os.path.join(d, "model.onnx"))
        except Exception:
            continue
        g = m.graph
        if len(g.node) != 1:
            continue
        node = g.node[0]
        dom = node.domain if node.domain not in ("", "ai.onnx") else ""
        op = f"{dom}.{node.op_type}" if dom else node.op_type
        # Only models whose op has the newest form's signature (the IR's form);
        # older forms are the importer's business.
        ver = {o.domain or "": o.version for o in m.opset_import}.get(node.domain or "", None)
        try:
            old = onnx.defs.get_schema(node.op_type, ver or 22, node.domain or "")
            new = onnx.defs.get_schema(node.op_type, 22 if not node.domain else 1000, node.domain or "")
        except Exception:
            continue
        if (sorted(old.attributes) != sorted(new.attributes)
                or [i.name for i in old.inputs] != [i.name for i in new.inputs]
                or [o.name for o in old.outputs] != [o.name for o in new.outputs]):
            continue
        attrs = []
        ok = True
        for a in node.attribute:
            l = attr_line(a)
            if l is None:
                ok = False
                break
            attrs.append(f"attr {a.name} {l}")
        if not ok:
            continue
        types = {vi.name: vi.type for vi in g.input}
        data = {}
        ds = os.path.join(d, "test_data_set_0")
        for i, vi in enumerate(g.input):
            p = os.path.join(ds, f"input_{i}.pb")
            if os.path.exists(p) and vi.type.WhichOneof("value") == "tensor_type":
                t = TensorProto()
                with open(p, "rb") as fh:
                    t.ParseFromString(fh.read())
                arr_n = int(np.prod(t.dims)) if len(t.dims) else 1
                if t.data_type in (TensorProto.INT64, TensorProto.INT32) and arr_n <= 64:
                    data[vi.name] = t
                elif t.data_type in (TensorProto.FLOAT, TensorProto.DOUBLE) and arr_n <= 8:
                    data[vi.name] = t
        for init in g.initializer:
            data.setdefault(init.name, init)
        ins = []
        for name in node.input:
            if name == "":
                ins.append("in -")
                continue
            if name not in types:
                ok = False
                break
            line = "in " + type_str(types[name])
            if name in data:
                f = tensor_fields(data[name])
                if f is not None:
                    line += " " + f
            ins.append(line)
        if not ok:
            continue
        outs = {vi.name: vi.type for vi in g.output}
        if any(o not in outs for o in node.output if o):
            continue
        lines.append(f"case {os.path.basename(d)}")
        lines.append(f"op {op}")
        lines += attrs + ins
        lines += [f"out {type_str(outs[o])}" if o else "out -" for o in node.output]
        lines.append("end")
        n += 1
    with open(OUT, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{n} cases -> {OUT}")


if __name__ == "__main__":
    main()
