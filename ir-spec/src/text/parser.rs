//! The parser: `.kir` text to a [`Module`], by recursive descent over the
//! lexer's tokens with one token of lookahead.
//!
//! Values must be defined before use; a nested region sees the values its
//! enclosing regions defined before the node holding it, and its own values
//! go out of scope at its closing `}`. Names are unique module-wide (the
//! module's arena enforces it). Constant data is checked against its type.
//! Op semantics are not checked here; the verifier does that.

use std::collections::HashMap;
use std::sync::Arc;

use super::error::ParseError;
use super::lexer::{Lexer, Tok, Token};
use crate::tensor::shape_numel;
use crate::{
    Attr, Attrs, Dim, ElemType, Module, Node, QuantParams, Region, SymExpr, TensorData, TensorType,
    Type, ValueId,
};

type PResult<T> = Result<T, ParseError>;

/// Deepest nesting of types, regions and attribute lists accepted, so that
/// hostile input cannot overflow the stack (a region level costs ~30 KiB of
/// stack in debug builds; real models nest a handful of levels).
const MAX_DEPTH: usize = 32;

/// Parse a whole module.
pub fn parse_module(src: &str) -> Result<Module, ParseError> {
    let mut lex = Lexer::new(src);
    let tok = lex.next_token()?;
    let mut p = Parser {
        lex,
        tok,
        m: Module::default(),
        visible: HashMap::new(),
        scope: Vec::new(),
        depth: 0,
        prev_end: 0,
    };
    p.expect_kw("module")?;
    let name = match p.bump()? {
        Token {
            tok: Tok::At(n), ..
        } => n,
        t => return Err(p.unexpected(&t, "`@NAME`")),
    };
    p.m.name = name;
    p.expect_kw("opset")?;
    p.expect('(')?;
    p.m.opsets = p.list(')', |p| {
        let domain = match p.bump()? {
            Token {
                tok: Tok::Ident(s), ..
            } => s,
            t @ Token {
                tok: Tok::Str(_), ..
            } => p.utf8(t)?,
            t => return Err(p.unexpected(&t, "an opset domain")),
        };
        p.expect('=')?;
        Ok((domain, p.int()?))
    })?;
    p.m.body = p.region()?;
    match p.bump()? {
        Token { tok: Tok::Eof, .. } => Ok(p.m),
        t => Err(p.unexpected(&t, "end of input")),
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    /// The lookahead token.
    tok: Token,
    m: Module,
    /// Values in scope, by name.
    visible: HashMap<String, ValueId>,
    /// Names in scope, in definition order (regions truncate it on exit).
    scope: Vec<String>,
    depth: usize,
    /// Byte offset just past the last consumed token (for spans that end
    /// on it rather than on the lookahead).
    prev_end: usize,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Value(n) => format!("value `%{n}`"),
        Tok::At(n) => format!("`@{n}`"),
        Tok::Ident(s) => format!("`{s}`"),
        Tok::Num(s) => format!("number `{s}`"),
        Tok::Str(_) => "a string".into(),
        Tok::Hex(_) => "hex data".into(),
        Tok::Punct(c) => format!("`{c}`"),
        Tok::Eof => "end of input".into(),
    }
}

