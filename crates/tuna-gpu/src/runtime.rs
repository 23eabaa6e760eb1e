//! The one place where Tuna meets CubeCL's host API (pinned to 0.10.0; it changes a lot between
//! releases): opening a device, device buffers (upload, download, alloc) and launch geometry.
//!
//! Kernels are generic over a CubeCL `Runtime`: `WgpuRuntime` (Vulkan; Mesa's lavapipe in CI) or
//! `CudaRuntime` (NVIDIA, NVRTC at run time). Devices are found and opened through
//! [`crate::devices`], which never panics when a driver is missing.

use std::marker::PhantomData;
use std::ops::Range;

use cubecl::features::Plane;
use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::error::{Error, Result};

/// How kernels reduce across the units of a cube (a GPU thread block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceMode {
    /// A tree in shared memory: works everywhere (lavapipe advertises no plane operations).
    SharedMemory,
    /// Plane (warp / subgroup) sums first, then shared memory across planes.
    Plane,
}

/// An opened device: the CubeCL client plus the choices made for it.
pub struct Gpu<R: Runtime> {
    client: ComputeClient<R>,
    reduce: ReduceMode,
    /// Forces the plain (non-tensor-core) matmul: f32 products on tensor cores run in TF32.
    plain_matmul: bool,
    name: String,
}

impl<R: Runtime> Clone for Gpu<R> {
    fn clone(&self) -> Self {
        Gpu {
            client: self.client.clone(),
            reduce: self.reduce,
            plain_matmul: self.plain_matmul,
            name: self.name.clone(),
        }
    }
}

impl<R: Runtime> std::fmt::Debug for Gpu<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.name)
            .field("reduce", &self.reduce)
            .finish()
    }
}

impl<R: Runtime> Gpu<R> {
    pub(crate) fn from_client(client: ComputeClient<R>, name: String) -> Self {
        let reduce = if client.properties().features.plane.contains(Plane::Ops) {
            ReduceMode::Plane
        } else {
            ReduceMode::SharedMemory
        };
        Gpu {
            client,
            reduce,
            plain_matmul: false,
            name,
        }
    }

    /// The adapter or device name (e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`, `NVIDIA H100`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn reduce_mode(&self) -> ReduceMode {
        self.reduce
    }

    /// Whether the runtime advertises plane (warp/subgroup) operations.
    pub fn has_plane_ops(&self) -> bool {
        self.client.properties().features.plane.contains(Plane::Ops)
    }

    /// Overrides the reduction path (tests force each one). Forcing `Plane` on a device whose
    /// runtime does not advertise plane operations is allowed: the Vulkan device may still have
    /// subgroups (lavapipe does), CubeCL only declines to pick them for CPU adapters.
    pub fn with_reduce_mode(mut self, mode: ReduceMode) -> Self {
        self.reduce = mode;
        self
    }

    /// Uses the plain matmul kernel even where tensor cores exist: f32 products on NVIDIA
    /// tensor cores run in TF32 (10-bit mantissa), too coarse for f32 parity checks.
    pub fn with_plain_matmul(mut self, plain: bool) -> Self {
        self.plain_matmul = plain;
        self
    }

    pub(crate) fn plain_matmul(&self) -> bool {
        self.plain_matmul
    }

    pub(crate) fn plane(&self) -> bool {
        self.reduce == ReduceMode::Plane
    }

    pub(crate) fn client(&self) -> &ComputeClient<R> {
        &self.client
    }

    /// Copies `data` to a new device buffer.
    pub fn upload<E: CubeElement>(&self, data: &[E]) -> Buffer<R, E> {
        if data.is_empty() {
            return self.alloc(0);
        }
        Buffer::new(self.client.create_from_slice(E::as_bytes(data)), data.len())
    }

    /// A new buffer of `len` elements with unspecified contents.
    pub fn alloc<E: CubeElement>(&self, len: usize) -> Buffer<R, E> {
        // A zero-byte allocation is not valid everywhere; keep one element of backing store.
        let bytes = len.max(1) * std::mem::size_of::<E>();
        Buffer::new(self.client.empty(bytes), len)
    }

    /// Copies a device buffer back to the host, after every queued kernel has finished. Fails
    /// if any of them failed (CubeCL reports kernel errors on sync, not on a read).
    pub fn download<E: CubeElement>(&self, buf: &Buffer<R, E>) -> Result<Vec<E>> {
        self.sync()?;
        if buf.is_empty() {
            return Ok(Vec::new());
        }
        let bytes = self
            .client
            .read_one(buf.handle.clone())
            .map_err(|e| Error::Read(format!("{e:?}")))?;
        Ok(E::from_bytes(&bytes)[..buf.len].to_vec())
    }

    /// Waits until every queued kernel has finished; reports the first failed one.
    pub fn sync(&self) -> Result<()> {
        cubecl::future::block_on(self.client.sync()).map_err(|e| Error::Device(format!("{e:?}")))
    }
}

