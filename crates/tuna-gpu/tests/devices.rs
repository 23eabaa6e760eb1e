//! Device discovery and opening: a missing driver is an error value, never a panic.

use tuna_gpu::Error;
use tuna_gpu::devices::{AnyGpu, Backend, discover, open, open_cuda};

#[test]
fn cuda_is_opened_or_reported_never_a_panic() {
    // CI has no NVIDIA driver: CubeCL's CUDA runtime would panic on first use, Tuna reports it.
    // On a machine with a GPU the same test runs a kernel on it instead.
    match open_cuda(0) {
        Ok(gpu) => {
            let x = gpu.upload(&[1.0f32, -2.0, 3.0]);
            tuna_gpu::ops::elementwise::scale_in_place(&gpu, &x, 2.0);
            assert_eq!(gpu.download(&x).unwrap(), vec![2.0, -4.0, 6.0]);
        }
        Err(e) => {
            println!("{e}");
            assert!(
                matches!(e, Error::CudaUnavailable(_) | Error::NoSuchDevice { .. }),
                "{e:?}"
            );
        }
    }
}

#[test]
fn discovery_numbers_devices_and_lists_lavapipe_as_software() {
    let found = discover();
    for (i, g) in found.gpus.iter().enumerate() {
        assert_eq!(g.index, i, "gpu:N numbering");
        println!(
            "gpu:{i} {} {:?} software={} {:?}",
            g.name, g.backend, g.software, g.memory_bytes
        );
    }
    let soft = found
        .gpus
        .iter()
        .find(|g| g.software)
        .expect("lavapipe (scripts/test.sh installs mesa-vulkan-drivers)");
    assert_eq!(soft.backend, Backend::Vulkan);
    assert!(soft.name.contains("llvmpipe"), "{}", soft.name);
    assert!(soft.memory_bytes.unwrap_or(0) > 0);
    // Every backend either found devices or says why not.
    if !found.gpus.iter().any(|g| g.backend == Backend::Cuda) {
        assert!(
            found.notes.iter().any(|n| n.contains("CUDA")),
            "{:?}",
            found.notes
        );
    }

    // gpu:N opens what discovery listed; past the end is a clear error.
    match open(soft.index).expect("open the software device") {
        AnyGpu::Vulkan(gpu) => assert_eq!(gpu.name(), soft.name),
        AnyGpu::Cuda(_) => panic!("gpu:{} is a Vulkan device", soft.index),
    }
    let past = found.gpus.len();
    match open(past) {
        Err(Error::NoSuchDevice { index, available }) => {
            assert_eq!((index, available), (past, past));
        }
        other => panic!("gpu:{past}: {other:?}"),
    }
}
