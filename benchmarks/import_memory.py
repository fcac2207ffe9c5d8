"""Peak memory of `lmkit import-hf` on a Qwen2.5-0.5B-shaped model (random weights, made locally).

    python benchmarks/import_memory.py [--dtype bfloat16|float32] [--keep DIR]

The model has Qwen2.5-0.5B's shape (hidden 896, 24 layers, 14 heads, 2 key/value heads, MLP 4864, vocabulary
151,936, tied head; 494M parameters) and is saved by transformers as model.safetensors, in bfloat16 like the
published checkpoint. `lmkit import-hf` then runs in a fresh process under a small wrapper that reads the
child's peak RSS (getrusage RUSAGE_CHILDREN ru_maxrss); the figure is compared with the size of the weights
file. Importing streams the tensors (runs/hf.py), so the peak is the interpreter plus about one tensor.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False, sliding_window=32768,
                  max_window_layers=21, bos_token_id=151643, eos_token_id=151643)

BUILD = r"""
import json, sys, torch, transformers
from lmkit import Tokenizer
out, dtype = sys.argv[1], getattr(torch, sys.argv[2])
torch.manual_seed(0)
cfg = transformers.Qwen2Config(**json.loads(sys.argv[3]))
model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype)
model.save_pretrained(out)
tok = Tokenizer.train(["the quick brown fox jumps over the lazy dog"] * 50, kind="bpe", vocab_size=300)
tok.save(out + "/tokenizer.json")
print(sum(p.numel() for p in model.parameters()))
"""

# the wrapper: run a command, report its wall time and the peak RSS of that one child
PEAK = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
print(json.dumps({"rc": rc, "s": time.perf_counter() - t0,
                  "peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

CHECK = r"""
import sys, torch
from safetensors import safe_open
hf, run = sys.argv[1], sys.argv[2]
with safe_open(hf + "/model.safetensors", "pt") as a, safe_open(run + "/model.safetensors", "pt") as b:
    g = lambda n: a.get_tensor("model." + n)
    want = {"wte.weight": g("embed_tokens.weight"), "ln_f.weight": g("norm.weight")}
    for i in range(24):
        L = f"layers.{i}."
        want.update({f"h.{i}.ln_1.weight": g(L + "input_layernorm.weight"),
                     f"h.{i}.ln_2.weight": g(L + "post_attention_layernorm.weight"),
                     f"h.{i}.attn.proj.weight": g(L + "self_attn.o_proj.weight"),
                     f"h.{i}.mlp.proj.weight": g(L + "mlp.down_proj.weight"),
                     f"h.{i}.mlp.fc.weight": torch.cat([g(L + "mlp.gate_proj.weight"), g(L + "mlp.up_proj.weight")])})
        for p in ("weight", "bias"):
            want[f"h.{i}.attn.qkv.{p}"] = torch.cat([g(L + f"self_attn.{n}_proj.{p}") for n in "qkv"])
    ok = set(b.keys()) == set(want) and all(torch.equal(b.get_tensor(k), v) for k, v in want.items())
print(f"all {len(want)} tensors equal" if ok else "MISMATCH")
"""


def peak(*cmd: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PEAK, *cmd], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--keep", help="keep the model folder and run here instead of a temp dir")
    a = ap.parse_args()
    tmp = Path(a.keep or tempfile.mkdtemp(prefix="lmkit-import-mem-"))
    hf, run = tmp / "hf", tmp / "run"
    t0 = time.perf_counter()
    n = int(subprocess.run([sys.executable, "-c", BUILD, str(hf), a.dtype, json.dumps(QWEN25_05B)],
                           capture_output=True, text=True, check=True).stdout.split()[-1])
    built = time.perf_counter() - t0
    idle = peak(sys.executable, "-c", "import lmkit.cli, lmkit.runs.hf")
    shutil.rmtree(run, ignore_errors=True)
    imp = peak(sys.executable, "-m", "lmkit", "import-hf", str(hf), str(run))
    assert imp["rc"] == 0, imp
    check = subprocess.run([sys.executable, "-c", CHECK, str(hf), str(run)], capture_output=True, text=True,
                           check=True).stdout.strip()
    disk = (hf / "model.safetensors").stat().st_size / 2**20
    out = (run / "model.safetensors").stat().st_size / 2**20
    cpu = sh("lscpu | sed -n 's/^Model name: *//p'") or "?"
    notes = (f"Qwen2.5-0.5B shape, {n / 1e6:.0f}M parameters, {a.dtype}, random weights (built and saved by "
             f"transformers in {built:.0f} s); the run's model.safetensors {out:.0f} MiB; renamed tensors checked "
             f"against the source: {check}. Machine: {cpu}, {sh('nproc')} cores; load: {sh('uptime')}. "
             f"RSS is memory, not time: it does not depend on the load.")
    report("import-hf peak memory, Qwen2.5-0.5B-shaped model (streamed import)",
           ["what", "wall s", "peak RSS MiB", "weights on disk MiB", "peak / disk"],
           [["`import lmkit.cli, lmkit.runs.hf` (the interpreter alone)", f"{idle['s']:.1f}",
             f"{idle['peak_mib']:.0f}", "–", "–"],
            ["`lmkit import-hf`", f"{imp['s']:.1f}", f"{imp['peak_mib']:.0f}", f"{disk:.0f}",
             f"{imp['peak_mib'] / disk:.2f}×"]],
           notes=notes)
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
