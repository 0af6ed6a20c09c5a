//! Element types, dimensions (static and symbolic), shapes and value types.
//!
//! A [`Dim`] is either a known size or a symbolic expression: a polynomial
//! over named symbols (`N`, `seq`) with integer coefficients, which is enough
//! to carry the shape arithmetic of exported PyTorch graphs (`N*seq`,
//! `seq+1`, `2*N`). Anything beyond a polynomial (a floor division that does
//! not divide evenly, a data-dependent size) becomes [`Dim::Unknown`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The element type of a tensor. The names in the text format are the
/// `Display` forms (`f32`, `bf16`, `f8e4m3fn`, `i4`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ElemType {
    F32,
    F64,
    F16,
    BF16,
    F8E4M3FN,
    F8E4M3FNUZ,
    F8E5M2,
    F8E5M2FNUZ,
    I64,
    I32,
    I16,
    I8,
    U64,
    U32,
    U16,
    U8,
    Bool,
    String,
    /// Signed 4-bit integer, two per byte (low nibble first).
    I4,
    /// Unsigned 4-bit integer, two per byte (low nibble first).
    U4,
    C64,
    C128,
}

impl ElemType {
    pub const ALL: [ElemType; 22] = [
        ElemType::F32,
        ElemType::F64,
        ElemType::F16,
        ElemType::BF16,
        ElemType::F8E4M3FN,
        ElemType::F8E4M3FNUZ,
        ElemType::F8E5M2,
        ElemType::F8E5M2FNUZ,
        ElemType::I64,
        ElemType::I32,
        ElemType::I16,
        ElemType::I8,
        ElemType::U64,
        ElemType::U32,
        ElemType::U16,
        ElemType::U8,
        ElemType::Bool,
        ElemType::String,
        ElemType::I4,
        ElemType::U4,
        ElemType::C64,
        ElemType::C128,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ElemType::F32 => "f32",
            ElemType::F64 => "f64",
            ElemType::F16 => "f16",
            ElemType::BF16 => "bf16",
            ElemType::F8E4M3FN => "f8e4m3fn",
            ElemType::F8E4M3FNUZ => "f8e4m3fnuz",
            ElemType::F8E5M2 => "f8e5m2",
            ElemType::F8E5M2FNUZ => "f8e5m2fnuz",
            ElemType::I64 => "i64",
            ElemType::I32 => "i32",
            ElemType::I16 => "i16",
            ElemType::I8 => "i8",
            ElemType::U64 => "u64",
            ElemType::U32 => "u32",
            ElemType::U16 => "u16",
            ElemType::U8 => "u8",
            ElemType::Bool => "bool",
            ElemType::String => "string",
            ElemType::I4 => "i4",
            ElemType::U4 => "u4",
            ElemType::C64 => "c64",
            ElemType::C128 => "c128",
        }
    }

    pub fn from_name(s: &str) -> Option<ElemType> {
        ElemType::ALL.iter().copied().find(|t| t.name() == s)
    }

    /// Size in bits of one element; `None` for strings.
    pub fn bit_width(self) -> Option<u32> {
        Some(match self {
            ElemType::F64 | ElemType::I64 | ElemType::U64 | ElemType::C64 => 64,
            ElemType::C128 => 128,
            ElemType::F32 | ElemType::I32 | ElemType::U32 => 32,
            ElemType::F16 | ElemType::BF16 | ElemType::I16 | ElemType::U16 => 16,
            ElemType::F8E4M3FN
            | ElemType::F8E4M3FNUZ
            | ElemType::F8E5M2
            | ElemType::F8E5M2FNUZ
            | ElemType::I8
            | ElemType::U8
            | ElemType::Bool => 8,
            ElemType::I4 | ElemType::U4 => 4,
            ElemType::String => return None,
        })
    }

    /// The smallest and largest value of an integer type (the range a
    /// quantization saturates to), or `None` for other types.
    pub fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            ElemType::U4 => (0, 15),
            ElemType::I4 => (-8, 7),
            ElemType::U8 => (0, u8::MAX as i128),
            ElemType::I8 => (i8::MIN as i128, i8::MAX as i128),
            ElemType::U16 => (0, u16::MAX as i128),
            ElemType::I16 => (i16::MIN as i128, i16::MAX as i128),
            ElemType::U32 => (0, u32::MAX as i128),
            ElemType::I32 => (i32::MIN as i128, i32::MAX as i128),
            ElemType::U64 => (0, u64::MAX as i128),
            ElemType::I64 => (i64::MIN as i128, i64::MAX as i128),
            _ => return None,
        })
    }

    /// Bytes needed to store `n` elements densely (sub-byte types packed).
    pub fn storage_bytes(self, n: u64) -> Option<u64> {
        let bits = self.bit_width()? as u64;
        n.checked_mul(bits).map(|b| b.div_ceil(8))
    }

    pub fn is_float(self) -> bool {
        matches!(
            self,
            ElemType::F32
                | ElemType::F64
                | ElemType::F16
                | ElemType::BF16
                | ElemType::F8E4M3FN
                | ElemType::F8E4M3FNUZ
                | ElemType::F8E5M2
                | ElemType::F8E5M2FNUZ
        )
    }

    pub fn is_float8(self) -> bool {
        matches!(
            self,
            ElemType::F8E4M3FN | ElemType::F8E4M3FNUZ | ElemType::F8E5M2 | ElemType::F8E5M2FNUZ
        )
    }

    pub fn is_signed_int(self) -> bool {
        matches!(
            self,
            ElemType::I64 | ElemType::I32 | ElemType::I16 | ElemType::I8 | ElemType::I4
        )
    }

    pub fn is_unsigned_int(self) -> bool {
        matches!(
            self,
            ElemType::U64 | ElemType::U32 | ElemType::U16 | ElemType::U8 | ElemType::U4
        )
    }

    pub fn is_int(self) -> bool {
        self.is_signed_int() || self.is_unsigned_int()
    }

    pub fn is_numeric(self) -> bool {
        self.is_float() || self.is_int() || matches!(self, ElemType::C64 | ElemType::C128)
    }
}

