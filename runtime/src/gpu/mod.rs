//! The GPU backend's run-time half: generated WGSL compute shaders on wgpu.
//!
//! - `wgsl.rs`: the shader text builder, the pointwise op table and
//!   [`wgsl::validate`] (naga); [`wgsl::GpuKernel`], what a GPU step runs.
//! - `kernels/`: the generators (fusion regions, GEMM/conv/pooling, data
//!   movement).
//! - `device.rs`: [`Gpu`], one adapter, device and queue.
//! - `exec.rs`: [`GpuExecutable`], the steps on the device with CPU steps
//!   and transfers between them.
//!
//! A chain: `wgsl` ◄ `kernels` ; `device` ◄ `exec` (which also reads
//! `wgsl`'s kernel type).

pub mod device;
pub mod exec;
pub mod kernels;
pub mod wgsl;

pub use device::Gpu;
pub use exec::{BranchStep, GpuExecutable, GpuLayout, GpuStep, GpuStepKind};
