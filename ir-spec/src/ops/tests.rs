//! Unit tests of the registry and the inference rules.

use super::*;
use crate::attr::{Attr, AttrKind, Attrs};
use crate::tensor::TensorData;
use crate::types::{Dim, ElemType, TensorType, Type};
use std::sync::Arc;

/// Parse `"N,3,?,N*seq,H+4"` into dims (sums and differences of products).
pub(crate) fn d(s: &str) -> Vec<Dim> {
    fn atom(f: &str) -> Dim {
        f.parse::<u64>()
            .map(Dim::Known)
            .unwrap_or_else(|_| Dim::sym(f))
    }
    fn product(t: &str) -> Dim {
        t.split('*').fold(Dim::Known(1), |acc, f| acc.mul(&atom(f)))
    }
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            if x == "?" {
                return Dim::Unknown;
            }
            let mut acc = Dim::Known(0);
            let mut neg = false;
            let mut cur = String::new();
            for ch in x.chars().chain(std::iter::once('+')) {
                if ch == '+' || ch == '-' {
                    let p = product(&cur);
                    acc = if neg { acc.sub(&p) } else { acc.add(&p) };
                    neg = ch == '-';
                    cur.clear();
                } else {
                    cur.push(ch);
                }
            }
            acc
        })
        .collect()
}

pub(crate) fn f(s: &str) -> Type {
    Type::tensor(ElemType::F32, d(s))
}

fn ty_of(e: ElemType, s: &str) -> Type {
    Type::tensor(e, d(s))
}

fn ints(v: &[i64]) -> TensorData {
    TensorData::from_i64(vec![v.len() as u64], v).unwrap()
}

fn scalar_i64(v: i64) -> TensorData {
    TensorData::from_i64(vec![], &[v]).unwrap()
}

fn floats(v: &[f32]) -> TensorData {
    TensorData::from_f32(vec![v.len() as u64], v).unwrap()
}

/// An operand: a typed value, a constant, or omitted.
enum In {
    T(Type),
    C(TensorData),
    No,
}
use In::*;

fn run_n(
    op: &str,
    ins: Vec<In>,
    attrs: Vec<(&str, Attr)>,
    nout: usize,
) -> Result<Vec<Type>, InferError> {
    run_r(op, ins, attrs, nout, vec![])
}

fn run_r(
    op: &str,
    ins: Vec<In>,
    attrs: Vec<(&str, Attr)>,
    nout: usize,
    regions: Vec<(&str, Vec<Type>)>,
) -> Result<Vec<Type>, InferError> {
    let types: Vec<Option<Type>> = ins
        .iter()
        .map(|i| match i {
            T(t) => Some(t.clone()),
            C(c) => Some(Type::Tensor(TensorType::known(c.elem, &c.shape))),
            No => None,
        })
        .collect();
    let attrs: Attrs = attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let schema = lookup(op).expect("op in registry");
    assert!(schema.has_rule, "{op} has a rule");
    let ctx = InferCtx {
        op,
        node: op.to_string(),
        inputs: types.iter().map(Option::as_ref).collect(),
        consts: ins
            .iter()
            .map(|i| if let C(c) = i { Some(c) } else { None })
            .collect(),
        values: vec![None; ins.len()],
        attrs: &attrs,
        num_outputs: nout,
        declared: vec![],
        regions,
        value_reads: Default::default(),
    };
    (schema.infer)(&ctx)
}

fn run(op: &str, ins: Vec<In>, attrs: Vec<(&str, Attr)>) -> Type {
    match run_n(op, ins, attrs, 1) {
        Ok(mut v) => v.remove(0),
        Err(e) => panic!("{op}: {e}"),
    }
}

fn ints_attr(v: &[i64]) -> Attr {
    Attr::Ints(v.to_vec())
}

#[test]
fn catalog_ops_are_registered_with_rules() {
    let mut missing = vec![];
    for op in CATALOG {
        match lookup(op) {
            Some(s) if s.has_rule => {}
            Some(_) => missing.push(format!("{op} (no rule)")),
            None => missing.push(format!("{op} (not registered)")),
        }
    }
    assert!(missing.is_empty(), "{missing:?}");
    assert_eq!(CATALOG.len(), 191);
}

#[test]
fn registry_covers_all_domains() {
    assert!(all().count() > 200);
    let le = lookup("ai.onnx.ml.LabelEncoder").unwrap();
    assert_eq!(le.domain, "ai.onnx.ml");
    assert_eq!(le.since_version, 4);
    assert!(lookup("ai.onnx.preview.training.Adagrad").is_some());
    let conv = lookup("Conv").unwrap();
    assert_eq!((conv.min_inputs, conv.max_inputs), (2, 3));
    assert_eq!(conv.attr("pads").unwrap().kind, AttrKind::Ints);
    assert!(!conv.summary().is_empty());
    let split = lookup("Split").unwrap();
    assert_eq!(split.max_outputs, usize::MAX);
    assert!(lookup("Cast").unwrap().attr("to").unwrap().required);
    assert!(
        lookup("Squeeze").unwrap().attr("axes").is_none(),
        "newest form: axes is an input"
    );
    assert!(lookup("NoSuchOp").is_none());
    for s in all() {
        assert!(!s.summary().is_empty(), "{}", s.name);
        assert!(s.min_inputs <= s.max_inputs && s.min_outputs <= s.max_outputs);
    }
}

#[test]
fn elementwise_broadcast_symbolic() {
    assert_eq!(
        run("Add", vec![T(f("N,1,4")), T(f("3,1"))], vec![]),
        f("N,3,4")
    );
    assert_eq!(
        run("Mul", vec![T(f("N,seq")), T(f("N,1"))], vec![]),
        f("N,seq")
    );
    assert_eq!(run("Sub", vec![T(f("N")), T(f("M"))], vec![]), f("?"));
    assert_eq!(run("Div", vec![T(f("N")), T(f("5"))], vec![]), f("5"));
    assert!(run_n("Add", vec![T(f("3")), T(f("4"))], vec![], 1).is_err());
    assert_eq!(
        run("Equal", vec![T(f("N,4")), T(f("4"))], vec![]),
        ty_of(ElemType::Bool, "N,4")
    );
    assert_eq!(
        run("Sum", vec![T(f("2,1")), T(f("1,3")), T(f("3"))], vec![]),
        f("2,3")
    );
    assert_eq!(run("Relu", vec![T(f("N,?"))], vec![]), f("N,?"));
    let w = run(
        "Where",
        vec![
            T(ty_of(ElemType::Bool, "N,1")),
            T(ty_of(ElemType::I64, "1,4")),
            T(ty_of(ElemType::I64, "")),
        ],
        vec![],
    );
    assert_eq!(w, ty_of(ElemType::I64, "N,4"));
    assert_eq!(
        run(
            "Add",
            vec![
                T(Type::Tensor(TensorType::unranked(ElemType::F32))),
                T(f("3"))
            ],
            vec![]
        ),
        Type::Tensor(TensorType::unranked(ElemType::F32))
    );
}

