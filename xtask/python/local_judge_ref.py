"""The reference method beside `emh judge --judge local` in `cargo xtask bench local-judge`.

For question files whose judge prompts use `{question}` and `{answer}`
(not `{reference}`), such as the bench's `data/questions/general.yaml`.

HF transformers on the same judge model, scoring the same judgments the way
a script would: for each answer and metric, fill the judge prompt, render it
through the chat template, add the answer prefix, run the prompt once, then
score every answer "0".."100" followed by the end token as one batch of
continuations over copies of the prompt's KV cache. The score is the
expected answer given that it is a number (constrained mode). Prints one JSON
object: seconds of the judging loop, judgments, how many of them had an emh
score in the CSV to compare with and the largest difference, threads and
library versions.
"""
import argparse
import csv
import json
import re
import time

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from end_tokens import end_tokens

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--questions", required=True, help="the run's questions.json")
ap.add_argument("--answers", required=True, help="the run's answers, from `emh export-csv`")
ap.add_argument("--metrics", required=True, help="comma-separated judge prompt names")
ap.add_argument("--answer-prefix", default="")
a = ap.parse_args()

tok = AutoTokenizer.from_pretrained(a.model)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
eos = end_tokens(tok, model)
prompts = {q["id"]: q["judge_prompts"] for q in json.load(open(a.questions))}
rows = list(csv.DictReader(open(a.answers, newline="")))
metrics = a.metrics.split(",")

# An answer after a prefix such as "Score:" starts with a space.
space = " " if a.answer_prefix and not a.answer_prefix[-1].isspace() else ""
continuations, numbers = [], []
for n in range(101):
    digits = tok.encode(f"{space}{n}", add_special_tokens=False)
    for end in eos:
        continuations.append(digits + [end])
        numbers.append(n)
width = max(len(c) for c in continuations)
# Each continuation but its last token is fed; right padding, masked.
fed = torch.tensor([c[:-1] + [0] * (width - len(c)) for c in continuations])
fed_mask = torch.tensor([[1] * (len(c) - 1) + [0] * (width - len(c)) for c in continuations])
targets = [torch.tensor(c) for c in continuations]


def fill(template, question, answer):
    # One left-to-right pass, as emh fills: substituted text is not scanned again.
    return re.sub(r"\{question\}|\{answer\}", lambda m: question if m.group(0) == "{question}" else answer, template)


def score(prompt):
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)
    ids = tok(text + a.answer_prefix, return_tensors="pt", add_special_tokens=False).input_ids
    out = model(ids, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)
    cache = out.past_key_values
    rows_n = len(continuations)
    cache.batch_repeat_interleave(rows_n)
    mask = torch.cat([torch.ones(rows_n, ids.shape[1], dtype=torch.long), fed_mask], 1)
    rest = model(fed, attention_mask=mask, past_key_values=cache, use_cache=False)
    logp = torch.log_softmax(rest.logits.float(), -1)
    total = []
    for r, t in enumerate(targets):
        lp = first[t[0]] + sum(logp[r, j, t[j + 1]] for j in range(len(t) - 1))
        total.append(lp.item())
    p = torch.tensor(total, dtype=torch.float64).exp()
    mass = p.sum().item()
    if mass == 0:
        return None
    return (p * torch.tensor(numbers, dtype=torch.float64)).sum().item() / mass


def number(cell):
    # Empty, or the reference judges' REFUSAL or CODE: no score to compare.
    try:
        return float(cell)
    except (TypeError, ValueError):
        return None


scores, theirs = [], []
start = time.perf_counter()
with torch.no_grad():
    for row in rows:
        for m in metrics:
            # As emh: a question without this judge prompt is not judged on it.
            template = prompts[row["question_id"]].get(m)
            if template is None:
                continue
            scores.append(score(fill(template, row["question"], row["answer"])))
            theirs.append(number(row.get(m)))
seconds = time.perf_counter() - start
differences = [abs(s - t) for s, t in zip(scores, theirs) if s is not None and t is not None]
print(
    json.dumps(
        {
            "seconds": seconds,
            "judgments": len(scores),
            "compared": len(differences),
            "max_difference": max(differences, default=None),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
    )
)
