"""Import and export time and peak memory for a 124M-parameter GPT-2 created locally (random weights).

    python benchmarks/hf_roundtrip.py

Each step runs in its own process so its peak RSS is its own: save with transformers, `lmkit import-hf`,
`lmkit export-hf`; then the logits of all three agree on a batch (max |Δ| and cosine).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import report  # noqa: E402

STEP = r"""
import json, resource, sys, time, torch
t0 = time.perf_counter()
exec(sys.argv[1])
print(json.dumps({"s": time.perf_counter() - t0, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP, code, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="lmkit-hf124m-"))
    hf, run_dir, back = tmp / "hf", tmp / "run", tmp / "back"
    base = run("import transformers; torch.manual_seed(0); "
               f"m = transformers.GPT2LMHeadModel(transformers.GPT2Config()); m.save_pretrained(r'{hf}')")
    from lmkit import Tokenizer
    Tokenizer.train(["hello world " * 100], kind="bpe", vocab_size=300).save(hf / "tokenizer.json")
    idle = run("import lmkit")
    imp = run(f"from lmkit.runs.hf import import_hf; import_hf(r'{hf}', r'{run_dir}')")
    exp = run(f"from lmkit.runs.hf_export import export_hf; export_hf(r'{run_dir}', r'{back}')")
    check = subprocess.run([sys.executable, "-c", f"""
import torch, transformers, lmkit
ids = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    a = transformers.GPT2LMHeadModel.from_pretrained(r'{hf}')(ids).logits
    b = lmkit.load(r'{run_dir}').model(ids)[0]
    c = transformers.GPT2LMHeadModel.from_pretrained(r'{back}')(ids).logits
cos = torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0).item()
print(max((a - b).abs().max().item(), (a - c).abs().max().item()), cos)
"""], capture_output=True, text=True, check=True).stdout.split()
    size = (hf / "model.safetensors").stat().st_size / 2**20
    report("Hugging Face round trip, GPT-2 124M (random weights)",
           ["step", "wall s", "peak RSS MiB", "RSS over `import lmkit`"],
           [["transformers save_pretrained", f"{base['s']:.1f}", f"{base['rss_mib']:.0f}", "–"],
            ["lmkit import-hf", f"{imp['s']:.1f}", f"{imp['rss_mib']:.0f}", f"{imp['rss_mib'] - idle['rss_mib']:.0f}"],
            ["lmkit export-hf", f"{exp['s']:.1f}", f"{exp['rss_mib']:.0f}", f"{exp['rss_mib'] - idle['rss_mib']:.0f}"]],
           notes=f"weights file {size:.0f} MiB; max |Δ logits| HF vs imported vs re-exported {float(check[0]):.2e}, "
                 f"cosine {float(check[1]):.6f}.")


if __name__ == "__main__":
    main()
