//! Borrowed views of weight matrices in their checkpoint dtype.

use half::{bf16, f16};

/// Element type of a stored weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        }
    }
}

/// A weight tensor as stored (row-major), widened to `f32` by the kernels that read it.
#[derive(Debug, Clone, Copy)]
pub enum WeightRef<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> WeightRef<'a> {
    pub fn len(&self) -> usize {
        match self {
            WeightRef::F32(w) => w.len(),
            WeightRef::BF16(w) => w.len(),
            WeightRef::F16(w) => w.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> DType {
        match self {
            WeightRef::F32(_) => DType::F32,
            WeightRef::BF16(_) => DType::BF16,
            WeightRef::F16(_) => DType::F16,
        }
    }

    /// The sub-range `range` of the flat weight (e.g. a block of rows).
    pub fn slice(&self, range: std::ops::Range<usize>) -> WeightRef<'a> {
        match *self {
            WeightRef::F32(w) => WeightRef::F32(&w[range]),
            WeightRef::BF16(w) => WeightRef::BF16(&w[range]),
            WeightRef::F16(w) => WeightRef::F16(&w[range]),
        }
    }

    /// Writes the elements widened to `f32` into `out` (same length).
    pub fn widen_into(&self, out: &mut [f32]) {
        debug_assert_eq!(out.len(), self.len());
        match self {
            WeightRef::F32(w) => out.copy_from_slice(w),
            WeightRef::BF16(w) => {
                for (o, x) in out.iter_mut().zip(w.iter()) {
                    *o = x.to_f32();
                }
            }
            WeightRef::F16(w) => {
                for (o, x) in out.iter_mut().zip(w.iter()) {
                    *o = x.to_f32();
                }
            }
        }
    }

    /// The elements widened to `f32`, as a new buffer.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        self.widen_into(&mut out);
        out
    }
}
