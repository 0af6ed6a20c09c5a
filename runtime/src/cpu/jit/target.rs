//! [`TargetCpu`], the instruction set the generated code may use: what
//! callers choose (re-exported as `cpu::jit::TargetCpu`) and what
//! `codegen.rs` reads when it sets up the Cranelift ISA.
//!
//! It is a module of its own so that `codegen` does not import the module
//! that declares and calls it (`mod.rs`): both import this instead.

/// Which instruction set the generated code may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TargetCpu {
    /// Every feature of the machine compiling (FMA, SSE4.1, ...).
    #[default]
    Native,
    /// The architecture's baseline (x86-64: SSE2, no FMA): code that runs
    /// on any machine of the architecture.
    Baseline,
}