#[test]
fn conv_and_pool() {
    let x = f("N,3,32,32");
    let w = f("16,3,3,3");
    let out = run(
        "Conv",
        vec![T(x.clone()), T(w.clone())],
        vec![
            ("pads", ints_attr(&[1, 1, 1, 1])),
            ("strides", ints_attr(&[2, 2])),
        ],
    );
    assert_eq!(out, f("N,16,16,16"));
    let out = run(
        "Conv",
        vec![T(x.clone()), T(w.clone())],
        vec![
            ("pads", ints_attr(&[1, 1, 1, 1])),
            ("dilations", ints_attr(&[2, 2])),
        ],
    );
    assert_eq!(out, f("N,16,30,30"));
    let out = run(
        "Conv",
        vec![T(f("N,3,33,H")), T(w.clone())],
        vec![
            ("auto_pad", Attr::String("SAME_UPPER".into())),
            ("strides", ints_attr(&[2, 1])),
        ],
    );
    assert_eq!(out, f("N,16,17,H"));
    // Symbolic spatial size with 'same' explicit padding keeps the symbol.
    let out = run(
        "Conv",
        vec![T(f("N,3,H,W")), T(w.clone())],
        vec![("pads", ints_attr(&[1, 1, 1, 1]))],
    );
    assert_eq!(out, f("N,16,H,W"));
    // Grouped conv checks channels.
    assert!(run_n("Conv", vec![T(f("1,4,8,8")), T(f("8,3,3,3"))], vec![], 1).is_err());
    let out = run(
        "Conv",
        vec![T(f("1,4,8,8")), T(f("8,2,3,3"))],
        vec![("group", Attr::Int(2))],
    );
    assert_eq!(out, f("1,8,6,6"));

    let k3s2 = vec![
        ("kernel_shape", ints_attr(&[3, 3])),
        ("strides", ints_attr(&[2, 2])),
    ];
    assert_eq!(
        run("AveragePool", vec![T(x.clone())], k3s2.clone()),
        f("N,3,15,15")
    );
    let mut ceil = k3s2.clone();
    ceil.push(("ceil_mode", Attr::Int(1)));
    let mp = run_n("MaxPool", vec![T(x.clone())], ceil, 2).unwrap();
    assert_eq!(mp, vec![f("N,3,16,16"), ty_of(ElemType::I64, "N,3,16,16")]);
    assert_eq!(
        run("GlobalAveragePool", vec![T(x.clone())], vec![]),
        f("N,3,1,1")
    );
    let ct = run(
        "ConvTranspose",
        vec![T(f("N,16,8,8")), T(f("16,4,3,3"))],
        vec![
            ("strides", ints_attr(&[2, 2])),
            ("pads", ints_attr(&[1, 1, 1, 1])),
            ("output_padding", ints_attr(&[1, 1])),
        ],
    );
    assert_eq!(ct, f("N,4,16,16"));
    assert_eq!(
        run(
            "ConvInteger",
            vec![
                T(ty_of(ElemType::U8, "1,3,5,5")),
                T(ty_of(ElemType::U8, "2,3,3,3"))
            ],
            vec![]
        ),
        ty_of(ElemType::I32, "1,2,3,3")
    );
}

/// Pads and output sizes come from `geometry.rs`, the rule the
/// interpreter's kernels use too.
#[test]
fn window_geometry_is_shared_with_the_kernels() {
    let k3s2 = |extra: Vec<(&'static str, Attr)>| {
        let mut a = vec![
            ("kernel_shape", ints_attr(&[3])),
            ("strides", ints_attr(&[2])),
        ];
        a.extend(extra);
        a
    };
    // VALID ignores ceil_mode: floor((6 - 3) / 2) + 1 = 2 (was 3).
    let valid_ceil = k3s2(vec![
        ("auto_pad", Attr::String("VALID".into())),
        ("ceil_mode", Attr::Int(1)),
    ]);
    assert_eq!(run("MaxPool", vec![T(f("1,1,6"))], valid_ceil), f("1,1,2"));
    // With a symbolic size, ceil_mode drops a last window that would start
    // in the end padding: (2N + 3 - 3) / 2 = N, not N + 1.
    let ceil = vec![
        ("kernel_shape", ints_attr(&[3])),
        ("strides", ints_attr(&[2])),
        ("pads", ints_attr(&[0, 3])),
        ("ceil_mode", Attr::Int(1)),
    ];
    assert_eq!(
        run("AveragePool", vec![T(f("1,1,2*N"))], ceil.clone()),
        f("1,1,N")
    );
    assert_eq!(run("AveragePool", vec![T(f("1,1,8"))], ceil), f("1,1,4"));
    // ConvTranspose: explicit pads win over auto_pad, as in the reference
    // and the interpreter: 2 * (4 - 1) + 3 - 2 = 7 (SAME alone: 8).
    let ct = |pads: bool| {
        let mut a = vec![
            ("strides", ints_attr(&[2])),
            ("auto_pad", Attr::String("SAME_UPPER".into())),
        ];
        if pads {
            a.push(("pads", ints_attr(&[1, 1])));
        }
        run("ConvTranspose", vec![T(f("1,2,4")), T(f("2,1,3"))], a)
    };
    assert_eq!(ct(true), f("1,1,7"));
    assert_eq!(ct(false), f("1,1,8"));
}

