//! Finding and opening GPUs, without panicking when a driver is missing.
//!
//! `gpu:N` numbers CUDA devices first (in driver order), then Vulkan adapters that are not the
//! same NVIDIA cards again (Mesa's lavapipe, AMD, Intel). A Vulkan adapter that runs on the CPU
//! (lavapipe shows as `llvmpipe`) is listed and marked `software`.

use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::prelude::*;
use cubecl::wgpu::{RuntimeOptions, WgpuRuntime, WgpuSetup};

use crate::error::{Error, Result};
use crate::runtime::Gpu;

/// Which CubeCL runtime drives a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Cuda,
    Vulkan,
}

/// One device found on this machine.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    /// The `N` of `gpu:N`.
    pub index: usize,
    pub backend: Backend,
    pub name: String,
    /// Device memory in bytes (for a software adapter: the host memory it reports).
    pub memory_bytes: Option<u64>,
    /// A CPU implementation of the API (lavapipe/llvmpipe, SwiftShader): fine for checking
    /// kernels, far too slow to train on.
    pub software: bool,
    /// Driver and compute capability or driver string.
    pub driver: String,
    /// The CUDA ordinal or the position among the enumerated Vulkan adapters.
    native_index: usize,
}

/// Everything `discover` found, with a line for each backend that could not be queried.
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    pub gpus: Vec<GpuInfo>,
    pub notes: Vec<String>,
}

/// NVIDIA's PCI vendor id.
const NVIDIA_VENDOR: u32 = 0x10de;

/// Lists the GPUs of this machine.
pub fn discover() -> Discovery {
    let mut found = Discovery::default();
    match cuda_devices() {
        Ok(devs) => found.gpus.extend(devs),
        Err(e) => found.notes.push(e.to_string()),
    }
    let has_cuda = !found.gpus.is_empty();
    let adapters = vulkan_adapters();
    if adapters.is_empty() {
        found
            .notes
            .push(Error::NoVulkanAdapter(String::new()).to_string());
    }
    for (native_index, adapter) in adapters.iter().enumerate() {
        let info = adapter.get_info();
        if has_cuda && info.vendor == NVIDIA_VENDOR {
            continue;
        }
        found.gpus.push(GpuInfo {
            index: found.gpus.len(),
            backend: Backend::Vulkan,
            name: info.name.clone(),
            memory_bytes: vulkan_memory(adapter),
            software: info.device_type == wgpu::DeviceType::Cpu,
            driver: format!("Vulkan, {} {}", info.driver, info.driver_info)
                .trim_end()
                .to_string(),
            native_index,
        });
    }
    found
}

/// An opened device of either backend.
#[derive(Debug, Clone)]
pub enum AnyGpu {
    Cuda(Gpu<CudaRuntime>),
    Vulkan(Gpu<WgpuRuntime>),
}

/// Opens `gpu:index` as numbered by [`discover`].
pub fn open(index: usize) -> Result<AnyGpu> {
    let found = discover();
    let info = found.gpus.get(index).ok_or(Error::NoSuchDevice {
        index,
        available: found.gpus.len(),
    })?;
    match info.backend {
        Backend::Cuda => open_cuda(info.native_index).map(AnyGpu::Cuda),
        Backend::Vulkan => open_vulkan_adapter(info.native_index).map(AnyGpu::Vulkan),
    }
}

/// Opens the first software Vulkan adapter (lavapipe in CI). An error, never a skip, when
/// there is none: the kernel tests must run on every CI machine.
pub fn open_software_vulkan() -> Result<Gpu<WgpuRuntime>> {
    let adapters = vulkan_adapters();
    let position = adapters
        .iter()
        .position(|a| a.get_info().device_type == wgpu::DeviceType::Cpu)
        .ok_or_else(|| {
            let names: Vec<String> = adapters.iter().map(|a| a.get_info().name).collect();
            Error::NoVulkanAdapter(format!(
                " that runs on the CPU (adapters present: {names:?})"
            ))
        })?;
    open_vulkan_adapter(position)
}

fn vulkan_instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::VULKAN,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    })
}

fn vulkan_adapters() -> Vec<wgpu::Adapter> {
    let instance = vulkan_instance();
    cubecl::future::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN))
}

/// Sum of the device-local memory heaps, read through wgpu's Vulkan HAL.
fn vulkan_memory(adapter: &wgpu::Adapter) -> Option<u64> {
    // SAFETY: the HAL adapter is only used to read properties while `adapter` is alive.
    let hal = unsafe { adapter.as_hal::<wgpu::hal::api::Vulkan>() }?;
    let instance = hal.shared_instance().raw_instance();
    // SAFETY: the physical device handle belongs to this instance.
    let props =
        unsafe { instance.get_physical_device_memory_properties(hal.raw_physical_device()) };
    // VK_MEMORY_HEAP_DEVICE_LOCAL_BIT = 0x1.
    let total = props.memory_heaps[..props.memory_heap_count as usize]
        .iter()
        .filter(|heap| heap.flags.as_raw() & 1 != 0)
        .map(|heap| heap.size)
        .sum();
    Some(total)
}