impl Parser<'_> {
    // ---- token plumbing ----

    fn bump(&mut self) -> PResult<Token> {
        let next = self.lex.next_token()?;
        self.prev_end = self.tok.span.end;
        Ok(std::mem::replace(&mut self.tok, next))
    }

    fn err(&self, t: &Token, msg: impl Into<String>) -> ParseError {
        ParseError::new(t.line, t.col, t.span.clone(), msg.into())
    }

    fn unexpected(&self, t: &Token, expected: &str) -> ParseError {
        self.err(
            t,
            format!("expected {expected}, found {}", describe(&t.tok)),
        )
    }

    fn is(&self, c: char) -> bool {
        self.tok.tok == Tok::Punct(c)
    }

    fn is_kw(&self, kw: &str) -> bool {
        matches!(&self.tok.tok, Tok::Ident(s) if s == kw)
    }

    fn eat(&mut self, c: char) -> PResult<bool> {
        let yes = self.is(c);
        if yes {
            self.bump()?;
        }
        Ok(yes)
    }

    fn expect(&mut self, c: char) -> PResult<Token> {
        if self.is(c) {
            self.bump()
        } else {
            Err(self.unexpected(&self.tok, &format!("`{c}`")))
        }
    }

    fn expect_kw(&mut self, kw: &str) -> PResult<Token> {
        if self.is_kw(kw) {
            self.bump()
        } else {
            Err(self.unexpected(&self.tok, &format!("`{kw}`")))
        }
    }

    fn utf8(&self, t: Token) -> PResult<String> {
        match t.tok {
            Tok::Str(ref b) => {
                String::from_utf8(b.clone()).map_err(|_| self.err(&t, "string is not valid UTF-8"))
            }
            _ => Err(self.unexpected(&t, "a string")),
        }
    }

    fn deeper(&mut self, t: &Token) -> PResult<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(t, "nesting too deep"));
        }
        Ok(())
    }

    /// Parse `item`s separated by `,` up to (and eating) `close`.
    fn list<T>(
        &mut self,
        close: char,
        mut item: impl FnMut(&mut Self) -> PResult<T>,
    ) -> PResult<Vec<T>> {
        let mut out = Vec::new();
        while !self.eat(close)? {
            if !out.is_empty() && !self.eat(',')? {
                return Err(self.unexpected(&self.tok, &format!("`,` or `{close}`")));
            }
            out.push(item(self)?);
        }
        Ok(out)
    }

    // ---- numbers ----

    /// An optionally negative number: its text (sign included), whether it
    /// is a float literal, and its token (for errors).
    fn number(&mut self) -> PResult<(String, bool, Token)> {
        let neg = self.is('-');
        let first = self.bump()?;
        let t = if neg { self.bump()? } else { first.clone() };
        let (text, float) = match &t.tok {
            Tok::Num(s) => (s.clone(), s.contains(['.', 'e', 'E'])),
            Tok::Ident(s) if s == "nan" || s == "inf" => (s.clone(), true),
            _ => return Err(self.unexpected(&t, "a number")),
        };
        let span = first.span.start..t.span.end;
        let tok = Token { span, ..first };
        Ok((if neg { format!("-{text}") } else { text }, float, tok))
    }

    fn malformed(&self, text: &str, t: &Token) -> ParseError {
        self.err(t, format!("malformed number `{text}`"))
    }

    fn int(&mut self) -> PResult<i64> {
        let (text, float, t) = self.number()?;
        if float {
            return Err(self.err(&t, format!("expected an integer, found `{text}`")));
        }
        text.parse().map_err(|_| self.malformed(&text, &t))
    }

    fn f32(&mut self) -> PResult<f32> {
        let (text, _, t) = self.number()?;
        text.parse().map_err(|_| self.malformed(&text, &t))
    }

    // ---- values and regions ----

    fn lookup(&self, t: &Token) -> PResult<ValueId> {
        match &t.tok {
            Tok::Value(n) => self
                .visible
                .get(n)
                .copied()
                .ok_or_else(|| self.err(t, format!("undefined value `%{n}`"))),
            _ => Err(self.unexpected(t, "a value `%name`")),
        }
    }

    fn value_name(&mut self) -> PResult<(String, Token)> {
        let t = self.bump()?;
        match &t.tok {
            Tok::Value(n) if self.m.lookup(n).is_some() => {
                Err(self.err(&t, format!("value `%{n}` is already defined")))
            }
            Tok::Value(n) => Ok((n.clone(), t)),
            _ => Err(self.unexpected(&t, "a value `%name`")),
        }
    }

    fn define(&mut self, (name, t): (String, Token), ty: Type) -> PResult<ValueId> {
        let id = self
            .m
            .add_value(&name, ty)
            .map_err(|_| self.err(&t, format!("value `%{name}` is already defined")))?;
        self.visible.insert(name.clone(), id);
        self.scope.push(name);
        Ok(id)
    }

    /// `{ lines... return ... }`; the region's names go out of scope after.
    fn region(&mut self) -> PResult<Region> {
        let open = self.expect('{')?;
        self.deeper(&open)?;
        let mark = self.scope.len();
        let mut r = Region::default();
        // 0: inputs, 1: constants, 2: nodes.
        let mut phase = 0;
        loop {
            let line = self.tok.clone();
            match &line.tok {
                Tok::Ident(k) if k == "input" || k == "const" => {
                    let (p, what) = if k == "input" {
                        (0, "input")
                    } else {
                        (1, "const")
                    };
                    if phase > p {
                        let after = if phase == 2 { "nodes" } else { "constants" };
                        return Err(
                            self.err(&line, format!("`{what}` lines must come before {after}"))
                        );
                    }
                    phase = p;
                    self.bump()?;
                    let name = self.value_name()?;
                    self.expect(':')?;
                    let ty_tok = self.tok.clone();
                    let ty = self.ty()?;
                    if p == 0 {
                        r.inputs.push(self.define(name, ty)?);
                    } else {
                        let (elem, shape) = match ty.as_tensor().map(|t| (t.elem, t.static_shape()))
                        {
                            Some((e, Some(s))) => (e, s),
                            _ => {
                                return Err(self.err(
                                    &ty_tok,
                                    "a constant's type must be a tensor with a static shape",
                                ))
                            }
                        };
                        self.expect('=')?;
                        let data = self.data(elem, shape)?;
                        let id = self.define(name, ty)?;
                        self.m.set_constant(id, Some(Arc::new(data)));
                        r.constants.push(id);
                    }
                }
                Tok::Ident(k) if k == "return" => {
                    self.bump()?;
                    if matches!(self.tok.tok, Tok::Value(_)) {
                        loop {
                            let t = self.bump()?;
                            r.outputs.push(self.lookup(&t)?);
                            if !self.eat(',')? {
                                break;
                            }
                        }
                    }
                    self.expect('}')?;
                    break;
                }
                Tok::Value(_) | Tok::Ident(_) | Tok::Str(_) => {
                    phase = 2;
                    let n = self.node()?;
                    r.nodes.push(n);
                }
                _ => return Err(self.unexpected(&line, "`input`, `const`, a node or `return`")),
            }
        }
        for name in self.scope.drain(mark..) {
            self.visible.remove(&name);
        }
        self.depth -= 1;
        Ok(r)
    }

    /// `%a, %b = Op(%x, none) {attrs} : T1, T2 loc("name")`.
    fn node(&mut self) -> PResult<Node> {
        let mut results: Vec<(String, Token)> = Vec::new();
        if matches!(self.tok.tok, Tok::Value(_)) {
            loop {
                let r = self.value_name()?;
                if results.iter().any(|(n, _)| *n == r.0) {
                    return Err(self.err(&r.1, format!("value `%{}` is already defined", r.0)));
                }
                results.push(r);
                if !self.eat(',')? {
                    break;
                }
            }
            self.expect('=')?;
        }
        let op = match self.bump()? {
            Token {
                tok: Tok::Ident(s), ..
            } => s,
            t @ Token {
                tok: Tok::Str(_), ..
            } => self.utf8(t)?,
            t => return Err(self.unexpected(&t, "an op name")),
        };
        self.expect('(')?;
        let inputs = self.list(')', |p| {
            if p.is_kw("none") {
                p.bump()?;
                return Ok(None);
            }
            let t = p.bump()?;
            p.lookup(&t).map(Some).map_err(|e| match t.tok {
                Tok::Value(_) => e,
                _ => p.unexpected(&t, "an operand `%name` or `none`"),
            })
        })?;
        let mut attrs = Attrs::new();
        if self.eat('{')? {
            while !self.eat('}')? {
                if !attrs.is_empty() {
                    self.expect(',')?;
                }
                let t = self.bump()?;
                let key = match &t.tok {
                    Tok::Ident(s) => s.clone(),
                    Tok::Str(_) => self.utf8(t.clone())?,
                    _ => return Err(self.unexpected(&t, "an attribute name")),
                };
                if attrs.contains_key(&key) {
                    return Err(self.err(&t, format!("duplicate attribute `{key}`")));
                }
                self.expect('=')?;
                let v = self.attr()?;
                attrs.insert(key, v);
            }
        }
        let mut outputs = Vec::new();
        if !results.is_empty() {
            self.expect(':')?;
            let mut tys = Vec::new();
            for i in 0..results.len() {
                if i > 0 {
                    if !self.is(',') {
                        let msg = format!(
                            "`,` (the node has {} results, so {} types)",
                            results.len(),
                            results.len()
                        );
                        return Err(self.unexpected(&self.tok, &msg));
                    }
                    self.bump()?;
                }
                tys.push(self.ty()?);
            }
            for (r, ty) in results.into_iter().zip(tys) {
                outputs.push(self.define(r, ty)?);
            }
        }
        let mut name = String::new();
        if self.is_kw("loc") {
            self.bump()?;
            self.expect('(')?;
            name = self.string()?;
            self.expect(')')?;
        }
        Ok(Node {
            op,
            name,
            inputs,
            outputs,
            attrs,
        })
    }

    // ---- attributes ----

    fn attr(&mut self) -> PResult<Attr> {
        let t = self.tok.clone();
        let kw = match &t.tok {
            Tok::Ident(s) => s.as_str(),
            _ => "",
        };
        Ok(match (&t.tok, kw) {
            (Tok::Num(_) | Tok::Punct('-'), _) | (_, "nan" | "inf") => {
                let (text, float, t) = self.number()?;
                if float {
                    Attr::Float(text.parse().map_err(|_| self.malformed(&text, &t))?)
                } else {
                    Attr::Int(text.parse().map_err(|_| self.malformed(&text, &t))?)
                }
            }
            (Tok::Str(_), _) => Attr::String(self.string()?),
            (_, "tensor") => Attr::Tensor(Arc::new(self.tensor_lit()?)),
            (_, "type") => Attr::Type(self.type_lit()?),
            (_, "graph") => Attr::Graph(self.graph_lit()?),
            (_, "ints" | "floats" | "strings" | "tensors" | "graphs" | "types") => {
                let empty = match kw {
                    "ints" => Attr::Ints(vec![]),
                    "floats" => Attr::Floats(vec![]),
                    "strings" => Attr::Strings(vec![]),
                    "tensors" => Attr::Tensors(vec![]),
                    "graphs" => Attr::Graphs(vec![]),
                    _ => Attr::Types(vec![]),
                };
                self.bump()?;
                self.expect('[')?;
                self.expect(']')?;
                empty
            }
            (Tok::Ident(s), _) => return Err(self.err(&t, format!("unknown attribute kind `{s}`"))),
            (Tok::Punct('['), _) => {
                self.bump()?;
                self.deeper(&t)?;
                let a = self.attr_list()?;
                self.depth -= 1;
                a
            }
            _ => return Err(self.unexpected(&t, "an attribute value")),
        })
    }

    /// The elements and `]` of a non-empty list; the first element says
    /// which kind it is.
    fn attr_list(&mut self) -> PResult<Attr> {
        let first = self.tok.clone();
        let numeric = match &first.tok {
            Tok::Num(_) | Tok::Punct('-') => true,
            Tok::Ident(s) => s == "nan" || s == "inf",
            _ => false,
        };
        Ok(match &first.tok {
            _ if numeric => {
                let nums = self.list(']', |p| p.number())?;
                let bad = |(s, _, t): &(String, bool, Token)| self.malformed(s, t);
                if nums.iter().any(|n| n.1) {
                    let fs = nums.iter().map(|n| n.0.parse().map_err(|_| bad(n)));
                    Attr::Floats(fs.collect::<PResult<_>>()?)
                } else {
                    let is = nums.iter().map(|n| n.0.parse().map_err(|_| bad(n)));
                    Attr::Ints(is.collect::<PResult<_>>()?)
                }
            }
            Tok::Str(_) => Attr::Strings(self.list(']', |p| p.string())?),
            Tok::Ident(s) if s == "tensor" => {
                Attr::Tensors(self.list(']', |p| Ok(Arc::new(p.tensor_lit()?)))?)
            }
            Tok::Ident(s) if s == "type" => Attr::Types(self.list(']', Self::type_lit)?),
            Tok::Ident(s) if s == "graph" => Attr::Graphs(self.list(']', Self::graph_lit)?),
            Tok::Punct(']') => {
                return Err(self.err(
                    &first,
                    "an empty list must name its kind: `ints[]`, `floats[]`, ...",
                ))
            }
            _ => return Err(self.unexpected(&first, "a list element")),
        })
    }

    fn string(&mut self) -> PResult<String> {
        let t = self.bump()?;
        self.utf8(t)
    }

    /// `tensor<ELEM[D,...]> DATA`.
    fn tensor_lit(&mut self) -> PResult<TensorData> {
        self.expect_kw("tensor")?;
        self.expect('<')?;
        let elem = self.elem()?;
        self.expect('[')?;
        let shape = self.list(']', |p| {
            let (text, float, t) = p.number()?;
            match text.parse::<u64>() {
                Ok(d) if !float => Ok(d),
                _ => Err(p.err(&t, format!("expected a static dimension, found `{text}`"))),
            }
        })?;
        self.expect('>')?;
        self.data(elem, shape)
    }

    /// `type<T>`.
    fn type_lit(&mut self) -> PResult<Type> {
        self.expect_kw("type")?;
        self.expect('<')?;
        let t = self.ty()?;
        self.expect('>')?;
        Ok(t)
    }

    /// `graph { ... }`.
    fn graph_lit(&mut self) -> PResult<Region> {
        self.expect_kw("graph")?;
        self.region()
    }

    // ---- types ----

    fn elem(&mut self) -> PResult<ElemType> {
        let t = self.bump()?;
        match &t.tok {
            Tok::Ident(s) => ElemType::from_name(s)
                .ok_or_else(|| self.err(&t, format!("unknown element type `{s}`"))),
            _ => Err(self.unexpected(&t, "an element type")),
        }
    }

    fn ty(&mut self) -> PResult<Type> {
        let t = self.tok.clone();
        self.deeper(&t)?;
        let ty = match &t.tok {
            Tok::Ident(s) if s == "seq" || s == "opt" => {
                let seq = s == "seq";
                self.bump()?;
                self.expect('<')?;
                let inner = Box::new(self.ty()?);
                self.expect('>')?;
                if seq {
                    Type::Sequence(inner)
                } else {
                    Type::Optional(inner)
                }
            }
            Tok::Ident(s) if s == "map" => {
                self.bump()?;
                self.expect('<')?;
                let k = self.elem()?;
                self.expect(',')?;
                let v = self.ty()?;
                self.expect('>')?;
                Type::Map(k, Box::new(v))
            }
            _ => {
                let elem = self.elem()?;
                self.expect('[')?;
                let shape = if self.eat('*')? {
                    self.expect(']')?;
                    None
                } else {
                    Some(self.list(']', |p| p.dim())?)
                };
                let quant = if self.is_kw("quant") {
                    Some(Arc::new(self.quant()?))
                } else {
                    None
                };
                Type::Tensor(TensorType { elem, shape, quant })
            }
        };
        self.depth -= 1;
        Ok(ty)
    }

    /// `quant<axis = A, block_size = B, scale = [...], zero_point = [...]>`.
    fn quant(&mut self) -> PResult<QuantParams> {
        self.bump()?;
        self.expect('<')?;
        let field = |p: &mut Self, name: &str, optional: bool| -> PResult<bool> {
            if optional && !p.is_kw(name) {
                return Ok(false);
            }
            p.expect_kw(name)?;
            p.expect('=')?;
            Ok(true)
        };
        let axis = if field(self, "axis", true)? {
            let a = self.int()?;
            self.expect(',')?;
            Some(a)
        } else {
            None
        };
        let block_size = if field(self, "block_size", true)? {
            let (text, _, t) = self.number()?;
            let b = text.parse().map_err(|_| self.malformed(&text, &t))?;
            self.expect(',')?;
            Some(b)
        } else {
            None
        };
        field(self, "scale", false)?;
        self.expect('[')?;
        let scale = self.list(']', |p| p.f32())?;
        self.expect(',')?;
        field(self, "zero_point", false)?;
        self.expect('[')?;
        let zero_point = self.list(']', |p| p.int())?;
        self.expect('>')?;
        Ok(QuantParams {
            axis,
            block_size,
            scale,
            zero_point,
        })
    }

    /// `?`, a size, or a polynomial as `SymExpr` prints it (`2*N*seq-3`);
    /// quoted strings are symbols.
    fn dim(&mut self) -> PResult<Dim> {
        if self.eat('?')? {
            return Ok(Dim::Unknown);
        }
        // A plain size may exceed i64, so it does not go through SymExpr.
        let first = if let Tok::Num(s) = &self.tok.tok {
            let (s, t) = (s.clone(), self.tok.clone());
            let n: u64 = s.parse().map_err(|_| self.malformed(&s, &t))?;
            self.bump()?;
            if !(self.is('*') || self.is('+') || self.is('-')) {
                return Ok(Dim::Known(n));
            }
            let c = i64::try_from(n).map_err(|_| self.malformed(&s, &t))?;
            self.term(SymExpr::constant(c))?
        } else {
            let neg = self.eat('-')?;
            let f = self.factor()?;
            self.term(f)?.scale(if neg { -1 } else { 1 })
        };
        let mut e = first;
        loop {
            let neg = if self.eat('+')? {
                false
            } else if self.eat('-')? {
                true
            } else {
                return Ok(Dim::from_expr(e));
            };
            let f = self.factor()?;
            let t = self.term(f)?;
            e = if neg { e.sub(&t) } else { e.add(&t) };
        }
    }

    /// The rest of a product `*f*g...`, given its first factor.
    fn term(&mut self, mut acc: SymExpr) -> PResult<SymExpr> {
        while self.eat('*')? {
            acc = acc.mul(&self.factor()?);
        }
        Ok(acc)
    }

    fn factor(&mut self) -> PResult<SymExpr> {
        let t = self.bump()?;
        match &t.tok {
            Tok::Ident(s) => Ok(SymExpr::symbol(s)),
            Tok::Str(_) => Ok(SymExpr::symbol(&self.utf8(t.clone())?)),
            Tok::Num(s) => Ok(SymExpr::constant(
                s.parse().map_err(|_| self.malformed(s, &t))?,
            )),
            _ => Err(self.unexpected(&t, "a dimension (size, symbol or `?`)")),
        }
    }

    // ---- constant data ----

    /// `elided`, `dense[...]` or `hex"..."` for a tensor of this type.
    fn data(&mut self, elem: ElemType, shape: Vec<u64>) -> PResult<TensorData> {
        let t = self.bump()?;
        let ty_text = || super::printer::print_type(&Type::Tensor(TensorType::known(elem, &shape)));
        match &t.tok {
            Tok::Ident(s) if s == "elided" => Ok(TensorData::elided(elem, shape)),
            Tok::Hex(bytes) => {
                if elem == ElemType::String {
                    return Err(self.err(&t, "string data cannot be given as hex"));
                }
                TensorData::from_bytes(elem, shape, bytes.clone())
                    .map_err(|e| self.err(&t, e.to_string()))
            }
            Tok::Ident(s) if s == "dense" => {
                self.expect('[')?;
                let mut bytes: Vec<u8> = Vec::new();
                let mut strings: Vec<Vec<u8>> = Vec::new();
                let count = self
                    .list(']', |p| {
                        p.dense_value(elem, &mut bytes, &mut strings)?;
                        Ok(())
                    })?
                    .len() as u64;
                let need = shape_numel(&shape);
                if need != Some(count) {
                    let span = t.span.start..self.prev_end.max(t.span.end);
                    let msg = match need {
                        Some(n) => {
                            format!("dense data has {count} values but {} needs {n}", ty_text())
                        }
                        None => format!("{} has too many elements", ty_text()),
                    };
                    return Err(self.err(&Token { span, ..t }, msg));
                }
                let r = if elem == ElemType::String {
                    TensorData::from_strings(shape, strings)
                } else {
                    TensorData::from_bytes(elem, shape, bytes)
                };
                r.map_err(|e| self.err(&t, e.to_string()))
            }
            _ => Err(self.unexpected(&t, "`elided`, `dense[...]` or `hex\"...\"`")),
        }
    }

    fn dense_value(
        &mut self,
        elem: ElemType,
        bytes: &mut Vec<u8>,
        strings: &mut Vec<Vec<u8>>,
    ) -> PResult<()> {
        use ElemType as E;
        let int_range = |e: ElemType| -> Option<(i128, i128)> {
            let bits = e.bit_width()?;
            Some(if e.is_signed_int() {
                (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
            } else {
                (0, (1i128 << bits) - 1)
            })
        };
        match elem {
            E::String => {
                let t = self.bump()?;
                match t.tok {
                    Tok::Str(s) => strings.push(s),
                    _ => return Err(self.unexpected(&t, "a string")),
                }
            }
            E::Bool => {
                let t = self.bump()?;
                match &t.tok {
                    Tok::Ident(s) if s == "true" || s == "false" => bytes.push((s == "true") as u8),
                    _ => return Err(self.unexpected(&t, "`true` or `false`")),
                }
            }
            E::F32 => bytes.extend(self.f32()?.to_le_bytes()),
            E::F64 => {
                let (text, _, t) = self.number()?;
                let v: f64 = text.parse().map_err(|_| self.malformed(&text, &t))?;
                bytes.extend(v.to_le_bytes());
            }
            E::I64 | E::I32 | E::I16 | E::I8 | E::U64 | E::U32 | E::U16 | E::U8 => {
                let (text, float, t) = self.number()?;
                let v: i128 = text.parse().map_err(|_| self.malformed(&text, &t))?;
                let (lo, hi) = int_range(elem).unwrap_or((0, 0));
                if float || v < lo || v > hi {
                    return Err(self.err(&t, format!("`{text}` is not a valid {elem} value")));
                }
                let width = elem.bit_width().unwrap_or(8) as usize / 8;
                bytes.extend_from_slice(&v.to_le_bytes()[..width]);
            }
            _ => {
                return Err(self.err(
                    &self.tok,
                    format!("{elem} data must be given as hex\"...\""),
                ))
            }
        }
        Ok(())
    }
}
