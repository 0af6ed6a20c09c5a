//! Views of tensor memory, the currency between the CPU executable and its
//! steps. An operand ([`In`]) or a result ([`Out`]) is a typed pointer, an
//! element count and a static shape; the memory is the executable's: a
//! slice of the run's arena (where the memory plan put the value), a graph
//! input or constant, or a graph output's own buffer.
//!
//! Views are pointers, not slices, because the memory plan may give a
//! result the buffer of an operand (a pointwise step writing in place):
//! `&[f32]` and `&mut [f32]` over the same memory would be undefined
//! behaviour even when the kernel reads element i before writing it. A
//! kernel that says it may run in place ([`super::NativeKernel::in_place`])
//! reads and writes aliased views through raw pointers only; every other
//! kernel is never handed aliased views and may borrow them as slices.

use std::marker::PhantomData;

use kiln_ir::ElemType;

use crate::tensor::{Data, Tensor};

/// An operand's memory, read-only.
#[derive(Clone, Copy, Debug)]
pub struct In<'a> {
    ptr: *const u8,
    len: usize,
    elem: ElemType,
    /// The value's static shape.
    pub shape: &'a [usize],
    _life: PhantomData<&'a [u8]>,
}

/// A result's memory, to be written in full (its contents are stale).
#[derive(Debug)]
pub struct Out<'a> {
    ptr: *mut u8,
    len: usize,
    elem: ElemType,
    /// The value's static shape.
    pub shape: &'a [usize],
    _life: PhantomData<&'a mut [u8]>,
}

// SAFETY: a view is a pointer into memory the executable owns for the
// whole step; the executable hands each Out to one kernel call, and the
// kernel's threads write disjoint parts of it (the kernels' own contract),
// as they would through a `&mut [T]`.
unsafe impl Send for In<'_> {}
// SAFETY: as for `Send`; an `In` is only read.
unsafe impl Sync for In<'_> {}
// SAFETY: as for `In`.
unsafe impl Send for Out<'_> {}
// SAFETY: as for `In`; shared access to an `Out` only reads its pointer.
unsafe impl Sync for Out<'_> {}

/// Element types a view can hold: those with a fixed size and the
/// runtime's layout equal to the IR's (not strings, not the unpacked
/// 4-bit types).
fn viewable(elem: ElemType) -> bool {
    !matches!(elem, ElemType::String | ElemType::I4 | ElemType::U4)
}

/// The memory of a tensor's data: pointer, element count, element type.
fn raw_parts(t: &Tensor) -> Option<(*const u8, usize)> {
    macro_rules! parts {
        ($v:expr) => {
            Some(($v.as_ptr() as *const u8, $v.len()))
        };
    }
    match &t.data {
        Data::F32(v) => parts!(v),
        Data::F64(v) => parts!(v),
        Data::F16(v) => parts!(v),
        Data::BF16(v) => parts!(v),
        Data::F8(_, v) => parts!(v),
        Data::I64(v) => parts!(v),
        Data::I32(v) => parts!(v),
        Data::I16(v) => parts!(v),
        Data::I8(v) => parts!(v),
        Data::U64(v) => parts!(v),
        Data::U32(v) => parts!(v),
        Data::U16(v) => parts!(v),
        Data::U8(v) => parts!(v),
        Data::Bool(v) => parts!(v),
        Data::C64(v) => parts!(v),
        Data::C128(v) => parts!(v),
        // One value per byte, as the interpreter keeps them (never the
        // packed constant bytes: `is_viewable` is false for 4-bit types).
        Data::I4(v) => parts!(v),
        Data::U4(v) => parts!(v),
        Data::Str(_) => None,
    }
}

/// What both views answer: element type, count, bytes.
macro_rules! accessors {
    ($ptr:ty) => {
        pub fn elem(&self) -> ElemType {
            self.elem
        }

        /// Element count.
        pub fn len(&self) -> usize {
            self.len
        }

        pub fn is_empty(&self) -> bool {
            self.len == 0
        }

        /// Byte address of the first element.
        pub fn bytes_ptr(&self) -> $ptr {
            self.ptr
        }

        /// Size in bytes.
        pub fn byte_len(&self) -> usize {
            self.elem.storage_bytes(self.len as u64).unwrap_or(0) as usize
        }
    };
}

macro_rules! typed {
    ($name:ident, $ptr_name:ident, $t:ty, $e:path) => {
        /// The elements, if the view holds this type.
        pub fn $name(&self) -> Result<&'a [$t], String> {
            let p = self.$ptr_name()?;
            // SAFETY: `ptr` covers `len` elements of this type (checked by
            // the constructor), aligned for it (arena slots are 64-byte
            // aligned, tensors are `Vec`s of the type), and stays valid for
            // 'a; no one writes it while a non-in-place kernel reads it
            // (the executable never aliases such a kernel's views).
            Ok(unsafe { std::slice::from_raw_parts(p, self.len) })
        }

        /// The first element's address, if the view holds this type.
        pub fn $ptr_name(&self) -> Result<*const $t, String> {
            if self.elem != $e {
                return Err(format!("operand is {}, not {}", self.elem, $e));
            }
            Ok(self.ptr as *const $t)
        }
    };
}