/// A typed device buffer of `len` elements (or a view into part of one, see [`Buffer::slice`]).
pub struct Buffer<R: Runtime, E> {
    handle: Handle,
    len: usize,
    _marker: PhantomData<(R, E)>,
}

impl<R: Runtime, E> Clone for Buffer<R, E> {
    /// Another reference to the same device memory (not a copy of the data).
    fn clone(&self) -> Self {
        Buffer {
            handle: self.handle.clone(),
            len: self.len,
            _marker: PhantomData,
        }
    }
}

impl<R: Runtime, E> std::fmt::Debug for Buffer<R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer<{}>[{}]", std::any::type_name::<E>(), self.len)
    }
}

impl<R: Runtime, E> Buffer<R, E> {
    fn new(handle: Handle, len: usize) -> Self {
        Buffer {
            handle,
            len,
            _marker: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A view of elements `range` sharing this buffer's memory. The start must be aligned to
    /// 256 bytes (the largest storage-buffer offset alignment Vulkan allows).
    pub fn slice(&self, range: Range<usize>) -> Buffer<R, E> {
        let size = std::mem::size_of::<E>();
        assert!(
            range.start <= range.end && range.end <= self.len,
            "slice {range:?} of a buffer of {} elements",
            self.len
        );
        assert!(
            (range.start * size).is_multiple_of(256),
            "slice start {} is not 256-byte aligned",
            range.start
        );
        let trailing = (self.len - range.end) * size;
        let handle = self
            .handle
            .clone()
            .offset_start((range.start * size) as u64)
            .offset_end(trailing as u64);
        Buffer::new(handle, range.len())
    }

    /// The kernel argument for an `Array<E>` parameter.
    pub(crate) fn arg(&self) -> ArrayArg<R> {
        // SAFETY: `len` is the number of `E` elements the handle holds (set at allocation, or
        // by `slice`, which checks the range); kernels are launched in checked mode.
        unsafe { ArrayArg::from_raw_parts(self.handle.clone(), self.len.max(1)) }
    }

    /// A 2-d row-major view (rows, cols) for the matmul library.
    pub(crate) fn matrix(&self, rows: usize, cols: usize, transposed: bool) -> TensorBinding<R> {
        debug_assert_eq!(rows * cols, self.len);
        // `transposed`: the buffer stores the (cols, rows) transpose row-major, so it is read
        // as (rows, cols) with column-major strides.
        let strides = if transposed {
            vec![1, rows]
        } else {
            vec![cols, 1]
        };
        // SAFETY: shape and strides address exactly `rows * cols` elements of the buffer.
        unsafe {
            TensorBinding::from_raw_parts(
                self.handle.clone(),
                strides.into(),
                vec![rows, cols].into(),
            )
        }
    }
}

/// Most cubes along one grid axis: the Vulkan minimum `maxComputeWorkGroupCount`.
const MAX_CUBES_PER_AXIS: usize = 65_535;

/// A grid of `cubes` cubes, spread over two axes when one is not enough. Kernels read their
/// linear index from `CUBE_POS` and return early past `cubes`.
pub(crate) fn grid(cubes: usize) -> CubeCount {
    let cubes = cubes.max(1);
    let x = cubes.min(MAX_CUBES_PER_AXIS);
    let y = cubes.div_ceil(x);
    CubeCount::Static(x as u32, y as u32, 1)
}

/// Units per cube for element-wise kernels.
pub(crate) const ELEMWISE_UNITS: usize = 256;

/// Grid and cube for `n` independent elements, one unit each (`ABSOLUTE_POS`).
pub(crate) fn elementwise(n: usize) -> (CubeCount, CubeDim) {
    (
        grid(n.div_ceil(ELEMWISE_UNITS)),
        CubeDim::new_1d(ELEMWISE_UNITS as u32),
    )
}

/// Units per cube for row kernels (one cube per row): a power of two, at most 256, no more
/// than the row needs.
pub(crate) fn row_units(c: usize) -> usize {
    c.next_power_of_two().clamp(32, 256)
}

/// Converts a dimension to the `u32` kernels take, naming it if it does not fit.
pub(crate) fn dim(name: &str, value: usize) -> u32 {
    u32::try_from(value).unwrap_or_else(|_| panic!("{name} = {value} exceeds u32"))
}
