//! Rotary position embedding (RoPE) as Hugging Face Qwen2/Qwen3 apply it: the non-interleaved
//! "rotate_half" form, where lane `i` pairs with lane `i + hd/2` (not `2i` with `2i+1`).
//!
//! Reference: `transformers/models/qwen2/modeling_qwen2.py` (`Qwen2RotaryEmbedding`,
//! `rotate_half`, `apply_rotary_pos_emb`). Not supported: rope scaling (`rope_scaling` /
//! YaRN / dynamic NTK) and partial rotary dims; the model crate rejects such configs.

use rayon::prelude::*;

/// Precomputed `cos`/`sin` of `pos · inv_freq[i]` for `pos < max_pos`, `i < hd/2`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    head_dim: usize,
    /// `inv_freq[i] = 1 / theta^(2i/hd)`, rounded to f32 as transformers computes it.
    inv_freq: Vec<f32>,
    /// cos (max_pos, hd/2)
    cos: Vec<f32>,
    /// sin (max_pos, hd/2)
    sin: Vec<f32>,
    max_pos: usize,
}

impl RopeTable {
    /// Table for `head_dim` (even) and base `theta`, covering positions `0..max_pos`.
    pub fn new(head_dim: usize, theta: f64, max_pos: usize) -> RopeTable {
        assert!(
            head_dim.is_multiple_of(2),
            "rope: head_dim {head_dim} must be even"
        );
        let half = head_dim / 2;
        // transformers: inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)), all
        // in f32. The exponent is an f32 quotient; the power is evaluated in f64 and rounded once,
        // which gives the correctly rounded f32 result that torch's f32 pow returns in practice.
        let base = theta as f32;
        let inv_freq = (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                let p = (base as f64).powf(exponent as f64) as f32;
                1.0f32 / p
            })
            .collect();
        let mut table = RopeTable {
            head_dim,
            inv_freq,
            cos: Vec::new(),
            sin: Vec::new(),
            max_pos: 0,
        };
        table.ensure(max_pos);
        table
    }

    /// Number of positions the table covers.
    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    /// Head dimension the table was built for.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Grow to cover `max_pos` positions (generation beyond the initial table). Never shrinks.
    pub fn ensure(&mut self, max_pos: usize) {
        if max_pos <= self.max_pos {
            return;
        }
        let half = self.head_dim / 2;
        let old = self.max_pos;
        self.cos.resize(max_pos * half, 0.0);
        self.sin.resize(max_pos * half, 0.0);
        let inv_freq = &self.inv_freq;
        let rows = (old * half)..(max_pos * half);
        let cos = &mut self.cos[rows.clone()];
        let sin = &mut self.sin[rows];
        if half > 0 {
            cos.par_chunks_mut(half)
                .zip(sin.par_chunks_mut(half))
                .enumerate()
                .for_each(|(r, (c_row, s_row))| {
                    let pos = (old + r) as f32;
                    for i in 0..half {
                        // freqs = position_ids.float() @ inv_freq: one f32 product, rounded once.
                        // cos/sin of that f32 angle, evaluated in f64 and rounded to f32.
                        let angle = (pos * inv_freq[i]) as f64;
                        c_row[i] = angle.cos() as f32;
                        s_row[i] = angle.sin() as f32;
                    }
                });
        }
        self.max_pos = max_pos;
    }

    /// cos and sin rows (hd/2 each) of position `pos` (panics beyond `max_pos`).
    #[inline]
    pub fn row(&self, pos: usize) -> (&[f32], &[f32]) {
        let half = self.head_dim / 2;
        assert!(
            pos < self.max_pos,
            "rope: position {pos} beyond table of {} positions",
            self.max_pos
        );
        (
            &self.cos[pos * half..(pos + 1) * half],
            &self.sin[pos * half..(pos + 1) * half],
        )
    }
}

/// Tokens per rayon task: rotating one token is only `nh·hd` multiply-adds.
const TOKENS_PER_TASK: usize = 32;

/// In place on x (bt, nh, hd): rotate each head of token t by positions[t].
///
/// `x'[i] = x[i]·cos − x[i+hd/2]·sin`, `x'[i+hd/2] = x[i+hd/2]·cos + x[i]·sin` for `i < hd/2`.
pub fn rope_forward(x: &mut [f32], positions: &[u32], table: &RopeTable, nh: usize, hd: usize) {
    rotate(x, positions, table, nh, hd, false);
}

/// In place: dx ← Rᵀ dx (the inverse rotation, i.e. rotation by −angle).
///
/// Documented exception to "backward accumulates": RoPE is applied in place in the forward, so
/// its backward maps the gradient w.r.t. the rotated values to the gradient w.r.t. the
/// unrotated ones in the same buffer.
pub fn rope_backward(dx: &mut [f32], positions: &[u32], table: &RopeTable, nh: usize, hd: usize) {
    rotate(dx, positions, table, nh, hd, true);
}

