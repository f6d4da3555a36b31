"""HF transformers as the reference for emh's parity tests.

Each subcommand compares something emh wrote with what transformers computes
from the same inputs, and prints one JSON object of measurements; the Rust
tests decide pass or fail. Run by `cargo xtask test` with the project venv.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

torch.manual_seed(0)
torch.set_num_threads(max(1, os.cpu_count() or 1))


def jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def emit(obj):
    print(json.dumps(obj))


def load_model(path, gguf=None):
    from transformers import AutoModelForCausalLM

    if gguf:
        return AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf, dtype=torch.float32).eval()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def load_tokenizer(path, gguf=None):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if not gguf:
        # The folder's tokenizer.json as written. AutoTokenizer would pick the
        # class by model type and, for `qwen2`, swap in Qwen2's own splitting
        # regex: the tiny qwen2 test model carries SmolLM's tokenizer.
        return PreTrainedTokenizerFast.from_pretrained(path)
    import gguf as gg
    from tokenizers import pre_tokenizers

    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    # transformers' GGUF converter ignores `tokenizer.ggml.pre` and always uses
    # plain GPT-2 splitting. For `smollm`, llama.cpp (which defines the key)
    # splits digits first, as SmolLM was trained; give HF that pre-tokenizer so
    # the comparison checks vocabulary, merges and special tokens.
    pre = gg.GGUFReader(os.path.join(path, gguf)).fields["tokenizer.ggml.pre"].contents()
    if pre == "smollm":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    return tok


def encode(tok, inp, raw):
    """Token ids of one input line as HF makes them: raw text, or the chat template."""
    if raw:
        text = inp["prompt"]
        return text, tok(text)["input_ids"]
    msgs = inp.get("messages") or [{"role": "user", "content": inp["prompt"]}]
    if "system" in inp:
        msgs = [{"role": "system", "content": inp["system"]}] + msgs
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return text, tok(text, add_special_tokens=False)["input_ids"]


def cmd_logits(a):
    """Max |logit difference| over the real (non-padding) positions of the batch.

    HF builds its own batch from the prompts: left padding, an attention mask,
    and position ids from the mask's cumulative sum as `generate` makes them.
    Nothing of emh's but its logits goes into HF's forward pass; emh's ids and
    positions are only checked against HF's.
    """
    from safetensors.torch import load_file

    tok = load_tokenizer(a.model)
    rows = [encode(tok, inp, a.raw)[1] for inp in jsonl(a.prompts)]
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    # As GenerationMixin.prepare_inputs_for_generation: cumsum - 1, padding at 1.
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    model = load_model(a.model)
    if a.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, a.adapter[0], adapter_name="a0")
        for i, path in enumerate(a.adapter[1:], 1):
            model.load_adapter(path, adapter_name=f"a{i}")
        # Several adapters add up, as emh applies them.
        model.base_model.set_adapter([f"a{i}" for i in range(len(a.adapter))])
        model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    real = mask.bool()
    ours = load_file(a.ours)
    # The same batch on both sides, or the logits are not comparable.
    same_batch = (ours["input_ids"].shape == ids.shape and torch.equal(ours["positions"] >= 0, real)
                  and torch.equal(ours["input_ids"][real], ids[real])
                  and torch.equal(ours["positions"][real], pos[real]))
    out = {"batch_equal": bool(same_batch), "positions": int(real.sum()), "rows": len(rows),
           "ref_abs_max": ref[real].abs().max().item()}
    if same_batch:
        out["max_abs_diff"] = (ref - ours["logits"]).abs()[real].max().item()
    else:
        out["ref_shape"] = list(ids.shape)
        out["our_shape"] = list(ours["input_ids"].shape)
    emit(out)


def cmd_generate(a):
    """Greedy continuation of emh's prompts by HF generate, left-padded in one batch."""
    tok = load_tokenizer(a.model)
    tok.padding_side = "left"
    model = load_model(a.model)
    ours = jsonl(a.ours)
    prompts = [o["prompt"] for o in ours]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=a.max_new_tokens, pad_token_id=tok.pad_token_id)
    new = out[:, enc["input_ids"].shape[1]:].tolist()
    eos = set(model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list) else [model.generation_config.eos_token_id])
    refs = []
    for seq in new:
        cut = next((i + 1 for i, t in enumerate(seq) if t in eos), len(seq))
        refs.append(seq[:cut])
    same = [r == o["tokens"] for r, o in zip(refs, ours)]
    first_diff = [
        next((i for i, (x, y) in enumerate(zip(r, o["tokens"])) if x != y), min(len(r), len(o["tokens"])))
        for r, o in zip(refs, ours)
    ]
    emit({"identical": all(same), "compared": len(same), "per_prompt": same, "first_difference": first_diff,
          "ref_lengths": [len(r) for r in refs], "our_lengths": [len(o["tokens"]) for o in ours]})


