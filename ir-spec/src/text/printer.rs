//! The printer: a module to canonical `.kir` text.
//!
//! Deterministic by construction: fixed spacing, 2-space indentation per
//! nesting level, attributes in `BTreeMap` order, names quoted exactly when
//! they are not bare. Floats use Rust's shortest round-trip `{:?}` form
//! (`nan` for every NaN), so parsing the output gives back the same text.

use std::fmt::Write;

use crate::{Attr, Dim, ElemType, Module, Payload, Region, SymExpr, TensorData, TensorType, Type};

/// Printer settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrintOptions {
    /// Constants with more elements than this print as `elided`; `None`
    /// prints every constant in full.
    pub elide_threshold: Option<u64>,
}

impl Default for PrintOptions {
    fn default() -> Self {
        PrintOptions {
            elide_threshold: Some(16),
        }
    }
}

impl std::fmt::Display for crate::Module {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&print_module(self, &PrintOptions::default()))
    }
}

/// Print a whole module.
pub fn print_module(m: &Module, opts: &PrintOptions) -> String {
    let mut p = Printer {
        m,
        opts,
        out: String::new(),
    };
    let opsets: Vec<String> = m
        .opsets
        .iter()
        .map(|(d, v)| format!("{} = {v}", ident_or_quoted(d)))
        .collect();
    let name = if is_ident(&m.name, true) {
        m.name.clone()
    } else {
        quote(&m.name)
    };
    let _ = writeln!(p.out, "module @{name} opset({}) {{", opsets.join(", "));
    p.region(&m.body, 1);
    p.out.push_str("}\n");
    p.out
}

/// A type as the text format writes it: `f32[N,3]`, `seq<i64[]>`.
pub fn print_type(t: &Type) -> String {
    match t {
        Type::Tensor(tt) => tensor_type(tt),
        Type::Sequence(t) => format!("seq<{}>", print_type(t)),
        Type::Optional(t) => format!("opt<{}>", print_type(t)),
        Type::Map(k, v) => format!("map<{k}, {}>", print_type(v)),
    }
}

fn tensor_type(t: &TensorType) -> String {
    let dims = match &t.shape {
        None => "*".to_string(),
        Some(s) => s.iter().map(dim).collect::<Vec<_>>().join(","),
    };
    let mut s = format!("{}[{dims}]", t.elem);
    if let Some(q) = &t.quant {
        s.push_str(" quant<");
        if let Some(a) = q.axis {
            let _ = write!(s, "axis = {a}, ");
        }
        if let Some(b) = q.block_size {
            let _ = write!(s, "block_size = {b}, ");
        }
        let scale: Vec<String> = q.scale.iter().map(|&f| f32_text(f)).collect();
        let zp: Vec<String> = q.zero_point.iter().map(i64::to_string).collect();
        let _ = write!(
            s,
            "scale = [{}], zero_point = [{}]>",
            scale.join(", "),
            zp.join(", ")
        );
    }
    s
}

fn dim(d: &Dim) -> String {
    match d {
        Dim::Known(n) => n.to_string(),
        Dim::Unknown => "?".to_string(),
        Dim::Sym(e) => sym_expr(e),
    }
}

/// `SymExpr`'s `Display`, except that symbols which are not identifiers
/// are quoted (`"batch size"`).
fn sym_expr(e: &SymExpr) -> String {
    let mut terms: Vec<_> = e.terms().collect();
    if terms.is_empty() {
        return "0".to_string();
    }
    terms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
    let mut s = String::new();
    for (i, (m, c)) in terms.iter().enumerate() {
        if *c < 0 {
            s.push('-');
        } else if i > 0 {
            s.push('+');
        }
        let mag = c.unsigned_abs();
        let syms = m.iter().map(|x| {
            if is_ident(x, false) {
                x.to_string()
            } else {
                quote(x)
            }
        });
        let mut parts: Vec<String> = (m.is_empty() || mag != 1)
            .then(|| mag.to_string())
            .into_iter()
            .collect();
        parts.extend(syms);
        s.push_str(&parts.join("*"));
    }
    s
}

/// `[A-Za-z_][A-Za-z0-9_]*`, with `.` also allowed after the first char
/// when `dots`.
pub(super) fn is_ident(s: &str, dots: bool) -> bool {
    let mut cs = s.chars();
    cs.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || (dots && c == '.'))
}

fn ident_or_quoted(s: &str) -> String {
    if is_ident(s, true) {
        s.to_string()
    } else {
        quote(s)
    }
}