impl fmt::Display for ElemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A symbolic expression: `sum(coeff * product(symbols))`, kept normalized
/// (monomials sorted, zero terms dropped) so structural equality is
/// algebraic equality for polynomials.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SymExpr {
    /// monomial (sorted symbol names, repeated for powers) -> coefficient.
    /// The empty monomial is the constant term.
    terms: BTreeMap<Vec<Arc<str>>, i64>,
}

impl SymExpr {
    pub fn symbol(name: &str) -> SymExpr {
        let mut terms = BTreeMap::new();
        terms.insert(vec![Arc::from(name)], 1);
        SymExpr { terms }
    }

    pub fn constant(c: i64) -> SymExpr {
        let mut terms = BTreeMap::new();
        if c != 0 {
            terms.insert(vec![], c);
        }
        SymExpr { terms }
    }

    /// `Some(c)` when the expression has no symbols.
    pub fn as_const(&self) -> Option<i64> {
        match self.terms.len() {
            0 => Some(0),
            1 => self.terms.get(&Vec::new()).copied(),
            _ => None,
        }
    }

    pub fn terms(&self) -> impl Iterator<Item = (&[Arc<str>], i64)> {
        self.terms.iter().map(|(m, c)| (m.as_slice(), *c))
    }

    pub fn symbols(&self) -> impl Iterator<Item = &str> {
        self.terms.keys().flat_map(|m| m.iter().map(|s| &**s))
    }

    pub fn add(&self, other: &SymExpr) -> SymExpr {
        let mut terms = self.terms.clone();
        for (m, c) in &other.terms {
            let e = terms.entry(m.clone()).or_insert(0);
            *e = e.saturating_add(*c);
            if *e == 0 {
                terms.remove(m);
            }
        }
        SymExpr { terms }
    }

