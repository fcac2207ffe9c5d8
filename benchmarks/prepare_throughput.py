"""How fast `lmkit prepare` turns text into token shards, beside the tokenizer's own limit and the usual
hand-written `datasets.map` pipeline (issue 20, part 4).

The corpus: the plain-text files of ../shared/data (tinyshakespeare/input.txt, the TinyStories sample,
cmn_eng/cmn.txt: English and Chinese, 6.2 MB together) written again and again as copy_NNNN.txt into
WORK/corpus (default /tmp/lmkit-prepare-bench, never the repository) until it holds --size-mb. A byte-level
BPE of --vocab tokens is trained once on one copy. Then, each in its own process, timed by wall clock, peak
RSS from wait4:

    lmkit prepare   `lmkit prepare WORK/corpus --tokenizer tok.json` at --size-mb (and --others-mb)
    limit (a)       the same tokenizer's encode_batch_fast over the same files, 48 pieces of 128 KB per call
                    (a whole copy), all cores, nothing kept (the token count is len(encoding)): no ids are
                    even copied out
    datasets (b)    what nanoGPT's prepare.py does: load_dataset("text"), .map(tokenize, batched=True,
                    num_proc=2), then the ids concatenated into one uint16 .bin by np.memmap in 1024 shards;
                    the arrow cache goes to WORK and counts in the time, as it would for a user

MB/s counts the corpus bytes. Run it alone: `flock -x /tmp/lmkit-bench.lock python benchmarks/prepare_throughput.py`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, report  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BASE = ["tinyshakespeare/input.txt", "tinystories_sample/tiny_stories_train_first1000.txt", "cmn_eng/cmn.txt"]

LIMIT = r"""
import sys, time
from pathlib import Path
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1]); files = sys.argv[2:]; n = 0
for f in files:
    text = Path(f).read_text(encoding="utf-8")
    pieces = [text[i:i + 131072] for i in range(0, len(text), 131072)]
    n += sum(len(e) for e in tok.encode_batch_fast(pieces, add_special_tokens=False))
print(n)
"""

NANOGPT = r"""
import sys, numpy as np
from datasets import load_dataset
from tokenizers import Tokenizer
tok_path, cache, out, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
tok = Tokenizer.from_file(tok_path); eot = tok.token_to_id("<|endoftext|>")
ds = load_dataset("text", data_files=files, split="train", cache_dir=cache, keep_linebreaks=True)
def process(batch):
    ids = [e.ids + [eot] for e in tok.encode_batch_fast(batch["text"], add_special_tokens=False)]
    return {"ids": ids, "len": [len(i) for i in ids]}
tokenized = ds.map(process, batched=True, num_proc=2, remove_columns=["text"], desc="tokenizing")
total = int(np.sum(tokenized["len"], dtype=np.uint64))
arr = np.memmap(out, dtype=np.uint16, mode="w+", shape=(total,))
idx = 0
for i in range(1024):
    batch = tokenized.shard(num_shards=1024, index=i, contiguous=True).with_format("numpy")
    chunk = np.concatenate(batch["ids"])
    arr[idx:idx + len(chunk)] = chunk
    idx += len(chunk)
