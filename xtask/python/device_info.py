"""The GPU's name and the memory bandwidth a device-to-device copy reaches.

Prints one JSON object; the copy bandwidth counts bytes read and written, as
the roofline of a memory-bound decoding step does.
"""
import json
import sys
import time

import torch

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
n = 2 << 30  # 2 GiB each way: far beyond any cache
src = torch.empty(n, dtype=torch.uint8, device=device)
dst = torch.empty_like(src)
for _ in range(3):
    dst.copy_(src)
torch.cuda.synchronize()
reps = 20
start = time.perf_counter()
for _ in range(reps):
    dst.copy_(src)
torch.cuda.synchronize()
secs = time.perf_counter() - start
print(json.dumps({
    "name": torch.cuda.get_device_name(device),
    "memory_gib": torch.cuda.get_device_properties(device).total_memory / 2**30,
    "copy_gb_per_s": 2 * n * reps / secs / 1e9,
}))
