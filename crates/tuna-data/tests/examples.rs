//! From conversations to packed rows: packing keeps every example's positions, targets and
//! boundaries to itself; shuffles are seeded permutations; the validation split is disjoint and
//! complete. (That attention stays inside each example is tested on the attention kernel in
//! tuna-engine; here we check the row carries what it needs: `seq_lens` and restarting positions.)

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tuna_data::mask::IGNORE_INDEX;
use tuna_data::pack::{
    LengthPolicy, PackedBatch, pack_examples, shuffle_indices, split_validation,
};
use tuna_data::tokenize::{ChatTokenizer, TokenizedExample};
use tuna_data::{Conversation, Message};

const ASSETS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets");
const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/templates/qwen3"
);

/// Random examples: lengths 1..=max_len, labels -100 on a random prefix, ids elsewhere.
fn random_examples(rng: &mut StdRng, n: usize, max_len: usize) -> Vec<TokenizedExample> {
    (0..n)
        .map(|_| {
            let len = rng.random_range(1..=max_len);
            let input_ids: Vec<u32> = (0..len).map(|_| rng.random_range(0..151_000)).collect();
            let prompt = rng.random_range(0..=len);
            let labels = input_ids
                .iter()
                .enumerate()
                .map(|(t, &id)| if t < prompt { IGNORE_INDEX } else { id as i32 })
                .collect();
            TokenizedExample { input_ids, labels }
        })
        .collect()
}

/// Real examples: the qwen3 golden conversations through the Qwen3 tokenizer.
fn real_examples() -> Vec<TokenizedExample> {
    let tok = ChatTokenizer::from_model_dir(&std::path::Path::new(ASSETS).join("qwen3"))
        .expect("tokenizer");
    let mut paths: Vec<_> = std::fs::read_dir(FIXTURES)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    let convs: Vec<Conversation> = paths
        .iter()
        .map(|p| {
            let json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json");
            let messages: Vec<Message> =
                serde_json::from_value(json["messages"].clone()).expect("messages");
            Conversation { messages }
        })
        .collect();
    let out: Vec<TokenizedExample> = tok
        .encode_examples(&convs)
        .into_iter()
        .map(|r| r.expect("encodes"))
        .collect();
    // Parallel and sequential encoding agree.
    for (c, e) in convs.iter().zip(&out) {
        assert_eq!(&tok.encode_example(c).expect("encodes"), e);
    }
    out
}

/// Checks one packing of `examples` (in order) against what each example holds on its own.
fn check_packing(examples: &[TokenizedExample], max_tokens: usize, rows: &[PackedBatch]) {
    let mut next = examples.iter().filter(|e| !e.is_empty());
    let mut prev_row_len = None;
    for row in rows {
        assert!(
            !row.is_empty() && row.len() <= max_tokens,
            "row of {} > {max_tokens}",
            row.len()
        );
        assert_eq!(
            row.seq_lens.iter().sum::<usize>(),
            row.len(),
            "seq_lens sum to the row length"
        );
        assert_eq!(row.targets.len(), row.len());
        assert_eq!(row.position_ids.len(), row.len());
        // Greedy: the first example of this row did not fit in the previous row.
        if let Some(prev) = prev_row_len {
            assert!(
                prev + row.seq_lens[0] > max_tokens,
                "greedy packing left room: {prev} + {}",
                row.seq_lens[0]
            );
        }
        prev_row_len = Some(row.len());
        let mut start = 0;
        for &len in &row.seq_lens {
            let ex = next.next().expect("no more rows than examples");
            let want_len = ex.len().min(max_tokens);
            assert_eq!(len, want_len);
            let span = start..start + len;
            assert_eq!(
                &row.input_ids[span.clone()],
                &ex.input_ids[..len],
                "ids in order, unchanged"
            );
            for t in 0..len {
                let p = start + t;
                // Positions restart at 0 per example, so `p - position` is the example's first token:
                // a kernel masking keys before it keeps attention inside the example.
                assert_eq!(row.position_ids[p] as usize, t);
                assert_eq!(p - row.position_ids[p] as usize, start);
                // Shifted targets: token t predicts token t+1 of the same example, never the next one's.
                let want = if t + 1 < len {
                    ex.labels[t + 1]
                } else {
                    IGNORE_INDEX
                };
                assert_eq!(row.targets[p], want, "target at {t} of {len}");
            }
            start += len;
        }
        assert_eq!(
            row.trained_tokens(),
            row.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
        );
    }
    assert!(next.next().is_none(), "every example is packed");
}

