//! Tuna's numeric engine, CPU backend: flat `f32` buffers and hand-written kernels.
//!
//! Every op lives in `ops/<op>.rs` with its forward beside its backward (llm.c style).
//! Signatures follow llm.c: outputs first, then buffers saved for backward, then inputs and
//! weights, then lowercase dims. Backward kernels *accumulate* into their `d*` outputs.
//! Weights may stay in their checkpoint dtype (`WeightRef`); activations and compute are `f32`.
//!
//! Not supported: GPUs (a CUDA backend is planned behind the same signatures).

pub mod alloc;
pub mod ops;
mod scratch;
mod simd;
pub mod weight;

pub use weight::{DType, WeightRef};

/// Label value that marks a position as not trained (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;