#[test]
fn matmul_batching() {
    assert_eq!(
        run("MatMul", vec![T(f("2,1,N,4")), T(f("3,4,5"))], vec![]),
        f("2,3,N,5")
    );
    assert_eq!(run("MatMul", vec![T(f("4")), T(f("4,5"))], vec![]), f("5"));
    assert_eq!(run("MatMul", vec![T(f("N,4")), T(f("4"))], vec![]), f("N"));
    assert!(run_n("MatMul", vec![T(f("N,4")), T(f("5,3"))], vec![], 1).is_err());
    assert_eq!(
        run(
            "Gemm",
            vec![T(f("K,M")), T(f("N,K")), T(f("N"))],
            vec![("transA", Attr::Int(1)), ("transB", Attr::Int(1))]
        ),
        f("M,N")
    );
    assert_eq!(
        run(
            "MatMulInteger",
            vec![T(ty_of(ElemType::U8, "N,4")), T(ty_of(ElemType::I8, "4,2"))],
            vec![]
        ),
        ty_of(ElemType::I32, "N,2")
    );
}

#[test]
fn reshape_zero_and_minus_one() {
    let x = T(f("N,seq,768"));
    assert_eq!(
        run("Reshape", vec![x, C(ints(&[0, 0, 12, -1]))], vec![]),
        f("N,seq,12,64")
    );
    assert_eq!(
        run("Reshape", vec![T(f("N,seq,768")), C(ints(&[-1]))], vec![]),
        f("768*N*seq")
    );
    assert_eq!(
        run(
            "Reshape",
            vec![T(f("N,seq,768")), C(ints(&[-1, 768]))],
            vec![]
        ),
        f("N*seq,768")
    );
    assert_eq!(
        run("Reshape", vec![T(f("N,7")), C(ints(&[2, -1]))], vec![]),
        f("2,?"),
        "7*N/2 is not a polynomial"
    );
    assert_eq!(
        run("Reshape", vec![T(f("4,6")), C(ints(&[3, -1]))], vec![]),
        f("3,8")
    );
    assert!(run_n("Reshape", vec![T(f("4,6")), C(ints(&[5, -1]))], vec![], 1).is_err());
    assert!(run_n("Reshape", vec![T(f("4,6")), C(ints(&[5, 5]))], vec![], 1).is_err());
    // allowzero: 0 is a real zero.
    assert_eq!(
        run(
            "Reshape",
            vec![T(f("0,3")), C(ints(&[0, 3]))],
            vec![("allowzero", Attr::Int(1))]
        ),
        f("0,3")
    );
    // Non-constant shape: rank from the shape operand's length.
    assert_eq!(
        run(
            "Reshape",
            vec![T(f("N,6")), T(ty_of(ElemType::I64, "3"))],
            vec![]
        ),
        f("?,?,?")
    );
    assert_eq!(
        run(
            "Flatten",
            vec![T(f("N,3,4,5"))],
            vec![("axis", Attr::Int(2))]
        ),
        f("3*N,20")
    );
}

#[test]
fn transpose_gather_concat() {
    assert_eq!(run("Transpose", vec![T(f("N,3,4"))], vec![]), f("4,3,N"));
    assert_eq!(
        run(
            "Transpose",
            vec![T(f("N,3,4"))],
            vec![("perm", ints_attr(&[0, 2, 1]))]
        ),
        f("N,4,3")
    );
    assert_eq!(
        run(
            "Gather",
            vec![T(f("N,10,4")), T(ty_of(ElemType::I64, "2,3"))],
            vec![("axis", Attr::Int(1))]
        ),
        f("N,2,3,4")
    );
    assert_eq!(
        run("Gather", vec![T(f("10,4")), C(scalar_i64(3))], vec![]),
        f("4")
    );
    assert_eq!(
        run(
            "GatherElements",
            vec![T(f("N,10")), T(ty_of(ElemType::I64, "N,3"))],
            vec![("axis", Attr::Int(1))]
        ),
        f("N,3")
    );
    assert_eq!(
        run(
            "GatherND",
            vec![T(f("N,5,6,7")), T(ty_of(ElemType::I64, "N,4,2"))],
            vec![("batch_dims", Attr::Int(1))]
        ),
        f("N,4,7")
    );
    assert_eq!(
        run(
            "Concat",
            vec![T(f("N,2")), T(f("N,3"))],
            vec![("axis", Attr::Int(1))]
        ),
        f("N,5")
    );
    assert_eq!(
        run(
            "Concat",
            vec![T(f("N,2")), T(f("M,?"))],
            vec![("axis", Attr::Int(0))]
        ),
        f("N+M,2")
    );
    assert!(run_n(
        "Concat",
        vec![T(f("2,2")), T(f("2,3"))],
        vec![("axis", Attr::Int(0))],
        1
    )
    .is_err());
    assert_eq!(
        run(
            "ScatterND",
            vec![T(f("N,4")), T(ty_of(ElemType::I64, "2,1")), T(f("2,4"))],
            vec![]
        ),
        f("N,4")
    );
}

#[test]
fn slice_clamping() {
    let x = || T(f("10,N"));
    let s = |st: &[i64], en: &[i64], ax: &[i64], steps: Option<&[i64]>| {
        let mut v = vec![x(), C(ints(st)), C(ints(en)), C(ints(ax))];
        if let Some(st) = steps {
            v.push(C(ints(st)));
        }
        run("Slice", v, vec![])
    };
    assert_eq!(s(&[-3], &[i64::MAX], &[0], None), f("3,N"));
    assert_eq!(s(&[-1], &[i64::MIN], &[0], Some(&[-1])), f("10,N"));
    assert_eq!(s(&[1], &[100], &[0], Some(&[2])), f("5,N"));
    assert_eq!(s(&[8], &[2], &[0], Some(&[-3])), f("2,N"));
    assert_eq!(s(&[5], &[2], &[0], None), f("0,N"));
    assert_eq!(s(&[1], &[i64::MAX], &[1], None), f("10,N-1"));
    assert_eq!(s(&[0], &[4], &[-1], None), f("10,?"));
    // Omitted axes: the leading ones.
    assert_eq!(
        run("Slice", vec![x(), C(ints(&[2])), C(ints(&[4]))], vec![]),
        f("2,N")
    );
    // Non-constant starts: rank only.
    assert_eq!(
        run(
            "Slice",
            vec![x(), T(ty_of(ElemType::I64, "1")), C(ints(&[4]))],
            vec![]
        ),
        f("?,?")
    );
}

