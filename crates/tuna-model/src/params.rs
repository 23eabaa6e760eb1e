//! The trainable parameters of a run, described once (llm.c's `fill_in_parameter_sizes`).
//!
//! [`ParamLayout`] lists every trainable tensor, in the order the optimizer, the gradient buffers
//! and the checkpoints use: for full fine-tuning every tensor of the model (from its config), for
//! LoRA every A and B of the adapter. Each entry says what the tensor is ([`Param`]), its Hugging
//! Face / PEFT name, its shape, and whether AdamW decays it. Gradient slots, sizes, names and decay
//! flags are all read from this table; [`QwenModel::full_parameters_mut`] and
//! [`LoraAdapter::parameters_mut`] hand out the tensors themselves in the same order.

use std::collections::HashMap;

use crate::config::QwenConfig;
use crate::lora::{LoraAdapter, LoraTarget, peft_tensor_name};
use crate::qwen::{DecoderLayer, QwenModel};

/// One trainable tensor. Layer-level variants carry the layer index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Param {
    EmbedTokens,
    InputLayernorm(usize),
    PostAttentionLayernorm(usize),
    QNorm(usize),
    KNorm(usize),
    /// Weight (out, in) of a linear layer.
    Weight(usize, LoraTarget),
    /// Bias (out) of a linear layer (Qwen2's q/k/v).
    Bias(usize, LoraTarget),
    /// The final norm.
    Norm,
    /// The untied LM head (a tied head is `EmbedTokens`).
    LmHead,
    /// LoRA A (r, in).
    LoraA(usize, LoraTarget),
    /// LoRA B (out, r).
    LoraB(usize, LoraTarget),
}

impl Param {
    /// transformers' Trainer convention, which PEFT and torchtune follow: no weight decay for
    /// biases and norm weights (1-D tensors whose decay would pull them towards 0 instead of
    /// regularising a projection); every matrix, LoRA's included, is decayed.
    pub fn decays(self) -> bool {
        !matches!(
            self,
            Param::InputLayernorm(_)
                | Param::PostAttentionLayernorm(_)
                | Param::QNorm(_)
                | Param::KNorm(_)
                | Param::Bias(..)
                | Param::Norm
        )
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub param: Param,
    /// The checkpoint name: Hugging Face (`model.layers.0.self_attn.q_proj.weight`) or PEFT
    /// (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`).
    pub name: String,
    pub shape: Vec<usize>,
    pub decay: bool,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The ordered table of a run's trainable tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLayout {
    specs: Vec<ParamSpec>,
    slots: HashMap<Param, usize>,
}

impl ParamLayout {
    fn from_specs(specs: Vec<ParamSpec>) -> Self {
        let slots = specs
            .iter()
            .enumerate()
            .map(|(i, s)| (s.param, i))
            .collect();
        ParamLayout { specs, slots }
    }

    /// Every tensor of a model of `cfg` (full fine-tuning), in checkpoint order: the embedding,
    /// each layer's norms, q/k norms, then the seven linear layers (weight, bias) in
    /// [`LoraTarget::ALL`] order, the final norm and the untied LM head.
    pub fn full(cfg: &QwenConfig) -> Self {
        let (c, hd, v) = (cfg.hidden_size, cfg.head_dim, cfg.vocab_size);
        let mut specs = Vec::new();
        let mut push = |param: Param, name: String, shape: Vec<usize>| {
            specs.push(ParamSpec {
                param,
                name,
                shape,
                decay: param.decays(),
            })
        };
        push(
            Param::EmbedTokens,
            "model.embed_tokens.weight".into(),
            vec![v, c],
        );
        for l in 0..cfg.num_layers {
            let p = format!("model.layers.{l}");
            push(
                Param::InputLayernorm(l),
                format!("{p}.input_layernorm.weight"),
                vec![c],
            );
            push(
                Param::PostAttentionLayernorm(l),
                format!("{p}.post_attention_layernorm.weight"),
                vec![c],
            );
            if cfg.qk_norm {
                push(
                    Param::QNorm(l),
                    format!("{p}.self_attn.q_norm.weight"),
                    vec![hd],
                );
                push(
                    Param::KNorm(l),
                    format!("{p}.self_attn.k_norm.weight"),
                    vec![hd],
                );
            }
            for target in LoraTarget::ALL {
                let (i, o) = target.dims(cfg);
                let module = format!("{p}.{}", target.module_path());
                push(
                    Param::Weight(l, target),
                    format!("{module}.weight"),
                    vec![o, i],
                );
                if target.has_bias(cfg) {
                    push(Param::Bias(l, target), format!("{module}.bias"), vec![o]);
                }
            }
        }
        push(Param::Norm, "model.norm.weight".into(), vec![c]);
        if !cfg.tie_word_embeddings {
            push(Param::LmHead, "lm_head.weight".into(), vec![v, c]);
        }
        Self::from_specs(specs)
    }

