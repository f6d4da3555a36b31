//! Exact log-probabilities of many continuations of one prompt.
//!
//! The continuations share prefixes (the answers "1", "10" and "100" share
//! "1"), so they are laid out as a trie and scored level by level: the prompt
//! is run once, then each level runs one token for every trie node that has
//! children, with the KV cache rows copied from the parent nodes.

use emh_text::Tokenizer;
use tch::{Kind, Tensor};

use crate::hooks::{HookSet, Phase};
use crate::prefill::LogitsAt;
use crate::{Model, RuntimeError};

struct Node {
    token: u32,
    depth: usize,
    children: Vec<usize>,
}

/// The keys and values of the prompt scored last, so that a next prompt
/// beginning with the same tokens (judge prompts of one template, answers
/// to one question) runs only the tokens after them.
#[derive(Default)]
pub struct PromptPrefix {
    ids: Vec<u32>,
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Prompt tokens taken from the previous prompt rather than run, in total.
    pub reused: usize,
}

impl PromptPrefix {
    /// How many leading tokens of `prompt` can be taken from the last
    /// prompt: all that match, but the last (its logits are needed).
    fn usable(&self, prompt: &[u32]) -> usize {
        let same = self
            .ids
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        same.min(prompt.len() - 1)
    }
}

/// The answers "0".."100", each followed by one end-of-answer token, as
/// token sequences: what a 0–100 rating is scored over. Most tokenizers
/// split numbers into digits, so one next-token distribution sees only 0–9.
pub struct NumberAnswers {
    continuations: Vec<Vec<u32>>,
    /// `answer_of[i]` is the number continuation `i` spells.
    answer_of: Vec<usize>,
}

impl NumberAnswers {
    /// Every answer with each of the tokenizer's end tokens; `leading_space`
    /// for answers that follow a prefix such as "Score:".
    pub fn new(tokenizer: &Tokenizer, leading_space: bool) -> Result<Self, RuntimeError> {
        if tokenizer.eos_ids.is_empty() {
            return Err(RuntimeError::Request(
                "the tokenizer names no end-of-answer token".into(),
            ));
        }
        let space = if leading_space { " " } else { "" };
        let mut continuations = Vec::new();
        let mut answer_of = Vec::new();
        for n in 0..=100usize {
            let digits = tokenizer.encode(&format!("{space}{n}"), false)?;
            for &end in &tokenizer.eos_ids {
                let mut seq = digits.clone();
                seq.push(end);
                continuations.push(seq);
                answer_of.push(n);
            }
        }
        Ok(NumberAnswers {
            continuations,
            answer_of,
        })
    }
}

impl Model {
    /// The exact probability of each answer 0..=100 after `prompt` (scored
    /// together in a trie), and the most likely first token; `last` holds
    /// the previous prompt's pass and takes this one's.
    pub fn number_probs(
        &self,
        prompt: &[u32],
        answers: &NumberAnswers,
        last: &mut PromptPrefix,
    ) -> Result<(Vec<f64>, u32), RuntimeError> {
        let (logps, first) = self.score_continuations(prompt, &answers.continuations, last)?;
        let mut probs = vec![0f64; 101];
        for (lp, &n) in logps.iter().zip(&answers.answer_of) {
            probs[n] += lp.exp();
        }
        Ok((probs, first.argmax(0, false).int64_value(&[]) as u32))
    }

