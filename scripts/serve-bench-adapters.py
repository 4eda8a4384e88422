#!/usr/bin/env python3
"""Makes N copies of one PEFT adapter that differ only in their safetensors metadata (so
each has its own digest, and the server loads, caches and evicts each separately), for
`tributary bench serve` with many distinct adapters.

Usage: serve-bench-adapters.py SRC_DIR OUT_DIR N"""

import json
import os
import shutil
import struct
import sys

src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(os.path.join(src, "adapter_model.safetensors"), "rb") as f:
    raw = f.read()
(hlen,) = struct.unpack("<Q", raw[:8])
header = json.loads(raw[8 : 8 + hlen])
data = raw[8 + hlen :]
for i in range(n):
    d = os.path.join(out, "a%04d" % i)
    os.makedirs(d, exist_ok=True)
    shutil.copy(os.path.join(src, "adapter_config.json"), d)
    h = dict(header)
    h["__metadata__"] = dict(header.get("__metadata__") or {}, copy=str(i))
    hb = json.dumps(h, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(os.path.join(d, "adapter_model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + data)
print(out)
