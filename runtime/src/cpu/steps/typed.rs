//! Elementwise ops on integer and bool tensors, which the generated
//! (f32) loops do not take: integer arithmetic, comparisons, logic and
//! `Where` — the masks and index arithmetic of transformers and
//! detectors. Operands are broadcast to the result's shape (whole runs
//! copied or filled, [`crate::cpu::reduce::broadcast`]), then combined
//! element by element. What each op computes comes from the
//! interpreter's tables (`ARITH`, `COMPARE`): one place for its meaning.

use kiln_ir::ElemType;

use crate::cpu::reduce::broadcast;
use crate::cpu::view::{In, Out};
use crate::cpu::NativeKernel;
use crate::interp::kernels::elementwise::{Cmp, FI, UI};

use super::{operand, result};

/// `$m!(accessor)` for the integer element type `$elem`, or an error
/// naming `$what`.
macro_rules! each_int {
    ($elem:expr, $m:ident, $what:expr) => {
        match $elem {
            ElemType::I64 => $m!(i64s),
            ElemType::I32 => $m!(i32s),
            ElemType::I16 => $m!(i16s),
            ElemType::I8 => $m!(i8s),
            ElemType::U64 => $m!(u64s),
            ElemType::U32 => $m!(u32s),
            ElemType::U16 => $m!(u16s),
            ElemType::U8 => $m!(u8s),
            e => return Err(format!("no native {} on {e}", $what)),
        }
    };
}

/// What a [`Typed`] step computes.
#[derive(Clone, Copy)]
pub enum TypedOp {
    /// A binary integer op in i128, wrapped to the element type.
    Arith(FI),
    /// A unary integer op in i128, wrapped to the element type.
    IntUnary(UI),
    /// A comparison of two tensors of one type, to bool.
    Compare(Cmp),
    /// And, Or, Xor on bools.
    Logic(fn(bool, bool) -> bool),
    Not,
    /// `Where(cond, x, y)`.
    Where,
    /// IsNaN of f32.
    IsNaN,
    /// IsInf of f32: which infinities count (negative, positive).
    IsInf(bool, bool),
}

/// One elementwise op over operands of `shapes`, giving `out`.
pub struct Typed {
    pub op: TypedOp,
    pub shapes: Vec<Vec<usize>>,
    pub out: Vec<usize>,
}

impl Typed {
    /// Operand `i` broadcast to the result's shape.
    fn full<T: Copy + Default>(&self, x: &[T], i: usize) -> Vec<T> {
        if self.shapes[i] == self.out {
            return x.to_vec();
        }
        let mut v = vec![T::default(); self.out.iter().product()];
        broadcast(x, &self.shapes[i], &self.out, &mut v);
        v
    }
}