#[test]
fn squeeze_unsqueeze() {
    assert_eq!(
        run("Squeeze", vec![T(f("N,1,3")), C(ints(&[1]))], vec![]),
        f("N,3")
    );
    assert_eq!(run("Squeeze", vec![T(f("3,1,2,1"))], vec![]), f("3,2"));
    assert_eq!(
        run("Squeeze", vec![T(f("N,1,2"))], vec![]),
        Type::Tensor(TensorType::unranked(ElemType::F32)),
        "N might be 1"
    );
    assert!(run_n("Squeeze", vec![T(f("N,2")), C(ints(&[1]))], vec![], 1).is_err());
    assert_eq!(
        run("Unsqueeze", vec![T(f("N,3")), C(ints(&[0, -1]))], vec![]),
        f("1,N,3,1")
    );
    assert_eq!(
        run("Unsqueeze", vec![T(f("")), C(ints(&[0]))], vec![]),
        f("1")
    );
}

#[test]
fn reductions() {
    let x = || T(f("N,5,6"));
    assert_eq!(
        run("ReduceMean", vec![x(), C(ints(&[1]))], vec![]),
        f("N,1,6")
    );
    assert_eq!(
        run(
            "ReduceSum",
            vec![x(), C(ints(&[-1]))],
            vec![("keepdims", Attr::Int(0))]
        ),
        f("N,5")
    );
    assert_eq!(run("ReduceMax", vec![x()], vec![]), f("1,1,1"));
    assert_eq!(
        run("ReduceL2", vec![x()], vec![("keepdims", Attr::Int(0))]),
        f("")
    );
    assert_eq!(
        run(
            "ReduceSum",
            vec![x(), C(ints(&[]))],
            vec![("noop_with_empty_axes", Attr::Int(1))]
        ),
        f("N,5,6")
    );
    assert_eq!(
        run(
            "ArgMax",
            vec![x()],
            vec![("axis", Attr::Int(1)), ("keepdims", Attr::Int(0))]
        ),
        ty_of(ElemType::I64, "N,6")
    );
}

#[test]
fn split_topk_resize() {
    let r = run_n(
        "Split",
        vec![T(f("N,10")), C(ints(&[3, 7]))],
        vec![("axis", Attr::Int(1))],
        2,
    )
    .unwrap();
    assert_eq!(r, vec![f("N,3"), f("N,7")]);
    let r = run_n(
        "Split",
        vec![T(f("10,N"))],
        vec![("num_outputs", Attr::Int(3))],
        3,
    )
    .unwrap();
    assert_eq!(r, vec![f("4,N"), f("4,N"), f("2,N")]);
    let r = run_n(
        "Split",
        vec![T(f("2*S"))],
        vec![("num_outputs", Attr::Int(2))],
        2,
    )
    .unwrap();
    assert_eq!(r, vec![f("S"), f("S")]);
    assert!(run_n("Split", vec![T(f("10")), C(ints(&[3, 3]))], vec![], 2).is_err());

    let r = run_n("TopK", vec![T(f("N,100")), C(ints(&[5]))], vec![], 2).unwrap();
    assert_eq!(r, vec![f("N,5"), ty_of(ElemType::I64, "N,5")]);

    assert_eq!(
        run(
            "Resize",
            vec![T(f("N,3,H,W")), No, C(floats(&[1.0, 1.0, 2.0, 2.0]))],
            vec![]
        ),
        f("N,3,2*H,2*W")
    );
    assert_eq!(
        run(
            "Resize",
            vec![T(f("N,3,10,10")), No, C(floats(&[1.0, 1.0, 0.5, 1.5]))],
            vec![]
        ),
        f("N,3,5,15")
    );
    assert_eq!(
        run(
            "Resize",
            vec![T(f("N,3,H,W")), No, No, C(ints(&[1, 3, 64, 64]))],
            vec![]
        ),
        f("1,3,64,64")
    );
    assert_eq!(
        run(
            "Resize",
            vec![T(f("N,3,H,W")), No, No, C(ints(&[32, 48]))],
            vec![("axes", ints_attr(&[2, 3]))]
        ),
        f("N,3,32,48")
    );
    assert_eq!(
        run(
            "Upsample",
            vec![T(f("1,3,4,4")), C(floats(&[1.0, 1.0, 2.0, 3.0]))],
            vec![]
        ),
        f("1,3,8,12")
    );
}

#[test]
fn einsum_shapes() {
    let eq = |s: &str| vec![("equation", Attr::String(s.into()))];
    assert_eq!(
        run(
            "Einsum",
            vec![T(f("B,I,J")), T(f("B,J,K"))],
            eq("bij,bjk->bik")
        ),
        f("B,I,K")
    );
    assert_eq!(
        run("Einsum", vec![T(f("3,4")), T(f("4,5"))], eq("ij,jk")),
        f("3,5")
    );
    assert_eq!(
        run("Einsum", vec![T(f("N,2,3,4"))], eq("...ij->...ji")),
        f("N,2,4,3")
    );
    assert_eq!(run("Einsum", vec![T(f("5,5"))], eq("ii->")), f(""));
    assert!(run_n("Einsum", vec![T(f("3,4"))], eq("ijk->i"), 1).is_err());
}