    /// log P(continuation | prompt) for every continuation, and the
    /// log-probabilities of the first token after the prompt; the prompt's
    /// leading tokens shared with `last`'s are not run again.
    pub fn score_continuations(
        &self,
        prompt: &[u32],
        continuations: &[Vec<u32>],
        last: &mut PromptPrefix,
    ) -> Result<(Vec<f64>, Tensor), RuntimeError> {
        if prompt.is_empty() {
            return Err(RuntimeError::Request("the prompt has no tokens".into()));
        }
        if let Some(i) = continuations.iter().position(Vec::is_empty) {
            return Err(RuntimeError::Request(format!("continuation {i} is empty")));
        }
        // Build the trie; node 0 is the prompt.
        let mut nodes = vec![Node {
            token: 0,
            depth: 0,
            children: Vec::new(),
        }];
        let mut ends = Vec::with_capacity(continuations.len());
        for c in continuations {
            let mut at = 0;
            for &tok in c {
                at = match nodes[at]
                    .children
                    .iter()
                    .find(|&&ch| nodes[ch].token == tok)
                {
                    Some(&ch) => ch,
                    None => {
                        let id = nodes.len();
                        let depth = nodes[at].depth + 1;
                        nodes.push(Node {
                            token: tok,
                            depth,
                            children: Vec::new(),
                        });
                        nodes[at].children.push(id);
                        id
                    }
                };
            }
            ends.push(at);
        }
        let max_depth = nodes.iter().map(|n| n.depth).max().unwrap_or(0);
        let mut logp = vec![0f64; nodes.len()];
        let mut hooks = HookSet::new();
        let p = prompt.len() as i64;
        let mut cache = self.new_cache(1, p + max_depth as i64)?;
        let reuse = last.usable(prompt) as i64;
        if reuse > 0 {
            cache.load_prefix(&last.k, &last.v, reuse);
            last.reused += reuse as usize;
        }
        let ids: Vec<i64> = prompt[reuse as usize..].iter().map(|&t| t as i64).collect();
        let first = tch::no_grad(|| -> Result<Tensor, RuntimeError> {
            let logits = self.forward(
                &Tensor::from_slice(&ids)
                    .view([1, p - reuse])
                    .to_device(self.device),
                &Tensor::arange_start(reuse, p, (Kind::Int64, self.device)).view([1, p - reuse]),
                &mut cache,
                &mut hooks,
                Phase::Prefill,
                LogitsAt::Last,
            )?;
            // Kept before the trie reorders the cache's rows.
            (last.k, last.v) = cache.prefix(p);
            last.ids = prompt.to_vec();
            let mut level_rows = vec![0usize];
            let mut level_lp = logits.view([1, -1]).log_softmax(-1, Kind::Float);
            let first = level_lp.get(0).to_device(tch::Device::Cpu);
            for depth in 1..=max_depth {
                // Children of the nodes expanded at the previous level.
                let lp_host = level_lp.to_device(tch::Device::Cpu);
                let mut next_rows = Vec::new();
                let mut parent_row = Vec::new();
                for (row, &node) in level_rows.iter().enumerate() {
                    let row_lp = lp_host.get(row as i64);
                    for &ch in &nodes[node].children {
                        logp[ch] = logp[node] + row_lp.double_value(&[nodes[ch].token as i64]);
                        if !nodes[ch].children.is_empty() {
                            next_rows.push(ch);
                            parent_row.push(row as i64);
                        }
                    }
                }
                if next_rows.is_empty() {
                    break;
                }
                cache.select_rows(&parent_row);
                let n = next_rows.len() as i64;
                let toks: Vec<i64> = next_rows.iter().map(|&r| nodes[r].token as i64).collect();
                let pos = Tensor::full([n, 1], p + depth as i64 - 1, (Kind::Int64, self.device));
                let logits = self.forward(
                    &Tensor::from_slice(&toks)
                        .view([n, 1])
                        .to_device(self.device),
                    &pos,
                    &mut cache,
                    &mut hooks,
                    Phase::Decode { step: depth - 1 },
                    LogitsAt::Last,
                )?;
                level_lp = logits.view([n, -1]).log_softmax(-1, Kind::Float);
                level_rows = next_rows;
            }
            Ok(first)
        })?;
        Ok((ends.iter().map(|&e| logp[e]).collect(), first))
    }
}

#[cfg(test)]
mod tests {
    use super::PromptPrefix;
    use crate::hooks::HookSet;
    use crate::test_model;

    #[test]
    fn trie_scores_equal_full_forward_passes() {
        let (model, tok) = test_model::load();
        let prompt = tok
            .encode(
                "<|im_start|>user\nPick a number from 0 to 100.<|im_end|>\n<|im_start|>assistant\n",
                false,
            )
            .unwrap();
        let conts: Vec<Vec<u32>> = ["7", "42", "100", "10", "I think"]
            .iter()
            .map(|s| {
                let mut ids = tok.encode(s, false).unwrap();
                ids.push(tok.eos_ids[0]);
                ids
            })
            .collect();
        let mut last = PromptPrefix::default();
        let (scores, first) = model
            .score_continuations(&prompt, &conts, &mut last)
            .unwrap();
        // The same prompt again, all but its last token taken from the first pass.
        let (again, _) = model
            .score_continuations(&prompt, &conts, &mut last)
            .unwrap();
        assert_eq!(last.reused, prompt.len() - 1);
        for (a, b) in scores.iter().zip(&again) {
            assert!(
                (a - b).abs() < 1e-4,
                "{a} after a reused prefix, {b} without"
            );
        }
        assert_eq!(first.size(), vec![model.config.vocab_size as i64]);
        for (c, s) in conts.iter().zip(&scores) {
            let full: Vec<u32> = prompt.iter().chain(c).copied().collect();
            let (logits, _) = model
                .logits(std::slice::from_ref(&full), tok.pad_id, &mut HookSet::new())
                .unwrap();
            let lp = logits.get(0).log_softmax(-1, tch::Kind::Float);
            let brute: f64 = c
                .iter()
                .enumerate()
                .map(|(k, &t)| lp.double_value(&[(prompt.len() + k - 1) as i64, t as i64]))
                .sum();
            assert!(
                (brute - s).abs() < 1e-3,
                "{c:?}: trie {s} vs brute force {brute}"
            );
        }
    }
}
