//! Label masks: which characters of a rendered conversation the model is trained to produce.
//!
//! Works for any chat template, without `{% generation %}` markers: the template is rendered for
//! growing prefixes of the conversation, and comparing each prefix render with the full render
//! gives where every message's text sits in the full render ([`RenderedChat::segments`], which
//! tile it). Inside a trained assistant message's segment, the trained span starts after the
//! generation prompt (the text `add_generation_prompt=true` appends, `<|im_start|>assistant\n` in
//! ChatML) and ends after the segment's last end-of-turn marker (`<|im_end|>`), so the newline the
//! template writes after the marker is not trained: at inference generation stops at the marker.
//!
//! The spans are taken from the *full* render, so they hold exactly what the template writes for
//! that turn. Qwen3's template rewrites assistant turns by position: it drops the `<think>` part
//! of turns before the last user message and writes an (empty) `<think>\n\n</think>\n\n` block into
//! the turns after it. A prefix render that ends with an assistant turn renders that turn as a
//! last turn, so it is not a prefix of the full render there; the boundary is then found by
//! aligning the end of the prefix render with the full render (see [`segment_end`]).
//!
//! Character spans become token labels in [`labels_for_spans`]: a token is labelled when its
//! offsets overlap a span, the rule of transformers' `return_assistant_tokens_mask`.

use std::ops::Range;

use crate::conversation::{Conversation, Message, Role};
use crate::error::{Error, Result};
use crate::template::ChatTemplate;

/// Label of a position that carries no loss (PyTorch's `CrossEntropyLoss` `ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

/// A conversation rendered for training, with where each message and each trained span sit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    /// The full render (`add_generation_prompt=false`).
    pub text: String,
    /// Byte range of each message's text in `text`, one per message, in order. They tile
    /// `0..text.len()`: the first starts at 0 (text the template writes before any message, like
    /// Qwen2.5's default system prompt, belongs to the first message), each starts where the
    /// previous one ends, the last ends at `text.len()`.
    pub segments: Vec<Range<usize>>,
    /// Byte ranges to train on: one per assistant message with `trained == true`, in order.
    pub trained_spans: Vec<Range<usize>>,
}

/// Renders `conv` and finds each message's segment and the trained spans.
///
/// `end_of_turn` is the marker that ends an assistant turn (the tokenizer's eos token,
/// `<|im_end|>` for Qwen); a trained span ends after its last occurrence in the turn's segment,
/// or at the segment's end when the template writes none.
pub fn render_for_training(
    template: &ChatTemplate,
    conv: &Conversation,
    end_of_turn: &str,
) -> Result<RenderedChat> {
    let msgs = &conv.messages;
    let full = template.render(msgs, false, None)?;
    let n = msgs.len();

    // prefix[j] = render(msgs[..j]) for j in 1..n (prefix[0] stays empty: see `i == 0` below).
    let mut prefix: Vec<String> = vec![String::new(); n];
    // Segment boundaries: bounds[j] = where message j starts; bounds[n] = end.
    let mut bounds = vec![0usize; n + 1];
    bounds[n] = full.len();
    for j in 1..n {
        let r = template.render(&msgs[..j], false, None)?;
        let b = segment_end(&full, &r);
        if b < bounds[j - 1] {
            return Err(Error::Example(format!(
                "cannot locate where `messages[{}]` starts in the chat template's render (the template reorders messages?)",
                j
            )));
        }
        bounds[j] = b;
        prefix[j] = r;
    }
    let segments: Vec<Range<usize>> = (0..n).map(|j| bounds[j]..bounds[j + 1]).collect();

    let mut trained_spans = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.role != Role::Assistant || !m.trained {
            continue;
        }
        let seg = segments[i].clone();
        let seg_text = &full[seg.clone()];
        let start = if i == 0 {
            // Templates read `messages[0]` and cannot render an empty prefix. Take the generation
            // prompt that follows a probe user message and find it in the first segment, after
            // what the template writes before any message (Qwen2.5's default system prompt).
            let probe = [Message::new(Role::User, "?")];
            let with_prompt = template.render(&probe, true, None)?;
            let without = template.render(&probe, false, None)?;
            let gen_prompt = with_prompt
                .strip_prefix(without.as_str())
                .unwrap_or_default();
            match seg_text.find(gen_prompt).filter(|_| !gen_prompt.is_empty()) {
                Some(k) => seg.start + k + gen_prompt.len(),
                None => {
                    return Err(Error::Example(
                        "`messages[0]` is an assistant message and the chat template's generation prompt is not found before it".into(),
                    ));
                }
            }
        } else {
            // The generation prompt: what `add_generation_prompt=true` appends to the prefix render.
            let with_prompt = template.render(&msgs[..i], true, None)?;
            match with_prompt.strip_prefix(prefix[i].as_str()) {
                Some(gen_prompt) => seg.start + common_prefix_len(seg_text, gen_prompt),
                // The prompt render rewrote earlier text; fall back to comparing with the full render.
                None => common_prefix_len(&full, &with_prompt).clamp(seg.start, seg.end),
            }
        };
        let end = match full[start..seg.end].rfind(end_of_turn) {
            Some(p) => start + p + end_of_turn.len(),
            None => seg.end,
        };
        if start >= end {
            return Err(Error::Example(format!(
                "`messages[{i}]` (assistant) renders to no text after the generation prompt"
            )));
        }
        trained_spans.push(start..end);
    }
    Ok(RenderedChat {
        text: full,
        segments,
        trained_spans,
    })
}

