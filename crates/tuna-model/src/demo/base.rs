//! The trained part of the demo model as committed (`assets/demo/base.safetensors`): the linear
//! layers in int8 (a scale per row), the norms in bf16, and the 151,936 × 128 embedding as a
//! delta over the seeded one that takes about 5 MB instead of 78.
//!
//! Full fine-tuning moves every embedding row, also of tokens the training text never contains:
//! the tied LM head pushes them all down, and AdamW turns those tiny gradients into steps of the
//! learning rate, nearly the same step for every such row. So the delta `D = E - E0` of a row is
//! mostly `c_j * s` (one shared direction `s`, a scale per row), plus a low-rank rest, plus —
//! for the tokens the text does contain — a row of its own:
//!
//! ```text
//! E = E0 + c ⊗ s + U V + rows          c: u8 per row, U: i8 (vocab × RANK), rows: int4, sparse
//! ```
//!
//! `pack` fits this to a trained model (rows whose rest exceeds `ROW_THRESHOLD` are stored);
//! `unpack` rebuilds the embedding. The demo model *is* the unpacked model: `scripts/demo-base.sh`
//! reports what the rounding costs on held-out data.

use half::bf16;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::qwen::QwenModel;

/// Rank of the shared low-rank part of the embedding delta.
const RANK: usize = 8;
/// Rows whose delta, after `c ⊗ s`, is longer than this keep their own (int4) correction.
const ROW_THRESHOLD: f32 = 0.4;

struct Raw {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
        .collect()
}

/// The shared direction `s` and per-row scales `c` of `d` (rows of `width`): least squares
/// `c_j = d_j·s / s·s`, `s` refitted on the 80% of rows it explains best, three times.
fn fit_shift(d: &[f32], width: usize) -> (Vec<f32>, Vec<f32>) {
    let rows = d.len() / width;
    let mut s = vec![0f32; width];
    for r in d.chunks_exact(width) {
        s.iter_mut().zip(r).for_each(|(a, b)| *a += b / rows as f32);
    }
    let coefs = |s: &[f32]| -> Vec<f32> {
        let ss: f32 = s.iter().map(|x| x * x).sum::<f32>().max(1e-20);
        d.chunks_exact(width)
            .map(|r| r.iter().zip(s).map(|(a, b)| a * b).sum::<f32>() / ss)
            .collect()
    };
    for _ in 0..3 {
        let c = coefs(&s);
        let rest: Vec<f32> = d
            .chunks_exact(width)
            .zip(&c)
            .map(|(r, c)| r.iter().zip(&s).map(|(a, b)| (a - c * b).powi(2)).sum())
            .collect();
        let mut sorted = rest.clone();
        sorted.sort_by(f32::total_cmp);
        let cut = sorted[sorted.len() * 4 / 5];
        let mut num = vec![0f64; width];
        let mut den = 0f64;
        for ((r, c), e) in d.chunks_exact(width).zip(&c).zip(&rest) {
            if *e <= cut {
                num.iter_mut()
                    .zip(r)
                    .for_each(|(n, x)| *n += (*c as f64) * (*x as f64));
                den += (*c as f64).powi(2);
            }
        }
        s = num.iter().map(|n| (n / den.max(1e-20)) as f32).collect();
    }
    let c = coefs(&s);
    (s, c)
}

/// The top `k` eigenvectors of the symmetric `n × n` matrix `g` (power iteration with
/// re-orthogonalisation; exact enough, since what they miss is stored or measured).
fn top_eigenvectors(g: &[f64], n: usize, k: usize) -> Vec<Vec<f64>> {
    let mut out: Vec<Vec<f64>> = Vec::with_capacity(k);
    for i in 0..k {
        let mut v: Vec<f64> = (0..n).map(|j| if j == i { 1.0 } else { 1e-3 }).collect();
        for _ in 0..300 {
            let mut w: Vec<f64> = (0..n)
                .map(|r| (0..n).map(|c| g[r * n + c] * v[c]).sum())
                .collect();
            for u in &out {
                let dot: f64 = w.iter().zip(u).map(|(a, b)| a * b).sum();
                w.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-300);
            v = w.iter().map(|x| x / norm).collect();
        }
        out.push(v);
    }
    out
}