def cmd_tokenize(a):
    """Rendered chat-template text and token ids, compared with emh's."""
    tok = load_tokenizer(a.model, a.gguf)
    ours = jsonl(a.ours)
    inputs = jsonl(a.inputs)
    bad = []
    for i, (inp, o) in enumerate(zip(inputs, ours)):
        text, ids = encode(tok, inp, a.raw)
        if text != o["text"] or ids != o["ids"]:
            bad.append({"index": i, "text_equal": text == o["text"], "ref_ids": ids[:40], "our_ids": o["ids"][:40]})
    emit({"compared": len(ours), "mismatches": bad[:10], "mismatch_count": len(bad)})


def cmd_chat_ids(a):
    """Chat-template text and token ids of each conversation, as HF renders them."""
    tok = load_tokenizer(a.model)
    texts, ids = [], []
    for inp in jsonl(a.inputs):
        text, t = encode(tok, inp, False)
        texts.append(text)
        ids.append(t)
    emit({"texts": texts, "ids": ids})


def cmd_gguf_weights(a):
    """Max |difference| between emh's imported weights and HF's own GGUF loader."""
    from safetensors.torch import load_file

    model = load_model(os.path.dirname(a.gguf), os.path.basename(a.gguf))
    ref = model.state_dict()
    ours = {}
    for f in sorted(os.listdir(a.ours)):
        if f.endswith(".safetensors"):
            ours.update(load_file(os.path.join(a.ours, f)))
    worst, worst_name = 0.0, None
    for name, t in ours.items():
        d = (ref[name].float() - t.float()).abs().max().item()
        if d > worst:
            worst, worst_name = d, name
    missing = sorted(set(k for k in ref if k != "lm_head.weight" or not model.config.tie_word_embeddings) - set(ours))
    emit({"max_abs_diff": worst, "worst": worst_name, "tensors": len(ours), "missing": missing})


