//! The compute choices of the cluster (`tuna.compute`): which kinds of slot the live workers
//! offer (every `tuna serve` node with slots, every `tuna worker` node), how many of each are
//! free, and the training speed each kind is estimated at.
//!
//! Speeds: a CPU choice uses the throughput table's `cpu` row, seeded from the parameter count
//! until a job of the shape finished. A GPU choice uses only rows measured on the offered GPUs
//! (`gpu/<adapter name>`, written by finished jobs); there is no first guess for GPUs, so until
//! one was measured the estimate says so (`throughput_source: "none"`, no duration).

use std::collections::BTreeMap;

use tuna_model::QwenConfig;

use crate::estimate;
use crate::spec::Compute;
use crate::state::AppState;
use crate::store::{GpuSlot, StoreResult, ThroughputRow, WorkerRow};

/// A worker counts as live while its heartbeat is younger than this many leases.
const LIVE_LEASES: f64 = 3.0;

/// The slots of one kind over every live worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Offer {
    pub total: usize,
    /// `cpu:0 on box-a`, `gpu:0 on box-b: NVIDIA H200, 139.0 GiB`.
    pub devices: Vec<String>,
    /// The throughput-table device kinds of the slots (`cpu`, `gpu/NVIDIA H200`), deduplicated.
    pub kinds: Vec<String>,
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// How a GPU slot is listed.
pub fn describe_gpu(slot: &str, worker: &str, gpu: &GpuSlot) -> String {
    let memory = gpu.memory_bytes.map(|m| format!(", {}", gib(m)));
    let software = if gpu.software {
        ", software Vulkan: runs on the CPU"
    } else {
        ""
    };
    format!(
        "{slot} on {worker}: {}{}{software}",
        gpu.name,
        memory.unwrap_or_default()
    )
}

/// Adds one worker's slots to `offers`.
fn add_worker(offers: &mut BTreeMap<Compute, Offer>, w: &WorkerRow) {
    for slot in w
        .devices
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        let Some(kind) = Compute::of_slot(slot) else {
            continue;
        };
        let offer = offers.entry(kind).or_default();
        offer.total += 1;
        let (label, device_kind) = match (kind, w.device_info.as_ref().and_then(|i| i.get(slot))) {
            (Compute::Gpu, Some(gpu)) => (
                describe_gpu(slot, &w.name, gpu),
                format!("gpu/{}", gpu.name),
            ),
            (Compute::Gpu, None) => (format!("{slot} on {}", w.name), "gpu".to_string()),
            (Compute::Cpu, _) => (format!("{slot} on {}", w.name), "cpu".to_string()),
        };
        offer.devices.push(label);
        if !offer.kinds.contains(&device_kind) {
            offer.kinds.push(device_kind);
        }
    }
}

/// The slots the cluster offers now, by kind: live workers of the store, with this node's own
/// slots as they are (also before its first heartbeat was written).
pub async fn offers(state: &AppState) -> StoreResult<BTreeMap<Compute, Offer>> {
    let now = crate::ids::now_f64();
    let oldest = now - LIVE_LEASES * state.settings.lease.as_secs_f64();
    let own_name = &state.settings.worker_name;
    let mut offers = BTreeMap::new();
    for w in state.store.list_workers().await? {
        if w.worker.name != *own_name && w.worker.last_heartbeat >= oldest {
            add_worker(&mut offers, &w.worker);
        }
    }
    let own = state.scheduler.devices();
    if !own.is_empty() {
        add_worker(
            &mut offers,
            &WorkerRow {
                name: own_name.clone(),
                devices: own.join(","),
                memory_bytes: None,
                started_at: 0,
                last_heartbeat: now,
                device_info: state.scheduler.gpu_info(),
            },
        );
    }
    Ok(offers)
}

/// The speed a job of `shape` and `method` is estimated at on `compute`, given the slots
/// offered: the CPU's row (seeded when never measured), or the slowest GPU kind offered that
/// was measured; `None` when no offered GPU was measured.
pub async fn speed(
    state: &AppState,
    compute: Compute,
    offer: Option<&Offer>,
    shape: &str,
    method: &str,
    cfg: &QwenConfig,
) -> StoreResult<Option<ThroughputRow>> {
    match compute {
        Compute::Cpu => estimate::throughput(
            &*state.store,
            shape,
            "cpu",
            method,
            cfg,
            state.settings.cpu_gflops,
        )
        .await
        .map(Some),
        Compute::Gpu => {
            let mut slowest: Option<ThroughputRow> = None;
            for kind in offer.map(|o| o.kinds.as_slice()).unwrap_or_default() {
                let Some(row) = state.store.get_throughput(shape, kind, method).await? else {
                    continue;
                };
                if row.source == "measured"
                    && slowest
                        .as_ref()
                        .is_none_or(|s| row.tokens_per_second < s.tokens_per_second)
                {
                    slowest = Some(row);
                }
            }
            Ok(slowest)
        }
    }
}

/// Why `compute` cannot take a job now (`None`: it can).
pub fn unavailable(
    compute: Compute,
    offers: &BTreeMap<Compute, Offer>,
    dpo: bool,
) -> Option<String> {
    match compute {
        Compute::Gpu if dpo => {
            Some("DPO trains on CPUs only for now: choose `tuna.compute` `cpu`".into())
        }
        Compute::Gpu if offers.get(&Compute::Gpu).is_none_or(|o| o.total == 0) => {
            let cpus = offers.get(&Compute::Cpu).map_or(0, |o| o.total);
            Some(format!(
                "no live worker offers a GPU (the cluster has {cpus} CPU slots); start a worker on a GPU machine (`tuna worker`), or choose `tuna.compute` `cpu`"
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_slots_add_up_by_kind_with_their_gpus_named() {
        let mut info = BTreeMap::new();
        info.insert(
            "gpu:0".to_string(),
            GpuSlot {
                name: "NVIDIA H200".into(),
                backend: "cuda".into(),
                memory_bytes: Some(141 << 30),
                software: false,
            },
        );
        let w = |name: &str, devices: &str, info: Option<BTreeMap<String, GpuSlot>>| WorkerRow {
            name: name.into(),
            devices: devices.into(),
            memory_bytes: None,
            started_at: 0,
            last_heartbeat: 0.0,
            device_info: info,
        };
        let mut offers = BTreeMap::new();
        add_worker(&mut offers, &w("a", "cpu:0,cpu:1", None));
        add_worker(&mut offers, &w("b", "cpu:0,gpu:0", Some(info)));
        let cpu = &offers[&Compute::Cpu];
        assert_eq!(
            (cpu.total, cpu.kinds.as_slice()),
            (3, ["cpu".to_string()].as_slice())
        );
        let gpu = &offers[&Compute::Gpu];
        assert_eq!(gpu.total, 1);
        assert_eq!(gpu.devices, ["gpu:0 on b: NVIDIA H200, 141.0 GiB"]);
        assert_eq!(gpu.kinds, ["gpu/NVIDIA H200"]);
        assert_eq!(unavailable(Compute::Gpu, &offers, false), None);
        assert!(
            unavailable(Compute::Gpu, &offers, true)
                .unwrap()
                .contains("DPO")
        );
        offers.remove(&Compute::Gpu);
        let why = unavailable(Compute::Gpu, &offers, false).unwrap();
        assert!(
            why.contains("no live worker offers a GPU") && why.contains("3 CPU slots"),
            "{why}"
        );
        assert_eq!(unavailable(Compute::Cpu, &offers, false), None);
    }
}
