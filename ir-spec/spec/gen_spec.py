#!/usr/bin/env python3
"""Generate ir-spec/SPEC.md, the specification of the Kiln IR.

Usage (from the repository root):

    python3 ir-spec/spec/gen_spec.py                 # writes ir-spec/SPEC.md
    python3 ir-spec/spec/gen_spec.py --stdout > X.md # or print it

Inputs:
  * ir-spec/spec/intro.md  -- the hand-written part (sections 1-4: the IR,
    types, text format, verifier). Included verbatim after the title and TOC.
  * the installed `onnx` Python package (pinned: 1.17.0) -- the op schemas.
    Every op of the domains `ai.onnx` (opset <= 22), `ai.onnx.ml` and
    `ai.onnx.preview.training` gets a section, in its NEWEST version (the
    canonical form of the Kiln IR). Ops ONNX itself deprecated at their
    newest version are described in their last non-deprecated form or as
    "not an IR op" when the importer rewrites them (Scatter, Upsample).
  * the ONNX backend node tests, $KILN_NODE_TESTS or
    /work/shared/onnx-backend-node (test_*/model.onnx) -- examples. For each
    op the test chosen is the one with the shortest name whose nodes (nested
    regions included) are all already in canonical form; its graph is
    rendered as a Kiln text module (printer rules of SPEC.md section 3).
    Ops without such a test get a synthesized example (SYNTH below).
  * /tmp/opcatalog.txt (optional) -- the ops used by the node test suite
    and shared models; those ops are marked in the op index.

The output is deterministic: running the script twice gives identical text.
Only the standard library, numpy and onnx are used.
"""

import os
import re
import sys
import textwrap

import numpy as np
import onnx
import onnx.defs
from onnx import AttributeProto, TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC_PATH = os.path.join(os.path.dirname(HERE), "SPEC.md")
TESTS = os.environ.get("KILN_NODE_TESTS", "/work/shared/onnx-backend-node")
CATALOG = os.environ.get("KILN_OP_CATALOG", "/tmp/opcatalog.txt")
DOMAINS = ["", "ai.onnx.ml", "ai.onnx.preview.training"]
# The line of intro.md after which Kiln's own ops are documented.
KILN_OPS = "<!-- kiln-ops"
# The line of intro.md after which the hand-written ai.onnx ops of opsets
# 23-24 are documented (this generator reads onnx 1.17, opset <= 22).
OPSET24_OPS = "<!-- opset24-ops"
MAX_OPSET = {"": 22}
ELIDE_THRESHOLD = 16
DOC_LIMIT = 4500  # characters of ONNX prose kept per op (cut at a paragraph)

# ---------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------

# (kiln name, ONNX type-string name, TensorProto code)
ELEMS = [
    ("f32", "float", 1), ("u8", "uint8", 2), ("i8", "int8", 3),
    ("u16", "uint16", 4), ("i16", "int16", 5), ("i32", "int32", 6),
    ("i64", "int64", 7), ("string", "string", 8), ("bool", "bool", 9),
    ("f16", "float16", 10), ("f64", "double", 11), ("u32", "uint32", 12),
    ("u64", "uint64", 13), ("c64", "complex64", 14), ("c128", "complex128", 15),
    ("bf16", "bfloat16", 16), ("f8e4m3fn", "float8e4m3fn", 17),
    ("f8e4m3fnuz", "float8e4m3fnuz", 18), ("f8e5m2", "float8e5m2", 19),
    ("f8e5m2fnuz", "float8e5m2fnuz", 20), ("u4", "uint4", 21), ("i4", "int4", 22),
]
ONNX_NAME_TO_ELEM = {o: k for k, o, _ in ELEMS}
CODE_TO_ELEM = {c: k for k, _, c in ELEMS}
# Order in which constraint sets are listed (the Rust ElemType order).
ELEM_ORDER = ["f32", "f64", "f16", "bf16", "f8e4m3fn", "f8e4m3fnuz", "f8e5m2",
              "f8e5m2fnuz", "i64", "i32", "i16", "i8", "u64", "u32", "u16", "u8",
              "bool", "string", "i4", "u4", "c64", "c128"]
HEX_ELEMS = {"f16", "bf16", "f8e4m3fn", "f8e4m3fnuz", "f8e5m2", "f8e5m2fnuz",
             "i4", "u4", "c64", "c128"}


def onnx_type_str_to_kiln(s):
    """'tensor(float)' -> 'f32'; 'seq(tensor(int64))' -> 'seq<i64>' ..."""
    s = s.strip()
    m = re.fullmatch(r"tensor\((\w+)\)", s)
    if m:
        return ONNX_NAME_TO_ELEM[m.group(1)]
    m = re.fullmatch(r"seq\((.*)\)", s)
    if m:
        return "seq<%s>" % onnx_type_str_to_kiln(m.group(1))
    m = re.fullmatch(r"optional\((.*)\)", s)
    if m:
        return "opt<%s>" % onnx_type_str_to_kiln(m.group(1))
    m = re.fullmatch(r"map\((\w+),\s*(.*)\)", s)
    if m:
        v = m.group(2).strip()
        vk = ONNX_NAME_TO_ELEM.get(v) or onnx_type_str_to_kiln(v)
        return "map<%s, %s>" % (ONNX_NAME_TO_ELEM[m.group(1)], vk)
    m = re.fullmatch(r"sparse_tensor\((\w+)\)", s)
    if m:
        return "sparse<%s>" % ONNX_NAME_TO_ELEM[m.group(1)]
    raise ValueError("unknown ONNX type string %r" % s)


def type_sort_key(k):
    """Tensors first, then seq/opt/map forms; elems in ElemType order."""
    toks = re.findall(r"[a-z0-9]+", k)
    elems = [t for t in toks if t in ELEM_ORDER]
    shape = re.sub(r"[a-z0-9]+", lambda m: "E" if m.group(0) in ELEM_ORDER else m.group(0), k)
    return (k.count("<"), shape, [ELEM_ORDER.index(e) for e in elems])


# ---------------------------------------------------------------------------
# Text-format printing (mirrors the printer rules of SPEC.md section 3)
# ---------------------------------------------------------------------------

BARE_NAME = re.compile(r"[A-Za-z0-9_.]+\Z")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def quote(s):
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif o < 0x20 or o == 0x7F:
            out.append("\\u{%04x}" % o)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def quote_bytes(b):
    """String constant data: invalid UTF-8 bytes become \\x{NN}."""
    out = []
    i = 0
    s = b.decode("utf-8", errors="surrogateescape")
    for ch in s:
        o = ord(ch)
        if 0xDC80 <= o <= 0xDCFF:
            out.append("\x00X%02x" % (o - 0xDC00))
        else:
            out.append(ch)
    q = quote("".join(out))
    return re.sub(r"\\u\{0000\}X([0-9a-f]{2})", r"\\x{\1}", q)