fn value_name(s: &str) -> String {
    if !s.is_empty() && s.chars().all(super::lexer::is_name_char) {
        format!("%{s}")
    } else {
        format!("%{}", quote(s))
    }
}

/// Idents that would be read as keywords at the start of a node line or
/// right after one.
const LINE_KEYWORDS: [&str; 5] = ["input", "const", "return", "loc", "quant"];

fn op_name(s: &str) -> String {
    if is_ident(s, true) && !LINE_KEYWORDS.contains(&s) {
        s.to_string()
    } else {
        quote(s)
    }
}

pub(super) fn quote(s: &str) -> String {
    quote_bytes(s.as_bytes())
}

/// A quoted string; bytes that are not valid UTF-8 become `\x{NN}`.
fn quote_bytes(b: &[u8]) -> String {
    let mut s = String::from("\"");
    for chunk in b.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                '\t' => s.push_str("\\t"),
                '\r' => s.push_str("\\r"),
                c if c.is_control() => {
                    let _ = write!(s, "\\u{{{:04x}}}", c as u32);
                }
                c => s.push(c),
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(s, "\\x{{{byte:02x}}}");
        }
    }
    s.push('"');
    s
}

fn f32_text(v: f32) -> String {
    if v.is_nan() {
        "nan".into()
    } else {
        format!("{v:?}")
    }
}

fn f64_text(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else {
        format!("{v:?}")
    }
}

struct Printer<'a> {
    m: &'a Module,
    opts: &'a PrintOptions,
    out: String,
}

