//! Tests of the text format: each syntax element, error positions and
//! rendering, a hand-written round trip of every construct, a proptest
//! round trip of random modules, and truncation robustness.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::*;

fn round_trip(src: &str) {
    let m = parse_module(src).unwrap_or_else(|e| panic!("{}", e.render("t.kir", src)));
    assert_eq!(print_module(&m, &PrintOptions::default()), src);
}

fn module(body: &str) -> String {
    format!("module @m opset() {{\n{body}}}\n")
}

fn err(src: &str) -> ParseError {
    match parse_module(src) {
        Ok(_) => panic!("parsed:\n{src}"),
        Err(e) => e,
    }
}

/// Every construct of the format, in canonical form.
const EVERYTHING: &str = r#"module @"my model" opset("" = 13, ai.onnx.ml = 3) {
  input %data_0: f32[N,3,224,224]
  input %"gpu_0/data 1": f32["batch size",seq+1,unk__123]
  input %cond: bool[]
  input %trip: i64[]
  input %k: i64[1]
  input %s: seq<f32[*]>
  input %o: opt<map<string, f32[2*N*seq-3,?,N*N+2*seq]>>
  input %q: i8[64,3] quant<axis = 0, block_size = 32, scale = [0.5, 0.25], zero_point = [0, 0]>
  input %q2: u8[] quant<scale = [0.1], zero_point = []>
  input %0: f32[-N+3,2*"a b"]
  const %conv1_w: f32[96,3,7,7] = elided
  const %shape: i64[2] = dense[1, -1]
  const %h: f16[2] = hex"003c0040"
  const %str: string[2] = dense["a", "b\n\x{ff}\u{0001}é"]
  const %one: f32[] = dense[-0.0]
  const %fl: f64[3] = dense[nan, inf, -1e-300]
  const %b: bool[2] = dense[true, false]
  const %u: u64[1] = dense[18446744073709551615]
  const %i8: i8[2] = dense[-128, 127]
  const %i4: i4[3] = hex"f70a"
  const %c: c64[1] = hex"0000803f00000000"
  const %f8: f8e4m3fn[2, 0] = elided
  const %qc: i8[2] quant<scale = [1.0], zero_point = [0]> = dense[1, 2]
  %y = Conv(%data_0, %conv1_w, none) {kernel_shape = [7, 7], strides = [2, 2]} : f32[N,96,109,109] loc("conv1")
  %vals, %"onnx::idx_1" = TopK(%y, %k) {axis = 1} : f32[N,5], i64[N,5]
  com.microsoft.Everything() {e1 = ints[], e2 = floats[], e3 = strings[], e4 = tensors[], e5 = types[], f = 1e-5, fs = [1.0, 2.5, nan, -inf], i = -3, is = [1, -2], s = "x \"y\"\t\\", ss = ["a", ""], t = tensor<f32[2]> dense[1.0, 2.0], te = tensor<u8[100]> elided, th = tensor<bf16[1]> hex"803f", ts = [tensor<i64[]> dense[7], tensor<string[1]> dense["z"]], ty = type<seq<i64[*]>>, tys = [type<f32[]>, type<map<i64, f32[3]>>]} loc("weird \"name\"\n")
  %r = "return"(none, %y, none, none) : f32[1]
  %z = If(%cond) {
    else_branch = graph {
      %e = Neg(%y) : f32[N,96,109,109]
      return %e
    },
    then_branch = graph {
      return %y
    }
  } : f32[N,96,109,109]
  %l = Loop(%trip, %cond, %one) {
    body = graph {
      input %i: i64[]
      input %c1: bool[]
      input %v: f32[?]
      const %inner: f32[1] = dense[2.5]
      %t = Add(%v, %inner) : f32[?]
      %t2 = If(%c1) {
        else_branch = graph {
          return %t
        },
        then_branch = graph {
          %n = Neg(%y) : f32[?]
          return %n
        }
      } : f32[?]
      return %c1, %t2
    }
  } : f32[?]
  %w = ai.onnx.ml.Thing(%y) {
    alpha = 1e-5,
    branches = [graph {
      return %y
    }, graph {
      %g = Neg(%z) : f32[3]
      return %g
    }],
    empty = graphs[]
  } : f32[3]
  Print(%w)
  return %y, %vals, %z, %l
}
"#;