#[test]
fn attribute_dependent_types() {
    assert_eq!(
        run("Cast", vec![T(f("N,3"))], vec![("to", Attr::Int(7))]),
        ty_of(ElemType::I64, "N,3")
    );
    assert!(run_n("Cast", vec![T(f("N"))], vec![("to", Attr::Int(99))], 1).is_err());
    assert_eq!(
        run(
            "CastLike",
            vec![T(f("N")), T(ty_of(ElemType::F16, ""))],
            vec![]
        ),
        ty_of(ElemType::F16, "N")
    );
    let v = Arc::new(TensorData::from_bytes(ElemType::I32, vec![1], vec![0u8; 4]).unwrap());
    assert_eq!(
        run(
            "ConstantOfShape",
            vec![C(ints(&[2, 3]))],
            vec![("value", Attr::Tensor(v))]
        ),
        ty_of(ElemType::I32, "2,3")
    );
    assert_eq!(
        run(
            "ConstantOfShape",
            vec![T(ty_of(ElemType::I64, "2"))],
            vec![]
        ),
        f("?,?")
    );
    assert_eq!(
        run("EyeLike", vec![T(f("3,4"))], vec![("dtype", Attr::Int(7))]),
        ty_of(ElemType::I64, "3,4")
    );
    assert_eq!(
        run(
            "RandomUniformLike",
            vec![T(ty_of(ElemType::F16, "N"))],
            vec![]
        ),
        ty_of(ElemType::F16, "N")
    );
    assert_eq!(
        run(
            "RandomNormal",
            vec![],
            vec![("shape", ints_attr(&[2, 3])), ("dtype", Attr::Int(11))]
        ),
        ty_of(ElemType::F64, "2,3")
    );
    assert_eq!(
        run("Bernoulli", vec![T(f("N"))], vec![("dtype", Attr::Int(9))]),
        ty_of(ElemType::Bool, "N")
    );
    // QuantizeLinear: output_dtype, else the zero point's type, else u8.
    assert_eq!(
        run("QuantizeLinear", vec![T(f("N,4")), T(f(""))], vec![]),
        ty_of(ElemType::U8, "N,4")
    );
    assert_eq!(
        run(
            "QuantizeLinear",
            vec![T(f("N,4")), T(f("")), T(ty_of(ElemType::I8, ""))],
            vec![]
        ),
        ty_of(ElemType::I8, "N,4")
    );
    assert_eq!(
        run(
            "QuantizeLinear",
            vec![T(f("N,4")), T(f(""))],
            vec![("output_dtype", Attr::Int(17))]
        ),
        ty_of(ElemType::F8E4M3FN, "N,4")
    );
    assert_eq!(
        run(
            "DequantizeLinear",
            vec![T(ty_of(ElemType::I8, "N,4")), T(ty_of(ElemType::F16, ""))],
            vec![]
        ),
        ty_of(ElemType::F16, "N,4")
    );
    let r = run_n("DynamicQuantizeLinear", vec![T(f("N,4"))], vec![], 3).unwrap();
    assert_eq!(
        r,
        vec![ty_of(ElemType::U8, "N,4"), f(""), ty_of(ElemType::U8, "")]
    );
    assert_eq!(
        run(
            "Constant",
            vec![],
            vec![("value_ints", ints_attr(&[1, 2, 3]))]
        ),
        ty_of(ElemType::I64, "3")
    );
    assert_eq!(
        run(
            "ai.onnx.ml.LabelEncoder",
            vec![T(ty_of(ElemType::String, "N"))],
            vec![("values_int64s", ints_attr(&[1]))]
        ),
        ty_of(ElemType::I64, "N")
    );
    let ln = run_n(
        "LayerNormalization",
        vec![
            T(ty_of(ElemType::F16, "N,S,8")),
            T(ty_of(ElemType::F16, "8")),
        ],
        vec![],
        3,
    )
    .unwrap();
    assert_eq!(
        ln,
        vec![ty_of(ElemType::F16, "N,S,8"), f("N,S,1"), f("N,S,1")]
    );
}

#[test]
fn shape_ops_and_data_dependent() {
    let i64t = |s: &str| ty_of(ElemType::I64, s);
    assert_eq!(run("Shape", vec![T(f("N,3,4,5"))], vec![]), i64t("4"));
    assert_eq!(
        run(
            "Shape",
            vec![T(f("N,3,4,5"))],
            vec![("start", Attr::Int(1)), ("end", Attr::Int(-1))]
        ),
        i64t("2")
    );
    assert_eq!(
        run("Shape", vec![T(f("N,3"))], vec![("start", Attr::Int(5))]),
        i64t("0")
    );
    assert_eq!(run("Size", vec![T(f("N,3"))], vec![]), i64t(""));
    assert_eq!(
        run("Expand", vec![T(f("N,1")), C(ints(&[2, 1, 4]))], vec![]),
        f("2,N,4")
    );
    assert_eq!(
        run("Tile", vec![T(f("N,3")), C(ints(&[2, 2]))], vec![]),
        f("2*N,6")
    );
    assert_eq!(
        run(
            "Pad",
            vec![T(f("N,3,H")), C(ints(&[0, 1, 2, 0, 1, 2]))],
            vec![]
        ),
        f("N,5,H+4")
    );
    assert_eq!(
        run(
            "Pad",
            vec![T(f("N,3,H")), C(ints(&[1, 1])), No, C(ints(&[-1]))],
            vec![]
        ),
        f("N,3,H+2")
    );
    assert_eq!(
        run(
            "OneHot",
            vec![T(i64t("N")), C(scalar_i64(10)), T(f("2"))],
            vec![]
        ),
        f("N,10")
    );
    assert_eq!(
        run(
            "Range",
            vec![C(scalar_i64(2)), C(scalar_i64(11)), C(scalar_i64(3))],
            vec![]
        ),
        i64t("3")
    );
    assert_eq!(
        run(
            "Range",
            vec![T(i64t("")), C(scalar_i64(11)), C(scalar_i64(3))],
            vec![]
        ),
        i64t("?")
    );
    assert_eq!(run("NonZero", vec![T(f("N,3"))], vec![]), i64t("2,?"));
    assert_eq!(
        run(
            "DepthToSpace",
            vec![T(f("N,12,H,W"))],
            vec![("blocksize", Attr::Int(2))]
        ),
        f("N,3,2*H,2*W")
    );
    let lstm = run_n(
        "LSTM",
        vec![T(f("S,B,10")), T(f("2,80,10")), T(f("2,80,20"))],
        vec![
            ("hidden_size", Attr::Int(20)),
            ("direction", Attr::String("bidirectional".into())),
        ],
        3,
    )
    .unwrap();
    assert_eq!(lstm, vec![f("S,2,B,20"), f("2,B,20"), f("2,B,20")]);
    let u = run_n("Unique", vec![T(f("N"))], vec![], 4).unwrap();
    assert_eq!(u[0], f("?"));
    assert_eq!(u[2], i64t("N"));
}