/// Where the text of a prefix render `r` ends inside the full render `full`.
///
/// When `r` is a prefix of `full` (most templates), that is `r.len()`. Otherwise the template
/// rendered the prefix's last message differently as a last message (Qwen3's think blocks): the
/// renders agree up to `d`, then the full render goes on with a tail of the prefix render's
/// rewritten turn (its content and end marker). The end is `d` plus the longest prefix of
/// `full[d..]` that is a suffix of `r[d..]`.
fn segment_end(full: &str, r: &str) -> usize {
    let d = common_prefix_len(full, r);
    if d == r.len() {
        return d;
    }
    let tail = &r.as_bytes()[d..];
    let rest = &full.as_bytes()[d..];
    // Longest prefix of `pattern` that is a suffix of `tail`: run the KMP automaton of `pattern`
    // over `tail`. The result ends on a char boundary of `full`: its last bytes equal the
    // complete last character of `r`, and UTF-8 is self-synchronizing.
    let pattern = &rest[..rest.len().min(tail.len())];
    d + longest_prefix_that_is_suffix(pattern, tail)
}

/// Length of the longest prefix of `pattern` that is a suffix of `text` (KMP).
fn longest_prefix_that_is_suffix(pattern: &[u8], text: &[u8]) -> usize {
    if pattern.is_empty() {
        return 0;
    }
    // fail[i]: length of the longest proper prefix of pattern[..=i] that is also its suffix.
    let mut fail = vec![0usize; pattern.len()];
    let mut k = 0;
    for i in 1..pattern.len() {
        while k > 0 && pattern[i] != pattern[k] {
            k = fail[k - 1];
        }
        if pattern[i] == pattern[k] {
            k += 1;
        }
        fail[i] = k;
    }
    let mut state = 0;
    for &c in text {
        if state == pattern.len() {
            state = fail[state - 1];
        }
        while state > 0 && c != pattern[state] {
            state = fail[state - 1];
        }
        if c == pattern[state] {
            state += 1;
        }
    }
    state
}

/// Length in bytes of the longest common prefix of `a` and `b`, cut back to a char boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    let mut n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
    while !a.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// Labels for `ids` (unshifted, HF convention): the token id where the token's byte `offsets`
/// overlap one of `spans` (sorted, disjoint), [`IGNORE_INDEX`] elsewhere.
///
/// Overlap rather than containment: a token that straddles a span edge (byte-level BPE can merge
/// the generation prompt's last `\n` with newlines that start the reply) is trained, as in
/// transformers' `return_assistant_tokens_mask`.
pub fn labels_for_spans(
    ids: &[u32],
    offsets: &[(usize, usize)],
    spans: &[Range<usize>],
) -> Vec<i32> {
    debug_assert_eq!(ids.len(), offsets.len());
    let mut labels = vec![IGNORE_INDEX; ids.len()];
    let mut s = 0;
    for (t, &(start, end)) in offsets.iter().enumerate() {
        while s < spans.len() && start >= spans[s].end {
            s += 1;
        }
        if s == spans.len() {
            break;
        }
        // An empty-offset token (none in byte-level BPE) counts as overlapping when inside.
        let overlaps = end > spans[s].start || (start == end && start >= spans[s].start);
        if overlaps {
            // Ids above i32::MAX cannot occur: vocabularies are far smaller.
            labels[t] = ids[t] as i32;
        }
    }
    labels
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmp_longest_prefix_suffix() {
        assert_eq!(
            longest_prefix_that_is_suffix(b"X<e>\n<u>", b"<t>\n\n</t>\n\nX<e>\n"),
            5
        );
        assert_eq!(longest_prefix_that_is_suffix(b"abc", b"zzz"), 0);
        assert_eq!(longest_prefix_that_is_suffix(b"aab", b"aaa"), 2);
        assert_eq!(longest_prefix_that_is_suffix(b"ab", b"xab"), 2);
        assert_eq!(longest_prefix_that_is_suffix(b"abab", b"abab"), 4);
        // Brute force over small alphabets.
        let words: Vec<Vec<u8>> = (0..200u32)
            .map(|i| (0..(i % 7)).map(|k| b'a' + ((i >> k) & 1) as u8).collect())
            .collect();
        for p in &words {
            for t in &words {
                let want = (0..=p.len().min(t.len()))
                    .rev()
                    .find(|&m| p[..m] == t[t.len() - m..])
                    .unwrap_or(0);
                assert_eq!(longest_prefix_that_is_suffix(p, t), want, "{p:?} {t:?}");
            }
        }
    }

    #[test]
    fn segment_end_prefix_and_rewritten() {
        assert_eq!(segment_end("abcdef", "abc"), 3);
        // The prefix render wrote a think block into its last turn; the full render did not.
        let full = "<s>A\nX<e>\n<u>B<e>\n";
        let r = "<s>A\n<t></t>X<e>\n";
        assert_eq!(segment_end(full, r), "<s>A\nX<e>\n".len());
        // Common prefix ends inside a multi-byte char: cut back to its start.
        assert_eq!(common_prefix_len("aé", "aè"), 1);
    }

    #[test]
    fn labels_overlap_rule() {
        let ids = [10, 11, 12, 13, 14];
        let offsets = [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)];
        // Span 3..7 touches tokens 1 (2..4), 2 and 3 (6..8).
        assert_eq!(
            labels_for_spans(&ids, &offsets, std::slice::from_ref(&(3..7))),
            vec![-100, 11, 12, 13, -100]
        );
        assert_eq!(
            labels_for_spans(&ids, &offsets, &[0..2, 8..10]),
            vec![10, -100, -100, -100, 14]
        );
        assert_eq!(labels_for_spans(&ids, &offsets, &[]), vec![-100; 5]);
        assert_eq!(
            labels_for_spans(&ids, &offsets, std::slice::from_ref(&(4..4))),
            vec![-100; 5]
        );
    }
}
