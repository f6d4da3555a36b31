//! The rows of a generation and how requests move through them: prompt
//! passes shared by requests with the same prompt, rows refilled as
//! sequences finish, and the cache window moved to make room.

use std::collections::HashMap;
use std::rc::Rc;

use emh_text::Tokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use super::{finish_of, shared_prompts, Event, GenOutput, GenRequest};
use crate::cache::KvCache;
use crate::hooks::{HookSet, Phase};
use crate::prefill::{Batch, LogitsAt};
use crate::{Model, RuntimeError, SamplingParams};

/// A sequence being generated.
pub(crate) struct Running {
    pub(super) tokens: Vec<u32>,
    rng: ChaCha8Rng,
    /// Its slots in the cache so far: the position its next token takes.
    next_position: i64,
}

/// A prompt's pass: its keys and values (row `row` of a left-padded
/// prompt cache) and the logits of its last token.
struct PromptPass {
    cache: Rc<KvCache>,
    row: i64,
    logits: Tensor,
}

/// One generation in progress.
pub(super) struct Engine<'a> {
    model: &'a Model,
    tokenizer: &'a Tokenizer,
    requests: &'a [GenRequest],
    params: &'a SamplingParams,
    /// The request whose prompt pass each request uses.
    share: Vec<usize>,
    /// Requests not yet started, per shared prompt pass: a pass is dropped
    /// once none is left.
    waiting: HashMap<usize, usize>,
    passes: HashMap<usize, PromptPass>,
    /// The next request to start.
    next: usize,
    cache: KvCache,
    /// The request in each cache row; `None` once it finished.
    rows: Vec<Option<usize>>,
    seqs: Vec<Running>,
    outputs: Vec<Option<GenOutput>>,
    /// Decoding steps so far.
    step: usize,
}

impl<'a> Engine<'a> {
    pub(super) fn new(
        model: &'a Model,
        tokenizer: &'a Tokenizer,
        requests: &'a [GenRequest],
        params: &'a SamplingParams,
        hooks: &HookSet,
        slots: usize,
    ) -> Result<Self, RuntimeError> {
        let share = shared_prompts(requests, hooks);
        let mut waiting = HashMap::new();
        for &s in &share {
            *waiting.entry(s).or_insert(0) += 1;
        }
        let batch = slots.min(requests.len());
        let width = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
        let max_new = params.max_new_tokens;
        // A row holds at most its prompt and all but its last token, so
        // `width + max_new` slots always fit the rows present. Rows that
        // start later begin further right: the spare slots let the window
        // move left (rarely) rather than at every step.
        let spare = if requests.len() > batch {
            max_new.div_ceil(2).max(16)
        } else {
            0
        };
        let cache = model.new_cache(batch as i64, (width + max_new + spare) as i64)?;
        let seqs = requests
            .iter()
            .map(|r| Running {
                tokens: Vec::with_capacity(max_new),
                rng: ChaCha8Rng::seed_from_u64(r.seed),
                next_position: r.prompt.len() as i64,
            })
            .collect();
        Ok(Engine {
            model,
            tokenizer,
            requests,
            params,
            share,
            waiting,
            passes: HashMap::new(),
            next: 0,
            cache,
            rows: vec![None; batch],
            seqs,
            outputs: (0..requests.len()).map(|_| None).collect(),
            step: 0,
        })
    }

    /// Runs every request to its end.
    pub(super) fn run<E: From<RuntimeError>>(
        &mut self,
        hooks: &mut HookSet,
        mut on_event: impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        loop {
            self.start_waiting(hooks, &mut on_event)?;
            self.drop_finished_rows();
            if self.rows.is_empty() {
                return Ok(());
            }
            self.decode(hooks, &mut on_event)?;
        }
    }

    /// The outputs, in request order, once [`Engine::run`] is done.
    pub(super) fn outputs(self) -> Vec<GenOutput> {
        self.outputs
            .into_iter()
            .map(|o| o.expect("every request runs to its end"))
            .collect()
    }

    /// Starts waiting requests in free rows until no row is free or no
    /// request waits; a request can end at its first token, freeing its row again.
    fn start_waiting<E: From<RuntimeError>>(
        &mut self,
        hooks: &mut HookSet,
        on_event: &mut impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        loop {
            let free: Vec<usize> = (0..self.rows.len())
                .filter(|&r| self.rows[r].is_none())
                .collect();
            let take = free.len().min(self.requests.len() - self.next);
            if take == 0 {
                return Ok(());
            }
            let started: Vec<(usize, usize)> = free[..take]
                .iter()
                .copied()
                .zip(self.next..self.next + take)
                .collect();
            self.next += take;
            let mut missing: Vec<usize> = Vec::new();
            for &(_, r) in &started {
                let s = self.share[r];
                if !self.passes.contains_key(&s) && !missing.contains(&s) {
                    missing.push(s);
                }
            }
            // Prompts of one length run together, unpadded, so each pass
            // is the one the prompt would have alone.
            missing.sort_by_key(|&r| self.requests[r].prompt.len());
            for same in missing
                .chunk_by(|&a, &b| self.requests[a].prompt.len() == self.requests[b].prompt.len())
            {
                self.prompt_pass(same, hooks)?;
            }
            let need = started
                .iter()
                .map(|&(_, r)| self.requests[r].prompt.len() as i64)
                .max()
                .unwrap_or(0);
            if self.cache.len < need {
                // A longer prompt than the rows so far: they move right.
                let span = self.span();
                self.cache.move_window(span, need);
            }
            let mut logits = Vec::with_capacity(take);
            for &(row, r) in &started {
                let pass = &self.passes[&self.share[r]];
                let len = self.requests[r].prompt.len() as i64;
                self.cache.place(row as i64, &pass.cache, pass.row, len);
                logits.push(pass.logits.shallow_clone());
                self.rows[row] = Some(r);
            }
            for &(_, r) in &started {
                let s = self.share[r];
                let left = self.waiting.get_mut(&s).expect("counted at the start");
                *left -= 1;
                if *left == 0 {
                    self.passes.remove(&s);
                }
            }
            self.choose(&Tensor::stack(&logits, 0), &started, on_event)?;
        }
    }

