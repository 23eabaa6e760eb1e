//! The CUDA C++ that CubeCL generates for every kernel, without a GPU.
//!
//! CubeCL 0.10 compiles a kernel to CUDA C++ only inside its CUDA server, which needs a driver
//! and a device. This module supplies a runtime (`CudaSourceRuntime`) whose "server" runs
//! CubeCL's own CUDA compiler (`cubecl_cuda::CudaCompiler`) on each launched kernel with the
//! device properties and compiler options the CUDA runtime sets for an sm_90 GPU (H100/H200),
//! records the source, and runs nothing. Any op launched on a [`capture_gpu`] — including the
//! tensor-core matmul that cubek-matmul picks for such a device — leaves its kernels in
//! [`take_captured`]. CI compiles them to PTX for `sm_90a` with NVRTC (tests/nvrtc.rs).
//!
//! The properties below mirror `cubecl_cuda`'s `DeviceService::init` (runtime.rs) for compute
//! capability 9.0; keep them in step when CubeCL is upgraded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cubecl::CubeTask;
use cubecl::cuda::CudaCompiler;
use cubecl::device::{Device, DeviceId, DeviceService, ServerUtilitiesHandle};
use cubecl::future::DynFut;
use cubecl::ir::features::{AtomicUsage, Plane, Tma, TypeUsage};
use cubecl::ir::{
    DeviceProperties, ElemType, FloatKind, HardwareProperties, MemoryDeviceProperties, StorageType,
    TargetProperties, Type, VectorSize,
};
use cubecl::prelude::*;
use cubecl::profile::{ProfileDuration, TimingMethod};
use cubecl::server::{
    Binding, ComputeServer, CopyDescriptor, IoError, KernelArguments, ProfileError, ProfilingToken,
    ServerCommunication, ServerError, ServerUtilities,
};
use cubecl::stream_id::StreamId;
use cubecl::zspace::{Shape, Strides};
use cubecl_cpp::DialectWmmaCompiler;
use cubecl_cpp::cuda::arch::CudaArchitecture;
use cubecl_cpp::cuda::mma::CudaWmmaCompiler;
use cubecl_cpp::shared::{
    CompilationOptions, CppSupportedFeatures, register_mma_features, register_wmma_features,
};
use cubecl_runtime::allocator::ContiguousMemoryLayoutPolicy;
use cubecl_runtime::logging::ServerLogger;
use cubecl_runtime::memory_management::{ManagedMemoryHandle, MemoryAllocationMode, MemoryUsage};
use cubecl_runtime::storage::{BytesStorage, ManagedResource};

use crate::runtime::Gpu;

/// Compute capability the sources are generated for (Hopper: H100, H200).
pub const CUDA_ARCH: u32 = 90;

/// One generated kernel.
#[derive(Debug, Clone)]
pub struct CudaKernelSource {
    /// The kernel's entry point, e.g. `rmsnorm_forward_kernel_f_f32`.
    pub entrypoint: String,
    /// The Rust type that defined it (CubeCL's debug name).
    pub defined_by: String,
    pub source: String,
}

/// Kernels generated so far, by kernel id (each distinct kernel once).
static CAPTURED: Mutex<BTreeMap<String, CudaKernelSource>> = Mutex::new(BTreeMap::new());

/// Takes every kernel captured so far (and clears the list).
pub fn take_captured() -> Vec<CudaKernelSource> {
    let mut captured = CAPTURED.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *captured).into_values().collect()
}

/// A device on which ops compile their kernels to CUDA C++ (recorded, not run). Buffers exist
/// only as handles: reading one back returns an error.
pub fn capture_gpu() -> Gpu<CudaSourceRuntime> {
    Gpu::from_client(
        CudaSourceRuntime::client(&CaptureDevice),
        format!("CUDA C++ generator (sm_{CUDA_ARCH})"),
    )
}

/// The CubeCL runtime behind [`capture_gpu`].
#[derive(Debug, Clone)]
pub struct CudaSourceRuntime;

/// Its only device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CaptureDevice;

impl Device for CaptureDevice {
    fn from_id(_: DeviceId) -> Self {
        CaptureDevice
    }

    fn to_id(&self) -> DeviceId {
        // A type id no real runtime uses, so the device registry never mixes them up.
        DeviceId::new(0x7475, 0)
    }
}

impl Runtime for CudaSourceRuntime {
    type Compiler = CudaCompiler;
    type Server = CaptureServer;
    type Device = CaptureDevice;

    fn client(device: &Self::Device) -> ComputeClient<Self> {
        ComputeClient::load(device)
    }