arr.flush()
print(total)
"""


def build_corpus(work: Path, size_mb: int) -> list[Path]:
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    base = "".join((SHARED / f).read_text(encoding="utf-8").removeprefix("\ufeff") for f in BASE).encode("utf-8")
    copies = -(-size_mb * 10 ** 6 // len(base))
    files = [corpus / f"copy_{i:04d}.txt" for i in range(copies)]
    for f in files:
        if not f.is_file() or f.stat().st_size != len(base):
            f.write_bytes(base)
    for extra in sorted(corpus.glob("copy_*.txt"))[copies:]:
        extra.unlink()
    return files


def run(cmd: list[str], log: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS MiB (the process and its children, the largest), stdout."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")})
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{cmd[:4]} failed; see {log}:\n{log.read_text()[-2000:]}")
    return wall, usage.ru_maxrss / 1024, out.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024, help="corpus for lmkit prepare (default 1024)")
    ap.add_argument("--others-mb", type=int, default=128, help="corpus for all three methods side by side")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--work", default="/tmp/lmkit-prepare-bench")
    ap.add_argument("--skip-datasets", action="store_true", help="leave out (b), the slow one")
    ap.add_argument("--title", default="", help="added to the RESULTS.md heading (a re-run)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    from lmkit.tokenizer import Tokenizer
    tok_path = work / f"bpe{a.vocab}.json"
    files = build_corpus(work, max(a.size_mb, a.others_mb))
    if not tok_path.is_file():
        t0 = time.perf_counter()
        base = files[0].read_text(encoding="utf-8")
        Tokenizer.train([base[i:i + 100_000] for i in range(0, len(base), 100_000)], vocab_size=a.vocab).save(tok_path)
        print(f"trained the tokenizer in {time.perf_counter() - t0:.0f} s", flush=True)
    one = files[0].stat().st_size
    small = files[:-(-a.others_mb * 10 ** 6 // one)]
    load = os.getloadavg()
    rows, bars = [], {}
    sizes = [("others", small)] + ([("big", files[:-(-a.size_mb * 10 ** 6 // one)])] if a.size_mb > a.others_mb else [])
    for tag, subset in sizes:
        mb = len(subset) * one / 1e6
        sub = work / f"corpus_{tag}"
        shutil.rmtree(sub, ignore_errors=True)
        sub.mkdir()
        for f in subset:
            os.symlink(f, sub / f.name)
        out = work / f"prepared_{tag}"
        wall, rss, _ = run([sys.executable, "-m", "lmkit", "prepare", str(sub), "--out", str(out), "--tokenizer",
                            str(tok_path), "--overwrite"], work / f"lmkit_{tag}.log")
        bars[tag] = (work / f"lmkit_{tag}.log").read_text().replace("\r", "\n").strip().splitlines()
        import json
        meta = json.loads((out / "meta.json").read_text())
        tokens = meta["train_tokens"] + meta["val_tokens"]
        rows.append([f"`lmkit prepare` ({tag})", f"{mb:,.0f}", f"{tokens:,}", f"{wall:.1f}", f"{mb / wall:.2f}",
                     f"{rss:,.0f}"])
        shutil.rmtree(out)
        if tag != "others":
            continue
        wall, rss, n = run([sys.executable, "-c", LIMIT, str(tok_path), *map(str, subset)], work / "limit.log")
        rows.append(["(a) limit: encode_batch_fast, no writing", f"{mb:,.0f}", f"{int(n):,}", f"{wall:.1f}",
                     f"{mb / wall:.2f}", f"{rss:,.0f}"])
        if a.skip_datasets:
            continue
        cache = work / "hf_cache"
        shutil.rmtree(cache, ignore_errors=True)
        wall, rss, n = run([sys.executable, "-c", NANOGPT, str(tok_path), str(cache), str(work / "nanogpt.bin"),
                            *map(str, subset)], work / "nanogpt.log")
        shutil.rmtree(cache, ignore_errors=True)
        (work / "nanogpt.bin").unlink()
        rows.append(["(b) datasets.map(batched, num_proc=2) + memmap .bin", f"{mb:,.0f}", f"{int(n):,}",
                     f"{wall:.1f}", f"{mb / wall:.2f}", f"{rss:,.0f}"])
    print("\n".join(bars.get("big", bars["others"])[-2:]))
    lim = float(rows[1][4])
    notes = (f"Corpus: {', '.join(BASE)} from ../shared/data ({one / 1e6:.1f} MB together), repeated as "
             f"{len(files)} files in {work}/corpus (outside the repository). Byte-level BPE {a.vocab:,} trained on one "
             f"copy. lmkit prepare at {rows[0][1]} MB reaches {float(rows[0][4]) / lim:.0%} of the limit (a). "
             f"RSS of (b) is its main process (the map workers are children: ru_maxrss is the largest of them). "
             f"Load average before the runs: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}; "
             f"{machine()}.")
    report("prepare throughput: lmkit prepare vs the tokenizer's limit vs datasets.map (issue 20)" + a.title,
           ["method", "MB", "tokens", "wall s", "MB/s", "peak RSS MiB"], rows, notes)


if __name__ == "__main__":
    main()