    /// Runs the prompts of requests `reps` in one pass and keeps each one's
    /// keys, values and last logits for the requests sharing it.
    fn prompt_pass(&mut self, reps: &[usize], hooks: &mut HookSet) -> Result<(), RuntimeError> {
        let prompts: Vec<Vec<u32>> = reps
            .iter()
            .map(|&r| self.requests[r].prompt.clone())
            .collect();
        let batch = Batch::left_padded(&prompts, self.tokenizer.pad_id, self.model.device);
        let [n, width] = batch.ids.size()[..] else {
            unreachable!("a batch is [rows, width]")
        };
        let mut cache = self.model.new_cache(n, width)?;
        hooks.set_rows(reps);
        let logits = self.model.forward(
            &batch.ids,
            &batch.positions,
            &mut cache,
            hooks,
            Phase::Prefill,
            LogitsAt::Last,
        )?;
        let cache = Rc::new(cache);
        for (i, &r) in reps.iter().enumerate() {
            let pass = PromptPass {
                cache: Rc::clone(&cache),
                row: i as i64,
                logits: logits.get(i as i64).get(0),
            };
            self.passes.insert(r, pass);
        }
        Ok(())
    }

    /// The most slots any row holds.
    fn span(&self) -> i64 {
        self.rows
            .iter()
            .flatten()
            .map(|&r| self.seqs[r].next_position)
            .max()
            .unwrap_or(0)
    }

    /// Removes the rows of finished sequences (only free rows are left once
    /// no request waits).
    fn drop_finished_rows(&mut self) {
        let kept = self.rows.iter().filter(|r| r.is_some()).count();
        if kept == self.rows.len() {
            return;
        }
        // Rows past the first `kept` fill the holes among them, so a
        // finished row costs at most one row's copy, and each source lies
        // after its destination: the cache moves them in place. A row's
        // tokens do not depend on where it sits in the batch.
        let mut movers = (kept..self.rows.len()).filter(|&r| self.rows[r].is_some());
        let order: Vec<usize> = (0..kept)
            .map(|i| match self.rows[i] {
                Some(_) => i,
                None => movers.next().expect("one running row per hole"),
            })
            .collect();
        self.rows = order.iter().map(|&r| self.rows[r]).collect();
        if kept > 0 {
            let order: Vec<i64> = order.iter().map(|&r| r as i64).collect();
            self.cache.select_rows(&order);
        }
    }

    /// One token for every row.
    fn decode<E: From<RuntimeError>>(
        &mut self,
        hooks: &mut HookSet,
        on_event: &mut impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if self.cache.len == self.cache.capacity {
            // Every row leaves slots on the left once it began later than
            // the oldest row finished: the window moves back to slot 0.
            let span = self.span();
            self.cache.move_window(span, span);
        }
        let running: Vec<(usize, usize)> = self
            .rows
            .iter()
            .enumerate()
            .map(|(row, r)| (row, r.expect("finished rows were dropped")))
            .collect();
        let reqs: Vec<usize> = running.iter().map(|&(_, r)| r).collect();
        let ids: Vec<i64> = reqs
            .iter()
            .map(|&r| *self.seqs[r].tokens.last().expect("one token per step") as i64)
            .collect();
        let pos: Vec<i64> = reqs.iter().map(|&r| self.seqs[r].next_position).collect();
        for &r in &reqs {
            self.seqs[r].next_position += 1;
        }
        let n = reqs.len() as i64;
        let device = self.model.device;
        hooks.set_rows(&reqs);
        let logits = self.model.forward(
            &Tensor::from_slice(&ids).view([n, 1]).to_device(device),
            &Tensor::from_slice(&pos).view([n, 1]).to_device(device),
            &mut self.cache,
            hooks,
            Phase::Decode { step: self.step },
            LogitsAt::Last,
        )?;
        self.step += 1;
        self.choose(&logits.squeeze_dim(1), &running, on_event)
    }

    /// Chooses the next token of each (row, request) from `logits` `[rows,
    /// vocab]`, and ends the sequences that are done.
    fn choose<E: From<RuntimeError>>(
        &mut self,
        logits: &Tensor,
        running: &[(usize, usize)],
        on_event: &mut impl FnMut(Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let uniform: Vec<f64> = running
            .iter()
            .map(|&(_, r)| self.seqs[r].rng.random())
            .collect();
        let chosen = self.params.choose(logits, &uniform);
        let chosen: Vec<i64> = Vec::try_from(&chosen).map_err(RuntimeError::from)?;
        on_event(Event::Step(running.len()))?;
        for (&(row, r), &tok) in running.iter().zip(&chosen) {
            let s = &mut self.seqs[r];
            s.tokens.push(tok as u32);
            let Some((finish, text)) = finish_of(s, tok as u32, self.tokenizer, self.params)?
            else {
                continue;
            };
            self.rows[row] = None;
            let out = self.outputs[r].insert(GenOutput {
                tokens: std::mem::take(&mut s.tokens),
                text,
                finish,
            });
            on_event(Event::Done(r, out))?;
        }
        Ok(())
    }
}
