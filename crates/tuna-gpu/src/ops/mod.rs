//! One file per op, each holding `<op>_forward` beside `<op>_backward`, with the same argument
//! order as the CPU engine (`tuna_engine::ops`): the device first, then outputs, buffers saved
//! for the backward, inputs and weights, then dims. Backward ops accumulate into their `d*`
//! outputs. Ops queue kernels and return without waiting; reading a buffer back waits.

pub mod adamw;
pub mod attention;
pub mod attention_cached;
pub(crate) mod colsum;
pub mod elementwise;
pub mod embedding;
pub mod lm_head_ce;
pub mod lora;
pub mod matmul;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