    /// A and B of every adapted layer: layer by layer, targets in [`LoraTarget::ALL`] order, A then B.
    pub fn lora(adapter: &LoraAdapter) -> Self {
        let mut specs = Vec::new();
        for (l, slots) in adapter.layers.iter().enumerate() {
            for target in LoraTarget::ALL {
                let Some(lin) = &slots[target.index()] else {
                    continue;
                };
                for (param, which, shape) in [
                    (
                        Param::LoraA(l, target),
                        "lora_A",
                        vec![lin.rank, lin.in_features],
                    ),
                    (
                        Param::LoraB(l, target),
                        "lora_B",
                        vec![lin.out_features, lin.rank],
                    ),
                ] {
                    specs.push(ParamSpec {
                        param,
                        name: peft_tensor_name(l, target, which),
                        shape,
                        decay: param.decays(),
                    });
                }
            }
        }
        Self::from_specs(specs)
    }

    pub fn specs(&self) -> &[ParamSpec] {
        &self.specs
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Index of `param` among the tensors (its gradient slot), if it is trained.
    pub fn slot(&self, param: Param) -> Option<usize> {
        self.slots.get(&param).copied()
    }

    pub fn names(&self) -> Vec<String> {
        self.specs.iter().map(|s| s.name.clone()).collect()
    }

    /// Elements per tensor.
    pub fn sizes(&self) -> Vec<usize> {
        self.specs.iter().map(ParamSpec::len).collect()
    }

    /// Whether AdamW decays each tensor.
    pub fn decay_flags(&self) -> Vec<bool> {
        self.specs.iter().map(|s| s.decay).collect()
    }

    /// Trainable elements in all.
    pub fn num_elements(&self) -> usize {
        self.specs.iter().map(ParamSpec::len).sum()
    }

    /// Zeroed gradient buffers, one per tensor.
    pub fn zero_gradients(&self) -> Gradients {
        Gradients {
            tensors: self.specs.iter().map(|s| vec![0.0; s.len()]).collect(),
        }
    }

    /// Orders `tensors` (each found under its [`Param`]) as the table does.
    fn order<'a>(&self, mut tensors: HashMap<Param, &'a mut [f32]>) -> Vec<&'a mut [f32]> {
        self.specs
            .iter()
            .map(|s| {
                let t = tensors
                    .remove(&s.param)
                    .unwrap_or_else(|| panic!("parameter {} is missing", s.name));
                assert_eq!(t.len(), s.len(), "parameter {} has the wrong size", s.name);
                t
            })
            .collect()
    }
}

/// Gradient buffers, one per trainable tensor, in [`ParamLayout`] order.
#[derive(Debug, Clone, PartialEq)]
pub struct Gradients {
    pub tensors: Vec<Vec<f32>>,
}

impl Gradients {
    pub fn zero(&mut self) {
        self.tensors.iter_mut().for_each(|t| t.fill(0.0));
    }

    pub fn as_slices(&self) -> Vec<&[f32]> {
        self.tensors.iter().map(Vec::as_slice).collect()
    }
}

impl QwenModel {
    /// The table of full fine-tuning: every tensor of this model.
    pub fn full_layout(&self) -> ParamLayout {
        ParamLayout::full(&self.config)
    }

    /// Every parameter as mutable f32, in [`full_layout`](Self::full_layout) order. Weights stored
    /// in another dtype become owned f32 on the first call (full fine-tuning keeps f32 masters).
    pub fn full_parameters_mut(&mut self) -> Vec<&mut [f32]> {
        let layout = self.full_layout();
        let mut found: HashMap<Param, &mut [f32]> = HashMap::new();
        found.insert(Param::EmbedTokens, self.embed_tokens.f32_mut());
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let DecoderLayer {
                input_layernorm,
                q_proj,
                k_proj,
                v_proj,
                o_proj,
                q_norm,
                k_norm,
                post_attention_layernorm,
                gate_proj,
                up_proj,
                down_proj,
            } = layer;
            found.insert(Param::InputLayernorm(l), input_layernorm);
            found.insert(Param::PostAttentionLayernorm(l), post_attention_layernorm);
            if let Some(n) = q_norm {
                found.insert(Param::QNorm(l), n);
            }
            if let Some(n) = k_norm {
                found.insert(Param::KNorm(l), n);
            }
            let linears = [
                q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj,
            ];
            for (target, lin) in LoraTarget::ALL.into_iter().zip(linears) {
                found.insert(Param::Weight(l, target), lin.weight.f32_mut());
                if let Some(b) = &mut lin.bias {
                    found.insert(Param::Bias(l, target), b);
                }
            }
        }
        found.insert(Param::Norm, &mut self.norm);
        if let Some(h) = &mut self.lm_head {
            found.insert(Param::LmHead, h.f32_mut());
        }
        layout.order(found)
    }
}