def vname(n):
    return "%" + (n if BARE_NAME.match(n) else quote(n))


def modname(n):
    return "@" + (n if BARE_NAME.match(n) else quote(n))


def _shortest(x, is32):
    """Shortest round-trip decimal digits of x: (digits, exponent10)."""
    for p in range(1, 18):
        s = "%.*e" % (p - 1, x)
        back = float(s)
        if (np.float32(back) == np.float32(x)) if is32 else (back == x):
            break
    mant, exp = s.split("e")
    digits = mant.replace(".", "").replace("-", "").rstrip("0") or "0"
    return digits, int(exp)


def fmt_float(x, is32=True):
    """Rust `{:?}` formatting of an f32 (or f64), with nan/inf/-inf."""
    x = float(np.float32(x)) if is32 else float(x)
    if x != x:
        return "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "-0.0" if np.signbit(x) else "0.0"
    sign = "-" if x < 0 else ""
    a = abs(x)
    digits, e = _shortest(a, is32)
    lo, hi = (np.float32(1e-4), np.float32(1e16)) if is32 else (1e-4, 1e16)
    if a < lo or a >= hi:
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return "%s%se%d" % (sign, m, e)
    # positional: value = 0.digits * 10^(e+1)
    point = e + 1
    if point <= 0:
        s = "0." + "0" * (-point) + digits
    elif point >= len(digits):
        s = digits + "0" * (point - len(digits)) + ".0"
    else:
        s = digits[:point] + "." + digits[point:]
    return sign + s


def fmt_dim_param(p):
    return p if IDENT.match(p) else quote(p)