#[test]
fn packing_random_examples() {
    let mut rng = StdRng::seed_from_u64(0);
    for (n, max_len, max_tokens) in [
        (50, 40, 64),
        (200, 8, 16),
        (30, 100, 100),
        (10, 1, 1),
        (40, 300, 256),
    ] {
        let examples = random_examples(&mut rng, n, max_len);
        let refs: Vec<&TokenizedExample> = examples.iter().collect();
        let rows = pack_examples(&refs, max_tokens);
        check_packing(&examples, max_tokens, &rows);
        // Loss targets are preserved: each example contributes its trained tokens (within the cut).
        let total: usize = rows.iter().map(PackedBatch::trained_tokens).sum();
        let want: usize = examples
            .iter()
            .map(|e| {
                LengthPolicy::Truncate
                    .apply(e.clone(), max_tokens)
                    .expect("kept")
                    .trained_tokens()
            })
            .sum();
        assert_eq!(total, want);
    }
}

#[test]
fn packing_real_examples() {
    let examples = real_examples();
    assert!(examples.iter().all(|e| e.trained_tokens() > 0));
    let longest = examples
        .iter()
        .map(TokenizedExample::len)
        .max()
        .expect("examples");
    for max_tokens in [longest, 2 * longest, 10_000] {
        let refs: Vec<&TokenizedExample> = examples.iter().collect();
        let rows = pack_examples(&refs, max_tokens);
        check_packing(&examples, max_tokens, &rows);
        if max_tokens == 10_000 {
            assert_eq!(rows.len(), 1, "all fit in one row");
        }
    }
}

#[test]
fn packing_edge_cases() {
    let ex = TokenizedExample {
        input_ids: vec![1, 2, 3],
        labels: vec![-100, 2, 3],
    };
    let empty = TokenizedExample {
        input_ids: vec![],
        labels: vec![],
    };
    assert!(pack_examples(&[], 8).is_empty());
    assert!(pack_examples(&[&ex], 0).is_empty());
    let rows = pack_examples(&[&empty, &ex, &empty, &ex], 6);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].input_ids, [1, 2, 3, 1, 2, 3]);
    assert_eq!(rows[0].targets, [2, 3, -100, 2, 3, -100]);
    assert_eq!(rows[0].position_ids, [0, 1, 2, 0, 1, 2]);
    assert_eq!(rows[0].seq_lens, [3, 3]);
    // An over-long example is cut to the row size; its last kept position gets no target.
    let rows = pack_examples(&[&ex, &ex], 2);
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].input_ids.as_slice(), rows[0].targets.as_slice()),
        (&[1, 2][..], &[2, -100][..])
    );
}

#[test]
fn shuffle_is_a_seeded_permutation() {
    // Pinned orders (computed by an independent Python SplitMix64 + Lemire + Fisher–Yates): a
    // change of generator would change which examples a resumed run sees.
    assert_eq!(shuffle_indices(10, 42, 0), [5, 1, 9, 6, 7, 2, 4, 0, 8, 3]);
    assert_eq!(shuffle_indices(10, 42, 1), [5, 7, 6, 8, 2, 3, 1, 9, 4, 0]);
    assert_eq!(shuffle_indices(10, 7, 0), [4, 1, 9, 2, 5, 8, 0, 7, 3, 6]);
    for n in [0, 1, 2, 3, 17, 1000] {
        for epoch in 0..3 {
            let a = shuffle_indices(n, 1234, epoch);
            assert_eq!(a, shuffle_indices(n, 1234, epoch), "deterministic");
            let mut sorted = a.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..n).collect::<Vec<_>>(), "a permutation");
        }
    }
    assert_ne!(
        shuffle_indices(1000, 1, 0),
        shuffle_indices(1000, 1, 1),
        "epochs differ"
    );
    assert_ne!(
        shuffle_indices(1000, 1, 0),
        shuffle_indices(1000, 2, 0),
        "seeds differ"
    );
    assert_ne!(shuffle_indices(1000, 1, 0), (0..1000).collect::<Vec<_>>());
    // Roughly uniform: each index lands in the first slot about equally often over many seeds.
    let mut first = [0usize; 4];
    for seed in 0..4000 {
        first[shuffle_indices(4, seed, 0)[0]] += 1;
    }
    assert!(first.iter().all(|&c| (850..1150).contains(&c)), "{first:?}");
}

