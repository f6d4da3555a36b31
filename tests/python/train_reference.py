"""The reference for `cargo xtask bench train`: LoRA training as a researcher
would otherwise run it, with HF transformers + peft and a plain PyTorch loop.

It reads the same TOML config `emh train` reads (paths relative to it) and
does the same work: `max_steps` optimizer steps of `gradient_accumulation_steps`
micro-batches of `per_device_train_batch_size` chat examples, tokenized with
the trained mask exactly as emh does (`chat_example`), cut to
`max_seq_length`; the loss of a step is the summed NLL of its trained tokens
over their count; gradients clipped to `max_grad_norm`; torch.optim.AdamW
with a linear warm-up and decay. The examples come from its own seeded
shuffle, so they are not emh's: compare tokens per second, not seconds.

Prints one JSON line: each step's seconds, real (unpadded) tokens, trained
tokens and loss, the thread count, and the seconds before the first step
(imports, model load, PEFT wrapping and tokenization).
"""
import time

STARTED = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import tomllib  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_reference import chat_example, load_model, load_tokenizer  # noqa: E402

torch.set_num_threads(max(1, os.cpu_count() or 1))


def read_chat_jsonl(path):
    """The conversations of a chat JSONL file; blank and `#` lines skipped, as emh does."""
    with open(path) as f:
        return [json.loads(l)["messages"] for l in f if l.strip() and not l.lstrip().startswith("#")]


def main():
    import peft
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    config_path = sys.argv[1]
    with open(config_path, "rb") as f:
        cfg = tomllib.load(f)
    base = os.path.dirname(os.path.abspath(config_path))
    model_path = os.path.join(base, cfg["model"])
    steps = cfg["max_steps"]
    batch_size = cfg.get("per_device_train_batch_size", 8)
    accum = cfg.get("gradient_accumulation_steps", 1)
    max_len = cfg.get("max_seq_length", 2048)
    seed = cfg.get("seed", 42)
    torch.manual_seed(seed)

    tok = load_tokenizer(model_path)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    examples = []
    for messages in read_chat_jsonl(os.path.join(base, cfg["training_file"])):
        ids, trained = chat_example(tok, messages)
        ids, trained = ids[:max_len], trained[:max_len]
        if any(trained):
            examples.append((ids, trained))

    model = load_model(model_path)
    lora = LoraConfig(
        r=cfg.get("r", 8),
        lora_alpha=cfg.get("lora_alpha", 8),
        lora_dropout=0.0,
        use_rslora=cfg.get("use_rslora", False),
        target_modules=cfg.get("target_modules", ["q_proj", "v_proj"]),
        layers_to_transform=cfg.get("layers_to_transform"),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params,
        lr=cfg.get("learning_rate", 5e-5),
        betas=(cfg.get("adam_beta1", 0.9), cfg.get("adam_beta2", 0.999)),
        eps=cfg.get("adam_epsilon", 1e-8),
        weight_decay=cfg.get("weight_decay", 0.0),
    )
    sched = get_linear_schedule_with_warmup(opt, cfg.get("warmup_steps", 0), steps)
    max_grad_norm = cfg.get("max_grad_norm", 1.0)

    # Each epoch a fresh seeded shuffle, cut into micro-batches.
    rng = random.Random(seed)
    order = []
    while len(order) < steps * accum * batch_size:
        epoch = list(range(len(examples)))
        rng.shuffle(epoch)
        order += epoch
    micro = [order[i:i + batch_size] for i in range(0, steps * accum * batch_size, batch_size)]

    def tensors(rows):
        """Right-padded ids, attention mask, and labels (-100 where not trained)."""
        width = max(len(examples[i][0]) for i in rows)
        ids, mask, labels = [], [], []
        for i in rows:
            e_ids, e_trained = examples[i]
            fill = width - len(e_ids)
            ids.append(e_ids + [pad] * fill)
            mask.append([1] * len(e_ids) + [0] * fill)
            labels.append([t if k else -100 for t, k in zip(e_ids, e_trained)] + [-100] * fill)
        return torch.tensor(ids), torch.tensor(mask), torch.tensor(labels)

    load_seconds = time.perf_counter() - STARTED
    log = []
    for step in range(steps):
        started = time.perf_counter()
        batches = [tensors(rows) for rows in micro[step * accum:(step + 1) * accum]]
        trained = sum(int((labels[:, 1:] != -100).sum()) for _, _, labels in batches)
        tokens = sum(int(mask.sum()) for _, mask, _ in batches)
        total = 0.0
        for ids, mask, labels in batches:
            logits = model(input_ids=ids, attention_mask=mask).logits
            # Logits at position p predict the token at p + 1.
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                ignore_index=-100, reduction="sum")
            (nll / trained).backward()
            total += nll.item()
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log.append({"seconds": time.perf_counter() - started, "tokens": tokens,
                    "trained_tokens": trained, "loss": total / trained})
    print(json.dumps({"steps": log, "threads": torch.get_num_threads(), "load_seconds": load_seconds,
                      "examples": len(examples), "torch": torch.__version__,
                      "transformers": transformers.__version__, "peft": peft.__version__}))


if __name__ == "__main__":
    main()
