"""What the peer benchmarks share with each other and with `tributary bench`.

- the model: `tributary model init --config CONFIG --seed 0 --out DIR` writes the random
  weights (Hugging Face layout, model.safetensors) that every peer loads, so all of them run
  the very same weights;
- the FLOP counts of `tributary_model::bench` (matmul FLOPs only, 2 per multiply-add), so that
  `achieved_gflops` means the same thing in every JSON line;
- peak/current resident memory (VmHWM/VmRSS) and the 1-minute load average, as in
  `tributary bench`.
"""

import json
import os
import subprocess
import sys
import tempfile

# The seven LoRA targets of `tributary bench` (TargetModule::ALL).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_CONFIG = os.path.join(REPO, "..", "shared", "bench", "bench-llama-30m.json")


def tributary_binary():
    """The tributary binary: $TRIBUTARY, else target/release/tributary, else PATH."""
    env = os.environ.get("TRIBUTARY")
    if env:
        return env
    built = os.path.join(REPO, "target", "release", "tributary")
    return built if os.path.exists(built) else "tributary"


def init_model(config, out_dir):
    """Random weights for `config`, seed 0, exactly as `tributary bench` makes them."""
    subprocess.run(
        [tributary_binary(), "model", "init", "--config", config, "--seed", "0", "--out", out_dir],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out_dir


def model_dir(args):
    """args.model if given, else a fresh `model init` of args.config in a temporary directory
    (kept in args._tmp so that it lives as long as the run)."""
    if args.model:
        return args.model
    args._tmp = tempfile.TemporaryDirectory(prefix="tributary-peer-")
    return init_model(args.config, args._tmp.name)


def load_config(model_dir_path):
    with open(os.path.join(model_dir_path, "config.json")) as f:
        cfg = json.load(f)
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    return cfg


def _target_dims(cfg):
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    q = cfg["num_attention_heads"] * cfg["head_dim"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    # (in, out) of q, k, v, o, gate, up, down
    return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


def base_linear_macs(cfg):
    return sum(a * b for a, b in _target_dims(cfg)) * cfg["num_hidden_layers"]


def lora_macs(cfg, r):
    return sum(r * (a + b) for a, b in _target_dims(cfg)) * cfg["num_hidden_layers"]


def head_macs(cfg):
    return cfg["hidden_size"] * cfg["vocab_size"]


def attention_macs(cfg, keys):
    return 2 * cfg["num_attention_heads"] * cfg["head_dim"] * keys * cfg["num_hidden_layers"]


def train_step_flops(cfg, batch, seq, r):
    """As tributary_model::bench::train_step_flops."""
    tokens = batch * seq
    frozen = base_linear_macs(cfg) + head_macs(cfg)
    return 2.0 * tokens * (2.0 * frozen + 3.0 * lora_macs(cfg, r) + 3.0 * attention_macs(cfg, seq))


def generate_flops(cfg, rows, prompt, new_tokens, r):
    """As tributary_model::bench::generate_flops."""
    if new_tokens == 0:
        return 0.0
    body = base_linear_macs(cfg) + lora_macs(cfg, r)
    prefill = prompt * body + head_macs(cfg) + prompt * attention_macs(cfg, prompt)
    decode = sum(body + head_macs(cfg) + attention_macs(cfg, prompt + i) for i in range(1, new_tokens))
    return 2.0 * rows * (prefill + decode)


def param_count(cfg):
    h, v, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    embeddings = v * h * (1 if cfg.get("tie_word_embeddings") else 2)
    return embeddings + base_linear_macs(cfg) + layers * 2 * h + h


def _status_mib(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def memory_fields():
    """peak_rss_mib (VmHWM) and rss_mib (VmRSS) of this process."""
    return {"peak_rss_mib": _status_mib("VmHWM"), "rss_mib": _status_mib("VmRSS")}


def load_avg_1m():
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def emit(record, out=None):
    """Prints one JSON line (and appends it to `out` when given)."""
    line = json.dumps(record)
    print(line, flush=True)
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")


def positive(name, value, minimum=1):
    """Bad input is an error naming the flag and the limit."""
    if value < minimum:
        sys.exit(f"error: --{name} must be at least {minimum}, got {value}")
    return value