/// Symmetric int quantization of one row to `levels` (7 for int4, 127 for int8): values, scale.
fn quantize(row: &[f32], levels: f32) -> (Vec<i8>, f32) {
    let max = row.iter().fold(0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 { max / levels } else { 1.0 };
    let q = row
        .iter()
        .map(|x| (x / scale).round().clamp(-levels, levels) as i8)
        .collect();
    (q, scale)
}

/// The packed file for `trained`, a fully fine-tuned copy of `init` (same shapes).
pub fn pack(trained: &QwenModel, init: &QwenModel) -> Result<Vec<u8>> {
    let width = init.config.hidden_size;
    let vocab = init.config.vocab_size;
    let e = trained.embed_tokens.to_f32_vec();
    let e0 = init.embed_tokens.to_f32_vec();
    let d: Vec<f32> = e.iter().zip(&e0).map(|(a, b)| a - b).collect();
    let (s, c) = fit_shift(&d, width);
    // c as u8 over its range; the rest is what the rounded c leaves.
    let (lo, hi) = c
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
    let step = ((hi - lo) / 255.0).max(1e-12);
    let cq: Vec<u8> = c
        .iter()
        .map(|x| ((x - lo) / step).round().clamp(0.0, 255.0) as u8)
        .collect();
    let mut rest = d.clone();
    for (j, r) in rest.chunks_exact_mut(width).enumerate() {
        let cj = lo + cq[j] as f32 * step;
        r.iter_mut().zip(&s).for_each(|(x, b)| *x -= cj * b);
    }
    let long: Vec<bool> = rest
        .chunks_exact(width)
        .map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt() > ROW_THRESHOLD)
        .collect();
    // The low-rank part, fitted on the rows without their own correction.
    let mut g = vec![0f64; width * width];
    for (r, _) in rest.chunks_exact(width).zip(&long).filter(|(_, l)| !**l) {
        for a in 0..width {
            let ra = r[a] as f64;
            for b in 0..width {
                g[a * width + b] += ra * r[b] as f64;
            }
        }
    }
    let v: Vec<Vec<f32>> = top_eigenvectors(&g, width, RANK)
        .into_iter()
        .map(|x| x.into_iter().map(|y| y as f32).collect())
        .collect();
    let mut u = vec![0f32; vocab * RANK];
    for (j, r) in rest.chunks_exact(width).enumerate() {
        for (i, vi) in v.iter().enumerate() {
            u[j * RANK + i] = r.iter().zip(vi).map(|(a, b)| a * b).sum();
        }
    }
    let mut u_scale = vec![0f32; RANK];
    for (i, sc) in u_scale.iter_mut().enumerate() {
        let max = (0..vocab).fold(0f32, |m, j| m.max(u[j * RANK + i].abs()));
        *sc = if max > 0.0 { max / 127.0 } else { 1.0 };
    }
    let uq: Vec<i8> = u
        .iter()
        .enumerate()
        .map(|(n, x)| (x / u_scale[n % RANK]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    // Rows of their own: what the rounded low-rank part leaves, in int4.
    let (mut ids, mut nibbles, mut scales) = (Vec::new(), Vec::new(), Vec::new());
    for (j, r) in rest.chunks_exact(width).enumerate() {
        if !long[j] {
            continue;
        }
        let own: Vec<f32> = (0..width)
            .map(|a| {
                r[a] - (0..RANK)
                    .map(|i| uq[j * RANK + i] as f32 * u_scale[i] * v[i][a])
                    .sum::<f32>()
            })
            .collect();
        let (q, scale) = quantize(&own, 7.0);
        ids.extend((j as i32).to_le_bytes());
        nibbles.extend(
            q.chunks(2)
                .map(|p| ((p[0] + 8) as u8) | (((p.get(1).copied().unwrap_or(0) + 8) as u8) << 4)),
        );
        scales.push(scale);
    }
    let n = scales.len();
    let mut raws = vec![
        Raw {
            name: "embed.shift".into(),
            dtype: Dtype::F32,
            shape: vec![width],
            data: f32_bytes(&s),
        },
        Raw {
            name: "embed.shift_coef".into(),
            dtype: Dtype::U8,
            shape: vec![vocab],
            data: cq,
        },
        Raw {
            name: "embed.shift_coef_range".into(),
            dtype: Dtype::F32,
            shape: vec![2],
            data: f32_bytes(&[lo, step]),
        },
        Raw {
            name: "embed.lowrank_u".into(),
            dtype: Dtype::I8,
            shape: vec![vocab, RANK],
            data: uq.iter().map(|x| *x as u8).collect(),
        },
        Raw {
            name: "embed.lowrank_u_scale".into(),
            dtype: Dtype::F32,
            shape: vec![RANK],
            data: f32_bytes(&u_scale),
        },
        Raw {
            name: "embed.lowrank_v".into(),
            dtype: Dtype::F32,
            shape: vec![RANK, width],
            data: f32_bytes(&v.concat()),
        },
        Raw {
            name: "embed.rows".into(),
            dtype: Dtype::I32,
            shape: vec![n],
            data: ids,
        },
        Raw {
            name: "embed.rows_int4".into(),
            dtype: Dtype::U8,
            shape: vec![n, width / 2],
            data: nibbles,
        },
        Raw {
            name: "embed.rows_scale".into(),
            dtype: Dtype::F32,
            shape: vec![n],
            data: f32_bytes(&scales),
        },
    ];
    let mut trained = trained.clone();
    for (name, t, width) in super::trained_tensors(&mut trained) {
        if t.len() == width {
            raws.push(Raw {
                name,
                dtype: Dtype::BF16,
                shape: vec![width],
                data: bf16_bytes(t),
            });
            continue;
        }
        let (q, scales): (Vec<Vec<i8>>, Vec<f32>) =
            t.chunks_exact(width).map(|r| quantize(r, 127.0)).unzip();
        raws.push(Raw {
            name: format!("{name}.scale"),
            dtype: Dtype::F32,
            shape: vec![scales.len()],
            data: f32_bytes(&scales),
        });
        raws.push(Raw {
            name,
            dtype: Dtype::I8,
            shape: vec![scales.len(), width],
            data: q.concat().iter().map(|x| *x as u8).collect(),
        });
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = raws
        .iter()
        .map(|r| {
            safetensors::tensor::TensorView::new(r.dtype, r.shape.clone(), &r.data)
                .map(|v| (r.name.clone(), v))
                .map_err(|e| bad(e.to_string()))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| bad(e.to_string()))
}

fn bad(reason: String) -> Error {
    Error::Safetensors {
        path: "assets/demo/base.safetensors".into(),
        reason,
    }
}

/// One tensor of the packed file, checked for its dtype and element count.
fn tensor<'a>(st: &'a SafeTensors<'a>, name: &str, dtype: Dtype, len: usize) -> Result<&'a [u8]> {
    let view = st.tensor(name).map_err(|e| bad(format!("{name}: {e}")))?;
    let size = match dtype {
        Dtype::F32 | Dtype::I32 => 4,
        Dtype::BF16 => 2,
        _ => 1,
    };
    if view.dtype() != dtype || view.data().len() != len * size {
        return Err(bad(format!(
            "{name}: expected {len} values of {dtype:?}, found {:?} {:?}",
            view.dtype(),
            view.shape()
        )));
    }
    Ok(view.data())
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Rebuilds the trained model from `init` (the seeded start) and the packed file.
pub fn unpack(bytes: &[u8], model: &mut QwenModel) -> Result<()> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    let width = model.config.hidden_size;
    let vocab = model.config.vocab_size;
    let s = f32s(tensor(&st, "embed.shift", Dtype::F32, width)?);
    let cq = tensor(&st, "embed.shift_coef", Dtype::U8, vocab)?;
    let range = f32s(tensor(&st, "embed.shift_coef_range", Dtype::F32, 2)?);
    let uq = tensor(&st, "embed.lowrank_u", Dtype::I8, vocab * RANK)?;
    let u_scale = f32s(tensor(&st, "embed.lowrank_u_scale", Dtype::F32, RANK)?);
    let v = f32s(tensor(&st, "embed.lowrank_v", Dtype::F32, RANK * width)?);
    let n = st
        .tensor("embed.rows")
        .map_err(|e| bad(format!("embed.rows: {e}")))?
        .shape()
        .first()
        .copied()
        .unwrap_or(0);
    let ids = tensor(&st, "embed.rows", Dtype::I32, n)?;
    let nibbles = tensor(&st, "embed.rows_int4", Dtype::U8, n * width / 2)?;
    let scales = f32s(tensor(&st, "embed.rows_scale", Dtype::F32, n)?);

    let e = model.embed_tokens.f32_mut();
    for j in 0..vocab {
        let cj = range[0] + cq[j] as f32 * range[1];
        let row = &mut e[j * width..(j + 1) * width];
        for (a, x) in row.iter_mut().enumerate() {
            let low: f32 = (0..RANK)
                .map(|i| (uq[j * RANK + i] as i8) as f32 * u_scale[i] * v[i * width + a])
                .sum();
            *x += cj * s[a] + low;
        }
    }
    for (k, id) in ids.chunks_exact(4).enumerate() {
        let j = i32::from_le_bytes([id[0], id[1], id[2], id[3]]);
        let j = usize::try_from(j)
            .ok()
            .filter(|j| *j < vocab)
            .ok_or_else(|| bad(format!("embed.rows[{k}] = {j} is not a token id")))?;
        let row = &mut e[j * width..(j + 1) * width];
        let packed = &nibbles[k * width / 2..(k + 1) * width / 2];
        for (a, x) in row.iter_mut().enumerate() {
            let nib = (packed[a / 2] >> (4 * (a % 2))) & 0xF;
            *x += (nib as i32 - 8) as f32 * scales[k];
        }
    }
    let embed_tensors = 9;
    let mut applied = 0;
    for (name, dst, width) in super::trained_tensors(model) {
        if dst.len() == width {
            let data = tensor(&st, &name, Dtype::BF16, width)?;
            for (d, b) in dst.iter_mut().zip(data.chunks_exact(2)) {
                *d = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
            applied += 1;
            continue;
        }
        let rows = dst.len() / width;
        let q = tensor(&st, &name, Dtype::I8, dst.len())?;
        let scales = f32s(tensor(&st, &format!("{name}.scale"), Dtype::F32, rows)?);
        for (i, d) in dst.iter_mut().enumerate() {
            *d = (q[i] as i8) as f32 * scales[i / width];
        }
        applied += 2;
    }
    if applied + embed_tensors != st.len() {
        return Err(bad(format!(
            "{} tensors, of which {} belong to the demo model",
            st.len(),
            applied + embed_tensors
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_shift_is_found() {
        // Rows = c_j * s exactly: the fit recovers s up to its scale and c · s exactly.
        let s = [0.5f32, -1.0, 2.0, 0.0];
        let d: Vec<f32> = (0..50)
            .flat_map(|j| s.map(|x| x * (1.0 + j as f32 / 10.0)))
            .collect();
        let (fs, c) = fit_shift(&d, 4);
        for (j, r) in d.chunks_exact(4).enumerate() {
            for a in 0..4 {
                assert!((c[j] * fs[a] - r[a]).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn eigenvectors_of_a_diagonal_matrix() {
        let g = [3.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 1.0];
        let v = top_eigenvectors(&g, 3, 2);
        assert!((v[0][1].abs() - 1.0).abs() < 1e-9 && (v[1][0].abs() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn int4_rows_round_trip_within_half_a_step() {
        let row: Vec<f32> = (0..8).map(|i| i as f32 * 0.3 - 1.0).collect();
        let (q, scale) = quantize(&row, 7.0);
        for (x, q) in row.iter().zip(q) {
            assert!((x - q as f32 * scale).abs() <= scale / 2.0 + 1e-6);
        }
    }
}