def cmd_make_tiny(a):
    """A tiny random-weight model folder (biases random too), tokenizer copied in."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=a.vocab_size, max_position_embeddings=512,
                  rms_norm_eps=1e-6, tie_word_embeddings=a.tied, bos_token_id=1, eos_token_id=2)
    if a.arch == "qwen2":
        cfg = AutoConfig.for_model("qwen2", rope_theta=1000000.0, **common)
    elif a.arch == "llama3":
        cfg = AutoConfig.for_model("llama", rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}, **common)
    else:
        sys.exit(f"unknown arch {a.arch}")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    model.save_pretrained(a.out, max_shard_size=a.shard)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(a.tokenizer_from, f), os.path.join(a.out, f))
    emit({"dir": a.out, "files": sorted(os.listdir(a.out))})


def cmd_make_lora(a):
    """A PEFT LoRA adapter for a model, with random A and B (PEFT starts B at zero)."""
    from peft import LoraConfig, get_peft_model

    model = load_model(a.model)
    cfg = LoraConfig(r=a.r, lora_alpha=a.alpha, target_modules=a.targets.split(","),
                     layers_to_transform=[int(x) for x in a.layers.split(",")], use_rslora=a.rslora)
    peft_model = get_peft_model(model, cfg)
    torch.manual_seed(a.seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    peft_model.save_pretrained(a.out)
    emit({"dir": a.out})


def chat_example(tok, messages):
    """Token ids of a conversation and which are trained: the assistant turns
    with their end-of-turn tokens, found by rendering the conversation up to
    each turn with and without the generation prompt."""
    ids, trained, done = [], [], ""

    def push(text, train):
        nonlocal done
        assert text.startswith(done), "the template does not render the conversation incrementally"
        piece = tok(text[len(done):], add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        trained.extend([train] * len(piece))
        done = text

    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            push(tok.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True), False)
            push(tok.apply_chat_template(messages[: i + 1], tokenize=False), True)
    push(tok.apply_chat_template(messages, tokenize=False), False)
    trained[0] = False
    return ids, trained


def cmd_train_step(a):
    """One optimizer step of PEFT LoRA training as emh trains: the summed NLL
    of every trained token over their count, gradients clipped, then
    torch.optim.AdamW. Compares the gradients (from emh's first moments) and
    the updated adapter with emh's checkpoint."""
    from peft import PeftModel
    from safetensors.torch import load_file

    cfg = json.load(open(a.settings))
    tok = load_tokenizer(a.model)
    model = load_model(a.model)
    model = PeftModel.from_pretrained(model, a.adapter, is_trainable=True)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    examples = [chat_example(tok, l["messages"]) for l in jsonl(a.data)]
    count = sum(sum(t) for _, t in examples)
    total = 0.0
    for ids, trained in examples:
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0, :-1].float()
        target = x[0, 1:]
        mask = torch.tensor(trained[1:])
        nll = torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum")
        (nll / count).backward()
        total += nll.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg["max_grad_norm"]).item()
    grads = {n: p.grad.detach().clone() for n, p in params.items()}
    opt = torch.optim.AdamW(list(params.values()), lr=cfg["learning_rate"], betas=(cfg["adam_beta1"], cfg["adam_beta2"]),
                            eps=cfg["adam_epsilon"], weight_decay=cfg["weight_decay"])
    opt.step()
    ours_moments = load_file(os.path.join(a.ours, "optimizer.safetensors"))
    ours_adapter = load_file(os.path.join(a.ours, "adapter_model.safetensors"))
    grad_err, grad_size, param_err, compared = 0.0, 0.0, 0.0, 0
    for name, p in params.items():
        # base_model.model.model.layers.L.mlp.down_proj.lora_A.default.weight
        parts = name.split(".")
        layer, module, which = parts[4], parts[6], parts[7][-1].lower()
        g_ours = ours_moments[f"layers.{layer}.{module}.{which}.exp_avg"] / (1 - cfg["adam_beta1"])
        grad_err = max(grad_err, (g_ours - grads[name]).abs().max().item())
        grad_size = max(grad_size, grads[name].abs().max().item())
        saved = ours_adapter[name.replace(".default", "")]
        # Adam's first step is about lr * sign(grad): compared where the
        # gradient is clear of rounding, so its sign is the same on both sides.
        clear = grads[name].abs() >= 1e-3 * grads[name].abs().max()
        param_err = max(param_err, (saved - p.detach())[clear].abs().max().item())
        compared += 1
    emit({"loss": total / count, "trained_tokens": count, "grad_norm": grad_norm, "grad_max_abs_err": grad_err,
          "grad_max_abs": grad_size, "param_max_abs_err": param_err,
          "tensors_compared": compared})


