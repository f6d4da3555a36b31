use super::*;
use crate::hooks::{Capture, OnRows, Phase, ScaleBy, Site, Span};
use crate::test_model;

/// Every request at once, in as many rows as there are requests.
fn run_all(
    model: &Model,
    tok: &Tokenizer,
    reqs: &[GenRequest],
    params: &SamplingParams,
    hooks: &mut HookSet,
) -> Vec<GenOutput> {
    run_in(model, tok, reqs, params, hooks, reqs.len())
}

/// Every request, `slots` at a time.
fn run_in(
    model: &Model,
    tok: &Tokenizer,
    reqs: &[GenRequest],
    params: &SamplingParams,
    hooks: &mut HookSet,
    slots: usize,
) -> Vec<GenOutput> {
    generate(model, tok, reqs, params, hooks, slots, |_| {
        Ok::<_, RuntimeError>(())
    })
    .unwrap()
}

fn chat(tok: &Tokenizer, text: &str) -> Vec<u32> {
    let t = format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n");
    tok.encode(&t, false).unwrap()
}

#[test]
fn left_padding_does_not_change_a_prompts_logits() {
    let (model, tok) = test_model::load();
    let short = tok.encode("Paris is the capital of", false).unwrap();
    let long = tok
        .encode(
            "A much longer prompt that forces the short one to be padded on the left side.",
            false,
        )
        .unwrap();
    let (alone, _) = model
        .logits(
            std::slice::from_ref(&short),
            tok.pad_id,
            &mut HookSet::new(),
        )
        .unwrap();
    let (batched, batch) = model
        .logits(&[long, short.clone()], tok.pad_id, &mut HookSet::new())
        .unwrap();
    let width = batch.ids.size()[1];
    let n = short.len() as i64;
    let padded = batched.get(1).narrow(0, width - n, n);
    let diff = (padded - alone.get(0)).abs().max().double_value(&[]);
    assert!(diff < 1e-4, "padding changed logits by {diff}");
}

#[test]
fn same_seed_gives_same_tokens_and_another_seed_differs() {
    let (model, tok) = test_model::load();
    let params = SamplingParams {
        max_new_tokens: 24,
        temperature: 1.0,
        top_p: 0.95,
        top_k: 100,
        ..Default::default()
    };
    let reqs = |seed: u64| {
        vec![
            GenRequest {
                prompt: chat(&tok, "Tell me a story."),
                seed,
            },
            GenRequest {
                prompt: chat(&tok, "hey I feel bored"),
                seed: seed + 1,
            },
        ]
    };
    let run = |seed| {
        run_all(&model, &tok, &reqs(seed), &params, &mut HookSet::new())
            .into_iter()
            .map(|o| o.tokens)
            .collect::<Vec<_>>()
    };
    let first = run(7);
    assert_eq!(first, run(7));
    assert_ne!(first, run(1000));
}

#[test]
fn hooks_run_at_prefill_and_every_decode_step() {
    let (model, tok) = test_model::load();
    let capture = Capture::new();
    let mut hooks = HookSet::new();
    hooks.add(Site::ResidPost(2), capture.clone());
    let params = SamplingParams {
        max_new_tokens: 4,
        ignore_eos: true,
        greedy: true,
        ..Default::default()
    };
    let req = GenRequest {
        prompt: chat(&tok, "Hello"),
        seed: 0,
    };
    let out = run_all(
        &model,
        &tok,
        std::slice::from_ref(&req),
        &params,
        &mut hooks,
    );
    assert_eq!(out[0].tokens.len(), 4);
    let phases: Vec<Phase> = capture.take().into_iter().map(|c| c.phase).collect();
    // The last token needs no forward pass of its own.
    assert_eq!(
        phases,
        vec![
            Phase::Prefill,
            Phase::Decode { step: 0 },
            Phase::Decode { step: 1 },
            Phase::Decode { step: 2 }
        ]
    );
}

#[test]
fn stop_strings_end_a_sequence_and_cut_its_text() {
    let (model, tok) = test_model::load();
    let params = SamplingParams {
        max_new_tokens: 40,
        greedy: true,
        stop: vec!["Paris".into()],
        ..Default::default()
    };
    let req = GenRequest {
        prompt: chat(&tok, "What is the capital of France?"),
        seed: 0,
    };
    let out = run_all(&model, &tok, &[req], &params, &mut HookSet::new());
    assert_eq!(out[0].finish, FinishReason::Stop);
    assert_eq!(out[0].text, "The capital of France is ");
}