impl NativeKernel for Typed {
    fn run(&self, inputs: &[Option<In>], outputs: &mut [Out], _: usize) -> Result<(), String> {
        let out = result(outputs, 0)?;
        match self.op {
            TypedOp::Arith(f) => {
                let (a, b) = (operand(inputs, 0)?, operand(inputs, 1)?);
                macro_rules! arith {
                    ($get:ident) => {{
                        let (x, y) = (self.full(a.$get()?, 0), self.full(b.$get()?, 1));
                        for ((o, &p), &q) in out.$get()?.iter_mut().zip(&x).zip(&y) {
                            *o = f(p as i128, q as i128)? as _;
                        }
                    }};
                }
                each_int!(a.elem(), arith, "integer arithmetic");
            }
            TypedOp::IntUnary(f) => {
                let a = operand(inputs, 0)?;
                macro_rules! map {
                    ($get:ident) => {{
                        for (o, &p) in out.$get()?.iter_mut().zip(a.$get()?) {
                            *o = f(p as i128) as _;
                        }
                    }};
                }
                each_int!(a.elem(), map, "integer op");
            }
            TypedOp::Compare(f) => {
                let (a, b) = (operand(inputs, 0)?, operand(inputs, 1)?);
                let o = out.bools()?;
                macro_rules! compare {
                    ($get:ident) => {{
                        let (x, y) = (self.full(a.$get()?, 0), self.full(b.$get()?, 1));
                        for ((o, p), q) in o.iter_mut().zip(&x).zip(&y) {
                            *o = f(p.partial_cmp(q));
                        }
                    }};
                }
                match a.elem() {
                    ElemType::F32 => compare!(f32s),
                    ElemType::I64 => compare!(i64s),
                    ElemType::I32 => compare!(i32s),
                    e => return Err(format!("no native comparison of {e}")),
                }
            }
            TypedOp::Logic(f) => {
                let (a, b) = (operand(inputs, 0)?, operand(inputs, 1)?);
                let (x, y) = (self.full(a.bools()?, 0), self.full(b.bools()?, 1));
                for ((o, &p), &q) in out.bools()?.iter_mut().zip(&x).zip(&y) {
                    *o = f(p, q);
                }
            }
            TypedOp::IsNaN => {
                let x = operand(inputs, 0)?.f32s()?;
                for (o, v) in out.bools()?.iter_mut().zip(x) {
                    *o = v.is_nan();
                }
            }
            TypedOp::IsInf(neg, pos) => {
                let x = operand(inputs, 0)?.f32s()?;
                for (o, &v) in out.bools()?.iter_mut().zip(x) {
                    *o = (neg && v == f32::NEG_INFINITY) || (pos && v == f32::INFINITY);
                }
            }
            TypedOp::Not => {
                let x = operand(inputs, 0)?;
                for (o, &p) in out.bools()?.iter_mut().zip(x.bools()?) {
                    *o = !p;
                }
            }
            TypedOp::Where => {
                let c = self.full(operand(inputs, 0)?.bools()?, 0);
                let (a, b) = (operand(inputs, 1)?, operand(inputs, 2)?);
                if a.elem() != b.elem() || a.elem() != out.elem() {
                    return Err("Where of mixed element types".into());
                }
                // A select moves whole elements: by their width, so every
                // type a view holds is native (f16 and f64 were refused at
                // run time after the lowering had called them native).
                macro_rules! select {
                    ($n:literal) => {{
                        // SAFETY: each view covers `len` elements of the
                        // type, $n bytes each ([u8; $n] needs no
                        // alignment), valid for the call; the result is
                        // written only through `out`, apart from the
                        // operands (the executable never aliases a typed
                        // step's views).
                        let (x, y, o) = unsafe {
                            (
                                std::slice::from_raw_parts(
                                    a.bytes_ptr() as *const [u8; $n],
                                    a.len(),
                                ),
                                std::slice::from_raw_parts(
                                    b.bytes_ptr() as *const [u8; $n],
                                    b.len(),
                                ),
                                std::slice::from_raw_parts_mut(
                                    out.bytes_ptr() as *mut [u8; $n],
                                    out.len(),
                                ),
                            )
                        };
                        let (x, y) = (self.full(x, 1), self.full(y, 2));
                        for (((o, &k), &p), &q) in o.iter_mut().zip(&c).zip(&x).zip(&y) {
                            *o = if k { p } else { q };
                        }
                    }};
                }
                match where_width(a.elem()) {
                    Some(1) => select!(1),
                    Some(2) => select!(2),
                    Some(4) => select!(4),
                    Some(8) => select!(8),
                    Some(16) => select!(16),
                    _ => return Err(format!("no native Where of {}", a.elem())),
                }
            }
        }
        Ok(())
    }
}

/// The element width a native Where selects by, for the types a view
/// holds whole (not the packed 4-bit ones, not strings).
pub fn where_width(e: ElemType) -> Option<usize> {
    if matches!(e, ElemType::I4 | ElemType::U4 | ElemType::String)
        || !crate::cpu::view::is_viewable(e)
    {
        return None;
    }
    e.storage_bytes(1)
        .map(|b| b as usize)
        .filter(|b| [1, 2, 4, 8, 16].contains(b))
}