def cmd_adapter_scalars(a):
    """Each rank-1 adapter's A·x × scaling at every answer token, read from
    peft's own lora_A modules with forward hooks. The sequence is the chat
    prompt with its generation prompt, then the answer tokenized on its own
    (trailing whitespace dropped, as the template writes it)."""
    from peft import PeftModel

    tok = load_tokenizer(a.model)
    model = PeftModel.from_pretrained(load_model(a.model), a.adapter).eval()
    seen = {}

    def hook(name, scaling):
        def f(_module, _inputs, output):
            seen[name] = (output[0, :, 0] * scaling).tolist()
        return f

    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            parts = name.split(".")
            feature = f"L{parts[4]}.{parts[6]}"
            module.lora_A["default"].register_forward_hook(hook(feature, module.scaling["default"]))
    out = {}
    for item in jsonl(a.items):
        prompt = tok.apply_chat_template([{"role": "user", "content": item["prompt"]}], tokenize=False,
                                         add_generation_prompt=True)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        a_ids = tok(item["answer"].rstrip(), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            model(input_ids=torch.tensor([p_ids + a_ids]))
        out[item["id"]] = {k: v[len(p_ids):] for k, v in seen.items()}
    emit(out)


def cmd_make_gguf(a):
    """A small llama GGUF whose tensors use every supported ggml type, tokenizer from a real GGUF."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    src = gguf.GGUFReader(a.tokenizer_gguf)
    rng = np.random.default_rng(0)
    h, ff, heads, kv, layers = 256, 512, 4, 2, 2
    w = gguf.GGUFWriter(a.out, "llama")
    w.add_block_count(layers)
    w.add_context_length(512)
    w.add_embedding_length(h)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(h // heads)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                "tokenizer.ggml.padding_token_id", "tokenizer.chat_template"):
        field = src.fields[key]
        vtype = field.types[0]
        val = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_array(key, val)
        elif vtype == gguf.GGUFValueType.STRING:
            w.add_string(key, val)
        else:
            w.add_uint32(key, int(val))
    vocab = len(src.fields["tokenizer.ggml.tokens"].data)

    def quantized(name, rows, cols, qtype):
        x = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        if qtype in (Q.Q4_K, Q.Q6_K):
            # gguf-py cannot quantize k-quants: write random blocks with sane scales.
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            raw = rng.integers(0, 256, size=(rows, cols // block * size), dtype=np.uint8)
            blocks = raw.reshape(rows, cols // block, size)
            scale = np.array([0.001], dtype=np.float16).view(np.uint8)
            if qtype == Q.Q4_K:
                blocks[:, :, 0:2] = scale
                blocks[:, :, 2:4] = scale
            else:
                blocks[:, :, size - 2:size] = scale
            w.add_tensor(name, raw, raw_dtype=qtype)
        elif qtype == Q.F32:
            w.add_tensor(name, x[0] if rows == 1 else x)
        else:
            w.add_tensor(name, gguf.quants.quantize(x, qtype), raw_dtype=qtype)

    quantized("token_embd.weight", vocab, h, Q.Q6_K)
    quantized("output_norm.weight", 1, h, Q.F32)
    quantized("output.weight", vocab, h, Q.Q8_0)
    types = [Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.F16, Q.BF16, Q.Q8_0, Q.Q6_K]
    for l in range(layers):
        p = f"blk.{l}."
        quantized(p + "attn_norm.weight", 1, h, Q.F32)
        quantized(p + "ffn_norm.weight", 1, h, Q.F32)
        quantized(p + "attn_q.weight", h, h, types[l % 7])
        quantized(p + "attn_k.weight", h * kv // heads, h, types[(l + 1) % 7])
        quantized(p + "attn_v.weight", h * kv // heads, h, types[(l + 2) % 7])
        quantized(p + "attn_output.weight", h, h, types[(l + 3) % 7])
        quantized(p + "ffn_gate.weight", ff, h, types[(l + 4) % 7])
        quantized(p + "ffn_up.weight", ff, h, types[(l + 5) % 7])
        quantized(p + "ffn_down.weight", h, ff, types[(l + 6) % 7])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    emit({"file": a.out})


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("logits"); s.add_argument("--model", required=True); s.add_argument("--ours", required=True)
    s.add_argument("--prompts", required=True); s.add_argument("--raw", action="store_true")
    s.add_argument("--adapter", action="append", default=[])
    s = sub.add_parser("make-lora"); s.add_argument("--model", required=True); s.add_argument("--out", required=True)
    s.add_argument("--r", type=int, default=1); s.add_argument("--alpha", type=float, default=8)
    s.add_argument("--targets", default="down_proj"); s.add_argument("--layers", default="5")
    s.add_argument("--rslora", action="store_true"); s.add_argument("--seed", type=int, default=0)
    s = sub.add_parser("generate"); s.add_argument("--model", required=True); s.add_argument("--ours", required=True)
    s.add_argument("--max-new-tokens", type=int, default=64)
    s = sub.add_parser("tokenize"); s.add_argument("--model", required=True); s.add_argument("--ours", required=True)
    s.add_argument("--inputs", required=True); s.add_argument("--raw", action="store_true"); s.add_argument("--gguf")
    s = sub.add_parser("chat-ids"); s.add_argument("--model", required=True); s.add_argument("--inputs", required=True)
    s = sub.add_parser("gguf-weights"); s.add_argument("--gguf", required=True); s.add_argument("--ours", required=True)
    s = sub.add_parser("make-tiny"); s.add_argument("--arch", required=True); s.add_argument("--out", required=True)
    s.add_argument("--tokenizer-from", required=True); s.add_argument("--vocab-size", type=int, default=49152)
    s.add_argument("--tied", action="store_true"); s.add_argument("--shard", default="50GB")
    s = sub.add_parser("train-step"); s.add_argument("--model", required=True); s.add_argument("--adapter", required=True)
    s.add_argument("--data", required=True); s.add_argument("--settings", required=True); s.add_argument("--ours", required=True)
    s = sub.add_parser("adapter-scalars"); s.add_argument("--model", required=True); s.add_argument("--adapter", required=True)
    s.add_argument("--items", required=True)
    s = sub.add_parser("make-gguf"); s.add_argument("--out", required=True); s.add_argument("--tokenizer-gguf", required=True)
    a = ap.parse_args()
    globals()["cmd_" + a.cmd.replace("-", "_")](a)


if __name__ == "__main__":
    main()
