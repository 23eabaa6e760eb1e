//! Parity of the engine's kernels with PyTorch / Hugging Face transformers.
//!
//! `tests/fixtures/engine.safetensors` holds inputs, outputs and input gradients (of
//! `loss = Σ out ⊙ dout` for a saved random `dout`) written by `scripts/fixtures/gen_engine.py`
//! from HF's own layers (`Qwen2RMSNorm`, `Qwen2RotaryEmbedding` + `apply_rotary_pos_emb`,
//! `eager_attention_forward`) and PyTorch autograd, in f32 on the CPU. Each comparison prints the
//! first values and the max abs diff and asserts a stated tolerance, as llm.c's `check_tensor`
//! does. Backward kernels accumulate, so their outputs start zeroed here.

use safetensors::{Dtype, SafeTensors};
use tuna_engine::WeightRef;
use tuna_engine::ops::matmul::Precision;
use tuna_engine::ops::{attention, lm_head_ce, rmsnorm, rope, swiglu};

/// Forward outputs: f32 compute on both sides, O(1) values.
const TOL_FWD: f32 = 1e-5;
/// Gradients: longer chains of f32 rounding on both sides.
const TOL_GRAD: f32 = 1e-4;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/engine.safetensors"
);

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load() -> Fixture {
        let bytes = std::fs::read(FIXTURE)
            .unwrap_or_else(|e| panic!("{FIXTURE}: {e} (run scripts/fixtures/gen_engine.py)"));
        Fixture { bytes }
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("engine.safetensors parses")
    }

    /// The f32 tensor `name` and its shape.
    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = self.view();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        let v = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (v, t.shape().to_vec())
    }

    fn i64(&self, name: &str) -> Vec<i64> {
        let st = self.view();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect()
    }

    fn vec(&self, name: &str) -> Vec<f32> {
        self.f32(name).0
    }
}

/// llm.c's `check_tensor`: prints the first values side by side and the max abs diff, and fails
/// above `tol`.
fn check_tensor(name: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    println!("{name}:");
    for (g, w) in got.iter().zip(want).take(5) {
        println!("  {g:+.8} {w:+.8}");
    }
    let mut max_diff = 0.0f32;
    let mut at = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        // A NaN difference counts as infinite, so it is reported and fails.
        let d = if d.is_nan() { f32::INFINITY } else { d };
        if d > max_diff {
            max_diff = d;
            at = i;
        }
    }
    println!("  max abs diff {max_diff:.3e} at {at} (tol {tol:.0e})");
    assert!(
        max_diff <= tol,
        "{name}: max abs diff {max_diff:e} at index {at} (got {}, want {}) exceeds {tol:e}",
        got[at],
        want[at]
    );
}

#[test]
fn rmsnorm_matches_qwen2_rmsnorm() {
    let f = Fixture::load();
    let (inp, shape) = f.f32("rmsnorm.inp");
    let (n, c) = (shape[0], shape[1]);
    let weight = f.vec("rmsnorm.weight");
    let mut out = vec![0.0; n * c];
    let mut rstd = vec![0.0; n];
    rmsnorm::rmsnorm_forward(&mut out, &mut rstd, &inp, &weight, n, c, 1e-6);
    check_tensor("rmsnorm.out", &out, &f.vec("rmsnorm.out"), TOL_FWD);
    check_tensor("rmsnorm.rstd", &rstd, &f.vec("rmsnorm.rstd"), TOL_FWD);

    let dout = f.vec("rmsnorm.dout");
    let mut dinp = vec![0.0; n * c];
    let mut dweight = vec![0.0; c];
    rmsnorm::rmsnorm_backward(
        &mut dinp,
        Some(&mut dweight),
        &dout,
        &inp,
        &weight,
        &rstd,
        n,
        c,
    );
    check_tensor("rmsnorm.dinp", &dinp, &f.vec("rmsnorm.dinp"), TOL_GRAD);
    check_tensor(
        "rmsnorm.dweight",
        &dweight,
        &f.vec("rmsnorm.dweight"),
        TOL_GRAD,
    );
}

fn check_rope(case: &str) {
    let f = Fixture::load();
    let (x, shape) = f.f32(&format!("{case}.x"));
    let (nh, hd) = (shape[1], shape[2]);
    let positions: Vec<u32> = f
        .i64(&format!("{case}.positions"))
        .iter()
        .map(|&p| u32::try_from(p).expect("position fits u32"))
        .collect();
    let max_pos = *positions.iter().max().expect("positions") as usize + 1;
    let table = rope::RopeTable::new(hd, 10000.0, max_pos);

    let mut out = x.clone();
    rope::rope_forward(&mut out, &positions, &table, nh, hd);
    check_tensor(
        &format!("{case}.out"),
        &out,
        &f.vec(&format!("{case}.out")),
        TOL_FWD,
    );

    // In place: the buffer holds dout on entry and dx on return.
    let mut dx = f.vec(&format!("{case}.dout"));
    rope::rope_backward(&mut dx, &positions, &table, nh, hd);
    check_tensor(
        &format!("{case}.dx"),
        &dx,
        &f.vec(&format!("{case}.dx")),
        TOL_GRAD,
    );
}

#[test]
fn rope_matches_hf_positions_0_to_6() {
    check_rope("rope0");
}

#[test]
fn rope_matches_hf_scattered_positions() {
    check_rope("rope1");
}