#[test]
fn everything_round_trips() {
    // `f8e4m3fn[2, 0]` is not canonical spacing; fix it up first.
    let src = EVERYTHING.replace("[2, 0]", "[2,0]");
    round_trip(&src);
    let m = parse_module(&src).unwrap();
    assert_eq!(m.name, "my model");
    assert_eq!(m.opsets[0], (String::new(), 13));
    assert_eq!(m.body.inputs.len(), 10);
    assert_eq!(m.body.constants.len(), 13);
    assert_eq!(m.body.node_count(), 13);
    // The pieces parsed into what they say.
    let get = |n: &str| m.lookup(n).unwrap();
    let data = |n: &str| m.constant(get(n)).unwrap().clone();
    assert_eq!(data("shape").to_i64_vec(), Some(vec![1, -1]));
    assert_eq!(data("h").to_f64_vec(), Some(vec![1.0, 2.0]));
    assert_eq!(
        data("str").payload,
        Payload::Strings(vec![b"a".to_vec(), b"b\n\xff\x01\xc3\xa9".to_vec()].into())
    );
    assert!(data("one").to_f64_vec().unwrap()[0].is_sign_negative());
    assert!(data("conv1_w").is_elided());
    assert_eq!(data("i4").bytes(), Some(&[0xf7, 0x0a][..]));
    assert_eq!(data("u").bytes(), Some(&[0xff; 8][..]));
    let ty = |n: &str| print_type(m.ty(get(n)));
    assert_eq!(ty("qc"), "i8[2] quant<scale = [1.0], zero_point = [0]>");
    let d = m
        .ty(get("gpu_0/data 1"))
        .as_tensor()
        .unwrap()
        .shape
        .clone()
        .unwrap();
    assert_eq!(
        d,
        vec![
            Dim::sym("batch size"),
            Dim::sym("seq").add(&Dim::Known(1)),
            Dim::sym("unk__123")
        ]
    );
    let ev = &m.body.nodes[2];
    assert_eq!(
        (ev.op.as_str(), ev.name.as_str()),
        ("com.microsoft.Everything", "weird \"name\"\n")
    );
    assert!(ev.outputs.is_empty() && ev.inputs.is_empty());
    assert_eq!(ev.attr("fs").unwrap().kind(), AttrKind::Floats);
    assert_eq!(ev.attr("f").unwrap().as_float(), Some(1e-5));
    assert_eq!(m.body.nodes[3].op, "return");
    assert_eq!(m.body.nodes[3].inputs[0], None);
    // Nested values are scoped but still module-wide.
    assert!(m.lookup("t2").is_some());
}

#[test]
fn lexer_tokens_and_positions() {
    use super::lexer::{Lexer, Tok};
    let src = "%\"a b\" @m.1 x.y_2 1e-5 # c\n  \"s\\x{ff}\\u{e9}\" hex\"0aFF\" %0.a (-?)";
    let mut lex = Lexer::new(src);
    let mut toks = vec![];
    loop {
        let t = lex.next_token().unwrap();
        if t.tok == Tok::Eof {
            break;
        }
        toks.push((t.tok, t.line, t.col, &src[t.span]));
    }
    let want = vec![
        (Tok::Value("a b".into()), 1, 1, "%\"a b\""),
        (Tok::At("m.1".into()), 1, 8, "@m.1"),
        (Tok::Ident("x.y_2".into()), 1, 13, "x.y_2"),
        (Tok::Num("1e-5".into()), 1, 19, "1e-5"),
        (
            Tok::Str(b"s\xff\xc3\xa9".to_vec()),
            2,
            3,
            "\"s\\x{ff}\\u{e9}\"",
        ),
        (Tok::Hex(vec![0x0a, 0xff]), 2, 19, "hex\"0aFF\""),
        (Tok::Value("0.a".into()), 2, 29, "%0.a"),
        (Tok::Punct('('), 2, 34, "("),
        (Tok::Punct('-'), 2, 35, "-"),
        (Tok::Punct('?'), 2, 36, "?"),
        (Tok::Punct(')'), 2, 37, ")"),
    ];
    assert_eq!(toks, want);
    for bad in [
        "%",
        "@ x",
        "\"\\u{110000}\"",
        "\"\\x{100}\"",
        "\"\\u{}\"",
        "hex\"0\"",
        "hex\"0",
        "`",
    ] {
        assert!(Lexer::new(bad).next_token().is_err(), "{bad}");
    }
}

