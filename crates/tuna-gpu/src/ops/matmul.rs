//! Matrix products through `cubek-matmul`: the linear layer (`matmul_forward`/`matmul_backward`)
//! and `gemm`, this crate's only caller of the matmul library.
//!
//! The kernel is picked per device: a tensor-core (CMMA) kernel where the device has tensor
//! cores (NVIDIA; f32 operands then run in TF32), else the plain unit-tiled kernel (lavapipe,
//! CPU adapters, or on request: `Gpu::with_plain_matmul`). cubek-matmul
//! overwrites its output, so accumulating products (backward passes) go through a scratch
//! buffer and an add.

use cubecl::prelude::*;
use cubek_matmul::definition::{MatmulElems, MatmulGlobalElems, MatmulSetupError};
use cubek_matmul::launch::{Strategy, launch_ref};
use cubek_std::InputBinding;
use tuna_engine::ops::matmul::Layout;

use super::colsum::{RowTerm, colsum_accumulate};
use super::elementwise::residual_forward;
use crate::error::{Error, Result};
use crate::runtime::{Buffer, Gpu, dim, elementwise};

/// Which kernel family `gemm` launched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulKernel {
    /// Tensor cores (CMMA), NVIDIA.
    TensorCore,
    /// Plain unit-tiled kernel: no tensor cores (lavapipe).
    Unit,
}

/// The kernel family `gemm` uses on this device (see [`Gpu::with_plain_matmul`]).
pub fn matmul_kernel<R: Runtime>(gpu: &Gpu<R>) -> MatmulKernel {
    if gpu.plain_matmul() || gpu.client().properties().features.matmul.cmma.is_empty() {
        MatmulKernel::Unit
    } else {
        MatmulKernel::TensorCore
    }
}

/// `dst (m, n) = [dst +] a (m, k) · b (k, n)`, f32 accumulation.
///
/// With `accumulate` the product is added to `dst` (backward passes); otherwise `dst` is
/// overwritten and its old contents are never read. Same contract as the CPU engine's `sgemm`.
#[allow(clippy::too_many_arguments)]
pub fn gemm<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    dst: &Buffer<R, F>,
    a: &Buffer<R, F>,
    a_layout: Layout,
    b: &Buffer<R, F>,
    b_layout: Layout,
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) -> Result<()> {
    assert_eq!(
        dst.len(),
        m * n,
        "gemm: dst has {} elements, want {m}x{n}",
        dst.len()
    );
    assert_eq!(
        a.len(),
        m * k,
        "gemm: a has {} elements, want {m}x{k}",
        a.len()
    );
    assert_eq!(
        b.len(),
        k * n,
        "gemm: b has {} elements, want {k}x{n}",
        b.len()
    );
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            super::elementwise::fill(gpu, dst, 0.0);
        }
        return Ok(());
    }
    let out = if accumulate {
        gpu.alloc::<F>(m * n)
    } else {
        dst.clone()
    };
    let ty = F::cube_type();
    let lhs = InputBinding::Normal(a.matrix(m, k, a_layout == Layout::Transposed), ty);
    let rhs = InputBinding::Normal(b.matrix(k, n, b_layout == Layout::Transposed), ty);
    let mut dtypes = MatmulElems::from_globals(&MatmulGlobalElems {
        lhs: ty,
        rhs: ty,
        out: ty,
    });
    let strategy = match matmul_kernel(gpu) {
        MatmulKernel::TensorCore => Strategy::SimpleCyclicCmma(Default::default()),
        MatmulKernel::Unit => Strategy::SimpleUnit(Default::default()),
    };
    let launched = launch_ref(
        &strategy,
        gpu.client(),
        lhs.clone(),
        rhs.clone(),
        out.matrix(m, n, false),
        &mut dtypes,
    );
    let launched = match launched {
        // The device lacks something the tensor-core kernel needs for this shape or type.
        Err(MatmulSetupError::Unavailable(_)) if strategy_is_tensor_core(&strategy) => launch_ref(
            &Strategy::SimpleUnit(Default::default()),
            gpu.client(),
            lhs,
            rhs,
            out.matrix(m, n, false),
            &mut dtypes,
        ),
        other => other,
    };
    launched.map_err(|e| Error::Matmul {
        m,
        k,
        n,
        reason: format!("{e:?}"),
    })?;
    if accumulate {
        residual_forward(gpu, dst, &out);
    }
    Ok(())
}

fn strategy_is_tensor_core(s: &Strategy) -> bool {
    matches!(s, Strategy::SimpleCyclicCmma(_))
}

#[cube(launch)]
fn add_bias_kernel<F: Float>(out: &mut Array<F>, bias: &Array<F>, rows: u32, oc: u32) {
    let i = ABSOLUTE_POS;
    if i < (rows * oc) as usize {
        let o = i as u32 % oc;
        out[i] = F::cast_from(f32::cast_from(out[i]) + f32::cast_from(bias[o as usize]));
    }
}

/// out (bt, oc) = inp (bt, c) · weight (oc, c)ᵀ [+ bias (oc)]. Overwrites out.
#[allow(clippy::too_many_arguments)]
pub fn matmul_forward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    out: &Buffer<R, F>,
    inp: &Buffer<R, F>,
    weight: &Buffer<R, F>,
    bias: Option<&Buffer<R, F>>,
    bt: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    gemm(
        gpu,
        out,
        inp,
        Layout::Normal,
        weight,
        Layout::Transposed,
        bt,
        c,
        oc,
        false,
    )?;
    if let Some(b) = bias {
        assert_eq!(
            b.len(),
            oc,
            "matmul_forward: bias has {} elements, want {oc}",
            b.len()
        );
        let (count, cube) = elementwise(bt * oc);
        add_bias_kernel::launch::<F, R>(
            gpu.client(),
            count,
            cube,
            out.arg(),
            b.arg(),
            dim("bt", bt),
            dim("oc", oc),
        );
    }
    Ok(())
}

/// Accumulates: dinp (bt, c) += dout (bt, oc) · weight (oc, c); dweight (oc, c) += doutᵀ · inp;
/// dbias (oc) += Σ_rows dout. Each output is optional.
#[allow(clippy::too_many_arguments)]
pub fn matmul_backward<R: Runtime, F: Float + CubeElement>(
    gpu: &Gpu<R>,
    dinp: Option<&Buffer<R, F>>,
    dweight: Option<&Buffer<R, F>>,
    dbias: Option<&Buffer<R, F>>,
    dout: &Buffer<R, F>,
    inp: &Buffer<R, F>,
    weight: &Buffer<R, F>,
    bt: usize,
    c: usize,
    oc: usize,
) -> Result<()> {
    if let Some(dinp) = dinp {
        gemm(
            gpu,
            dinp,
            dout,
            Layout::Normal,
            weight,
            Layout::Normal,
            bt,
            oc,
            c,
            true,
        )?;
    }
    if let Some(dweight) = dweight {
        gemm(
            gpu,
            dweight,
            dout,
            Layout::Transposed,
            inp,
            Layout::Normal,
            oc,
            bt,
            c,
            true,
        )?;
    }
    if let Some(dbias) = dbias {
        assert_eq!(dbias.len(), oc, "matmul_backward: dbias");
        let unused = gpu.alloc::<f32>(0);
        colsum_accumulate(gpu, dbias, RowTerm::Plain, dout, dout, &unused, bt, oc);
    }
    Ok(())
}