/// Opens the Vulkan adapter at `position` in enumeration order, requesting the device the way
/// CubeCL's own WGSL backend does (all adapter features, the adapter's limits).
fn open_vulkan_adapter(position: usize) -> Result<Gpu<WgpuRuntime>> {
    let instance = vulkan_instance();
    let mut adapters =
        cubecl::future::block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN));
    if position >= adapters.len() {
        return Err(Error::NoVulkanAdapter(format!(" at position {position}")));
    }
    let adapter = adapters.swap_remove(position);
    let name = adapter.get_info().name;
    let request = adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("tuna"),
        required_features: adapter
            .features()
            .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
        required_limits: adapter.limits(),
        memory_hints: wgpu::MemoryHints::MemoryUsage,
        trace: wgpu::Trace::Off,
        // SAFETY: as CubeCL's WGSL backend: experimental features are only enabled, not used
        // by Tuna's kernels beyond what CubeCL emits.
        experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
    });
    let (device, queue) = cubecl::future::block_on(request).map_err(|e| Error::VulkanDevice {
        adapter: name.clone(),
        reason: e.to_string(),
    })?;
    let setup = WgpuSetup {
        instance,
        adapter,
        device,
        queue,
        backend: wgpu::Backend::Vulkan,
    };
    let device = cubecl::wgpu::init_device(setup, RuntimeOptions::default());
    Ok(Gpu::from_client(WgpuRuntime::client(&device), name))
}

/// Loads the CUDA driver and NVRTC, or says why not. CubeCL's CUDA runtime unwraps these
/// calls when its server starts, so they are checked here first.
fn cuda_driver() -> Result<usize> {
    // SAFETY: only tries to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::CudaUnavailable(
            "the NVIDIA driver library (libcuda.so) is not installed".into(),
        ));
    }
    cudarc::driver::result::init()
        .map_err(|e| Error::CudaUnavailable(format!("cuInit failed: {e:?}")))?;
    let count = cudarc::driver::result::device::get_count()
        .map_err(|e| Error::CudaUnavailable(format!("cuDeviceGetCount failed: {e:?}")))?;
    Ok(count.max(0) as usize)
}

fn cuda_devices() -> Result<Vec<GpuInfo>> {
    let count = cuda_driver()?;
    let mut out = Vec::with_capacity(count);
    for ordinal in 0..count {
        let dev = cudarc::driver::result::device::get(ordinal as i32)
            .map_err(|e| Error::CudaUnavailable(format!("device {ordinal}: {e:?}")))?;
        let name = cudarc::driver::result::device::get_name(dev)
            .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        // SAFETY: `dev` is a valid device handle from `device::get`.
        let memory = unsafe { cudarc::driver::result::device::total_mem(dev) }
            .ok()
            .map(|b| b as u64);
        let cc = |attr| {
            // SAFETY: reads a device attribute of a valid device handle.
            unsafe { cudarc::driver::result::device::get_attribute(dev, attr) }.unwrap_or(0)
        };
        use cudarc::driver::sys::CUdevice_attribute::*;
        let (major, minor) = (
            cc(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            cc(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
        );
        out.push(GpuInfo {
            index: ordinal,
            backend: Backend::Cuda,
            name,
            memory_bytes: memory,
            software: false,
            driver: format!("CUDA, compute capability {major}.{minor}"),
            native_index: ordinal,
        });
    }
    Ok(out)
}

/// Opens CUDA device `ordinal`.
pub fn open_cuda(ordinal: usize) -> Result<Gpu<CudaRuntime>> {
    let count = cuda_driver()?;
    if ordinal >= count {
        return Err(Error::NoSuchDevice {
            index: ordinal,
            available: count,
        });
    }
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(Error::CudaUnavailable(
            "NVRTC (libnvrtc.so) is not installed; kernels are compiled at run time".into(),
        ));
    }
    // CubeCL compiles with `--include-path=$CUDA_PATH/include` and panics without a toolkit.
    if cubecl::cuda::install::cuda_path().is_none() {
        return Err(Error::CudaUnavailable(
            "no CUDA headers: install the CUDA toolkit or set CUDA_PATH".into(),
        ));
    }
    let dev = cudarc::driver::result::device::get(ordinal as i32)
        .map_err(|e| Error::CudaUnavailable(format!("device {ordinal}: {e:?}")))?;
    let name = cudarc::driver::result::device::get_name(dev)
        .unwrap_or_else(|_| format!("CUDA device {ordinal}"));
    let client = CudaRuntime::client(&CudaDevice::new(ordinal));
    Ok(Gpu::from_client(client, name))
}