impl LoraAdapter {
    /// The table of this adapter's A and B matrices.
    pub fn layout(&self) -> ParamLayout {
        ParamLayout::lora(self)
    }

    /// A and B of every adapted layer, in [`layout`](Self::layout) order.
    pub fn parameters_mut(&mut self) -> Vec<&mut [f32]> {
        let layout = self.layout();
        let mut found: HashMap<Param, &mut [f32]> = HashMap::new();
        for (l, slots) in self.layers.iter_mut().enumerate() {
            for (target, lin) in LoraTarget::ALL.into_iter().zip(slots.iter_mut()) {
                if let Some(lin) = lin {
                    found.insert(Param::LoraA(l, target), &mut lin.a);
                    found.insert(Param::LoraB(l, target), &mut lin.b);
                }
            }
        }
        layout.order(found)
    }
}

/// What a run trains, as mutable f32: the adapter's A and B when there is one (LoRA), else every
/// weight of the model (full fine-tuning), in the order of the matching layout.
pub fn trainable_parameters_mut<'a>(
    model: &'a mut QwenModel,
    adapter: Option<&'a mut LoraAdapter>,
) -> Vec<&'a mut [f32]> {
    match adapter {
        Some(a) => a.parameters_mut(),
        None => model.full_parameters_mut(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::LoraConfig;
    use tuna_engine::DType;

    fn tiny(qwen3: bool, tied: bool) -> QwenConfig {
        QwenConfig {
            architecture: if qwen3 {
                crate::Architecture::Qwen3
            } else {
                crate::Architecture::Qwen2
            },
            vocab_size: 50,
            hidden_size: 16,
            intermediate_size: 24,
            num_layers: 2,
            num_heads: 2,
            num_kv_heads: 1,
            head_dim: 8,
            max_position_embeddings: 64,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            tie_word_embeddings: tied,
            qkv_bias: !qwen3,
            o_bias: false,
            qk_norm: qwen3,
        }
    }

    /// The table agrees with the tensors a model holds and saves: same names, same sizes, and
    /// `full_parameters_mut` hands them out in table order.
    #[test]
    fn full_layout_matches_the_model_tensors() {
        for (qwen3, tied) in [(false, true), (true, true), (true, false)] {
            let cfg = tiny(qwen3, tied);
            let mut model = QwenModel::random(cfg, DType::F32, 0.1, 1);
            let layout = model.full_layout();
            let saved: HashMap<String, usize> = model
                .named_tensors()
                .into_iter()
                .map(|(n, t)| (n, t.len()))
                .collect();
            assert_eq!(layout.len(), saved.len());
            for s in layout.specs() {
                assert_eq!(saved.get(&s.name), Some(&s.len()), "{}", s.name);
                assert_eq!(layout.slot(s.param).map(|i| &layout.specs()[i]), Some(s));
            }
            let sizes: Vec<usize> = model
                .full_parameters_mut()
                .iter()
                .map(|p| p.len())
                .collect();
            assert_eq!(sizes, layout.sizes());
            // Norms and biases are never decayed; every matrix is.
            for s in layout.specs() {
                let vector = s.shape.len() == 1;
                assert_eq!(s.decay, !vector, "{}", s.name);
            }
        }
    }

    #[test]
    fn lora_layout_lists_a_then_b_of_each_adapted_layer() {
        let cfg = tiny(true, true);
        let lora = LoraConfig {
            r: 3,
            target_modules: vec![LoraTarget::VProj, LoraTarget::DownProj],
            ..LoraConfig::default()
        };
        let mut adapter = LoraAdapter::new_random(&cfg, &lora, 7);
        let layout = adapter.layout();
        assert_eq!(
            layout.names()[..4],
            [
                "base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight",
                "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
                "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight",
                "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight",
            ]
        );
        assert_eq!(layout.len(), 8);
        assert_eq!(layout.specs()[2].shape, [3, 24]);
        assert_eq!(layout.specs()[3].shape, [16, 3]);
        assert!(layout.decay_flags().iter().all(|&d| d));
        assert_eq!(layout.slot(Param::LoraB(1, LoraTarget::VProj)), Some(5));
        assert_eq!(layout.slot(Param::LoraA(1, LoraTarget::QProj)), None);
        assert_eq!(layout.num_elements(), adapter.num_parameters());
        let sizes: Vec<usize> = adapter.parameters_mut().iter().map(|p| p.len()).collect();
        assert_eq!(sizes, layout.sizes());
        let g = layout.zero_gradients();
        assert_eq!(g.tensors.iter().map(Vec::len).collect::<Vec<_>>(), sizes);
    }
}
