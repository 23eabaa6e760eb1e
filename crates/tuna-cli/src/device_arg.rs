//! `--device cpu|gpu|gpu:N`: where a command's model runs — training passes, generation —
//! (`tuna devices` lists the GPUs by these numbers).

use std::fmt;
use std::str::FromStr;

use anyhow::Context;
use tuna_model::generate::{CpuDecoder, Decoder};
use tuna_model::{LoraAdapter, QwenModel};
use tuna_train::Trainer;

/// A device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceArg {
    /// The CPU engine.
    #[default]
    Cpu,
    /// `gpu:N` as `tuna devices` numbers them (`gpu` is `gpu:0`).
    Gpu(usize),
}

impl FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("`{s}` is not a device: use cpu, gpu or gpu:N (`tuna devices` lists them)");
        match s.trim() {
            "cpu" => Ok(DeviceArg::Cpu),
            "gpu" => Ok(DeviceArg::Gpu(0)),
            other => other
                .strip_prefix("gpu:")
                .and_then(|n| n.parse().ok())
                .map(DeviceArg::Gpu)
                .ok_or_else(bad),
        }
    }
}

impl fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceArg::Cpu => f.write_str("cpu"),
            DeviceArg::Gpu(n) => write!(f, "gpu:{n}"),
        }
    }
}

impl DeviceArg {
    /// Moves `trainer`'s forward and backward passes to this device (nothing to do for the CPU).
    pub fn apply(self, trainer: &mut Trainer) -> anyhow::Result<()> {
        let DeviceArg::Gpu(index) = self else {
            return Ok(());
        };
        let device = tuna_gpu::train_device(index, trainer.model(), trainer.adapter())
            .with_context(|| opening(index))?;
        trainer
            .set_device(device)
            .context("moving training to the device")?;
        Ok(())
    }

    /// Generation with `model` (and `adapter`) on this device: the CPU engine, or the weights
    /// uploaded to the GPU (f32) with the key/value cache there.
    pub fn decoder<'a>(
        self,
        model: &'a QwenModel,
        adapter: Option<&'a LoraAdapter>,
    ) -> anyhow::Result<Box<dyn Decoder + 'a>> {
        let DeviceArg::Gpu(index) = self else {
            return Ok(Box::new(CpuDecoder::new(model, adapter)));
        };
        let (decoder, label) =
            tuna_gpu::gpu_decoder(index, model, adapter).with_context(|| opening(index))?;
        tracing::info!(device = %label, "generating on the device");
        Ok(decoder)
    }
}

/// The context of an error opening `gpu:index`.
fn opening(index: usize) -> String {
    format!("opening gpu:{index}\n---> HINT: `tuna devices` lists the GPUs this machine has")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_gpu_and_gpu_n() {
        assert_eq!("cpu".parse(), Ok(DeviceArg::Cpu));
        assert_eq!("gpu".parse(), Ok(DeviceArg::Gpu(0)));
        assert_eq!("gpu:3".parse(), Ok(DeviceArg::Gpu(3)));
        for bad in ["gpu:", "gpu:x", "cuda", "gpu:-1", ""] {
            let err = bad.parse::<DeviceArg>().unwrap_err();
            assert!(err.contains("not a device"), "{bad}: {err}");
        }
        assert_eq!(DeviceArg::Gpu(2).to_string(), "gpu:2");
    }
}
