//! Host tensors in their checkpoint dtype: owned, or borrowed zero-copy from a memory map.

use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
use tuna_engine::{DType, WeightRef};

/// Where a tensor's elements live.
#[derive(Debug, Clone)]
enum Bytes {
    /// Typed storage, so the allocation is aligned for its elements.
    OwnedF32(Arc<Vec<f32>>),
    OwnedHalf(Arc<Vec<u16>>),
    /// A byte range of a memory-mapped safetensors file, aligned for its dtype.
    Mapped {
        mmap: Arc<Mmap>,
        start: usize,
        end: usize,
    },
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::OwnedF32(v) => bytemuck::cast_slice(v),
            Bytes::OwnedHalf(v) => bytemuck::cast_slice(v),
            Bytes::Mapped { mmap, start, end } => &mmap[*start..*end],
        }
    }
}

/// A row-major tensor of f32, bf16 or f16 elements.
#[derive(Debug, Clone)]
pub struct Tensor {
    shape: Vec<usize>,
    dtype: DType,
    bytes: Bytes,
}

impl Tensor {
    pub fn from_f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor shape {shape:?} vs {} elements",
            data.len()
        );
        Tensor {
            shape,
            dtype: DType::F32,
            bytes: Bytes::OwnedF32(Arc::new(data)),
        }
    }

    pub fn from_bf16(shape: Vec<usize>, data: Vec<bf16>) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "tensor shape {shape:?} vs {} elements",
            data.len()
        );
        let bits = data.iter().map(|x| x.to_bits()).collect();
        Tensor {
            shape,
            dtype: DType::BF16,
            bytes: Bytes::OwnedHalf(Arc::new(bits)),
        }
    }

    /// Wraps `mmap[start..end]` without copying when it is aligned for `dtype`; copies otherwise.
    pub(crate) fn from_mapped(
        shape: Vec<usize>,
        dtype: DType,
        mmap: Arc<Mmap>,
        start: usize,
        end: usize,
    ) -> Self {
        let aligned = (mmap.as_ptr() as usize + start).is_multiple_of(dtype.size_in_bytes());
        let bytes = if aligned {
            Bytes::Mapped { mmap, start, end }
        } else {
            // Safetensors pads its header to 8 bytes, so this only happens with odd tensor offsets.
            copy_typed(&mmap[start..end], dtype)
        };
        Tensor {
            shape,
            dtype,
            bytes,
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Borrowed view for the kernels.
    pub fn weight(&self) -> WeightRef<'_> {
        let b = self.bytes.as_slice();
        match self.dtype {
            DType::F32 => WeightRef::F32(bytemuck::cast_slice::<u8, f32>(b)),
            DType::BF16 => WeightRef::BF16(bytemuck::cast_slice::<u8, bf16>(b)),
            DType::F16 => WeightRef::F16(bytemuck::cast_slice::<u8, f16>(b)),
        }
    }

    pub fn to_f32_vec(&self) -> Vec<f32> {
        self.weight().to_f32_vec()
    }

    /// The same values stored as another dtype (rounded to nearest when narrowing).
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype {
            return self.clone();
        }
        let values = self.to_f32_vec();
        match dtype {
            DType::F32 => Tensor::from_f32(self.shape.clone(), values),
            DType::BF16 => Tensor::from_bf16(
                self.shape.clone(),
                values.iter().map(|&x| bf16::from_f32(x)).collect(),
            ),
            DType::F16 => {
                let bits = values.iter().map(|&x| f16::from_f32(x).to_bits()).collect();
                Tensor {
                    shape: self.shape.clone(),
                    dtype,
                    bytes: Bytes::OwnedHalf(Arc::new(bits)),
                }
            }
        }
    }

    /// Raw little-endian bytes, as safetensors stores them.
    pub fn raw_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }
}

fn copy_typed(bytes: &[u8], dtype: DType) -> Bytes {
    match dtype {
        DType::F32 => Bytes::OwnedF32(Arc::new(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )),
        DType::BF16 | DType::F16 => Bytes::OwnedHalf(Arc::new(
            bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        )),
    }
}

impl Tensor {
    /// Mutable f32 elements for training, converting (once) to owned f32 storage.
    pub fn f32_mut(&mut self) -> &mut [f32] {
        if self.dtype != DType::F32 || !matches!(self.bytes, Bytes::OwnedF32(_)) {
            let values = self.to_f32_vec();
            self.dtype = DType::F32;
            self.bytes = Bytes::OwnedF32(Arc::new(values));
        }
        match &mut self.bytes {
            Bytes::OwnedF32(v) => Arc::make_mut(v).as_mut_slice(),
            // The conversion above guarantees owned f32 storage.
            _ => unreachable!("tensor storage was just converted to owned f32"),
        }
    }
}