macro_rules! typed_mut {
    ($name:ident, $ptr_name:ident, $t:ty, $e:path) => {
        /// The elements, if the view holds this type.
        pub fn $name(&mut self) -> Result<&mut [$t], String> {
            let p = self.$ptr_name()?;
            // SAFETY: as for `In`'s accessors; `&mut self` keeps this the
            // only slice made from the view, and the executable gives a
            // kernel that borrows slices no view aliasing this one.
            Ok(unsafe { std::slice::from_raw_parts_mut(p, self.len) })
        }

        /// The first element's address, if the view holds this type.
        pub fn $ptr_name(&self) -> Result<*mut $t, String> {
            if self.elem != $e {
                return Err(format!("result is {}, not {}", self.elem, $e));
            }
            Ok(self.ptr as *mut $t)
        }
    };
}

impl<'a> In<'a> {
    /// A view of a tensor's data; `None` for strings and 4-bit types.
    pub fn of(t: &'a Tensor, elem: ElemType) -> Option<In<'a>> {
        let (ptr, len) = raw_parts(t)?;
        Some(In {
            ptr,
            len,
            elem,
            shape: &t.shape,
            _life: PhantomData,
        })
    }

    /// A view of raw memory.
    ///
    /// # Safety
    /// `ptr` must be valid for reads of `shape`'s element count of `elem`,
    /// aligned for `elem`, for 'a.
    pub unsafe fn from_raw(ptr: *const u8, elem: ElemType, shape: &'a [usize]) -> In<'a> {
        In {
            ptr,
            len: shape.iter().product(),
            elem,
            shape,
            _life: PhantomData,
        }
    }

    accessors!(*const u8);

    typed!(f32s, f32_ptr, f32, ElemType::F32);
    typed!(i64s, i64_ptr, i64, ElemType::I64);
    typed!(i32s, i32_ptr, i32, ElemType::I32);
    typed!(bools, bool_ptr, bool, ElemType::Bool);
    typed!(u8s, u8_ptr, u8, ElemType::U8);
    typed!(i8s, i8_ptr, i8, ElemType::I8);
    typed!(u16s, u16_ptr, u16, ElemType::U16);
    typed!(i16s, i16_ptr, i16, ElemType::I16);
    typed!(u32s, u32_ptr, u32, ElemType::U32);
    typed!(u64s, u64_ptr, u64, ElemType::U64);
}

impl<'a> Out<'a> {
    /// A view of a tensor's data, to be overwritten; `None` for strings and
    /// 4-bit types.
    pub fn of(t: &'a mut Tensor) -> Option<Out<'a>> {
        let elem = t.elem();
        let (ptr, len) = raw_parts(t)?;
        let Tensor { shape, .. } = t;
        Some(Out {
            // Writing through it is fine: `t` is borrowed mutably for 'a.
            ptr: ptr as *mut u8,
            len,
            elem,
            shape,
            _life: PhantomData,
        })
    }

    /// A view of raw memory.
    ///
    /// # Safety
    /// `ptr` must be valid for writes of `shape`'s element count of
    /// `elem`, aligned for `elem`, for 'a, and not read or written by
    /// anyone else meanwhile except through views the executable aliases
    /// on purpose (in-place steps).
    pub unsafe fn from_raw(ptr: *mut u8, elem: ElemType, shape: &'a [usize]) -> Out<'a> {
        debug_assert!(viewable(elem));
        Out {
            ptr,
            len: shape.iter().product(),
            elem,
            shape,
            _life: PhantomData,
        }
    }

    accessors!(*mut u8);

    typed_mut!(f32s, f32_ptr, f32, ElemType::F32);
    typed_mut!(i64s, i64_ptr, i64, ElemType::I64);
    typed_mut!(i32s, i32_ptr, i32, ElemType::I32);
    typed_mut!(bools, bool_ptr, bool, ElemType::Bool);
    typed_mut!(u8s, u8_ptr, u8, ElemType::U8);
    typed_mut!(i8s, i8_ptr, i8, ElemType::I8);
    typed_mut!(u16s, u16_ptr, u16, ElemType::U16);
    typed_mut!(i16s, i16_ptr, i16, ElemType::I16);
    typed_mut!(u32s, u32_ptr, u32, ElemType::U32);
    typed_mut!(u64s, u64_ptr, u64, ElemType::U64);
}

/// Whether the CPU executable can hold values of this type in views.
pub fn is_viewable(elem: ElemType) -> bool {
    viewable(elem)
}
