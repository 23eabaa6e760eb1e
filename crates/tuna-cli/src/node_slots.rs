//! The slots a node offers (`tuna serve`'s local workers, `tuna worker` nodes): its CPU slots and
//! one slot per GPU `tuna devices` finds, and how a worker process opens its slot's device.
//!
//! The server crate does not link CubeCL: this binary finds the GPUs and hands the server their
//! descriptions (`Settings::gpus`), and installs the opener each job's worker process uses to move
//! training onto `gpu:N` (`tuna_server::worker::set_device_opener`).
//!
//! A software Vulkan adapter (Mesa's lavapipe, shown as `llvmpipe`) runs on the CPU, about 40×
//! slower than the CPU engine on the demo model: it is offered only when asked for
//! (`--software-gpus`, or by naming it in `--devices`), which is how the tests use it.

use std::collections::BTreeMap;

use anyhow::bail;
use tuna_gpu::devices::{Backend, GpuInfo, discover};
use tuna_server::store::GpuSlot;
use tuna_server::worker::OpenedDevice;
use tuna_train::Trainer;

use crate::device_arg::DeviceArg;

/// A node's slots by name, and what its GPU slots are.
#[derive(Debug, Default)]
pub struct NodeSlots {
    pub devices: Vec<String>,
    pub gpus: BTreeMap<String, GpuSlot>,
}

fn gpu_slot(g: &GpuInfo) -> GpuSlot {
    GpuSlot {
        name: g.name.clone(),
        backend: backend_name(g.backend).into(),
        memory_bytes: g.memory_bytes,
        software: g.software,
    }
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Cuda => "cuda",
        Backend::Vulkan => "vulkan",
    }
}

/// The slots of a node: `explicit` (`--devices cpu:0,gpu:0`) when given, else `cpu_slots` CPU
/// slots and, unless the node has none (an API-only node), every hardware GPU found (software
/// ones too with `software_gpus`).
pub fn node_slots(
    explicit: Option<&[String]>,
    cpu_slots: usize,
    software_gpus: bool,
) -> anyhow::Result<NodeSlots> {
    let mut slots = NodeSlots::default();
    let names: Vec<String> = explicit
        .unwrap_or_default()
        .iter()
        .map(|d| d.trim().to_string())
        .filter(|d| !d.is_empty())
        .collect();
    if explicit.is_some() {
        let wants_gpu = names.iter().any(|n| n.starts_with("gpu"));
        let found = if wants_gpu {
            discover().gpus
        } else {
            Vec::new()
        };
        for name in names {
            if name
                .strip_prefix("cpu:")
                .is_some_and(|n| n.parse::<usize>().is_ok())
            {
                slots.devices.push(name);
                continue;
            }
            let Ok(DeviceArg::Gpu(gpu)) = name.parse::<DeviceArg>() else {
                bail!("--devices: `{name}` is not a slot: use cpu:N or gpu:N");
            };
            let Some(g) = found.get(gpu) else {
                bail!(
                    "--devices: there is no gpu:{gpu} on this machine ({} found)\n---> HINT: `tuna devices` lists them",
                    found.len()
                );
            };
            if g.software {
                eprintln!(
                    "note: gpu:{gpu} ({}) is a software Vulkan device: it trains on the CPU, far slower than a CPU slot",
                    g.name
                );
            }
            let slot = format!("gpu:{gpu}");
            slots.gpus.insert(slot.clone(), gpu_slot(g));
            slots.devices.push(slot);
        }
        if slots.devices.is_empty() {
            bail!("--devices: name at least one slot (cpu:0, gpu:0)");
        }
        return Ok(slots);
    }
    slots.devices = (0..cpu_slots).map(|i| format!("cpu:{i}")).collect();
    if cpu_slots == 0 {
        return Ok(slots);
    }
    for g in discover().gpus {
        if g.software && !software_gpus {
            tracing::info!(
                "gpu:{} ({}) is a software Vulkan device: not offered as a slot (--software-gpus offers it)",
                g.index,
                g.name
            );
            continue;
        }
        let slot = format!("gpu:{}", g.index);
        slots.gpus.insert(slot.clone(), gpu_slot(&g));
        slots.devices.push(slot);
    }
    Ok(slots)
}

/// The CPU's model name (/proc/cpuinfo), or the architecture.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// [`tuna_server::worker::DeviceOpener`]: moves the trainer to the slot's device.
pub fn open_slot(slot: &str, trainer: &mut Trainer) -> Result<OpenedDevice, String> {
    let device = match slot.split_once(':') {
        Some(("cpu", _)) => DeviceArg::Cpu,
        _ => slot.parse()?,
    };
    let DeviceArg::Gpu(index) = device else {
        return Ok(OpenedDevice {
            backend: "cpu".into(),
            name: cpu_model(),
            software: false,
        });
    };
    device
        .apply(trainer)
        .map_err(|e| format!("slot `{slot}`: {}", crate::error_chain(&e)))?;
    let info = discover().gpus.into_iter().nth(index);
    Ok(OpenedDevice {
        backend: info
            .as_ref()
            .map_or("gpu", |g| backend_name(g.backend))
            .into(),
        name: info
            .as_ref()
            .map_or_else(|| format!("gpu:{index}"), |g| g.name.clone()),
        software: info.is_some_and(|g| g.software),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_slots_are_checked_and_software_gpus_are_not_offered_by_default() {
        let named = |list: &[&str]| {
            let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            node_slots(Some(&list), 1, false)
        };
        let s = named(&["cpu:0", " cpu:1 "]).unwrap();
        assert_eq!(s.devices, ["cpu:0", "cpu:1"]);
        assert!(s.gpus.is_empty());
        for bad in ["tpu:0", "cpu:x", "gpu:x"] {
            let err = named(&[bad]).unwrap_err().to_string();
            assert!(err.contains("is not a slot"), "{bad}: {err}");
        }
        let err = named(&["gpu:99"]).unwrap_err().to_string();
        assert!(
            err.contains("there is no gpu:99") && err.contains("tuna devices"),
            "{err}"
        );
        assert!(named(&[]).is_err());
        // Found automatically: CPU slots, then only hardware GPUs unless software ones are asked for.
        let found = discover().gpus;
        let auto = node_slots(None, 2, false).unwrap();
        let hardware = found.iter().filter(|g| !g.software).count();
        assert_eq!(auto.devices.len(), 2 + hardware, "{:?}", auto.devices);
        assert!(auto.gpus.values().all(|g| !g.software));
        let with_software = node_slots(None, 2, true).unwrap();
        assert_eq!(with_software.devices.len(), 2 + found.len());
        // An API-only node offers nothing.
        assert!(node_slots(None, 0, true).unwrap().devices.is_empty());
    }
}