    fn name(_: &ComputeClient<Self>) -> &'static str {
        "cuda-source"
    }

    fn require_array_lengths() -> bool {
        cubecl::cuda::CudaRuntime::require_array_lengths()
    }

    fn max_cube_count() -> (u32, u32, u32) {
        cubecl::cuda::CudaRuntime::max_cube_count()
    }

    fn can_read_tensor(shape: &Shape, strides: &Strides) -> bool {
        cubecl::cuda::CudaRuntime::can_read_tensor(shape, strides)
    }

    fn target_properties() -> TargetProperties {
        cubecl::cuda::CudaRuntime::target_properties()
    }

    fn enumerate_devices(_: u16, _: &()) -> Vec<DeviceId> {
        vec![CaptureDevice.to_id()]
    }
}

/// Compiles launched kernels to CUDA C++ and records them.
#[derive(Debug)]
pub struct CaptureServer {
    options: CompilationOptions,
    utilities: Arc<ServerUtilities<Self>>,
    logger: Arc<ServerLogger>,
}

impl ServerCommunication for CaptureServer {
    const SERVER_COMM_ENABLED: bool = false;
}

/// What `cubecl_cuda` registers for compute capability 9.0 (see the module comment).
fn sm90_properties() -> (DeviceProperties, CompilationOptions) {
    let arch = CudaArchitecture { version: CUDA_ARCH };
    let mem = MemoryDeviceProperties {
        max_page_size: 80 << 30,
        alignment: 512,
    };
    let hardware = HardwareProperties {
        load_width: 128,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: 1024,
        max_shared_memory_size: 232_448,
        max_cube_count: (i32::MAX as u32, u16::MAX as u32, u16::MAX as u32),
        max_units_per_cube: 1024,
        max_cube_dim: (1024, 1024, 64),
        num_streaming_multiprocessors: Some(132),
        num_tensor_cores: Some(4),
        min_tensor_cores_dim: Some(8),
        num_cpu_cores: None,
        max_vector_size: VectorSize::MAX,
    };
    let mut props = DeviceProperties::new(Default::default(), mem, hardware, TimingMethod::System);
    cubecl_cpp::register_supported_types(&mut props);
    props.register_type_usage(ElemType::Float(FloatKind::TF32), TypeUsage::Conversion);
    let atomic = |kind, vector| {
        Type::new(StorageType::Atomic(ElemType::Float(kind))).with_vector_size(vector)
    };
    let add = AtomicUsage::Add | AtomicUsage::LoadStore;
    props.register_atomic_type_usage(atomic(FloatKind::F64, 1), add);
    props.register_atomic_type_usage(atomic(FloatKind::F16, 1), add);
    props.register_atomic_type_usage(atomic(FloatKind::F16, 2), add);
    props.register_atomic_type_usage(atomic(FloatKind::F32, 2), add);
    props.register_atomic_type_usage(atomic(FloatKind::F32, 4), add);
    props.features.plane.insert(Plane::Sync);
    props.features.plane.insert(Plane::Ops);
    props.features.plane.insert(Plane::NonUniformControlFlow);
    for kind in [FloatKind::F16, FloatKind::BF16] {
        props
            .features
            .matmul
            .ldmatrix
            .insert(ElemType::Float(kind).into());
        props
            .features
            .matmul
            .stmatrix
            .insert(ElemType::Float(kind).into());
    }
    for kind in [FloatKind::E4M3, FloatKind::E5M2] {
        props.register_type_usage(
            ElemType::Float(kind),
            TypeUsage::Conversion | TypeUsage::Buffer,
        );
    }
    props.features.copy_async = true;
    props.features.tma.insert(Tma::Base);
    props.features.cube_cluster = true;
    props.features.memory_reinterpret = true;
    props.features.alignment = true;
    register_wmma_features(
        CudaWmmaCompiler::supported_wmma_combinations(&arch),
        &mut props,
    );
    register_mma_features(
        CudaWmmaCompiler::supported_mma_combinations(&arch),
        &mut props,
    );
    let options = CompilationOptions {
        warp_size: 32,
        supports_features: CppSupportedFeatures {
            grid_constants: true,
            clusters: true,
            fast_math: true,
            fast_tanh: false,
            elect_sync: true,
        },
    };
    (props, options)
}

impl DeviceService for CaptureServer {
    fn init(_: DeviceId) -> Self {
        let (props, options) = sm90_properties();
        let logger = Arc::new(ServerLogger::default());
        let policy = ContiguousMemoryLayoutPolicy::new(props.memory.alignment as usize);
        let utilities = Arc::new(ServerUtilities::new(props, logger.clone(), (), policy));
        CaptureServer {
            options,
            utilities,
            logger,
        }
    }

    fn utilities(&self) -> ServerUtilitiesHandle {
        self.utilities.clone() as ServerUtilitiesHandle
    }
}

fn unsupported() -> ServerError {
    ServerError::Io(IoError::UnsupportedIoOperation {
        backtrace: cubecl::backtrace::BackTrace::capture(),
    })
}

impl ComputeServer for CaptureServer {
    type Kernel = Box<dyn CubeTask<CudaCompiler>>;
    type Info = ();
    type MemoryLayoutPolicy = ContiguousMemoryLayoutPolicy;
    type Storage = BytesStorage;

