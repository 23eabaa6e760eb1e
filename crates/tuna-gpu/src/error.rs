//! The crate's one error type.

/// What can go wrong when finding, opening or using a GPU.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No device with this index (`gpu:N`); `available` says how many there are.
    #[error("no GPU `gpu:{index}`: {available} GPU(s) found (run `tuna devices` to list them)")]
    NoSuchDevice { index: usize, available: usize },

    /// The CUDA driver (`libcuda.so`) or NVRTC could not be loaded or initialised.
    #[error("CUDA is not usable on this machine: {0}")]
    CudaUnavailable(String),

    /// No Vulkan adapter matched (e.g. Mesa's lavapipe is not installed).
    #[error(
        "no Vulkan adapter found{0} (install Mesa's `mesa-vulkan-drivers` for the software one)"
    )]
    NoVulkanAdapter(String),

    /// The Vulkan device could not be created on an adapter that exists.
    #[error("cannot open the Vulkan device `{adapter}`: {reason}")]
    VulkanDevice { adapter: String, reason: String },

    /// A kernel needs a feature the device lacks (e.g. plane/subgroup operations).
    #[error("the device does not support {0}")]
    Unsupported(String),

    /// A kernel failed to compile or run (reported when the device is next synchronised).
    #[error("a GPU kernel failed: {0}")]
    Device(String),

    /// A device-to-host read failed.
    #[error("reading a buffer back from the device failed: {0}")]
    Read(String),

    /// cubek-matmul refused the problem.
    #[error("matmul ({m}x{k} · {k}x{n}) could not be launched: {reason}")]
    Matmul {
        m: usize,
        k: usize,
        n: usize,
        reason: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;