    pub fn scale(&self, k: i64) -> SymExpr {
        if k == 0 {
            return SymExpr::constant(0);
        }
        SymExpr {
            terms: self
                .terms
                .iter()
                .map(|(m, c)| (m.clone(), c.saturating_mul(k)))
                .collect(),
        }
    }

    pub fn sub(&self, other: &SymExpr) -> SymExpr {
        self.add(&other.scale(-1))
    }

    /// More terms than this, or more factors in one term, and a dim holding
    /// the expression becomes unknown ([`Dim::from_expr`]).
    pub const MAX_TERMS: usize = 64;
    pub const MAX_DEGREE: usize = 16;

    /// Whether the expression is past [`SymExpr::MAX_TERMS`] or
    /// [`SymExpr::MAX_DEGREE`].
    pub fn is_too_large(&self) -> bool {
        self.terms.len() > Self::MAX_TERMS || self.terms.keys().any(|m| m.len() > Self::MAX_DEGREE)
    }

    pub fn mul(&self, other: &SymExpr) -> SymExpr {
        let mut terms: BTreeMap<Vec<Arc<str>>, i64> = BTreeMap::new();
        for (ma, ca) in &self.terms {
            for (mb, cb) in &other.terms {
                let mut m: Vec<Arc<str>> = ma.iter().chain(mb.iter()).cloned().collect();
                m.sort();
                let e = terms.entry(m).or_insert(0);
                *e = e.saturating_add(ca.saturating_mul(*cb));
            }
        }
        terms.retain(|_, c| *c != 0);
        SymExpr { terms }
    }

    /// Exact division by a constant: `Some` only when every coefficient
    /// divides evenly.
    pub fn div_exact(&self, k: i64) -> Option<SymExpr> {
        if k == 0 || self.terms.values().any(|c| c % k != 0) {
            return None;
        }
        Some(SymExpr {
            terms: self.terms.iter().map(|(m, c)| (m.clone(), c / k)).collect(),
        })
    }

    /// Substitute known values for symbols; returns the value when every
    /// symbol is bound.
    pub fn eval(&self, env: &dyn Fn(&str) -> Option<i64>) -> Option<i64> {
        let mut total: i64 = 0;
        for (m, c) in &self.terms {
            let mut p = *c;
            for s in m {
                p = p.checked_mul(env(s)?)?;
            }
            total = total.checked_add(p)?;
        }
        Some(total)
    }
}

impl fmt::Display for SymExpr {
    /// Prints as `2*N*seq+N+-1`-free canonical text: terms in descending
    /// degree order, `+`/`-` between them, coefficients before symbols.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("0");
        }
        // Highest-degree terms first, constant last.
        let mut terms: Vec<_> = self.terms.iter().collect();
        terms.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(b.0)));
        for (i, (m, c)) in terms.iter().enumerate() {
            let c = **c;
            let neg = c < 0;
            let mag = c.unsigned_abs();
            if i == 0 {
                if neg {
                    f.write_str("-")?;
                }
            } else {
                f.write_str(if neg { "-" } else { "+" })?;
            }
            if m.is_empty() {
                write!(f, "{mag}")?;
            } else {
                if mag != 1 {
                    write!(f, "{mag}*")?;
                }
                for (j, s) in m.iter().enumerate() {
                    if j > 0 {
                        f.write_str("*")?;
                    }
                    f.write_str(s)?;
                }
            }
        }
        Ok(())
    }
}

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// A size known at compile time.
    Known(u64),
    /// A size given by a symbolic expression (never a plain constant: those
    /// normalize to `Known`).
    Sym(SymExpr),
    /// A size nothing is known about (printed `?`).
    Unknown,
}

impl Dim {
    pub fn sym(name: &str) -> Dim {
        Dim::Sym(SymExpr::symbol(name))
    }

    /// Normalizing constructor: constant expressions become `Known`, negative
    /// constants (impossible sizes) become `Unknown`, and so do expressions
    /// past [`SymExpr::MAX_TERMS`] terms or [`SymExpr::MAX_DEGREE`] factors
    /// in a term: a hostile model multiplying symbolic dims in a chain
    /// would otherwise grow them without bound, and no real model's dims
    /// come near.
    pub fn from_expr(e: SymExpr) -> Dim {
        match e.as_const() {
            Some(c) if c >= 0 => Dim::Known(c as u64),
            Some(_) => Dim::Unknown,
            None if e.is_too_large() => Dim::Unknown,
            None => Dim::Sym(e),
        }
    }