#[test]
fn split_is_disjoint_and_complete() {
    // Pinned: validation = the first 3 of shuffle_indices(12, 42, u64::MAX) = [8, 6, 10].
    let (train, val) = split_validation(12, 0.25, 42);
    assert_eq!(val, [6, 8, 10]);
    assert_eq!(train, [0, 1, 2, 3, 4, 5, 7, 9, 11]);
    for n in [0, 1, 2, 5, 100, 999] {
        for fraction in [0.0, 0.001, 0.1, 0.5, 0.99, 1.0, f32::NAN, -1.0] {
            let (train, val) = split_validation(n, fraction, 9);
            assert_eq!(
                (train.clone(), val.clone()),
                split_validation(n, fraction, 9),
                "deterministic"
            );
            assert!(
                train.windows(2).all(|w| w[0] < w[1]) && val.windows(2).all(|w| w[0] < w[1]),
                "file order"
            );
            let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
            all.sort_unstable();
            assert_eq!(
                all,
                (0..n).collect::<Vec<_>>(),
                "disjoint and complete: n={n} f={fraction}"
            );
            if n >= 1 {
                assert!(!train.is_empty(), "training keeps an example");
            }
            let f = if fraction.is_finite() {
                fraction.clamp(0.0, 1.0)
            } else {
                0.0
            };
            if f > 0.0 && n >= 2 {
                assert!(!val.is_empty());
            }
            if f == 0.0 {
                assert!(val.is_empty());
            }
            if n == 100 && fraction == 0.1 {
                assert_eq!(val.len(), 10);
            }
        }
    }
}

/// Preference pairs on the real Qwen2.5 and Qwen3 templates, over every pair of the shipped DPO
/// demos (system prompts, multi-turn inputs, Chinese): both sequences start with the prompt as
/// generation renders it (`add_generation_prompt`), labels start right after it and cover the
/// whole answer as the template renders it (Qwen3: with its empty think block) up to and including
/// `<|im_end|>`; only the template's newline after it stays unlabelled. That is TRL's completion
/// (the full render after the common prefix with the prompt render) minus that newline.
#[test]
fn preference_pairs_label_exactly_the_rendered_answer() {
    for model in ["qwen2.5", "qwen3"] {
        let tok = ChatTokenizer::from_model_dir(&std::path::Path::new(ASSETS).join(model))
            .expect("tokenizer");
        let im_end = tok.token_to_id("<|im_end|>").expect("im_end");
        let newline = tok.encode("\n").expect("newline");
        for file in ["dpo_en_demo.jsonl", "dpo_zh_demo.jsonl"] {
            let path = std::path::Path::new(ASSETS).join("data").join(file);
            let pairs = tuna_data::read_preference_pairs(&path).expect("pairs");
            assert_eq!(pairs.len(), 300);
            for (i, (pair, enc)) in pairs.iter().zip(tok.encode_preferences(&pairs)).enumerate() {
                let enc = enc.expect("encodes");
                let prompt = tok.encode_prompt(&pair.input, None).expect("prompt");
                for (which, ex, answer) in [
                    ("chosen", &enc.chosen, &pair.preferred),
                    ("rejected", &enc.rejected, &pair.non_preferred),
                ] {
                    let at = format!("{model} {file} pair {i} {which}");
                    assert_eq!(&ex.input_ids[..prompt.len()], &prompt[..], "{at}: prompt");
                    let first = ex.labels.iter().position(|&l| l != IGNORE_INDEX);
                    assert_eq!(first, Some(prompt.len()), "{at}: first label");
                    let n = ex.input_ids.len();
                    assert_eq!(
                        ex.input_ids[n - 1..],
                        newline[..],
                        "{at}: ends with a newline"
                    );
                    assert_eq!(ex.labels[n - 1], IGNORE_INDEX, "{at}: newline unlabelled");
                    assert_eq!(ex.labels[n - 2], im_end as i32, "{at}: <|im_end|> labelled");
                    assert!(
                        ex.labels[prompt.len()..n - 1]
                            .iter()
                            .all(|&l| l != IGNORE_INDEX),
                        "{at}: the answer is labelled throughout"
                    );
                    let text = tok
                        .decode(&ex.input_ids[prompt.len()..n - 2], false)
                        .expect("decode");
                    let think = if model == "qwen3" {
                        "<think>\n\n</think>\n\n"
                    } else {
                        ""
                    };
                    assert_eq!(
                        text,
                        format!("{think}{}", answer.trim()),
                        "{at}: answer text"
                    );
                }
            }
        }
    }
}
