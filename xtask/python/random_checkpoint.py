"""Writes random weights drawn from a model folder's config.json into that
folder as a bf16 safetensors checkpoint, as ordinary HF checkpoints ship.

Prints one JSON object: the parameter count and the library versions.
"""
import argparse
import json

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True, help="folder with config.json; the weights are written there")
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()

torch.manual_seed(a.seed)
config = AutoConfig.from_pretrained(a.model)
model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained(a.model, safe_serialization=True)
print(json.dumps({
    "params": sum(p.numel() for p in model.parameters()),
    "torch": torch.__version__,
    "transformers": transformers.__version__,
}))
