"""llama.cpp (llama-cpp-python) generation throughput at batch 1, the second
reference beside `emh generate` in `cargo xtask bench generate`.

The prompt is rendered and tokenized exactly as the HF reference does it
(the imported folder's tokenizer and chat template), and the token ids go
to llama.cpp as they are, so both sides start from the same tokens. Prints
one JSON object: new tokens per second over the timed generation (prompt
pass included), threads, and the llama-cpp-python version.
"""
import argparse
import json
import time

import llama_cpp
from transformers import AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--gguf", required=True)
ap.add_argument("--model", required=True, help="the imported folder: tokenizer and chat template")
ap.add_argument("--prompts", required=True)
ap.add_argument("--max-new-tokens", type=int, default=128)
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--warmup-tokens", type=int, default=4)
a = ap.parse_args()

tok = AutoTokenizer.from_pretrained(a.model)
line = json.loads(next(l for l in open(a.prompts) if l.strip()))
text = tok.apply_chat_template([{"role": "user", "content": line["prompt"]}], tokenize=False, add_generation_prompt=True)
ids = tok(text, add_special_tokens=False)["input_ids"]
llm = llama_cpp.Llama(
    model_path=a.gguf,
    n_ctx=len(ids) + a.max_new_tokens + 8,
    n_batch=512,
    n_threads=a.threads,
    n_threads_batch=a.threads,
    seed=0,
    verbose=False,
)


def run(n):
    # Temperature 1 over the whole vocabulary, as the other sides sample;
    # the end token does not stop it (the caller counts n tokens).
    out = 0
    for _ in llm.generate(ids, top_k=0, top_p=1.0, min_p=0.0, temp=1.0, repeat_penalty=1.0, reset=True):
        out += 1
        if out == n:
            break
    return out


run(a.warmup_tokens)
start = time.perf_counter()
new = run(a.max_new_tokens)
secs = time.perf_counter() - start
print(json.dumps({
    "tokens": new,
    "seconds": secs,
    "tok_per_s": new / secs,
    "threads": a.threads,
    "prompt_tokens": len(ids),
    "llama_cpp_python": llama_cpp.__version__,
}))
