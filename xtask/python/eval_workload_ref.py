"""The reference method beside `emh experiment` in `cargo xtask bench eval-workload`.

HF transformers `generate` with a forward hook for steering, one question's
samples per call, as the research scripts sample: every condition, every
question of the YAML file, each paraphrase repeated n times in one
left-padded batch, EOS on. Prints one JSON object: new tokens (up to and
including each answer's end token), seconds of the generate calls, tok/s,
threads and library versions.
"""
import argparse
import json
import time

import torch
import transformers
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from end_tokens import end_tokens

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--questions", required=True)
ap.add_argument("--n", type=int, required=True, help="samples per paraphrase")
ap.add_argument("--max-new-tokens", type=int, required=True)
ap.add_argument("--layer", type=int, required=True, help="steer the output of this decoder layer")
ap.add_argument("--scale", type=float, required=True)
ap.add_argument("--vector", required=True, help="the steering vector, a JSON list")
ap.add_argument("--warmup-tokens", type=int, default=4)
a = ap.parse_args()

torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(a.model)
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
vector = torch.tensor(json.loads(a.vector), dtype=torch.float32) * a.scale
questions = yaml.safe_load(open(a.questions))
eos = set(end_tokens(tok, model))


def steer(module, inputs, output):
    # Decoder layers return the hidden states, alone or first in a tuple.
    if isinstance(output, tuple):
        return (output[0] + vector,) + output[1:]
    return output + vector


def batch_of(q):
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in q["paraphrases"]
        for _ in range(a.n)
    ]
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id)
with torch.no_grad():
    model.generate(**batch_of(questions[0]), max_new_tokens=a.warmup_tokens, **kw)
    new = 0
    start = time.perf_counter()
    for condition in ["none", "steer"]:
        handle = model.model.layers[a.layer].register_forward_hook(steer) if condition == "steer" else None
        for q in questions:
            enc = batch_of(q)
            out = model.generate(**enc, max_new_tokens=a.max_new_tokens, **kw)
            for row in out[:, enc["input_ids"].shape[1]:].tolist():
                ends = [i for i, t in enumerate(row) if t in eos]
                new += ends[0] + 1 if ends else len(row)
        if handle is not None:
            handle.remove()
    secs = time.perf_counter() - start

print(json.dumps({
    "tokens": new,
    "seconds": secs,
    "tok_per_s": new / secs,
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
}))