    pub fn as_known(&self) -> Option<u64> {
        match self {
            Dim::Known(n) => Some(*n),
            _ => None,
        }
    }

    pub fn to_expr(&self) -> Option<SymExpr> {
        match self {
            Dim::Known(n) => Some(SymExpr::constant(*n as i64)),
            Dim::Sym(e) => Some(e.clone()),
            Dim::Unknown => None,
        }
    }

    fn lift(a: &Dim, b: &Dim, f: impl Fn(&SymExpr, &SymExpr) -> SymExpr) -> Dim {
        match (a.to_expr(), b.to_expr()) {
            (Some(x), Some(y)) => Dim::from_expr(f(&x, &y)),
            _ => Dim::Unknown,
        }
    }

    pub fn add(&self, o: &Dim) -> Dim {
        Dim::lift(self, o, |a, b| a.add(b))
    }
    pub fn sub(&self, o: &Dim) -> Dim {
        Dim::lift(self, o, |a, b| a.sub(b))
    }
    pub fn mul(&self, o: &Dim) -> Dim {
        Dim::lift(self, o, |a, b| a.mul(b))
    }

    /// Floor division by a positive constant: exact for known sizes and for
    /// polynomials whose coefficients all divide; otherwise `Unknown`.
    pub fn div_floor(&self, k: u64) -> Dim {
        if k == 0 {
            return Dim::Unknown;
        }
        match self {
            Dim::Known(n) => Dim::Known(n / k),
            Dim::Sym(e) => e
                .div_exact(k as i64)
                .map(Dim::from_expr)
                .unwrap_or(Dim::Unknown),
            Dim::Unknown => Dim::Unknown,
        }
    }

    pub fn is_one(&self) -> bool {
        matches!(self, Dim::Known(1))
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(e) => write!(f, "{e}"),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// Product of a list of dims (the element count of a shape).
pub fn dims_product(dims: &[Dim]) -> Dim {
    dims.iter().fold(Dim::Known(1), |acc, d| acc.mul(d))
}

/// Quantization parameters carried on a tensor type: `real = scale * (q - zero_point)`.
/// Per-tensor when `axis` is `None` (one scale and zero point), per-axis
/// otherwise (one per slice along `axis`). Blocked quantization (ONNX 21)
/// sets `block_size`.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantParams {
    pub axis: Option<i64>,
    pub block_size: Option<u64>,
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
}

/// The type of a tensor value: element type, shape (`None` = unknown rank)
/// and optional quantization parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorType {
    pub elem: ElemType,
    pub shape: Option<Vec<Dim>>,
    pub quant: Option<Arc<QuantParams>>,
}

impl TensorType {
    pub fn new(elem: ElemType, shape: Vec<Dim>) -> TensorType {
        TensorType {
            elem,
            shape: Some(shape),
            quant: None,
        }
    }

    pub fn known(elem: ElemType, shape: &[u64]) -> TensorType {
        TensorType::new(elem, shape.iter().map(|&d| Dim::Known(d)).collect())
    }

    pub fn unranked(elem: ElemType) -> TensorType {
        TensorType {
            elem,
            shape: None,
            quant: None,
        }
    }

    pub fn rank(&self) -> Option<usize> {
        self.shape.as_ref().map(|s| s.len())
    }

    /// The static shape, when every dim is known.
    pub fn static_shape(&self) -> Option<Vec<u64>> {
        self.shape.as_ref()?.iter().map(|d| d.as_known()).collect()
    }

    pub fn num_elements(&self) -> Option<u64> {
        self.static_shape()?
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
    }
}