def fmt_type(tp, inferred=False):
    """onnx TypeProto -> Kiln type text."""
    which = tp.WhichOneof("value")
    if which == "tensor_type":
        tt = tp.tensor_type
        if tt.elem_type == 0:
            raise ValueError("tensor type without element type")
        elem = CODE_TO_ELEM[tt.elem_type]
        if not tt.HasField("shape"):
            return elem + "[*]"
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(str(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param and not (
                    inferred and d.dim_param.startswith("unk__")):
                dims.append(fmt_dim_param(d.dim_param))
            else:
                dims.append("?")
        return "%s[%s]" % (elem, ",".join(dims))
    if which == "sequence_type":
        return "seq<%s>" % fmt_type(tp.sequence_type.elem_type, inferred)
    if which == "optional_type":
        return "opt<%s>" % fmt_type(tp.optional_type.elem_type, inferred)
    if which == "map_type":
        return "map<%s, %s>" % (CODE_TO_ELEM[tp.map_type.key_type],
                                fmt_type(tp.map_type.value_type, inferred))
    raise ValueError("unsupported type %r" % which)


def tensor_payload_bytes(t, elem):
    if t.raw_data:
        return bytes(t.raw_data)
    if elem in ("f16", "bf16"):
        return b"".join(int(v & 0xFFFF).to_bytes(2, "little") for v in t.int32_data)
    if elem in ("f8e4m3fn", "f8e4m3fnuz", "f8e5m2", "f8e5m2fnuz", "i4", "u4"):
        return bytes(int(v) & 0xFF for v in t.int32_data)
    if elem == "c64":
        return np.asarray(t.float_data, dtype="<f4").tobytes()
    if elem == "c128":
        return np.asarray(t.double_data, dtype="<f8").tobytes()
    raise ValueError("no payload")


def fmt_tensor_data(t):
    """(type text, data text) of a TensorProto constant."""
    elem = CODE_TO_ELEM[t.data_type]
    shape = list(t.dims)
    ty = "%s[%s]" % (elem, ",".join(str(d) for d in shape))
    n = int(np.prod(shape)) if shape else 1
    if n > ELIDE_THRESHOLD or t.data_location == TensorProto.EXTERNAL:
        return ty, "elided"
    if elem in HEX_ELEMS:
        return ty, 'hex"%s"' % tensor_payload_bytes(t, elem).hex()
    arr = numpy_helper.to_array(t).reshape(-1)
    if elem == "string":
        vals = [quote_bytes(v if isinstance(v, bytes) else str(v).encode()) for v in arr]
    elif elem in ("f32", "f64"):
        vals = [fmt_float(v, elem == "f32") for v in arr]
    elif elem == "bool":
        vals = ["true" if v else "false" for v in arr]
    else:
        vals = [str(int(v)) for v in arr]
    return ty, "dense[%s]" % ", ".join(vals)


class Printer:
    """Renders an ONNX graph as Kiln text, renaming values so names are
    unique across the module (the importer's `name`, `name_1`, ... rule)."""

    def __init__(self, inferred_types):
        self.used = set()
        self.types = inferred_types  # onnx value name -> TypeProto (inferred)

    def define(self, scope, name):
        base = name if name else "v"
        new = base
        i = 1
        while new in self.used:
            new = "%s_%d" % (base, i)
            i += 1
        self.used.add(new)
        scope[-1][name] = new
        return new

    @staticmethod
    def lookup(scope, name):
        for s in reversed(scope):
            if name in s:
                return s[name]
        raise KeyError("use of undefined value %r" % name)

    def attr(self, a, scope, ind):
        T = AttributeProto
        if a.type == T.FLOAT:
            return fmt_float(a.f)
        if a.type == T.INT:
            return str(a.i)
        if a.type == T.STRING:
            return quote(a.s.decode("utf-8", errors="replace"))
        if a.type == T.TENSOR:
            ty, data = fmt_tensor_data(a.t)
            return "tensor<%s> %s" % (ty, data)
        if a.type == T.GRAPH:
            return self.region(a.g, scope, ind, is_graph_attr=True)
        if a.type == T.TYPE_PROTO:
            return "type<%s>" % fmt_type(a.tp)
        if a.type == T.INTS:
            return "[%s]" % ", ".join(str(v) for v in a.ints) if a.ints else "ints[]"
        if a.type == T.FLOATS:
            return "[%s]" % ", ".join(fmt_float(v) for v in a.floats) if a.floats else "floats[]"
        if a.type == T.STRINGS:
            return ("[%s]" % ", ".join(quote(v.decode("utf-8", errors="replace")) for v in a.strings)
                    if a.strings else "strings[]")
        if a.type == T.TENSORS:
            if not a.tensors:
                return "tensors[]"
            return "[%s]" % ", ".join("tensor<%s> %s" % fmt_tensor_data(t) for t in a.tensors)
        if a.type == T.TYPE_PROTOS:
            if not a.type_protos:
                return "types[]"
            return "[%s]" % ", ".join("type<%s>" % fmt_type(t) for t in a.type_protos)
        if a.type == T.GRAPHS:
            if not a.graphs:
                return "graphs[]"
            return "[%s]" % ", ".join(self.region(g, scope, ind, True) for g in a.graphs)
        raise ValueError("attribute kind %s has no Kiln form" % T.AttributeType.Name(a.type))

    def value_type(self, name, declared=None):
        if declared is not None:
            return fmt_type(declared)
        if name in self.types:
            return fmt_type(self.types[name], inferred=True)
        raise ValueError("no type for %r" % name)

    def node(self, n, scope, ind, out_types):
        pad = "  " * ind
        op = n.op_type if n.domain in ("", "ai.onnx") else "%s.%s" % (n.domain, n.op_type)
        operands = ", ".join("none" if i == "" else vname(self.lookup(scope, i)) for i in n.input)
        attrs = sorted(n.attribute, key=lambda a: a.name)
        multiline = any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for a in attrs)
        if not attrs:
            attr_txt = ""
        elif multiline:
            parts = ["%s  %s = %s" % (pad, a.name, self.attr(a, scope, ind + 1)) for a in attrs]
            attr_txt = " {\n" + ",\n".join(parts) + "\n" + pad + "}"
        else:
            attr_txt = " {%s}" % ", ".join("%s = %s" % (a.name, self.attr(a, scope, ind)) for a in attrs)
        outs = list(n.output)
        while outs and outs[-1] == "":
            outs.pop()
        if "" in outs:
            raise ValueError("omitted middle result")
        types = [self.value_type(o, out_types.get(o)) for o in outs]
        names = [vname(self.define(scope, o)) for o in outs]
        loc = " loc(%s)" % quote(n.name) if n.name else ""
        if outs:
            return "%s%s = %s(%s)%s : %s%s" % (pad, ", ".join(names), op, operands, attr_txt,
                                              ", ".join(types), loc)
        return "%s%s(%s)%s%s" % (pad, op, operands, attr_txt, loc)

    def body(self, g, scope, ind, out_types):
        pad = "  " * ind
        lines = []
        inits = {t.name for t in g.initializer}
        for vi in g.input:
            if vi.name in inits:
                continue
            ty = fmt_type(vi.type)
            lines.append("%sinput %s: %s" % (pad, vname(self.define(scope, vi.name)), ty))
        for t in g.initializer:
            ty, data = fmt_tensor_data(t)
            lines.append("%sconst %s: %s = %s" % (pad, vname(self.define(scope, t.name)), ty, data))
        for n in g.node:
            lines.append(self.node(n, scope, ind, out_types))
        rets = ", ".join(vname(self.lookup(scope, o.name)) for o in g.output)
        lines.append("%sreturn%s" % (pad, " " + rets if rets else ""))
        return lines

    def region(self, g, scope, ind, is_graph_attr):
        scope.append({})
        outs = {o.name: o.type for o in g.output if o.type.WhichOneof("value")}
        try:
            lines = self.body(g, scope, ind + 1, outs)
        finally:
            scope.pop()
        return "graph {\n" + "\n".join(lines) + "\n" + "  " * ind + "}"

    def module(self, m):
        g = m.graph
        ops = ", ".join("%s = %d" % (o.domain or "ai.onnx", o.version) for o in m.opset_import)
        scope = [{}]
        outs = {o.name: o.type for o in g.output}
        lines = ["module %s opset(%s) {" % (modname(g.name), ops)]
        lines += self.body(g, scope, 1, outs)
        lines.append("}")
        return "\n".join(lines)


def collect_inferred(m):
    try:
        mi = onnx.shape_inference.infer_shapes(m)
    except Exception:
        mi = m
    types = {}

    def walk(g):
        for vi in list(g.value_info) + list(g.output) + list(g.input):
            if vi.type.WhichOneof("value"):
                types.setdefault(vi.name, vi.type)
        for n in g.node:
            for a in n.attribute:
                if a.type == AttributeProto.GRAPH:
                    walk(a.g)
    walk(mi.graph)
    return types


def render_model(m):
    return Printer(collect_inferred(m)).module(m)


# ---------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------

def load_schemas():
    hist = {}
    for s in onnx.defs.get_all_schemas_with_history():
        if s.domain not in DOMAINS:
            continue
        if s.since_version > MAX_OPSET.get(s.domain, 10 ** 9):
            continue
        hist.setdefault((s.domain, s.name), []).append(s)
    out = {}
    for k, v in hist.items():
        v.sort(key=lambda s: s.since_version)
        out[k] = v
    return out


def canonical_schema(versions):
    """The schema whose form the IR uses: the newest, or the newest
    non-deprecated one when ONNX deprecated the op."""
    s = versions[-1]
    if s.deprecated:
        live = [x for x in versions if not x.deprecated]
        return live[-1] if live else s
    return s


def op_name(domain, name):
    return name if domain == "" else "%s.%s" % (domain, name)


def anchor(domain, name):
    """GitHub's automatic anchor of the op's heading (`#### ai.onnx.ml.Scaler`)."""
    return re.sub(r"[^a-z0-9_-]", "", op_name(domain, name).lower())


SOFTMAX_LIKE = {"Softmax", "LogSoftmax", "Hardmax"}


def signature(s):
    return ([(i.name, str(i.option)) for i in s.inputs],
            [(o.name, str(o.option)) for o in s.outputs],
            sorted(s.attributes))


# ---------------------------------------------------------------------------
# Doc conversion
# ---------------------------------------------------------------------------

def convert_doc(doc):
    doc = textwrap.dedent(doc.strip("\n")).strip()
    # The first line is often less indented than the rest.
    lines = doc.split("\n")
    if len(lines) > 1:
        rest = textwrap.dedent("\n".join(lines[1:]))
        doc = lines[0].strip() + "\n" + rest
    out = []
    in_code = False
    for line in doc.split("\n"):
        if line.strip().startswith("```"):
            in_code = not in_code
            out.append(line.rstrip())
            continue
        if not in_code and not line.startswith("    "):  # not an indented code line
            line = re.sub(r"<br\s*/?>", "  \n", line)
            line = re.sub(r"</?i>", "*", line)
            line = re.sub(r"</?b>", "**", line)
            # protect code spans, then backquote stray <...> (no raw HTML)
            parts = re.split(r"(`[^`]*`)", line)
            for j in range(0, len(parts), 2):
                parts[j] = re.sub(r"<([^<>\n]*)>", r"`<\1>`", parts[j])
            line = "".join(parts)
        out.append(line.rstrip())
    if in_code:
        out.append("```")
    text = "\n".join(out).strip()
    text = re.sub(r"\n{3,}", "\n\n", text)
    return trim_doc(text)


def is_sample(p):
    lines = p.split("\n")
    if re.fullmatch(r"\*Sample[^*]*\*:?", p.strip()):
        return True
    return len(p) > 300 and all(l.startswith("    ") for l in lines)


def trim_doc(text):
    if len(text) <= DOC_LIMIT:
        return text
    paras = split_paragraphs(text)
    if any(is_sample(p) for p in paras):
        kept, noted = [], False
        for p in paras:
            if is_sample(p):
                if not noted:
                    kept.append("*(ONNX's sample graphs and code are omitted here.)*")
                    noted = True
                continue
            kept.append(p)
        paras = kept
        text = "\n\n".join(paras)
        if len(text) <= DOC_LIMIT:
            return text
    keep, size = [], 0
    for p in paras:
        if keep and size + len(p) > DOC_LIMIT:
            break
        keep.append(p)
        size += len(p) + 2
    return "\n\n".join(keep) + "\n\n*(The rest of the ONNX description — further notes and examples — is omitted; it does not change the semantics above.)*"


def split_paragraphs(text):
    """Paragraphs, never splitting a fenced code block."""
    paras, cur, in_code = [], [], False
    for line in text.split("\n"):
        if line.strip().startswith("```"):
            in_code = not in_code
        if not line.strip() and not in_code:
            if cur:
                paras.append("\n".join(cur))
                cur = []
            continue
        cur.append(line)
    if cur:
        paras.append("\n".join(cur))
    return paras


def short_desc(s, limit=300):
    """First sentences of an operand description, up to `limit` chars."""
    s = re.sub(r"\s+", " ", (s or "").strip())
    if len(s) <= limit:
        return s
    cut = [m.end() for m in re.finditer(r"[.;](?= [A-Z(])", s) if m.end() <= limit]
    return (s[:cut[-1]] if cut else s[:limit].rsplit(" ", 1)[0]) + " …"


def one_line(s):
    s = re.sub(r"\s+", " ", (s or "").strip())
    s = re.sub(r"<br\s*/?>", " ", s)
    parts = re.split(r"(`[^`]*`)", s)
    for j in range(0, len(parts), 2):
        parts[j] = re.sub(r"<([^<>]*)>", r"`<\1>`", parts[j]).replace("|", "\\|")
    return "".join(parts)


# ---------------------------------------------------------------------------
# Attribute kinds and defaults
# ---------------------------------------------------------------------------

KIND = {
    AttributeProto.FLOAT: "float", AttributeProto.INT: "int", AttributeProto.STRING: "string",
    AttributeProto.TENSOR: "tensor", AttributeProto.GRAPH: "graph",
    AttributeProto.SPARSE_TENSOR: "sparse tensor", AttributeProto.TYPE_PROTO: "type",
    AttributeProto.FLOATS: "floats", AttributeProto.INTS: "ints", AttributeProto.STRINGS: "strings",
    AttributeProto.TENSORS: "tensors", AttributeProto.GRAPHS: "graphs",
    AttributeProto.SPARSE_TENSORS: "sparse tensors", AttributeProto.TYPE_PROTOS: "types",
}


def attr_default(a):
    d = a.default_value
    if d is None or not d.name:
        return None
    return Printer({}).attr(d, [{}], 0)


# ---------------------------------------------------------------------------
# Hand-written knowledge: canonicalization of older versions
# ---------------------------------------------------------------------------

REDUCE_V18 = ["ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
              "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare"]

CANON = {
    "Squeeze": "Versions 1 and 11 carry `axes` as an `ints` attribute. The importer moves it to the second operand: `Squeeze(%x) {axes = [0, 2]}` becomes `Squeeze(%x, %axes)` with a new constant `const %axes: i64[2] = dense[0, 2]` in the node's region. Without the attribute the node keeps one operand (squeeze every size-1 dimension).",
    "Unsqueeze": "Versions 1 and 11 carry `axes` as a required `ints` attribute. The importer moves it to the second operand: `Unsqueeze(%x) {axes = [0]}` becomes `Unsqueeze(%x, %axes)` with `const %axes: i64[1] = dense[0]`.",
    "ReduceSum": "Versions 1 and 11 carry `axes` as an `ints` attribute. The importer moves it to the optional second operand as an `i64[k]` constant; `keepdims` is kept. Without the attribute the operand is omitted (reduce over all axes; `noop_with_empty_axes` keeps its default 0).",
    "Split": "Versions 1, 2 and 11 carry the part sizes as the `split` attribute; the importer moves them to the second operand as an `i64[k]` constant. When an older node has neither `split` attribute nor input (equal parts), the importer sets `num_outputs` to the node's number of results, as version 18 requires. Version 13 nodes without `split` get `num_outputs` the same way.",
    "Softmax": 'Versions 1 and 11 coerce the input to 2-D: dims `[0, axis)` form the rows, `[axis, rank)` the columns (default `axis = 1`). When the rank is known and `axis` is the last axis, this equals version 13 and the importer only sets `axis = -1`. Otherwise it emits `%f = Flatten(%x) {axis = a}`, `%s = Shape(%x)`, the op over `%f` with `axis = 1`, and `%y = Reshape(%op_2d, %s)` (helper values are named after the node).',
    "Upsample": 'Not an IR op. The importer rewrites every `Upsample` (deprecated by ONNX) to `Resize`: `Upsample(%x, %scales) {mode = m}` becomes `Resize(%x, none, %scales) {coordinate_transformation_mode = "asymmetric", mode = m}`, plus `nearest_mode = "floor"` when `m` is `"nearest"`; `"bilinear"` becomes `"linear"`. Version 7\'s `scales` attribute becomes an `f32[rank]` constant for the `scales` operand; `height_scale`/`width_scale` are dropped.',
    "Resize": 'Version 10 has two operands `(X, scales)` with asymmetric coordinates and floor rounding; the importer inserts `none` for `roi` and sets `coordinate_transformation_mode = "asymmetric"` (and `nearest_mode = "floor"` unless `mode = "linear"`). `Upsample` is rewritten to `Resize` the same way (see Upsample).',
    "Pad": "Versions before 11 carry `pads` (`paddings` in version 1) and `value` as attributes. The importer moves `pads` to operand 1 as an `i64[2*rank]` constant and `value`, when present, to operand 2 as a scalar constant of the input's element type; `axes` is left out. Later versions need no change.",
    "Slice": "Version 1 carries `starts`, `ends` and `axes` as attributes. The importer moves them to `i64` constant operands (`steps` is omitted).",
    "Clip": "Versions 1 and 6 carry `min`/`max` as float attributes. The importer moves each one present to a scalar constant operand of the input's element type; an absent bound becomes `none`.",
    "TopK": "Version 1 carries `k` as an attribute; the importer moves it to the second operand as `const %k: i64[1]`. `largest` and `sorted` get their defaults (1).",
    "Dropout": "Versions before 12 carry `ratio` as a float attribute (and versions 1 and 6 `is_test`). The importer moves `ratio`, when present, to the `ratio` operand as a scalar constant of the input's element type, drops `is_test`, and leaves `training_mode` out (inference).",
    "BatchNormalization": 'The legacy attributes of versions before 9 (`consumed_inputs`, `is_test`) and 7–9 (`spatial`) are dropped; everything else keeps its meaning (`training_mode` defaults to 0, inference).',
    "Reshape": "Version 1 carries the target shape as the `shape` attribute; the importer moves it to the second operand as an `i64[rank]` constant (`allowzero` keeps its default 0).",
    "Scatter": "Not an IR op. ONNX deprecated `Scatter` (versions 9 and 11) in favour of `ScatterElements`, which has the same operands and `axis` attribute; the importer renames every `Scatter` node to `ScatterElements`.",
}
for _n in REDUCE_V18:
    CANON[_n] = ("Versions before 18 carry `axes` as an `ints` attribute. The importer moves it to the optional second operand as an `i64[k]` constant; `keepdims` is kept. Without the attribute the operand is omitted (reduce over all axes; `noop_with_empty_axes` keeps its default 0).")
_BCAST = "Versions before 7 (the `broadcast`/`axis` attributes): with `broadcast = 1` and an `axis`, B's dims were aligned at `axis` of A; the importer drops both attributes and, when B does not reach A's last dim, inserts `Unsqueeze(%B, %axes)` of B's missing trailing dims so that today's trailing-dim broadcasting gives the same result. `consumed_inputs` is dropped."
for _n in ["Add", "Sub", "Mul", "Div", "Pow", "And", "Or", "Xor", "Equal", "Greater", "Less"]:
    CANON[_n] = _BCAST
CANON["Gemm"] = "Versions before 7 carry `broadcast`; the importer drops it (Gemm's C operand broadcasts unidirectionally in every later version)."
CANON["Concat"] = "Versions before 4 default `axis` to 1; the importer sets `axis = 1` explicitly when it is absent."
CANON["DFT"] = "Versions before 20 carry `axis` as an attribute (default 1); the importer moves it to operand 2 as an `i64[]` constant."
CANON["GroupNormalization"] = "Version 18 took `scale` and `bias` per group; version 21 takes them per channel. The importer repeats each group's value over its `C/num_groups` channels (Unsqueeze, Expand, Reshape)."
CANON["Scan"] = "Version 8 had a leading batch axis on every state and scan input and an optional `sequence_lens` operand. With no `sequence_lens` and a known batch size of 1 (the only case expressible without a loop) the importer squeezes the batch axis off the operands, renames `directions` to `scan_input_directions`, emits a version-9+ Scan, and unsqueezes the batch axis back onto the results; anything else is an import error."
CANON["LogSoftmax"] = CANON["Softmax"].replace("Softmax(%f)", "LogSoftmax(%f)")
CANON["Hardmax"] = CANON["Softmax"].replace("Softmax(%f)", "Hardmax(%f)")

NOT_IR_OPS = {("", "Scatter"): "ScatterElements", ("", "Upsample"): "Resize"}

EXTRA_NOTES = {
    ("ai.onnx.ml", "TreeEnsembleClassifier"): "ONNX deprecated this op in `ai.onnx.ml` version 5 in favour of `ai.onnx.ml.TreeEnsemble`. Kiln keeps it as an IR op in its version-3 form (the last one with a signature), described here.",
    ("ai.onnx.ml", "TreeEnsembleRegressor"): "ONNX deprecated this op in `ai.onnx.ml` version 5 in favour of `ai.onnx.ml.TreeEnsemble`. Kiln keeps it as an IR op in its version-3 form (the last one with a signature), described here.",
    ("", "Constant"): "Kiln has no sparse tensors: the importer densifies a `sparse_value` attribute into `value`, so the IR `Constant` never carries `sparse_value`. An importer may also turn a `Constant` node into a region `const`; both forms are valid IR.",
}

# ---------------------------------------------------------------------------
# Synthesized examples for ops without a usable node test
# ---------------------------------------------------------------------------


def parse_kt(s):
    """Tiny Kiln type parser for the synthesized examples -> TypeProto."""
    s = s.strip()
    if s.startswith("seq<"):
        return helper.make_sequence_type_proto(parse_kt(s[4:-1]))
    if s.startswith("opt<"):
        return helper.make_optional_type_proto(parse_kt(s[4:-1]))
    if s.startswith("map<"):
        k, v = s[4:-1].split(",", 1)
        code = {e: c for e, _, c in ELEMS}[k.strip()]
        return helper.make_map_type_proto(code, parse_kt(v))
    m = re.fullmatch(r"(\w+)\[(.*)\]", s)
    code = {e: c for e, _, c in ELEMS}[m.group(1)]
    if m.group(2) == "*":
        return helper.make_tensor_type_proto(code, None)
    dims = [int(d) if d.isdigit() else (None if d == "?" else d)
            for d in m.group(2).split(",") if d]
    return helper.make_tensor_type_proto(code, dims)


ML = "ai.onnx.ml"
# op -> (domain, inputs [(name, type)], outputs [(name, type)], attrs)
SYNTH = {
    "ConcatFromSequence": ("", [("seq", "seq<f32[2,3]>")], [("y", "f32[?,3]")], {"axis": 0}),
    "GlobalLpPool": ("", [("x", "f32[1,3,4,4]")], [("y", "f32[1,3,1,1]")], {"p": 2}),
    "LpNormalization": ("", [("x", "f32[2,3]")], [("y", "f32[2,3]")], {"axis": 1, "p": 2}),
    "MaxRoiPool": ("", [("x", "f32[1,3,8,8]"), ("rois", "f32[2,5]")], [("y", "f32[2,3,2,2]")],
                   {"pooled_shape": [2, 2], "spatial_scale": 1.0}),
    "Multinomial": ("", [("probs", "f32[2,4]")], [("samples", "i32[2,3]")], {"sample_size": 3}),
    "Optional": ("", [("x", "f32[3]")], [("o", "opt<f32[3]>")], {}),
    "RandomNormal": ("", [], [("y", "f32[2,3]")], {"shape": [2, 3], "seed": 1.0}),
    "RandomNormalLike": ("", [("x", "f32[2,3]")], [("y", "f32[2,3]")], {"scale": 0.5}),
    "RandomUniform": ("", [], [("y", "f32[2,3]")], {"high": 1.0, "low": 0.0, "shape": [2, 3]}),
    "RandomUniformLike": ("", [("x", "f32[2,3]")], [("y", "f32[2,3]")], {}),
    "SequenceAt": ("", [("seq", "seq<f32[2,3]>"), ("pos", "i64[]")], [("t", "f32[2,3]")], {}),
    "SequenceConstruct": ("", [("a", "f32[2,3]"), ("b", "f32[2,3]")], [("seq", "seq<f32[2,3]>")], {}),
    "SequenceEmpty": ("", [], [("seq", "seq<f32[*]>")], {"dtype": 1}),
    "SequenceErase": ("", [("seq", "seq<f32[2,3]>"), ("pos", "i64[]")], [("out", "seq<f32[2,3]>")], {}),
    "SequenceLength": ("", [("seq", "seq<f32[2,3]>")], [("n", "i64[]")], {}),
    "CastMap": (ML, [("m", "map<i64, f32[*]>")], [("y", "f32[1,3]")],
                {"cast_to": "TO_FLOAT", "map_form": "SPARSE", "max_map": 3}),
    "CategoryMapper": (ML, [("x", "string[3]")], [("y", "i64[3]")],
                       {"cats_int64s": [0, 1], "cats_strings": ["cat", "dog"], "default_int64": -1}),
    "DictVectorizer": (ML, [("m", "map<string, i64[*]>")], [("y", "i64[1,2]")],
                       {"string_vocabulary": ["a", "b"]}),
    "FeatureVectorizer": (ML, [("a", "f32[2,3]"), ("b", "i64[2,1]")], [("y", "f32[2,4]")],
                          {"inputdimensions": [3, 1]}),
    "Imputer": (ML, [("x", "f32[2,3]")], [("y", "f32[2,3]")],
                {"imputed_value_floats": [0.0], "replaced_value_float": float("nan")}),
    "LinearClassifier": (ML, [("x", "f32[2,3]")], [("label", "i64[2]"), ("scores", "f32[2,2]")],
                         {"classlabels_ints": [0, 1], "coefficients": [0.5, -1.0, 2.0, 1.5, 0.25, -0.5],
                          "intercepts": [0.1, -0.1]}),
    "LinearRegressor": (ML, [("x", "f32[2,3]")], [("y", "f32[2,1]")],
                        {"coefficients": [0.5, -1.0, 2.0], "intercepts": [0.1]}),
    "Normalizer": (ML, [("x", "f32[2,3]")], [("y", "f32[2,3]")], {"norm": "L2"}),
    "OneHotEncoder": (ML, [("x", "i64[2]")], [("y", "f32[2,3]")],
                      {"cats_int64s": [1, 2, 3], "zeros": 1}),
    "SVMClassifier": (ML, [("x", "f32[2,3]")], [("label", "i64[2]"), ("scores", "f32[2,2]")],
                      {"classlabels_ints": [0, 1], "coefficients": [1.0, -1.0],
                       "kernel_params": [0.5, 0.0, 3.0], "kernel_type": "RBF", "rho": [0.25],
                       "support_vectors": [0.0, 1.0, 2.0, 1.0, 0.5, 0.0], "vectors_per_class": [1, 1]}),
    "SVMRegressor": (ML, [("x", "f32[2,3]")], [("y", "f32[2,1]")],
                     {"coefficients": [1.0, -1.0], "kernel_type": "LINEAR", "n_supports": 2,
                      "rho": [0.5], "support_vectors": [0.0, 1.0, 2.0, 1.0, 0.5, 0.0]}),
    "Scaler": (ML, [("x", "f32[2,3]")], [("y", "f32[2,3]")],
               {"offset": [0.0, 1.0, 2.0], "scale": [1.0, 0.5, 0.25]}),
    "TreeEnsembleClassifier": (ML, [("x", "f32[2,3]")], [("label", "i64[2]"), ("scores", "f32[2,2]")], {
        "class_ids": [0, 1], "class_nodeids": [1, 2], "class_treeids": [0, 0],
        "class_weights": [1.0, 1.0], "classlabels_int64s": [0, 1],
        "nodes_falsenodeids": [2, 0, 0], "nodes_featureids": [0, 0, 0],
        "nodes_modes": ["BRANCH_LEQ", "LEAF", "LEAF"], "nodes_nodeids": [0, 1, 2],
        "nodes_treeids": [0, 0, 0], "nodes_truenodeids": [1, 0, 0], "nodes_values": [0.5, 0.0, 0.0]}),
    "TreeEnsembleRegressor": (ML, [("x", "f32[2,3]")], [("y", "f32[2,1]")], {
        "n_targets": 1, "nodes_falsenodeids": [2, 0, 0], "nodes_featureids": [0, 0, 0],
        "nodes_modes": ["BRANCH_LEQ", "LEAF", "LEAF"], "nodes_nodeids": [0, 1, 2],
        "nodes_treeids": [0, 0, 0], "nodes_truenodeids": [1, 0, 0], "nodes_values": [0.5, 0.0, 0.0],
        "target_ids": [0, 0], "target_nodeids": [1, 2], "target_treeids": [0, 0],
        "target_weights": [-1.0, 1.0]}),
    "ZipMap": (ML, [("x", "f32[2,3]")], [("z", "seq<map<string, f32[]>>")],
               {"classlabels_strings": ["a", "b", "c"]}),
    "Gradient": ("ai.onnx.preview.training", [("x", "f32[2,3]"), ("w", "f32[2,3]")],
                 [("dy_dx", "f32[2,3]")], {"xs": ["x"], "y": "y"}),
}


def synth_model(name, spec, schema):
    domain, ins, outs, attrs = spec
    node = helper.make_node(name, [n for n, _ in ins], [n for n, _ in outs], domain=domain, **attrs)
    g = helper.make_graph(
        [node], "example_" + re.sub(r"\W", "_", name),
        [helper.make_value_info(n, parse_kt(t)) for n, t in ins],
        [helper.make_value_info(n, parse_kt(t)) for n, t in outs])
    opsets = [helper.make_opsetid("", 22)]
    if domain:
        opsets.append(helper.make_opsetid(domain, schema.since_version))
    return helper.make_model(g, opset_imports=opsets)


# ---------------------------------------------------------------------------
# Example selection from the node tests
# ---------------------------------------------------------------------------

def load_tests(schemas):
    by_op = {}
    if not os.path.isdir(TESTS):
        return by_op
    for t in sorted(os.listdir(TESTS)):
        p = os.path.join(TESTS, t, "model.onnx")
        if not t.startswith("test_") or not os.path.exists(p):
            continue
        m = onnx.load(p)
        if len(m.graph.node) != 1:
            continue
        n = m.graph.node[0]
        dom = "" if n.domain in ("", "ai.onnx") else n.domain
        by_op.setdefault((dom, n.op_type), []).append((t, m))
    return by_op


def model_is_canonical(m, schemas):
    ops = {}
    for o in m.opset_import:
        ops["" if o.domain in ("", "ai.onnx") else o.domain] = o.version

    def ok(g):
        for n in g.node:
            dom = "" if n.domain in ("", "ai.onnx") else n.domain
            if (dom, n.op_type) not in schemas:
                return False
            try:
                s = onnx.defs.get_schema(n.op_type, ops.get(dom, 1), dom)
            except Exception:
                return False
            canon = canonical_schema(schemas[(dom, n.op_type)])
            if signature(s) != signature(canon):
                return False
            if n.op_type in SOFTMAX_LIKE and s.since_version < 13:
                return False
            if s.deprecated:
                return False
            for a in n.attribute:
                if a.type == AttributeProto.GRAPH and not ok(a.g):
                    return False
                if a.type in (AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS):
                    return False
        return True
    return ok(m.graph)


def pick_example(key, tests, schemas):
    cands = sorted(tests.get(key, []), key=lambda tm: (len(tm[0]), tm[0]))
    for t, m in cands:
        if not model_is_canonical(m, schemas):
            continue
        try:
            return t, render_model(m)
        except (ValueError, KeyError):
            continue
    return None, None


def rewritten_example(key, tests):
    """Examples for the ops the importer replaces (Scatter, Upsample): the
    node test's model in its canonical (rewritten) form."""
    dom, name = key
    cands = sorted(tests.get(key, []), key=lambda tm: (len(tm[0]), tm[0]))
    for t, m in cands:
        m = onnx.ModelProto.FromString(m.SerializeToString())
        n = m.graph.node[0]
        if name == "Scatter":
            n.op_type = "ScatterElements"
        elif name == "Upsample":
            mode = next((a.s for a in n.attribute if a.name == "mode"), b"nearest")
            del n.attribute[:]
            n.op_type = "Resize"
            n.input[:] = [n.input[0], "", n.input[1]]
            n.attribute.extend([
                helper.make_attribute("coordinate_transformation_mode", "asymmetric"),
                helper.make_attribute("mode", mode.decode()),
                helper.make_attribute("nearest_mode", "floor")])
        for o in m.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = 22
        try:
            return t, render_model(m)
        except (ValueError, KeyError):
            continue
    return None, None


# ---------------------------------------------------------------------------
# Section rendering
# ---------------------------------------------------------------------------

def option_text(p):
    o = p.option
    F = onnx.defs.OpSchema.FormalParameterOption
    if o == F.Optional:
        return "optional"
    if o == F.Variadic:
        hom = "" if p.is_homogeneous else ", heterogeneous"
        return "variadic (≥ %d%s)" % (p.min_arity, hom)
    return "required"


def param_type(p, constraints):
    if p.type_str in constraints:
        return "`%s`" % p.type_str
    return "`%s`" % onnx_type_str_to_kiln(p.type_str)


def param_table(params, constraints, head):
    if not params:
        return "*(none)*\n"
    rows = ["| # | %s | Arity | Type | Description |" % head, "|---|---|---|---|---|"]
    for i, p in enumerate(params):
        rows.append("| %d | `%s` | %s | %s | %s |" % (
            i, p.name, option_text(p), param_type(p, constraints), one_line(short_desc(p.description))))
    return "\n".join(rows) + "\n"


def attr_table(s):
    if not s.attributes:
        return "*(none)*\n"
    rows = ["| Name | Kind | Required / default | Description |", "|---|---|---|---|"]
    for name in sorted(s.attributes):
        a = s.attributes[name]
        kind = KIND.get(a.type, str(a.type))
        if a.required:
            req = "required"
        else:
            d = attr_default(a)
            req = "default `%s`" % d if d is not None else "optional (no default)"
        rows.append("| `%s` | %s | %s | %s |" % (name, kind, req, one_line(a.description)))
    return "\n".join(rows) + "\n"


def constraint_lines(s):
    out = []
    for tc in s.type_constraints:
        names = sorted({onnx_type_str_to_kiln(t) for t in tc.allowed_type_strs}, key=type_sort_key)
        line = "- `%s` ∈ {%s}" % (tc.type_param_str, ", ".join(names))
        if tc.description:
            line += " — " + one_line(tc.description)
        out.append(line)
    return "\n".join(out) + "\n" if out else "*(none)*\n"


def arity_summary(s):
    def rng(lo, hi):
        if hi >= 2 ** 31 - 1:
            return "%d or more" % lo
        return str(lo) if lo == hi else "%d–%d" % (lo, hi)
    return rng(s.min_input, s.max_input), rng(s.min_output, s.max_output)


def section(key, versions, tests, catalog):
    dom, name = key
    s = canonical_schema(versions)
    full = op_name(dom, name)
    out = ["#### %s" % full, ""]
    dom_txt = dom or "ai.onnx"
    deprecated = versions[-1].deprecated
    hist = ", ".join(str(v.since_version) for v in versions)
    meta = "*Domain `%s`; canonical form: version %d (ONNX versions: %s)." % (dom_txt, s.since_version, hist)
    if key in catalog:
        meta += " Used by the node tests / shared models."
    out.append(meta + "*")
    out.append("")
    if key in NOT_IR_OPS:
        out.append("**Not an IR op.** The importer replaces it with [`%s`](#%s); the verifier rejects `%s` as an unknown op."
                   % (NOT_IR_OPS[key], anchor("", NOT_IR_OPS[key]), full))
        out.append("")
        out.append("**Canonicalization.** " + CANON[name])
        out.append("")
        t, ex = rewritten_example(key, tests)
        if ex:
            out.append("**Example** (node test `%s`, rewritten):" % t)
            out += ["", "```", ex, "```", ""]
        return "\n".join(out)
    if key in EXTRA_NOTES:
        out.append("**Note.** " + EXTRA_NOTES[key])
        out.append("")
    out.append("**Semantics.**")
    out.append("")
    out.append(convert_doc(s.doc or "*(no ONNX description)*"))
    out.append("")
    cons = {tc.type_param_str for tc in s.type_constraints}
    nin, nout = arity_summary(s)
    out.append("**Operands** (%s):" % nin)
    out.append("")
    out.append(param_table(s.inputs, cons, "Operand"))
    out.append("**Results** (%s):" % nout)
    out.append("")
    out.append(param_table(s.outputs, cons, "Result"))
    out.append("**Attributes.**")
    out.append("")
    out.append(attr_table(s))
    out.append("**Constraints.**")
    out.append("")
    out.append(constraint_lines(s))
    if dom == "" and name in CANON:
        out.append("**Canonicalization.** " + CANON[name])
        out.append("")
    t, ex = pick_example(key, tests, versions_map)
    if ex is None and name in SYNTH:
        try:
            ex = render_model(synth_model(name, SYNTH[name], s))
            t = None
        except Exception as e:  # pragma: no cover - reported on stderr
            sys.stderr.write("synth %s failed: %s\n" % (name, e))
            ex = None
    if ex is None:
        sys.stderr.write("no example for %s\n" % full)
        out.append("**Example.** *(none)*")
    elif t:
        out.append("**Example** (node test `%s`):" % t)
    else:
        out.append("**Example** (synthesized; no node test covers this op):")
    if ex:
        out += ["", "```", ex, "```"]
    out.append("")
    return "\n".join(out)


def load_catalog():
    cat = set()
    if os.path.exists(CATALOG):
        for line in open(CATALOG):
            f = line.split()
            if len(f) >= 2:
                cat.add(("" if f[0] == "ai.onnx" else f[0], f[1]))
    return cat


versions_map = {}


def main():
    global versions_map
    schemas = load_schemas()
    versions_map = schemas
    tests = load_tests(schemas)
    catalog = load_catalog()
    keys = sorted(schemas, key=lambda k: (DOMAINS.index(k[0]), k[1]))
    intro = open(os.path.join(HERE, "intro.md")).read()
    # Kiln's own ops (domain `kiln`) are written by hand at the end of the
    # intro, after the KILN_OPS marker line; they become section 5.4.
    intro, _, kiln_ops = intro.partition(KILN_OPS)
    kiln_ops = kiln_ops.split("\n", 1)[1] if "\n" in kiln_ops else ""
    kiln_ops, _, opset24_ops = kiln_ops.partition(OPSET24_OPS)
    opset24_ops = opset24_ops.split("\n", 1)[1] if "\n" in opset24_ops else ""
    opset24_names = re.findall(r"^#### (\S+)", opset24_ops, re.M)
    kiln_names = re.findall(r"^#### (\S+)", kiln_ops, re.M)
    intro = intro.rstrip() + "\n"

    parts = ["# The Kiln IR — specification", "",
             "*Generated by `ir-spec/spec/gen_spec.py` from `ir-spec/spec/intro.md`, the onnx %s op schemas and the ONNX backend node tests. Do not edit by hand; edit the generator or the intro and re-run it.*" % onnx.__version__,
             "", "## Contents", "",
             "1. [The IR](#1-the-ir)",
             "2. [Types](#2-types)",
             "3. [The text format](#3-the-text-format)",
             "4. [The verifier](#4-the-verifier)",
             "5. [Ops](#5-ops) — %d sections: %s, %d `kiln`" % (len(keys) + len(kiln_names), ", ".join(
                 "%d `%s`" % (sum(1 for k in keys if k[0] == d), d or "ai.onnx") for d in DOMAINS), len(kiln_names)),
             ""]
    parts.append(intro)
    parts += ["## 5. Ops", "",
              "One section per op of `ai.onnx` (up to opset 22), `ai.onnx.ml` and `ai.onnx.preview.training`, "
              "sorted by domain, then name, each in its canonical (newest) form. Operand and result types name "
              "a type variable listed under **Constraints** or a concrete Kiln type. Attribute defaults are "
              "written in text-format syntax. Ops marked † are used by the ONNX node tests or the shared models.",
              ""]
    for d in DOMAINS:
        ks = [k for k in keys if k[0] == d]
        parts.append("**%s** (%d): " % (d or "ai.onnx", len(ks)) + ", ".join(
            "[%s](#%s)%s" % (k[1], anchor(*k), "†" if k in catalog else "") for k in ks))
        parts.append("")
    cur = None
    for k in keys:
        if k[0] != cur:
            cur = k[0]
            parts += ["### 5.%d Ops of `%s`" % (DOMAINS.index(cur) + 1, cur or "ai.onnx"), ""]
        parts.append(section(k, schemas[k], tests, catalog))
    if kiln_names:
        parts += ["### 5.%d Ops of `kiln`" % (len(DOMAINS) + 1), "",
                  "Kiln's own ops, made by compiler passes; their schemas and inference rules are in "
                  "`ir-spec/src/ops/kiln.rs`.", "",
                  "**kiln** (%d): " % len(kiln_names) + ", ".join(
                      "[%s](#%s)" % (n.split(".", 1)[1], re.sub(r"[^a-z0-9_-]", "", n.lower())) for n in kiln_names),
                  "", kiln_ops.strip(), ""]
    if opset24_names:
        parts += ["### 5.%d Ops of `ai.onnx`, opsets 23-24" % (len(DOMAINS) + 2), "",
                  "The ai.onnx ops of opsets 23 and 24 that exporters write, written by hand (the generator "
                  "reads onnx 1.17, opset <= 22); their schemas are in `ir-spec/src/ops/schemas_opset24.rs`.", "",
                  "**ai.onnx, opsets 23-24** (%d): " % len(opset24_names) + ", ".join(
                      "[%s](#%s)" % (n, n.lower()) for n in opset24_names),
                  "", opset24_ops.strip(), ""]
    text = "\n".join(parts).rstrip() + "\n"
    if "--stdout" in sys.argv[1:]:
        sys.stdout.write(text)
    else:
        with open(SPEC_PATH, "w") as f:
            f.write(text)
        sys.stderr.write("wrote %s (%d bytes, %d op sections)\n" % (SPEC_PATH, len(text.encode()), len(keys)))


if __name__ == "__main__":
    main()