#[test]
fn display_uses_default_options() {
    let src = module("  const %c: f32[17] = elided\n  return %c\n");
    let m = parse_module(&src).unwrap();
    assert_eq!(m.to_string(), src);
}

#[test]
fn elide_threshold() {
    let mut m = Module::new("m");
    let big = m.add_constant_unique(
        "big",
        Arc::new(TensorData::from_i64(vec![17], &[5; 17]).unwrap()),
    );
    let small = m.add_constant_unique(
        "small",
        Arc::new(TensorData::from_i64(vec![16], &[5; 16]).unwrap()),
    );
    m.body.constants = vec![big, small];
    let text = m.to_string();
    assert!(text.contains("const %big: i64[17] = elided\n"), "{text}");
    assert!(
        text.contains("const %small: i64[16] = dense[5, 5,"),
        "{text}"
    );
    let full = print_module(
        &m,
        &PrintOptions {
            elide_threshold: None,
        },
    );
    assert!(full.contains("const %big: i64[17] = dense[5, 5,"), "{full}");
    let back = parse_module(&full).unwrap();
    assert_eq!(back.constant(back.lookup("big").unwrap()), m.constant(big));
    let none = print_module(
        &m,
        &PrintOptions {
            elide_threshold: Some(0),
        },
    );
    assert!(none.contains("%small: i64[16] = elided"));
}

#[test]
fn types_print_as_specified() {
    let n = Dim::sym("N");
    let cases = [
        (
            Type::tensor(ElemType::F32, vec![Dim::Known(1), n.clone()]),
            "f32[1,N]",
        ),
        (Type::tensor(ElemType::BF16, vec![]), "bf16[]"),
        (Type::Tensor(TensorType::unranked(ElemType::U4)), "u4[*]"),
        (
            Type::tensor(ElemType::I64, vec![Dim::Unknown, Dim::sym("a-b")]),
            "i64[?,\"a-b\"]",
        ),
        (
            Type::tensor(
                ElemType::I64,
                vec![n
                    .mul(&Dim::sym("seq"))
                    .mul(&Dim::Known(2))
                    .sub(&Dim::Known(3))],
            ),
            "i64[2*N*seq-3]",
        ),
        (
            Type::Map(
                ElemType::String,
                Box::new(Type::Sequence(Box::new(Type::tensor(
                    ElemType::C128,
                    vec![],
                )))),
            ),
            "map<string, seq<c128[]>>",
        ),
        (
            Type::Optional(Box::new(Type::tensor(ElemType::Bool, vec![]))),
            "opt<bool[]>",
        ),
    ];
    for (t, s) in cases {
        assert_eq!(print_type(&t), s);
        let m = parse_module(&module(&format!("  input %x: {s}\n  return\n"))).unwrap();
        assert_eq!(m.ty(ValueId(0)), &t, "{s}");
    }
}

#[test]
fn sym_dims_print_like_display() {
    let (n, s) = (SymExpr::symbol("N"), SymExpr::symbol("seq"));
    for e in [
        n.clone(),
        n.mul(&s).scale(2).sub(&SymExpr::constant(3)),
        n.mul(&n).scale(-1).add(&s).add(&SymExpr::constant(7)),
        s.sub(&n).scale(-5),
    ] {
        assert_eq!(
            super::printer::print_type(&Type::tensor(ElemType::F32, vec![Dim::Sym(e.clone())])),
            format!("f32[{e}]")
        );
    }
}