fn rotate(
    x: &mut [f32],
    positions: &[u32],
    table: &RopeTable,
    nh: usize,
    hd: usize,
    inverse: bool,
) {
    let bt = positions.len();
    assert_eq!(
        x.len(),
        bt * nh * hd,
        "rope: x has {} elements, want {bt}x{nh}x{hd}",
        x.len()
    );
    assert_eq!(
        table.head_dim, hd,
        "rope: table built for head_dim {}, got {hd}",
        table.head_dim
    );
    if x.is_empty() {
        return;
    }
    let half = hd / 2;
    let row = nh * hd;
    x.par_chunks_mut(row * TOKENS_PER_TASK)
        .zip(positions.par_chunks(TOKENS_PER_TASK))
        .for_each(|(xs, ps)| {
            for (xt, &p) in xs.chunks_exact_mut(row).zip(ps) {
                let (cos, sin) = table.row(p as usize);
                for head in xt.chunks_exact_mut(hd) {
                    let (lo, hi) = head.split_at_mut(half);
                    if inverse {
                        for i in 0..half {
                            let (a, b) = (lo[i], hi[i]);
                            lo[i] = a * cos[i] + b * sin[i];
                            hi[i] = b * cos[i] - a * sin[i];
                        }
                    } else {
                        for i in 0..half {
                            let (a, b) = (lo[i], hi[i]);
                            lo[i] = a * cos[i] - b * sin[i];
                            hi[i] = b * cos[i] + a * sin[i];
                        }
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_rotation() {
        // hd = 4, theta = 100: inv_freq = [1, 1/10]. Position 1 rotates pair (0,2) by 1 rad
        // and pair (1,3) by 0.1 rad.
        let table = RopeTable::new(4, 100.0, 4);
        let mut x = vec![1.0, 2.0, 3.0, 4.0];
        rope_forward(&mut x, &[1], &table, 1, 4);
        let (c1, s1) = (1f64.cos(), 1f64.sin());
        let (c2, s2) = (0.1f64.cos(), 0.1f64.sin());
        let want = [
            1.0 * c1 - 3.0 * s1,
            2.0 * c2 - 4.0 * s2,
            3.0 * c1 + 1.0 * s1,
            4.0 * c2 + 2.0 * s2,
        ];
        for (g, w) in x.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{g} vs {w}");
        }
        // Position 0 is the identity.
        let mut y = vec![1.0, 2.0, 3.0, 4.0];
        rope_forward(&mut y, &[0], &table, 1, 4);
        assert_eq!(y, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn backward_inverts_forward_and_ensure_extends() {
        let (nh, hd) = (3, 8);
        let mut table = RopeTable::new(hd, 10000.0, 4);
        table.ensure(100);
        assert_eq!(table.max_pos(), 100);
        let fresh = RopeTable::new(hd, 10000.0, 100);
        assert_eq!(table.cos, fresh.cos);
        assert_eq!(table.sin, fresh.sin);
        let positions: Vec<u32> = (0..70).map(|t| (t * 7 % 97) as u32).collect();
        let x0: Vec<f32> = (0..70 * nh * hd)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let mut x = x0.clone();
        rope_forward(&mut x, &positions, &table, nh, hd);
        assert!(x.iter().zip(&x0).any(|(a, b)| a != b));
        rope_backward(&mut x, &positions, &table, nh, hd);
        let diff = x
            .iter()
            .zip(&x0)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(diff < 1e-5, "max diff {diff}");
    }

    #[test]
    fn table_matches_transformers_f32() {
        // Bits printed by torch 2 / transformers 4.x in f32 (see the `inv_freq` formula above):
        // inv_freq[1, 5, 17, 31], then cos/sin at (pos, i) = (1, 0), (511, 1), (4095, 2), (32767, 3).
        type Case = (f64, usize, [u32; 4], [u32; 4], [u32; 4]);
        let cases: [Case; 2] = [
            (
                1_000_000.0,
                64,
                [0x3f263de0, 0x3dec7fd6, 0x3a2a3b44, 0x35ceaf79],
                [0x3f0a5141, 0x3ec57d51, 0x3f040f0b, 0x3f5474fa],
                [0x3f576aa4, 0xbf6c3082, 0xbf5b4f22, 0x3f0ed25d],
            ),
            (
                10_000.0,
                128,
                [0x3f5dafd7, 0x3ef953cf, 0x3db15978, 0x3c3d3311],
                [0x3f0a5141, 0xbf65c103, 0xbdb86a3a, 0xbf75e305],
                [0x3f576aa4, 0x3ee1d2f1, 0xbf7ef5c4, 0xbe8e7cd6],
            ),
        ];
        for (theta, hd, inv, cos, sin) in cases {
            let table = RopeTable::new(hd, theta, 32768);
            for (&i, &bits) in [1, 5, 17, 31].iter().zip(&inv) {
                assert_eq!(
                    table.inv_freq[i].to_bits(),
                    bits,
                    "theta {theta} inv_freq[{i}]"
                );
            }
            let half = hd / 2;
            for (k, (pos, i)) in [(1, 0), (511, 1), (4095, 2), (32767, 3)]
                .into_iter()
                .enumerate()
            {
                // torch's vectorised cos/sin are within 1 ulp of the correctly rounded value.
                let (c, s) = (table.cos[pos * half + i], table.sin[pos * half + i]);
                let (wc, ws) = (f32::from_bits(cos[k]), f32::from_bits(sin[k]));
                assert!(
                    (c - wc).abs() <= 1.2e-7,
                    "theta {theta} cos({pos}, {i}) {c} vs {wc}"
                );
                assert!(
                    (s - ws).abs() <= 1.2e-7,
                    "theta {theta} sin({pos}, {i}) {s} vs {ws}"
                );
            }
        }
    }
}