#[test]
fn finished_sequences_leave_the_batch_without_changing_the_others() {
    let (model, tok) = test_model::load();
    let params = SamplingParams {
        max_new_tokens: 30,
        greedy: true,
        ..Default::default()
    };
    let long = GenRequest {
        prompt: chat(&tok, "Write a long essay about the ocean."),
        seed: 0,
    };
    let short = GenRequest {
        prompt: chat(&tok, "Say yes."),
        seed: 0,
    };
    let alone = run_all(
        &model,
        &tok,
        std::slice::from_ref(&long),
        &params,
        &mut HookSet::new(),
    );
    let both = run_all(&model, &tok, &[short, long], &params, &mut HookSet::new());
    assert!(
        both[0].tokens.len() < both[1].tokens.len(),
        "the short answer ends first"
    );
    assert_eq!(both[1].tokens, alone[0].tokens);
}

/// Requests of mixed prompt lengths: several samples of some prompts.
fn mixed_requests(tok: &Tokenizer) -> Vec<GenRequest> {
    let prompts = [
        "Say yes.",
        "Write a long essay about the ocean and the creatures that live in it.",
        "hey I feel bored",
        "Name a colour.",
    ];
    let mut reqs = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        for j in 0..3u64 {
            reqs.push(GenRequest {
                prompt: chat(tok, p),
                seed: 100 * i as u64 + j,
            });
        }
    }
    reqs
}

#[test]
fn rows_refilled_as_sequences_finish_give_the_tokens_of_each_request_alone() {
    let (model, tok) = test_model::load();
    let params = SamplingParams {
        max_new_tokens: 24,
        temperature: 1.0,
        ..Default::default()
    };
    let reqs = mixed_requests(&tok);
    let alone: Vec<Vec<u32>> = reqs
        .iter()
        .map(|r| {
            run_all(
                &model,
                &tok,
                std::slice::from_ref(r),
                &params,
                &mut HookSet::new(),
            )
            .remove(0)
            .tokens
        })
        .collect();
    // Three rows for twelve requests: rows are refilled, a longer prompt
    // arrives after shorter ones, and answers end at different lengths.
    let mut started = 0;
    let mut steps = Vec::new();
    let out = generate(&model, &tok, &reqs, &params, &mut HookSet::new(), 3, |e| {
        match e {
            Event::Step(n) => steps.push(n),
            Event::Done(..) => started += 1,
        }
        Ok::<_, RuntimeError>(())
    })
    .unwrap();
    assert_eq!(started, reqs.len());
    assert!(steps.iter().all(|&n| n <= 3), "{steps:?}");
    let lengths: Vec<usize> = out.iter().map(|o| o.tokens.len()).collect();
    assert!(
        lengths.iter().any(|&l| l < params.max_new_tokens),
        "some answers end early: {lengths:?}"
    );
    for (i, (o, a)) in out.iter().zip(&alone).enumerate() {
        assert_eq!(&o.tokens, a, "request {i}");
    }
    // Rows stayed full while requests waited: fewer steps than one batch after another.
    let batched: usize = lengths.chunks(3).map(|c| c.iter().max().unwrap() + 1).sum();
    assert!(
        steps.len() < batched,
        "{} steps, {batched} in batches",
        steps.len()
    );
}

#[test]
fn samples_of_one_prompt_share_its_pass_and_keep_their_tokens() {
    let (model, tok) = test_model::load();
    let params = SamplingParams {
        max_new_tokens: 16,
        temperature: 1.0,
        ..Default::default()
    };
    let reqs = mixed_requests(&tok);
    let share = shared_prompts(&reqs, &HookSet::new());
    assert_eq!(share, vec![0, 0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 9]);
    let capture = Capture::new();
    let mut hooks = HookSet::new();
    hooks.add(Site::ResidPost(1), capture.clone());
    let shared = run_in(&model, &tok, &reqs, &params, &mut hooks, 12);
    let mut prompt_rows: Vec<usize> = capture
        .take()
        .into_iter()
        .filter(|c| c.phase == Phase::Prefill)
        .flat_map(|c| c.rows)
        .collect();
    prompt_rows.sort();
    assert_eq!(prompt_rows, vec![0, 3, 6, 9], "one prompt pass per prompt");
    // Distinct hooks on each request keep every pass its own.
    let mut own = HookSet::new();
    for r in 0..reqs.len() {
        own.add(
            Site::ResidPost(1),
            OnRows::new(&[r], ScaleBy::new(1.0, Span::All)),
        );
    }
    assert_eq!(
        shared_prompts(&reqs, &own),
        (0..reqs.len()).collect::<Vec<_>>()
    );
    let unshared = run_in(&model, &tok, &reqs, &params, &mut own, 12);
    for (i, (a, b)) in shared.iter().zip(&unshared).enumerate() {
        assert_eq!(a.tokens, b.tokens, "request {i}");
    }
    let distinct: std::collections::BTreeSet<&Vec<u32>> =
        shared.iter().map(|o| &o.tokens).collect();
    assert!(distinct.len() > 4, "samples of one prompt differ");
}