fn check_attention(case: &str) {
    let f = Fixture::load();
    let (q, qs) = f.f32(&format!("{case}.q"));
    let (k, ks) = f.f32(&format!("{case}.k"));
    let v = f.vec(&format!("{case}.v"));
    let (bt, nh, hd, nkv) = (qs[0], qs[1], qs[2], ks[1]);
    let seq_lens: Vec<usize> = f
        .i64(&format!("{case}.seq_lens"))
        .iter()
        .map(|&l| usize::try_from(l).expect("length"))
        .collect();
    assert_eq!(seq_lens.iter().sum::<usize>(), bt);

    let mut out = vec![0.0; bt * nh * hd];
    let mut lse = vec![0.0; bt * nh];
    attention::attention_forward(&mut out, &mut lse, &q, &k, &v, &seq_lens, nh, nkv, hd);
    check_tensor(
        &format!("{case}.out"),
        &out,
        &f.vec(&format!("{case}.out")),
        TOL_FWD,
    );
    check_tensor(
        &format!("{case}.lse"),
        &lse,
        &f.vec(&format!("{case}.lse")),
        TOL_FWD,
    );

    let dout = f.vec(&format!("{case}.dout"));
    let mut dq = vec![0.0; q.len()];
    let mut dk = vec![0.0; k.len()];
    let mut dv = vec![0.0; v.len()];
    attention::attention_backward(
        &mut dq, &mut dk, &mut dv, &dout, &out, &lse, &q, &k, &v, &seq_lens, nh, nkv, hd,
    );
    check_tensor(
        &format!("{case}.dq"),
        &dq,
        &f.vec(&format!("{case}.dq")),
        TOL_GRAD,
    );
    check_tensor(
        &format!("{case}.dk"),
        &dk,
        &f.vec(&format!("{case}.dk")),
        TOL_GRAD,
    );
    check_tensor(
        &format!("{case}.dv"),
        &dv,
        &f.vec(&format!("{case}.dv")),
        TOL_GRAD,
    );
}

#[test]
fn attention_matches_hf_eager_one_sequence() {
    check_attention("attention");
}

#[test]
fn attention_matches_hf_eager_packed_sequences() {
    check_attention("attention_packed");
}

#[test]
fn swiglu_matches_torch() {
    let f = Fixture::load();
    let gate = f.vec("swiglu.gate");
    let up = f.vec("swiglu.up");
    let mut out = vec![0.0; gate.len()];
    swiglu::swiglu_forward(&mut out, &gate, &up);
    check_tensor("swiglu.out", &out, &f.vec("swiglu.out"), TOL_FWD);

    let dout = f.vec("swiglu.dout");
    let mut dgate = vec![0.0; gate.len()];
    let mut dup = vec![0.0; up.len()];
    swiglu::swiglu_backward(&mut dgate, &mut dup, &dout, &gate, &up);
    check_tensor("swiglu.dgate", &dgate, &f.vec("swiglu.dgate"), TOL_GRAD);
    check_tensor("swiglu.dup", &dup, &f.vec("swiglu.dup"), TOL_GRAD);
}

#[test]
fn lm_head_ce_matches_torch_cross_entropy() {
    let f = Fixture::load();
    let (hidden, hs) = f.f32("lm_head_ce.hidden");
    let (weight, ws) = f.f32("lm_head_ce.weight");
    let (n, c, v) = (hs[0], hs[1], ws[0]);
    let targets: Vec<u32> = f
        .i64("lm_head_ce.targets")
        .iter()
        .map(|&t| u32::try_from(t).expect("target"))
        .collect();

    let mut losses = vec![0.0; n];
    let mut lse = vec![0.0; n];
    let correct = lm_head_ce::lm_head_ce_forward(
        &mut losses,
        &mut lse,
        &hidden,
        WeightRef::F32(&weight),
        &targets,
        n,
        c,
        v,
        Precision::F32,
    );
    check_tensor(
        "lm_head_ce.losses",
        &losses,
        &f.vec("lm_head_ce.losses"),
        TOL_FWD,
    );
    check_tensor("lm_head_ce.lse", &lse, &f.vec("lm_head_ce.lse"), TOL_FWD);
    let mean = losses.iter().sum::<f32>() / n as f32;
    check_tensor(
        "lm_head_ce.loss",
        &[mean],
        &f.vec("lm_head_ce.loss"),
        TOL_FWD,
    );
    assert_eq!(
        correct as i64,
        f.i64("lm_head_ce.correct")[0],
        "token accuracy count"
    );

    // torch's mean reduction: the gradient of (1/n)·Σ losses.
    let mut dhidden = vec![0.0; n * c];
    let mut dweight = vec![0.0; v * c];
    lm_head_ce::lm_head_ce_backward(
        &mut dhidden,
        Some(&mut dweight),
        &hidden,
        WeightRef::F32(&weight),
        &targets,
        &lse,
        1.0 / n as f32,
        n,
        c,
        v,
        Precision::F32,
    );
    check_tensor(
        "lm_head_ce.dhidden",
        &dhidden,
        &f.vec("lm_head_ce.dhidden"),
        TOL_GRAD,
    );
    check_tensor(
        "lm_head_ce.dweight",
        &dweight,
        &f.vec("lm_head_ce.dweight"),
        TOL_GRAD,
    );
}