#[test]
fn control_flow_from_region_types() {
    let r = run_r(
        "If",
        vec![T(ty_of(ElemType::Bool, ""))],
        vec![],
        2,
        vec![
            ("else_branch", vec![f("N,3"), f("2")]),
            ("then_branch", vec![f("N,4"), f("2")]),
        ],
    )
    .unwrap();
    assert_eq!(r, vec![f("N,?"), f("2")]);
    assert!(run_r(
        "If",
        vec![T(ty_of(ElemType::Bool, ""))],
        vec![],
        1,
        vec![
            ("else_branch", vec![f("1")]),
            ("then_branch", vec![ty_of(ElemType::I64, "1")])
        ]
    )
    .is_err());
    // Loop: M, cond, one carried value; body gives cond, carried, one scan output.
    let r = run_r(
        "Loop",
        vec![C(scalar_i64(5)), No, T(f("N"))],
        vec![],
        2,
        vec![("body", vec![ty_of(ElemType::Bool, ""), f("N"), f("3")])],
    )
    .unwrap();
    assert_eq!(r, vec![f("N"), f("?,3")]);
    // Scan: one state, one scan input along axis 1.
    let r = run_r(
        "Scan",
        vec![T(f("4")), T(f("B,T,4"))],
        vec![
            ("num_scan_inputs", Attr::Int(1)),
            ("scan_input_axes", ints_attr(&[1])),
        ],
        2,
        vec![("body", vec![f("4"), f("B,4")])],
    )
    .unwrap();
    assert_eq!(r, vec![f("4"), f("T,B,4")]);
    let r = run_r(
        "SequenceMap",
        vec![T(Type::Sequence(Box::new(f("?"))))],
        vec![],
        1,
        vec![("body", vec![f("?,2")])],
    )
    .unwrap();
    assert_eq!(r, vec![Type::Sequence(Box::new(f("?,2")))]);
}

#[test]
fn sequences_and_optionals() {
    let seq = |t: Type| Type::Sequence(Box::new(t));
    assert_eq!(
        run("SequenceConstruct", vec![T(f("N,3")), T(f("N,4"))], vec![]),
        seq(f("N,?"))
    );
    assert_eq!(
        run("SequenceAt", vec![T(seq(f("N"))), C(scalar_i64(0))], vec![]),
        f("N")
    );
    assert_eq!(
        run("SequenceLength", vec![T(seq(f("N")))], vec![]),
        ty_of(ElemType::I64, "")
    );
    assert_eq!(
        run("SequenceEmpty", vec![], vec![("dtype", Attr::Int(7))]),
        seq(Type::Tensor(TensorType::unranked(ElemType::I64)))
    );
    assert_eq!(
        run(
            "SplitToSequence",
            vec![T(f("N,6"))],
            vec![("axis", Attr::Int(1))]
        ),
        seq(f("N,1"))
    );
    assert_eq!(
        run("Optional", vec![T(f("N"))], vec![]),
        Type::Optional(Box::new(f("N")))
    );
    assert_eq!(
        run(
            "OptionalGetElement",
            vec![T(Type::Optional(Box::new(f("N"))))],
            vec![]
        ),
        f("N")
    );
    assert_eq!(
        run(
            "OptionalHasElement",
            vec![T(Type::Optional(Box::new(f("N"))))],
            vec![]
        ),
        ty_of(ElemType::Bool, "")
    );
}

#[test]
fn training_and_ml_ops() {
    let r = run_n(
        "ai.onnx.preview.training.Adam",
        vec![
            T(f("")),
            T(ty_of(ElemType::I64, "")),
            T(f("3")),
            T(f("4")),
            T(f("3")),
            T(f("4")),
            T(f("3")),
            T(f("4")),
            T(f("3")),
            T(f("4")),
        ],
        vec![],
        6,
    )
    .unwrap();
    assert_eq!(r, vec![f("3"), f("4"), f("3"), f("4"), f("3"), f("4")]);
    assert_eq!(
        run(
            "ai.onnx.ml.ArrayFeatureExtractor",
            vec![T(f("N,10")), T(ty_of(ElemType::I64, "3"))],
            vec![]
        ),
        f("N,3")
    );
}

#[test]
fn malformed_input_does_not_panic() {
    // Bad axes, huge values, wrong ranks: errors, never panics.
    assert!(run_n(
        "Gather",
        vec![T(f("3")), T(ty_of(ElemType::I64, "2"))],
        vec![("axis", Attr::Int(i64::MIN))],
        1
    )
    .is_err());
    assert!(run_n(
        "Unsqueeze",
        vec![T(f("3")), C(ints(&[i64::MAX]))],
        vec![],
        1
    )
    .is_err());
    assert!(run_n("Reshape", vec![T(f("3")), C(ints(&[-2]))], vec![], 1).is_err());
    let _ = run_n("Tile", vec![T(f("3")), C(ints(&[i64::MAX]))], vec![], 1);
    let _ = run_n(
        "Pad",
        vec![T(f("3")), C(ints(&[i64::MAX, i64::MAX]))],
        vec![],
        1,
    );
    let _ = run_n(
        "Conv",
        vec![T(f("1,1,3,3")), T(f("1,1,3,3"))],
        vec![("strides", ints_attr(&[0, 0]))],
        1,
    );
    let _ = run_n(
        "MaxPool",
        vec![T(f("1,1,3,3"))],
        vec![("kernel_shape", ints_attr(&[i64::MAX, 1]))],
        1,
    );
    let _ = run_n(
        "Range",
        vec![C(scalar_i64(0)), C(scalar_i64(i64::MAX)), C(scalar_i64(1))],
        vec![],
        1,
    );
    let _ = run_n(
        "Slice",
        vec![
            T(f("3")),
            C(ints(&[i64::MIN])),
            C(ints(&[i64::MAX])),
            C(ints(&[0])),
            C(ints(&[i64::MIN])),
        ],
        vec![],
        1,
    );
    let _ = run_n("Split", vec![T(f("3"))], vec![], 0);
    let _ = run_n(
        "Einsum",
        vec![T(f("3"))],
        vec![("equation", Attr::String("...->...,".into()))],
        1,
    );
    let _ = run_n(
        "DepthToSpace",
        vec![T(f("1,4,2,2"))],
        vec![("blocksize", Attr::Int(i64::MAX))],
        1,
    );
}

// ------------------------------------------------- the ONNX node test suite

