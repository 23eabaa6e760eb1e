//! Residual stream update `acc += x`, also used to sum gradient branches.
//!
//! The backward of `y = a + b` is the identity on both inputs, so there is no `residual_backward`:
//! callers accumulate `dout` into each branch with `residual_forward` itself.

use rayon::prelude::*;

/// Below this many elements the rayon fork/join costs more than the additions.
const PAR_MIN: usize = 1 << 16;
/// Elements per rayon task: large enough to amortise scheduling, small enough to balance.
const CHUNK: usize = 1 << 14;

/// `acc += x`, element-wise. acc (n), x (n).
pub fn residual_forward(acc: &mut [f32], x: &[f32]) {
    assert_eq!(
        acc.len(),
        x.len(),
        "residual_forward: acc has {} elements, x {}",
        acc.len(),
        x.len()
    );
    if acc.len() < PAR_MIN {
        add_assign(acc, x);
    } else {
        acc.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(a, b)| add_assign(a, b));
    }
}

fn add_assign(acc: &mut [f32], x: &[f32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a += *b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_small_and_large() {
        let mut acc = vec![1.0, 2.0, 3.0];
        residual_forward(&mut acc, &[0.5, -2.0, 10.0]);
        assert_eq!(acc, vec![1.5, 0.0, 13.0]);

        // Large enough for the parallel path, with a ragged last chunk.
        let n = PAR_MIN * 3 + 17;
        let mut acc: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
        residual_forward(&mut acc, &x);
        for (i, a) in acc.iter().enumerate() {
            assert_eq!(*a, i as f32 + (i % 7) as f32, "index {i}");
        }
    }
}
