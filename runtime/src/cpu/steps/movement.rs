//! Steps for data movement and reductions: the operand's elements
//! rearranged (reshape, transpose, gather, concat, expand), converted
//! (cast to f32) or reduced over any axes. The compiler plans each one
//! (shapes, permutation, axes) from its node; these run it.

use crate::cpu::NativeKernel;
use crate::{Data, Tensor};

use super::operand;

/// Reshape-like ops: the operand's data under the result's static shape.
pub struct Reshape {
    pub out: Vec<usize>,
}

impl NativeKernel for Reshape {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let x = inputs.first().copied().flatten().ok_or("missing operand")?;
        if let Data::F32(v) = &x.data {
            // Into a recycled buffer: a fresh one pays its page faults on
            // every run (MiniLM's 196 KB head reshapes: 0.21 -> 0.14 ms a
            // run in all).
            let mut out = crate::cpu::buffers::output(v.len());
            out.copy_from_slice(v);
            let t = Tensor::new(self.out.clone(), Data::F32(out));
            return Ok(vec![t.map_err(|e| e.to_string())?]);
        }
        Ok(vec![x
            .reshaped(self.out.clone())
            .map_err(|e| e.to_string())?])
    }
}

/// Apply a generic movement function to the data of the element types the
/// movement kernels take (f32, i64, i32); `None` for others.
macro_rules! movable {
    ($d:expr, |$v:ident| $body:expr) => {
        match $d {
            Data::F32($v) => Some(Data::F32($body)),
            Data::I64($v) => Some(Data::I64($body)),
            Data::I32($v) => Some(Data::I32($body)),
            _ => None,
        }
    };
}

/// Transpose by `perm` of an operand of `shape`.
pub struct Transpose {
    pub shape: Vec<usize>,
    pub perm: Vec<usize>,
    pub out: Vec<usize>,
}

impl NativeKernel for Transpose {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let x = operand(inputs, 0)?;
        let d = movable!(&x.data, |v| crate::cpu::movement::transpose(
            v,
            &self.shape,
            &self.perm
        ))
        .ok_or("unsupported element type")?;
        Ok(vec![
            Tensor::new(self.out.clone(), d).map_err(|e| e.to_string())?
        ])
    }
}

/// Gather along one axis: `outer` blocks of `rows` rows of `row_len`.
pub struct Gather {
    pub outer: usize,
    pub rows: usize,
    pub row_len: usize,
    pub out: Vec<usize>,
}

impl NativeKernel for Gather {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let x = operand(inputs, 0)?;
        let idx = operand(inputs, 1)?;
        let idx: Vec<i64> = match &idx.data {
            Data::I64(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&i| i as i64).collect(),
            _ => return Err("indices must be i64 or i32".into()),
        };
        let d = match &x.data {
            Data::F32(v) => Data::F32(crate::cpu::movement::gather(
                v,
                self.outer,
                self.rows,
                self.row_len,
                &idx,
            )?),
            Data::I64(v) => Data::I64(crate::cpu::movement::gather(
                v,
                self.outer,
                self.rows,
                self.row_len,
                &idx,
            )?),
            Data::I32(v) => Data::I32(crate::cpu::movement::gather(
                v,
                self.outer,
                self.rows,
                self.row_len,
                &idx,
            )?),
            _ => return Err("unsupported element type".into()),
        };
        Ok(vec![
            Tensor::new(self.out.clone(), d).map_err(|e| e.to_string())?
        ])
    }
}

/// Concat along one axis: `outer` blocks, each part contributing `inner[i]` elements.
pub struct Concat {
    pub outer: usize,
    pub inner: Vec<usize>,
    pub out: Vec<usize>,
}

impl NativeKernel for Concat {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let parts: Vec<&Tensor> = (0..inputs.len())
            .map(|i| operand(inputs, i))
            .collect::<Result<_, _>>()?;
        let n = self.out.iter().product();
        // Every element is written: f32 results take a recycled buffer.
        macro_rules! cat {
            ($var:ident, $out:expr) => {{
                let mut v = vec![];
                for p in &parts {
                    match &p.data {
                        Data::$var(d) => v.push(d.as_slice()),
                        _ => return Err("operands differ in type".into()),
                    }
                }
                let mut out = $out;
                crate::cpu::movement::concat(&v, self.outer, &self.inner, &mut out);
                Data::$var(out)
            }};
        }
        let d = match parts.first().map(|p| &p.data) {
            Some(Data::F32(_)) => cat!(F32, crate::cpu::buffers::output(n)),
            Some(Data::I64(_)) => cat!(I64, vec![0; n]),
            Some(Data::I32(_)) => cat!(I32, vec![0; n]),
            _ => return Err("unsupported element type".into()),
        };
        Ok(vec![
            Tensor::new(self.out.clone(), d).map_err(|e| e.to_string())?
        ])
    }
}

/// Cast to f32 from the integer and bool types (exact or rounded to
/// nearest, as `as` does), or f32 to f32.
pub struct CastToF32 {
    pub out: Vec<usize>,
}

impl NativeKernel for CastToF32 {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let x = operand(inputs, 0)?;
        let v: Vec<f32> = match &x.data {
            Data::F32(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&a| a as f32).collect(),
            Data::I32(v) => v.iter().map(|&a| a as f32).collect(),
            Data::Bool(v) => v.iter().map(|&a| a as u8 as f32).collect(),
            _ => return Err("unsupported cast".into()),
        };
        Ok(vec![
            Tensor::new(self.out.clone(), Data::F32(v)).map_err(|e| e.to_string())?
        ])
    }
}

/// Broadcast of an operand of `in_shape` to `out`.
pub struct Expand {
    pub in_shape: Vec<usize>,
    pub out: Vec<usize>,
}

impl NativeKernel for Expand {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        use crate::cpu::reduce::broadcast;
        let x = operand(inputs, 0)?;
        let d = match &x.data {
            Data::Bool(v) => Data::Bool(broadcast(v, &self.in_shape, &self.out)),
            d => movable!(d, |v| broadcast(v, &self.in_shape, &self.out))
                .ok_or("unsupported element type")?,
        };
        Ok(vec![
            Tensor::new(self.out.clone(), d).map_err(|e| e.to_string())?
        ])
    }
}

/// A reduction of an f32 operand of `shape` over `axes` (any of them).
pub struct Reduce {
    pub shape: Vec<usize>,
    pub axes: Vec<usize>,
    pub op: crate::cpu::reduce::ReduceOp,
    pub out: Vec<usize>,
}

impl NativeKernel for Reduce {
    fn run(&self, inputs: &[Option<&Tensor>], _: usize) -> Result<Vec<Tensor>, String> {
        let x = operand(inputs, 0)?;
        let Data::F32(v) = &x.data else {
            return Err("reduction of non-f32".into());
        };
        let r = crate::cpu::reduce::reduce(v, &self.shape, &self.axes, self.op);
        Ok(vec![
            Tensor::new(self.out.clone(), Data::F32(r)).map_err(|e| e.to_string())?
        ])
    }
}