/// The type of any IR value.
#[derive(Clone, Debug, PartialEq)]
pub enum Type {
    Tensor(TensorType),
    /// An ONNX sequence of values of one type.
    Sequence(Box<Type>),
    /// An ONNX optional: a value of the type, or none.
    Optional(Box<Type>),
    /// An ONNX map (ai.onnx.ml): scalar keys to values.
    Map(ElemType, Box<Type>),
}

impl Type {
    pub fn tensor(elem: ElemType, shape: Vec<Dim>) -> Type {
        Type::Tensor(TensorType::new(elem, shape))
    }

    pub fn as_tensor(&self) -> Option<&TensorType> {
        match self {
            Type::Tensor(t) => Some(t),
            _ => None,
        }
    }
}

/// Do two dims possibly describe the same size? (Unknown matches anything;
/// two different symbolic expressions may still be equal at run time.)
pub fn dims_compatible(a: &Dim, b: &Dim) -> bool {
    match (a, b) {
        (Dim::Known(x), Dim::Known(y)) => x == y,
        _ => true,
    }
}

/// Can a value of type `actual` flow where `declared` is expected? Element
/// types must match exactly; shapes must agree where both are known.
pub fn types_compatible(declared: &Type, actual: &Type) -> bool {
    match (declared, actual) {
        (Type::Tensor(a), Type::Tensor(b)) => {
            a.elem == b.elem
                && match (&a.shape, &b.shape) {
                    (Some(x), Some(y)) => {
                        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| dims_compatible(p, q))
                    }
                    _ => true,
                }
        }
        (Type::Sequence(a), Type::Sequence(b)) | (Type::Optional(a), Type::Optional(b)) => {
            types_compatible(a, b)
        }
        (Type::Map(ka, a), Type::Map(kb, b)) => ka == kb && types_compatible(a, b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolic_arithmetic_normalizes() {
        let n = Dim::sym("N");
        let s = Dim::sym("seq");
        let ns = n.mul(&s);
        assert_eq!(ns.to_string(), "N*seq");
        assert_eq!(s.mul(&n), ns);
        let two_n_plus_1 = n.add(&n).add(&Dim::Known(1));
        assert_eq!(two_n_plus_1.to_string(), "2*N+1");
        assert_eq!(two_n_plus_1.sub(&Dim::Known(1)).div_floor(2), n);
        assert_eq!(n.sub(&n), Dim::Known(0));
        assert_eq!(n.add(&Dim::Known(1)).div_floor(2), Dim::Unknown);
        assert_eq!(Dim::Known(7).div_floor(2), Dim::Known(3));
        assert_eq!(Dim::Known(3).sub(&Dim::Known(5)), Dim::Unknown);
        let e = SymExpr::symbol("N")
            .mul(&SymExpr::symbol("seq"))
            .add(&SymExpr::constant(-3));
        assert_eq!(e.to_string(), "N*seq-3");
        assert_eq!(e.eval(&|s| Some(if s == "N" { 2 } else { 5 })), Some(7));
    }

    #[test]
    fn elem_type_names_round_trip() {
        for t in ElemType::ALL {
            assert_eq!(ElemType::from_name(t.name()), Some(t));
        }
        assert_eq!(ElemType::I4.storage_bytes(3), Some(2));
        assert_eq!(ElemType::String.storage_bytes(3), None);
    }

    #[test]
    fn dims_whose_expressions_grow_without_bound_become_unknown() {
        // (N+M)^k, a hostile chain of products: terms of degree k.
        let sum = SymExpr::symbol("N").add(&SymExpr::symbol("M"));
        let mut e = sum.clone();
        let mut dims = vec![];
        for _ in 0..20 {
            e = e.mul(&sum);
            dims.push(Dim::from_expr(e.clone()));
        }
        assert!(matches!(dims[0], Dim::Sym(_)));
        assert_eq!(dims.last(), Some(&Dim::Unknown));
        // N^20: one term, but past the degree cap.
        let mut p = SymExpr::symbol("N");
        for _ in 0..19 {
            p = p.mul(&SymExpr::symbol("N"));
        }
        assert_eq!(Dim::from_expr(p), Dim::Unknown);
    }
}