impl Printer<'_> {
    fn indent(&mut self, depth: usize) {
        for _ in 0..depth {
            self.out.push_str("  ");
        }
    }

    fn names(&self, ids: impl IntoIterator<Item = crate::ValueId>) -> String {
        ids.into_iter()
            .map(|v| value_name(self.m.name(v)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The lines of a region body, at `depth`.
    fn region(&mut self, r: &Region, depth: usize) {
        let m = self.m;
        for &v in &r.inputs {
            self.indent(depth);
            let _ = writeln!(
                self.out,
                "input {}: {}",
                value_name(m.name(v)),
                print_type(m.ty(v))
            );
        }
        for &v in &r.constants {
            self.indent(depth);
            let (ty, data) = match m.constant(v) {
                Some(d) => {
                    // The data's static shape, plus any quantization the
                    // value's type carries.
                    let quant = m.ty(v).as_tensor().and_then(|t| t.quant.clone());
                    let ty = TensorType {
                        quant,
                        ..TensorType::known(d.elem, &d.shape)
                    };
                    (tensor_type(&ty), self.data(d))
                }
                None => (print_type(m.ty(v)), "elided".to_string()),
            };
            let _ = writeln!(self.out, "const {}: {ty} = {data}", value_name(m.name(v)));
        }
        for n in &r.nodes {
            self.indent(depth);
            if !n.outputs.is_empty() {
                let _ = write!(self.out, "{} = ", self.names(n.outputs.iter().copied()));
            }
            let operands: Vec<String> = n
                .inputs
                .iter()
                .map(|i| i.map_or("none".to_string(), |v| value_name(m.name(v))))
                .collect();
            let _ = write!(self.out, "{}({})", op_name(&n.op), operands.join(", "));
            if !n.attrs.is_empty() {
                let multiline = n
                    .attrs
                    .values()
                    .any(|a| matches!(a, Attr::Graph(_) | Attr::Graphs(_)));
                self.out.push_str(" {");
                for (i, (k, a)) in n.attrs.iter().enumerate() {
                    if multiline {
                        self.out.push('\n');
                        self.indent(depth + 1);
                    } else if i > 0 {
                        self.out.push(' ');
                    }
                    let _ = write!(self.out, "{} = ", ident_or_quoted(k));
                    self.attr(a, depth + 1);
                    if i + 1 < n.attrs.len() {
                        self.out.push(',');
                    }
                }
                if multiline {
                    self.out.push('\n');
                    self.indent(depth);
                }
                self.out.push('}');
            }
            if !n.outputs.is_empty() {
                let tys: Vec<String> = n.outputs.iter().map(|&v| print_type(m.ty(v))).collect();
                let _ = write!(self.out, " : {}", tys.join(", "));
            }
            if !n.name.is_empty() {
                let _ = write!(self.out, " loc({})", quote(&n.name));
            }
            self.out.push('\n');
        }
        self.indent(depth);
        self.out.push_str("return");
        if !r.outputs.is_empty() {
            let _ = write!(self.out, " {}", self.names(r.outputs.iter().copied()));
        }
        self.out.push('\n');
    }

    /// An attribute value; `depth` is the indentation of its line (graph
    /// bodies go one deeper).
    fn attr(&mut self, a: &Attr, depth: usize) {
        fn list<T>(p: &mut Printer, kind: &str, xs: &[T], mut f: impl FnMut(&mut Printer, &T)) {
            if xs.is_empty() {
                let _ = write!(p.out, "{kind}[]");
                return;
            }
            p.out.push('[');
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    p.out.push_str(", ");
                }
                f(p, x);
            }
            p.out.push(']');
        }
        match a {
            Attr::Int(v) => {
                let _ = write!(self.out, "{v}");
            }
            Attr::Float(v) => self.out.push_str(&f32_text(*v)),
            Attr::String(s) => self.out.push_str(&quote(s)),
            Attr::Tensor(t) => self.tensor(t),
            Attr::Graph(r) => self.graph(r, depth),
            Attr::Type(t) => {
                let _ = write!(self.out, "type<{}>", print_type(t));
            }
            Attr::Ints(xs) => list(self, "ints", xs, |p, v| {
                let _ = write!(p.out, "{v}");
            }),
            Attr::Floats(xs) => list(self, "floats", xs, |p, v| p.out.push_str(&f32_text(*v))),
            Attr::Strings(xs) => list(self, "strings", xs, |p, v| p.out.push_str(&quote(v))),
            Attr::Tensors(xs) => list(self, "tensors", xs, |p, t| p.tensor(t)),
            Attr::Graphs(xs) => list(self, "graphs", xs, |p, r| p.graph(r, depth)),
            Attr::Types(xs) => list(self, "types", xs, |p, t| {
                let _ = write!(p.out, "type<{}>", print_type(t));
            }),
        }
    }

    fn graph(&mut self, r: &Region, depth: usize) {
        self.out.push_str("graph {\n");
        self.region(r, depth + 1);
        self.indent(depth);
        self.out.push('}');
    }

    fn tensor(&mut self, t: &TensorData) {
        let data = self.data(t);
        let _ = write!(
            self.out,
            "tensor<{}> {data}",
            tensor_type(&TensorType::known(t.elem, &t.shape))
        );
    }

    /// `elided`, `dense[...]` or `hex"..."`, as the format prescribes.
    fn data(&self, t: &TensorData) -> String {
        let too_big = self.opts.elide_threshold.is_some_and(|k| t.numel() > k);
        let dense = |vals: Vec<String>| format!("dense[{}]", vals.join(", "));
        match (&t.payload, t.elem) {
            (Payload::Elided, _) => "elided".into(),
            _ if too_big => "elided".into(),
            (Payload::Strings(ss), ElemType::String) => {
                dense(ss.iter().map(|s| quote_bytes(s)).collect())
            }
            (Payload::Bytes(b), e) => {
                macro_rules! nums {
                    ($t:ty, $f:expr) => {
                        dense(
                            b.chunks_exact(size_of::<$t>())
                                .map(|c| $f(<$t>::from_le_bytes(c.try_into().unwrap_or_default())))
                                .collect(),
                        )
                    };
                }
                let int = |v: i128| v.to_string();
                match e {
                    ElemType::F32 => nums!(f32, f32_text),
                    ElemType::F64 => nums!(f64, f64_text),
                    ElemType::I64 => nums!(i64, |v| int(v as i128)),
                    ElemType::I32 => nums!(i32, |v| int(v as i128)),
                    ElemType::I16 => nums!(i16, |v| int(v as i128)),
                    ElemType::I8 => nums!(i8, |v| int(v as i128)),
                    ElemType::U64 => nums!(u64, |v| int(v as i128)),
                    ElemType::U32 => nums!(u32, |v| int(v as i128)),
                    ElemType::U16 => nums!(u16, |v| int(v as i128)),
                    ElemType::U8 => nums!(u8, |v| int(v as i128)),
                    ElemType::Bool => dense(b.iter().map(|&x| (x != 0).to_string()).collect()),
                    ElemType::String => "elided".into(),
                    _ => {
                        let mut s = String::from("hex\"");
                        for x in b.iter() {
                            let _ = write!(s, "{x:02x}");
                        }
                        s + "\""
                    }
                }
            }
            // A payload that does not fit its element type: nothing
            // faithful to print.
            (Payload::Strings(_), _) => "elided".into(),
        }
    }
}
