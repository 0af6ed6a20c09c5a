//! The Kiln runtime: what executes compiled modules. For now it owns the
//! host tensor type that executables and the interpreter exchange.

pub mod tensor;

pub use tensor::Tensor;
