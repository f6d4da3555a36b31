"""HF transformers `generate` throughput, the reference beside `emh generate`.

Prints one JSON object: new tokens per second over the timed runs, the
padded prompt width, and the library versions.
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--prompts", required=True)
ap.add_argument("--batch-size", type=int, required=True)
ap.add_argument("--max-new-tokens", type=int, default=128)
ap.add_argument("--device", default="cpu")
ap.add_argument("--dtype", default="float32")
ap.add_argument("--repeats", type=int, default=1)
ap.add_argument("--warmup-tokens", type=int, default=4, help="untimed generation of the same batch first")
ap.add_argument("--random-init", action="store_true", help="random weights from the folder's config.json alone")
a = ap.parse_args()

torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(a.model)
tok.padding_side = "left"
if a.random_init:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(a.model)
    with torch.device(a.device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, a.dtype)).eval()
else:
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype)).to(a.device).eval()
lines = [json.loads(l) for l in open(a.prompts) if l.strip()]
prompts = [lines[i % len(lines)]["prompt"] for i in range(a.batch_size)]
texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(a.device)
kw = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=a.max_new_tokens,
          min_new_tokens=a.max_new_tokens, pad_token_id=tok.pad_token_id)
with torch.no_grad():
    warm = {"max_new_tokens": a.warmup_tokens, "min_new_tokens": a.warmup_tokens}
    model.generate(**enc, **{**kw, **warm})
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    new = 0
    for _ in range(a.repeats):
        out = model.generate(**enc, **kw)
        new += (out.shape[1] - enc["input_ids"].shape[1]) * out.shape[0]
    if a.device.startswith("cuda"):
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
import transformers

print(json.dumps({
    "tokens": new,
    "seconds": secs,
    "tok_per_s": new / secs,
    "threads": torch.get_num_threads(),
    "prompt_width": enc["input_ids"].shape[1],
    "torch": torch.__version__,
    "transformers": transformers.__version__,
}))
