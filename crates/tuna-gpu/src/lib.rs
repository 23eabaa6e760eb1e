//! Tuna's GPU kernels, written once in Rust with CubeCL (`#[cube]`) and run on two runtimes:
//! CUDA on NVIDIA GPUs (NVRTC compiles the generated CUDA C++ at run time) and wgpu on Vulkan,
//! which in CI runs on Mesa's software driver lavapipe so that every kernel is checked against
//! the CPU engine on every run.
//!
//! - [`devices`]: find and open GPUs (`gpu:N`), never panicking when a driver is missing.
//! - [`runtime`]: the device handle ([`Gpu`]), typed device buffers ([`Buffer`]): upload,
//!   download, alloc. The only CubeCL host-API code besides the kernel launches.
//! - [`ops`]: the kernels, forward beside backward, with the CPU engine's signatures.
//! - [`model`]: the model on a device, `tuna_model`'s training backend (`Backend`,
//!   `TrainDevice`): the one training pass of `tuna_model::train` runs on device buffers.
//! - [`cuda_source`]: the CUDA C++ of every kernel without a GPU (checked with NVRTC in CI).
//!
//! Kernels are generic over the storage float `F` (f32 here and in CI — lavapipe has no bf16 —,
//! bf16 on NVIDIA) and compute in f32. The model runs in f32 on every device for now.

pub mod cuda_source;
pub mod devices;
pub mod error;
pub mod model;
pub mod ops;
mod reduce;
pub mod runtime;

pub use cubecl::cuda::CudaRuntime;
pub use cubecl::prelude::{CubeElement, Float, Runtime};
pub use cubecl::wgpu::WgpuRuntime;
pub use error::{Error, Result};
pub use model::{GpuDecoder, GpuModel, gpu_decoder, train_device};
pub use runtime::{Buffer, Gpu, ReduceMode};
