//! One file per op; each holds `<op>_forward` beside `<op>_backward`.

pub mod adamw;
pub mod attention;
pub mod embedding;
pub mod lm_head_ce;
pub mod matmul;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