#[test]
fn each_element_type_and_data_form() {
    for e in ElemType::ALL {
        let form = match e {
            ElemType::F32 | ElemType::F64 => "dense[0.0]",
            ElemType::Bool => "dense[false]",
            ElemType::String => "dense[\"\"]",
            e if e.is_int() && e.bit_width() >= Some(8) => "dense[0]",
            ElemType::C128 => "hex\"00000000000000000000000000000000\"",
            ElemType::C64 => "hex\"0000000000000000\"",
            e if e.bit_width() == Some(16) => "hex\"0000\"",
            _ => "hex\"00\"",
        };
        round_trip(&module(&format!(
            "  const %c: {e}[1] = {form}\n  return %c\n"
        )));
    }
}

#[test]
fn names_and_strings_quote_exactly_when_needed() {
    round_trip(&module(
        "  input %a.b_1: f32[]\n  input %\"\": f32[]\n  input %\"a-b\": f32[]\n  input %0: f32[]\n  input %\"\\u{007f}\\u{0085}\": f32[]\n  return\n",
    ));
    round_trip("module @\"\" opset(\"x y\" = -1) {\n  return\n}\n");
    round_trip("module @_m1 opset() {\n  return\n}\n");
    // Ops named like keywords are quoted; other names are bare.
    round_trip(&module(
        "  \"input\"()\n  \"loc\"()\n  \"quant\"()\n  none()\n  \"a b\"()\n  return\n",
    ));
}

#[test]
fn attribute_values() {
    let m = parse_module(&module("  X() {a = 3, b = -1.5, c = [1, 2.0], d = [-inf, 1], e = nan, f = [nan], g = -0.0, h = inf}\n  return\n")).unwrap();
    let a = &m.body.nodes[0].attrs;
    assert_eq!(a["a"], Attr::Int(3));
    assert_eq!(a["b"], Attr::Float(-1.5));
    assert_eq!(a["c"], Attr::Floats(vec![1.0, 2.0]));
    assert_eq!(a["d"], Attr::Floats(vec![f32::NEG_INFINITY, 1.0]));
    assert!(a["e"].as_float().unwrap().is_nan());
    assert!(a["g"].as_float().unwrap().is_sign_negative());
    assert_eq!(a["h"], Attr::Float(f32::INFINITY));
    for f in [1e-5f32, 0.1, 1e20, f32::MIN_POSITIVE, 1e-45, f32::MAX, 3.0] {
        let src = module(&format!("  X() {{a = {f:?}}}\n  return\n"));
        round_trip(&src);
        assert_eq!(
            parse_module(&src).unwrap().body.nodes[0].attrs["a"],
            Attr::Float(f)
        );
    }
}

#[test]
fn comments_and_whitespace_are_ignored() {
    let src = "# header\nmodule  @m opset ( a=1 ,b = 2 ){ # open\n input %x :f32[ N , 2 *N ] # in\n\n %y=Relu( %x ){k=[1,2]}:f32[N,2*N]loc(\"r\")\n return %y}";
    let m = parse_module(src).unwrap();
    assert_eq!(
        m.to_string(),
        "module @m opset(a = 1, b = 2) {\n  input %x: f32[N,2*N]\n  %y = Relu(%x) {k = [1, 2]} : f32[N,2*N] loc(\"r\")\n  return %y\n}\n"
    );
}