fn parse_type(s: &str) -> Option<Type> {
    if let Some(inner) = s.strip_prefix("seq<").and_then(|r| r.strip_suffix('>')) {
        return Some(Type::Sequence(Box::new(parse_type(inner)?)));
    }
    if let Some(inner) = s.strip_prefix("opt<").and_then(|r| r.strip_suffix('>')) {
        return Some(Type::Optional(Box::new(parse_type(inner)?)));
    }
    let (e, rest) = s.split_once('[')?;
    let e = ElemType::from_name(e)?;
    let dims = rest.strip_suffix(']')?;
    if dims == "*" {
        return Some(Type::Tensor(TensorType::unranked(e)));
    }
    Some(Type::tensor(e, d(dims)))
}

fn unhex(s: &str) -> Vec<u8> {
    if s == "-" {
        return vec![];
    }
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

fn parse_tensor(f: &[&str]) -> Option<TensorData> {
    let e = ElemType::from_name(f[0])?;
    let shape: Vec<u64> = f[1]
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    TensorData::from_bytes(e, shape, unhex(f[2])).ok()
}

struct NodeCase {
    name: String,
    op: String,
    attrs: Attrs,
    ins: Vec<Option<(Type, Option<TensorData>)>>,
    outs: Vec<Option<Type>>,
}

fn node_cases(text: &str) -> Vec<NodeCase> {
    let mut cases = vec![];
    let mut cur: Option<NodeCase> = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[0] {
            "case" => {
                cur = Some(NodeCase {
                    name: f[1].into(),
                    op: String::new(),
                    attrs: Attrs::new(),
                    ins: vec![],
                    outs: vec![],
                })
            }
            "end" => cases.extend(cur.take()),
            _ => {
                let Some(c) = cur.as_mut() else { continue };
                match f[0] {
                    "op" => c.op = f[1].into(),
                    "in" if f[1] == "-" => c.ins.push(None),
                    "in" => {
                        let t =
                            parse_type(f[1]).unwrap_or_else(|| panic!("{}: type {}", c.name, f[1]));
                        let k = if f.len() >= 5 {
                            parse_tensor(&f[2..5])
                        } else {
                            None
                        };
                        c.ins.push(Some((t, k)));
                    }
                    "out" => c
                        .outs
                        .push(if f[1] == "-" { None } else { parse_type(f[1]) }),
                    "attr" => {
                        let v = &f[3..];
                        let a = match f[2] {
                            "int" => Attr::Int(v[0].parse().unwrap()),
                            "float" => Attr::Float(v[0].parse().unwrap()),
                            "string" => Attr::String(String::from_utf8_lossy(&unhex(v[0])).into()),
                            "ints" => Attr::Ints(
                                v.iter()
                                    .filter(|x| !x.is_empty())
                                    .map(|x| x.parse().unwrap())
                                    .collect(),
                            ),
                            "floats" => Attr::Floats(
                                v.iter()
                                    .filter(|x| !x.is_empty())
                                    .map(|x| x.parse().unwrap())
                                    .collect(),
                            ),
                            "strings" => Attr::Strings(
                                v.iter()
                                    .filter(|x| !x.is_empty())
                                    .map(|x| String::from_utf8_lossy(&unhex(x)).into())
                                    .collect(),
                            ),
                            "tensor" => match parse_tensor(v) {
                                Some(t) => Attr::Tensor(Arc::new(t)),
                                None => continue,
                            },
                            "type" => Attr::Type(parse_type(v[0]).unwrap()),
                            k => panic!("attr kind {k}"),
                        };
                        c.attrs.insert(f[1].into(), a);
                    }
                    _ => {}
                }
            }
        }
    }
    cases
}

/// Every single-node model of the ONNX node test suite (newest op forms):
/// inference must succeed and agree with the expected result types.
#[test]
fn onnx_node_suite_shapes() {
    let cases = node_cases(include_str!("../../tests/data/onnx_node_cases.txt"));
    assert!(cases.len() > 900);
    check_cases(&cases);
}

/// Every node of the shared models, against ONNX's own shape inference.
#[test]
fn onnx_model_nodes_shapes() {
    let cases = node_cases(include_str!("../../tests/data/onnx_model_nodes.txt"));
    assert!(cases.len() > 900);
    check_cases(&cases);
}

fn check_cases(cases: &[NodeCase]) {
    let mut failures = vec![];
    let mut imprecise = std::collections::BTreeMap::<String, usize>::new();
    for c in cases {
        let Some(schema) = lookup(&c.op) else {
            failures.push(format!("{}: unknown op {}", c.name, c.op));
            continue;
        };
        let types: Vec<Option<&Type>> = c.ins.iter().map(|i| i.as_ref().map(|x| &x.0)).collect();
        let ctx = InferCtx {
            op: &c.op,
            node: c.op.clone(),
            inputs: types,
            consts: c
                .ins
                .iter()
                .map(|i| i.as_ref().and_then(|x| x.1.as_ref()))
                .collect(),
            values: vec![None; c.ins.len()],
            attrs: &c.attrs,
            num_outputs: c.outs.len(),
            declared: vec![],
            regions: vec![],
            value_reads: Default::default(),
        };
        match (schema.infer)(&ctx) {
            Err(e) => failures.push(format!("{} ({}): {e}", c.name, c.op)),
            Ok(tys) => {
                for (i, want) in c.outs.iter().enumerate() {
                    let Some(want) = want else { continue };
                    let Some(got) = tys.get(i) else {
                        failures.push(format!("{} ({}): no type for result {i}", c.name, c.op));
                        continue;
                    };
                    if !crate::types::types_compatible(want, got) {
                        failures.push(format!(
                            "{} ({}): result {i} expected {} got {}",
                            c.name,
                            c.op,
                            crate::verify::type_str(want),
                            crate::verify::type_str(got)
                        ));
                    } else if refine(want, got).as_ref() != Some(got) {
                        *imprecise.entry(c.op.clone()).or_default() += 1;
                    }
                }
            }
        }
    }
    eprintln!("less precise than the test data (op: results): {imprecise:?}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ------------------------------------------------------ robustness fuzzing

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())].clone()
    }
}

const FUZZ_ITERS: usize = 300;
const FUZZ_INTS: [i64; 10] = [-2, -1, 0, 1, 2, 3, 7, i64::MAX, i64::MIN, 1 << 40];

