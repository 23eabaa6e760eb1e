//! Token embedding lookup: rows of the (v, c) table, widened to `f32`.
//!
//! Ids are validated by the caller (the tokenizer and the data pipeline know the vocabulary);
//! here they are only `debug_assert`ed.

use crate::weight::WeightRef;

/// out (bt, c) = table (v, c) rows `ids` (bt), widened to `f32`. Overwrites `out`.
pub fn embedding_forward(out: &mut [f32], ids: &[u32], table: WeightRef, c: usize) {
    debug_assert_eq!(out.len(), ids.len() * c);
    debug_assert!(c > 0 && table.len().is_multiple_of(c));
    for (row, &id) in out.chunks_exact_mut(c).zip(ids) {
        let start = id as usize * c;
        debug_assert!(
            start + c <= table.len(),
            "embedding_forward: id {id} out of range"
        );
        table.slice(start..start + c).widen_into(row);
    }
}

/// Accumulates: dtable (v, c) rows `ids` (bt) += dout (bt, c) rows.
///
/// Sequential on purpose: repeated ids add into the same row, and the (bt, c) work is tiny next
/// to the matmuls.
pub fn embedding_backward(dtable: &mut [f32], dout: &[f32], ids: &[u32], c: usize) {
    debug_assert_eq!(dout.len(), ids.len() * c);
    debug_assert!(c > 0 && dtable.len().is_multiple_of(c));
    for (g, &id) in dout.chunks_exact(c).zip(ids) {
        let start = id as usize * c;
        debug_assert!(
            start + c <= dtable.len(),
            "embedding_backward: id {id} out of range"
        );
        for (d, x) in dtable[start..start + c].iter_mut().zip(g) {
            *d += *x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn forward_gathers_rows_in_every_dtype() {
        // table (3, 2)
        let t = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let ids = [2u32, 0, 2];
        let want = [5.0, 6.0, 1.0, 2.0, 5.0, 6.0];
        let tb: Vec<bf16> = t.iter().map(|&x| bf16::from_f32(x)).collect();
        let th: Vec<f16> = t.iter().map(|&x| f16::from_f32(x)).collect();
        for table in [
            WeightRef::F32(&t),
            WeightRef::BF16(&tb),
            WeightRef::F16(&th),
        ] {
            let mut out = [f32::NAN; 6];
            embedding_forward(&mut out, &ids, table, 2);
            assert_eq!(out, want, "{:?}", table.dtype());
        }
    }

    #[test]
    fn backward_accumulates_repeated_ids() {
        let mut dt = vec![1.0f32; 6];
        embedding_backward(&mut dt, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 0, 2], 2);
        assert_eq!(dt, vec![4.0, 5.0, 1.0, 1.0, 7.0, 9.0]);
    }
}