#[test]
fn error_positions() {
    let cases: &[(&str, usize, usize, &str)] = &[
        ("  input %x: f32[3]\n  %y = Relu(%x : f32[3]\n  return %y\n", 3, 16, "expected `,` or `)`, found `:`"),
        ("  input %x: f33[3]\n  return\n", 2, 13, "unknown element type `f33`"),
        ("  %y = Relu(%z) : f32[]\n  return\n", 2, 13, "undefined value `%z`"),
        ("  input %x: f32[3]\n  input %x: f32[3]\n  return\n", 3, 9, "value `%x` is already defined"),
        ("  %x, %x = Split() : f32[], f32[]\n  return\n", 2, 7, "already defined"),
        ("  X() {a = foo}\n  return\n", 2, 12, "unknown attribute kind `foo`"),
        ("  X() {a = 1.2.3}\n  return\n", 2, 12, "malformed number `1.2.3`"),
        ("  X() {a = 99999999999999999999}\n  return\n", 2, 12, "malformed number"),
        ("  X() {a = []}\n  return\n", 2, 13, "empty list must name its kind"),
        ("  const %c: f32[2] = dense[1.0]\n  return\n", 2, 22, "dense data has 1 values but f32[2] needs 2"),
        ("  const %c: i8[1] = dense[128]\n  return\n", 2, 27, "not a valid i8 value"),
        ("  const %c: f16[1] = dense[1.0]\n  return\n", 2, 28, "f16 data must be given as hex"),
        ("  const %c: f16[1] = hex\"003\"\n  return\n", 2, 22, "odd number of hex digits"),
        ("  const %c: f16[1] = hex\"0g3c\"\n  return\n", 2, 27, "bad hex digit 'g'"),
        ("  const %c: f16[2] = hex\"003c\"\n  return\n", 2, 22, "needs 4 bytes, got 2"),
        ("  const %c: f32[N] = elided\n  return\n", 2, 13, "static shape"),
        ("  X() loc(\"abc)\n  return\n", 2, 11, "unterminated string"),
        ("  X() loc(\"a\\q\")\n  return\n", 2, 13, "unknown escape"),
        ("  X() {a = 1, a = 2}\n  return\n", 2, 15, "duplicate attribute `a`"),
        ("  X()\n  input %x: f32[]\n  return\n", 3, 3, "`input` lines must come before nodes"),
        ("  X() $\n", 2, 7, "unexpected character '$'"),
        ("  %y = Relu() : f32[], f32[]\n  return\n", 2, 22, "expected `input`, `const`, a node or `return`, found `,`"),
        ("  %y, %z = Relu() : f32[]\n  return\n", 3, 3, "the node has 2 results"),
        ("  return %y\n", 2, 10, "undefined value `%y`"),
        ("  %y = Relu() : f32[]\n", 3, 1, "found `}`"),
        // A nested region's values are out of scope after it.
        ("  %y = If() {\n    g = graph {\n      %t = A() : f32[]\n      return %t\n    }\n  } : f32[]\n  return %t\n", 8, 10, "undefined value `%t`"),
        // ... and so are the node's own results inside it.
        ("  %y = If() {g = graph {\n  return %y\n  }} : f32[]\n  return\n", 3, 10, "undefined value `%y`"),
    ];
    let mut bad = vec![];
    for (body, line, col, msg) in cases {
        let src = module(body);
        let e = err(&src);
        if !e.message.contains(msg) || (e.line, e.col) != (*line, *col) {
            bad.push(format!("{body:?}: got `{e}`, want {line}:{col} `{msg}`"));
            continue;
        }
        assert_eq!(e.to_string(), format!("{line}:{col}: {}", e.message));
        assert!(e.span.start <= e.span.end && e.span.end <= src.len());
        assert!(e
            .render("x.kir", &src)
            .contains(&format!("x.kir:{line}:{col}")));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn rendered_diagnostics_point_at_the_error() {
    let src = module("  input %x: f32[3]\n  %y = Relu(%xx) : f32[3]\n  return %y\n");
    let e = err(&src);
    let r = e.render("model.kir", &src);
    assert!(r.contains("model.kir:3:13"), "{r}");
    assert!(r.contains("undefined value `%xx`"), "{r}");
    assert!(r.contains("  %y = Relu(%xx) : f32[3]"), "{r}");
    // The underline sits under `%xx` exactly.
    let src_line = r.lines().find(|l| l.contains("%y = Relu(%xx)")).unwrap();
    let mark_line = r
        .lines()
        .skip_while(|l| !l.contains("%y = Relu(%xx)"))
        .nth(1)
        .unwrap();
    let at = src_line[..src_line.find("%xx").unwrap()].chars().count();
    let marks: String = mark_line.chars().skip(at).take(3).collect();
    assert!(
        marks.chars().all(|c| "─┬^".contains(c)) && marks.contains('┬'),
        "{r}"
    );
    // Errors at the very end render too.
    let src = "module @m opset() {\n  return";
    let e = err(src);
    assert_eq!((e.line, e.col), (2, 9));
    assert!(e.render("t.kir", src).contains("t.kir:2:9"));
    // A bad hex digit is pointed at by itself.
    let src = module("  const %c: u4[2] = hex\"z1\"\n  return\n");
    let e = err(&src);
    assert_eq!((e.line, e.col, e.span.len()), (2, 25, 1));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let ty = format!("{}f32[]{}", "seq<".repeat(10_000), ">".repeat(10_000));
    assert!(err(&module(&format!("  input %x: {ty}\n  return\n")))
        .message
        .contains("too deep"));
    let mut body = String::from("return");
    for _ in 0..10_000 {
        body = format!("X() {{g = graph {{ {body} }}}} return");
    }
    assert!(err(&module(&body)).message.contains("too deep"));
    let list = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    assert!(parse_module(&module(&format!("  X() {{a = {list}}}\n  return\n"))).is_err());
}

#[test]
fn every_truncation_fails_cleanly() {
    let src = EVERYTHING.replace("[2, 0]", "[2,0]");
    let ends: Vec<usize> = (0..src.len())
        .filter(|&i| src.is_char_boundary(i))
        .collect();
    for i in ends {
        let cut = &src[..i];
        if let Err(e) = parse_module(cut) {
            assert!(e.span.end <= cut.len());
            let _ = e.render("t.kir", cut);
        }
    }
}

// ---- random modules ----

/// A small deterministic generator of random modules, driven by a seed
/// from proptest.
struct Gen {
    s: u64,
    m: Module,
    n: u32,
}

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.s ^= self.s >> 12;
        self.s ^= self.s << 25;
        self.s ^= self.s >> 27;
        self.s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize].clone()
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    fn name(&mut self) -> String {
        self.n += 1;
        let n = self.n;
        match self.below(5) {
            0 => format!("v{n}"),
            1 => format!("{n}"),
            2 => format!("onnx::Conv_{n}"),
            3 => format!("gpu_0/\"data\"\n{n}"),
            _ => format!("a.b_{n}"),
        }
    }

    fn string(&mut self) -> String {
        self.pick(&["", "x", "a b", "\"q\"\\", "\n\t\r\u{1}\u{7f}", "é∂", "none"])
            .to_string()
    }

    fn sym(&mut self) -> SymExpr {
        let mut e = SymExpr::constant(0);
        for _ in 0..1 + self.below(3) {
            let mut t = SymExpr::constant(self.below(7) as i64 - 3);
            for _ in 0..self.below(3) {
                let s = self.pick(&["N", "seq", "batch size", "unk__123", "é", "x.y"]);
                t = t.mul(&SymExpr::symbol(s));
            }
            e = e.add(&t);
        }
        e
    }

    fn dim(&mut self) -> Dim {
        match self.below(6) {
            0 => Dim::Unknown,
            1 | 2 => Dim::from_expr(self.sym()),
            3 => Dim::Known(self.pick(&[0, u64::MAX, 1 << 40])),
            _ => Dim::Known(self.below(300)),
        }
    }

    fn f32(&mut self) -> f32 {
        if self.chance(2) {
            f32::from_bits(self.next() as u32)
        } else {
            self.pick(&[
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                -0.0,
                0.0,
                1e-5,
                0.1,
                1e20,
                1e-45,
                f32::MAX,
                3.0,
            ])
        }
    }

    fn quant(&mut self) -> Option<Arc<QuantParams>> {
        self.chance(5).then(|| {
            let k = self.below(3);
            Arc::new(QuantParams {
                axis: self.chance(2).then(|| self.below(5) as i64 - 2),
                block_size: self.chance(2).then(|| self.below(64)),
                scale: (0..k).map(|_| self.f32()).collect(),
                zero_point: (0..k)
                    .map(|_| self.next() as i64 >> self.below(64))
                    .collect(),
            })
        })
    }

    fn tensor_type(&mut self) -> TensorType {
        let elem = self.pick(&ElemType::ALL);
        let shape = (!self.chance(6)).then(|| (0..self.below(4)).map(|_| self.dim()).collect());
        TensorType {
            elem,
            shape,
            quant: self.quant(),
        }
    }

    fn ty(&mut self, depth: u32) -> Type {
        match if depth > 2 { 0 } else { self.below(8) } {
            5 => Type::Sequence(Box::new(self.ty(depth + 1))),
            6 => Type::Optional(Box::new(self.ty(depth + 1))),
            7 => Type::Map(self.pick(&ElemType::ALL), Box::new(self.ty(depth + 1))),
            _ => Type::Tensor(self.tensor_type()),
        }
    }

    fn data(&mut self) -> TensorData {
        let elem = self.pick(&ElemType::ALL);
        let shape: Vec<u64> = (0..self.below(3)).map(|_| self.below(6)).collect();
        let n = crate::tensor::shape_numel(&shape).unwrap_or(0);
        if self.chance(8) {
            return TensorData::elided(elem, shape);
        }
        let bytes: Vec<u8> = match elem {
            ElemType::String => {
                let ss = (0..n)
                    .map(|_| {
                        let mut s = self.string().into_bytes();
                        if self.chance(3) {
                            s.extend([0xff, 0xc3, b'a', 0x80]);
                        }
                        s
                    })
                    .collect();
                return TensorData::from_strings(shape, ss).unwrap();
            }
            ElemType::Bool => (0..n).map(|_| self.below(2) as u8).collect(),
            ElemType::F32 => (0..n).flat_map(|_| self.f32().to_le_bytes()).collect(),
            ElemType::F64 => (0..n)
                .flat_map(|_| {
                    let v = if self.chance(2) {
                        f64::from_bits(self.next())
                    } else {
                        self.f32() as f64
                    };
                    v.to_le_bytes()
                })
                .collect(),
            e => (0..e.storage_bytes(n).unwrap())
                .map(|_| self.next() as u8)
                .collect(),
        };
        TensorData::from_bytes(elem, shape, bytes).unwrap()
    }

    fn attr(&mut self, depth: u32, visible: &mut Vec<ValueId>) -> Attr {
        let k = self.below(if depth < 2 { 12 } else { 10 });
        let len = self.below(3);
        match k {
            0 => Attr::Int(self.next() as i64 >> self.below(64)),
            1 => Attr::Float(self.f32()),
            2 => Attr::String(self.string()),
            3 => Attr::Tensor(Arc::new(self.data())),
            4 => Attr::Type(self.ty(0)),
            5 => Attr::Ints(
                (0..len)
                    .map(|_| self.next() as i64 >> self.below(64))
                    .collect(),
            ),
            6 => Attr::Floats((0..len).map(|_| self.f32()).collect()),
            7 => Attr::Strings((0..len).map(|_| self.string()).collect()),
            8 => Attr::Tensors((0..len).map(|_| Arc::new(self.data())).collect()),
            9 => Attr::Types((0..len).map(|_| self.ty(0)).collect()),
            10 => Attr::Graph(self.region(depth + 1, visible)),
            _ => Attr::Graphs((0..len).map(|_| self.region(depth + 1, visible)).collect()),
        }
    }

    fn value(&mut self, visible: &mut Vec<ValueId>, ty: Type) -> ValueId {
        let name = self.name();
        let v = self.m.add_value(&name, ty).unwrap();
        visible.push(v);
        v
    }

    fn region(&mut self, depth: u32, visible: &mut Vec<ValueId>) -> Region {
        let mark = visible.len();
        let mut r = Region::default();
        for _ in 0..self.below(3) {
            let ty = self.ty(0);
            r.inputs.push(self.value(visible, ty));
        }
        for _ in 0..self.below(3) {
            let d = self.data();
            let ty = Type::Tensor(TensorType {
                quant: self.quant(),
                ..TensorType::known(d.elem, &d.shape)
            });
            let v = self.value(visible, ty);
            self.m.set_constant(v, Some(Arc::new(d)));
            r.constants.push(v);
        }
        for _ in 0..self.below(if depth == 0 { 6 } else { 3 }) {
            let inputs = (0..self.below(4))
                .map(|_| (!visible.is_empty() && !self.chance(4)).then(|| self.pick(visible)))
                .collect();
            let mut attrs = Attrs::new();
            for _ in 0..self.below(4) {
                let k = self.pick(&[
                    "axis",
                    "alpha",
                    "body",
                    "then_branch",
                    "x.y",
                    "weird name",
                    "_",
                ]);
                let a = self.attr(depth, visible);
                attrs.insert(k.to_string(), a);
            }
            let outputs = (0..self.below(3))
                .map(|_| {
                    let ty = self.ty(0);
                    self.value(visible, ty)
                })
                .collect();
            let op = self.pick(&[
                "Conv",
                "ai.onnx.ml.LabelEncoder",
                "com.microsoft.FusedMatMul",
                "return",
                "loc",
                "quant",
                "input",
                "weird op",
                "none",
                "_x",
            ]);
            let name = self.pick(&["", "conv1", "a \"b\"\n"]).to_string();
            r.nodes.push(Node {
                op: op.into(),
                name,
                inputs,
                outputs,
                attrs,
            });
        }
        for _ in 0..self.below(3) {
            if !visible.is_empty() {
                let v = self.pick(visible);
                r.outputs.push(v);
            }
        }
        visible.truncate(mark);
        r
    }

    fn module(seed: u64) -> Module {
        let mut g = Gen {
            s: seed | 1,
            m: Module::default(),
            n: 0,
        };
        g.m.name = g.pick(&["m", "my model", "", "squeezenet1.1"]).to_string();
        for _ in 0..g.below(3) {
            let d = g
                .pick(&["", "ai.onnx", "ai.onnx.ml", "weird dom"])
                .to_string();
            let v = g.next() as i64 >> g.below(64);
            g.m.opsets.push((d, v));
        }
        g.m.body = g.region(0, &mut Vec::new());
        g.m
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_modules_round_trip(seed in any::<u64>(), full in any::<bool>()) {
        let m = Gen::module(seed);
        let opts = PrintOptions { elide_threshold: if full { None } else { Some(16) } };
        let text = print_module(&m, &opts);
        let back = parse_module(&text).map_err(|e| TestCaseError::fail(e.render("gen.kir", &text)))?;
        prop_assert_eq!(print_module(&back, &opts), text.clone());
        // Printed in full and NaN-free, the text carries every value's type
        // and data exactly. (Arena order may differ, as attrs parse sorted,
        // and the generator leaves values of overwritten attrs unreachable.)
        if full && !text.contains("nan") {
            for i in 0..back.num_values() {
                let b = back.value(ValueId(i as u32));
                prop_assert_eq!(m.lookup(&b.name).map(|v| m.value(v)), Some(b));
            }
        }
    }

    #[test]
    fn random_damage_never_panics(seed in any::<u64>(), cut in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let text = Gen::module(seed).to_string();
        let mut bytes = text.clone().into_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = parse_module(&String::from_utf8_lossy(&bytes));
        let mut end = cut.index(text.len() + 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let _ = parse_module(&text[..end]);
    }
}