    fn initialize_memory(&mut self, _: ManagedMemoryHandle, _: u64, _: StreamId) {}

    fn logger(&self) -> Arc<ServerLogger> {
        self.logger.clone()
    }

    fn utilities(&self) -> Arc<ServerUtilities<Self>> {
        self.utilities.clone()
    }

    fn read(
        &mut self,
        _: Vec<CopyDescriptor>,
        _: StreamId,
    ) -> DynFut<Result<Vec<cubecl::bytes::Bytes>, ServerError>> {
        Box::pin(async { Err(unsupported()) })
    }

    fn write(&mut self, _: Vec<(CopyDescriptor, cubecl::bytes::Bytes)>, _: StreamId) {}

    fn sync(&mut self, _: StreamId) -> DynFut<Result<(), ServerError>> {
        Box::pin(async { Ok(()) })
    }

    fn get_resource(
        &mut self,
        _: Binding,
        _: StreamId,
    ) -> Result<
        ManagedResource<<BytesStorage as cubecl_runtime::storage::ComputeStorage>::Resource>,
        ServerError,
    > {
        Err(unsupported())
    }

    unsafe fn launch(
        &mut self,
        kernel: Self::Kernel,
        _: CubeCount,
        _: KernelArguments,
        mode: ExecutionMode,
        _: StreamId,
    ) {
        let id = format!("{:?}", kernel.id());
        let compiled = kernel.compile(
            &mut CudaCompiler::default(),
            &self.options,
            mode,
            kernel.address_type(),
        );
        let entry = match compiled {
            Ok(k) => CudaKernelSource {
                entrypoint: k.entrypoint_name,
                defined_by: k.debug_name.unwrap_or("").to_string(),
                source: k.source,
            },
            // Recorded as a source that cannot compile, so the NVRTC check reports it.
            Err(e) => CudaKernelSource {
                entrypoint: kernel.name().to_string(),
                defined_by: kernel.name().to_string(),
                source: format!("#error CubeCL could not generate CUDA C++: {e:?}\n"),
            },
        };
        CAPTURED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id)
            .or_insert(entry);
    }

    fn flush(&mut self, _: StreamId) -> Result<(), ServerError> {
        Ok(())
    }

    fn memory_usage(&mut self, _: StreamId) -> Result<MemoryUsage, ServerError> {
        Err(unsupported())
    }

    fn memory_cleanup(&mut self, _: StreamId) {}

    fn start_profile(&mut self, _: StreamId) -> Result<ProfilingToken, ServerError> {
        Err(unsupported())
    }

    fn end_profile(
        &mut self,
        _: StreamId,
        _: ProfilingToken,
    ) -> Result<ProfileDuration, ProfileError> {
        Err(ProfileError::NotRegistered {
            backtrace: cubecl::backtrace::BackTrace::capture(),
        })
    }

    fn allocation_mode(&mut self, _: MemoryAllocationMode, _: StreamId) {}
}

/// Compiles one kernel's CUDA C++ to PTX for `sm_{arch}a` with NVRTC, with the options CubeCL's
/// CUDA runtime uses, plus `include_dirs` (the CUDA runtime and CCCL headers). NVRTC must be
/// loadable (`libnvrtc.so.12` on the library path, or already loaded by the caller).
pub fn nvrtc_compile(
    source: &str,
    arch: u32,
    include_dirs: &[std::path::PathBuf],
) -> std::result::Result<String, String> {
    use std::ffi::{CStr, CString};
    let mut options = vec![
        format!("--gpu-architecture=sm_{arch}a"),
        "-lineinfo".to_string(),
    ];
    for dir in include_dirs {
        options.push(format!("--include-path={}", dir.display()));
    }
    let src = CString::new(source).map_err(|e| format!("source has a NUL byte: {e}"))?;
    let program = cudarc::nvrtc::result::create_program(&src, None)
        .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    // SAFETY: `program` was just created; it is destroyed below on every path.
    unsafe {
        let compiled = cudarc::nvrtc::result::compile_program(program, &options);
        let result = match compiled {
            Ok(()) => cudarc::nvrtc::result::get_ptx(program)
                .map(|ptx| {
                    let bytes: Vec<u8> = ptx.iter().map(|&c| c as u8).collect();
                    CStr::from_bytes_until_nul(&bytes)
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .map_err(|e| format!("nvrtcGetPTX: {e:?}")),
            Err(e) => {
                let log = cudarc::nvrtc::result::get_program_log(program)
                    .map(|l| {
                        let bytes: Vec<u8> = l.iter().map(|&c| c as u8).collect();
                        String::from_utf8_lossy(&bytes)
                            .trim_end_matches('\0')
                            .to_string()
                    })
                    .unwrap_or_default();
                Err(format!("{e:?}\n{log}"))
            }
        };
        let _ = cudarc::nvrtc::result::destroy_program(program);
        result
    }
}