fn fuzz_dim(r: &mut Rng) -> Dim {
    match r.below(8) {
        0 => Dim::sym("N"),
        1 => Dim::Unknown,
        2 => Dim::Known(0),
        3 => Dim::Known(1 << 40),
        _ => Dim::Known(r.below(6) as u64),
    }
}

fn fuzz_type(r: &mut Rng) -> Type {
    let e = r.pick(&[
        ElemType::F32,
        ElemType::I64,
        ElemType::I64,
        ElemType::Bool,
        ElemType::U8,
        ElemType::String,
    ]);
    let t = if r.below(10) == 0 {
        Type::Tensor(TensorType::unranked(e))
    } else {
        let rank = r.below(6);
        Type::tensor(e, (0..rank).map(|_| fuzz_dim(r)).collect())
    };
    match r.below(12) {
        0 => Type::Sequence(Box::new(t)),
        1 => Type::Optional(Box::new(t)),
        _ => t,
    }
}

fn fuzz_attr(r: &mut Rng, kind: AttrKind) -> Option<Attr> {
    let strs = [
        "",
        "NOTSET",
        "SAME_UPPER",
        "VALID",
        "bidirectional",
        "none",
        "mean",
        "not_larger",
        "ii->i",
        "...ij,jk->...ik",
        "ij,jk",
        "a...->",
        "...",
    ];
    Some(match kind {
        AttrKind::Int => Attr::Int(r.pick(&FUZZ_INTS)),
        AttrKind::Float => Attr::Float(r.pick(&[0.5, -1.0, 2.0, f32::NAN, f32::INFINITY])),
        AttrKind::String => Attr::String(r.pick(&strs).to_string()),
        AttrKind::Ints => Attr::Ints((0..r.below(9)).map(|_| r.pick(&FUZZ_INTS)).collect()),
        AttrKind::Floats => Attr::Floats(
            (0..r.below(5))
                .map(|_| r.pick(&[0.5f32, -1.0, 3.0, f32::NAN]))
                .collect(),
        ),
        AttrKind::Strings => {
            Attr::Strings((0..r.below(3)).map(|_| r.pick(&strs).to_string()).collect())
        }
        AttrKind::Tensor => {
            let n = r.below(4) as u64;
            let v: Vec<i64> = (0..n).map(|_| r.pick(&FUZZ_INTS)).collect();
            Attr::Tensor(Arc::new(TensorData::from_i64(vec![n], &v).ok()?))
        }
        AttrKind::Type => Attr::Type(fuzz_type(r)),
        _ => return None,
    })
}

/// Random operand types, constants and attributes through every rule:
/// rules may fail, never panic.
#[test]
fn rules_never_panic_on_malformed_nodes() {
    let mut r = Rng(0x9e3779b97f4a7c15);
    let mut panics = vec![];
    for s in all().filter(|s| s.has_rule) {
        for _ in 0..FUZZ_ITERS {
            let lo = s.min_inputs;
            let hi = s.max_inputs.min(lo + 4);
            let n_in = lo + r.below(hi - lo + 1);
            let mut types = vec![];
            let mut consts = vec![];
            for _ in 0..n_in {
                if r.below(10) == 0 {
                    types.push(None);
                    consts.push(None);
                    continue;
                }
                let t = fuzz_type(&mut r);
                let c = match t.as_tensor().and_then(|t| t.static_shape()) {
                    Some(sh)
                        if r.below(2) == 0
                            && crate::tensor::shape_numel(&sh).is_some_and(|n| n <= 8) =>
                    {
                        let n = crate::tensor::shape_numel(&sh).unwrap_or(0);
                        let v: Vec<i64> = (0..n).map(|_| r.pick(&FUZZ_INTS)).collect();
                        TensorData::from_i64(sh, &v).ok()
                    }
                    _ => None,
                };
                let t = match &c {
                    Some(c) => Type::Tensor(TensorType::known(c.elem, &c.shape)),
                    None => t,
                };
                types.push(Some(t));
                consts.push(c);
            }
            let mut attrs = Attrs::new();
            for a in s.attrs {
                if a.required || r.below(2) == 0 {
                    if let Some(v) = fuzz_attr(&mut r, a.kind) {
                        attrs.insert(a.name.to_string(), v);
                    }
                }
            }
            let lo = s.min_outputs;
            let n_out = lo + r.below(s.max_outputs.min(lo + 3) - lo + 1);
            let regions: Vec<(&str, Vec<Type>)> = s
                .attrs
                .iter()
                .filter(|a| a.kind == AttrKind::Graph)
                .map(|a| (a.name, (0..r.below(4)).map(|_| fuzz_type(&mut r)).collect()))
                .collect();
            let ctx = InferCtx {
                op: s.name,
                node: s.name.to_string(),
                inputs: types.iter().map(Option::as_ref).collect(),
                consts: consts.iter().map(Option::as_ref).collect(),
                values: vec![None; n_in],
                attrs: &attrs,
                num_outputs: n_out,
                declared: vec![],
                regions,
                value_reads: Default::default(),
            };
            let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = (s.infer)(&ctx);
                let _ = ctx
                    .inputs
                    .first()
                    .copied()
                    .flatten()
                    .map(|t| super::values::propagate(&ctx, t));
            }));
            if res.is_err() {
                panics.push(format!(
                    "{} with {:?} / {:?} / {:?}",
                    s.name, ctx.inputs, ctx.consts, attrs
                ));
                break;
            }
        }
    }
    assert!(
        panics.is_empty(),
        "{} ops panicked:\n{}",
        panics.len(),
        panics.join("\n")
    );
}

/// SPEC.md documents every op of the registry (regenerate it with
/// `python3 ir-spec/spec/gen_spec.py` after adding one).
#[test]
fn spec_documents_every_op() {
    let spec = include_str!("../../SPEC.md");
    let headings: std::collections::HashSet<&str> = spec
        .lines()
        .filter_map(|l| l.strip_prefix("#### "))
        .map(|h| h.trim().trim_matches('`'))
        .collect();
    let missing: Vec<&str> = super::all()
        .map(|s| s.name)
        .filter(|n| !headings.contains(n) && !headings.contains(n.rsplit('.').next().unwrap_or(n)))
        .collect();
    assert!(missing.is_empty(), "SPEC.md lacks sections for {missing:?}");
}
