"""The benchmarks from the Hugging Face hub through `datasets` (when no --data is given; needs internet),
with the dataset ids and splits lm-evaluation-harness uses, turned into the rows bench_data.py gives.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import LmkitError
from .bench_data import LETTERS, Loaded


@dataclass
class HubSpec:
    path: str  # dataset id (or a `datasets` builder such as "json" with data_files, as the tests do)
    name: str | None  # config; "{subject}" for the per-subject sets
    split: str
    shots_split: str | None = None
    data_files: str | dict | None = None


HUB = {
    "hellaswag": HubSpec("Rowan/hellaswag", None, "validation"),
    "arc-easy": HubSpec("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc-challenge": HubSpec("allenai/ai2_arc", "ARC-Challenge", "test"),
    "mmlu": HubSpec("cais/mmlu", "all", "test", "dev"),
    "ceval": HubSpec("ceval/ceval-exam", "{subject}", "val", "dev"),
    "cmmlu": HubSpec("haonan-li/cmmlu", "{subject}", "test", "dev"),
    "lambada": HubSpec("EleutherAI/lambada_openai", "default", "test"),
    "piqa": HubSpec("baber/piqa", None, "validation"),
    "winogrande": HubSpec("allenai/winogrande", "winogrande_xl", "validation"),
    "sst2": HubSpec("nyu-mll/glue", "sst2", "validation"),
}


def _load(spec: HubSpec, split: str, name: str | None):
    try:
        import datasets
    except ImportError:
        raise LmkitError("reading a benchmark from the hub needs `datasets` (pip install 'lmkit[data]'), "
                         "or give --data PATH")
    try:
        return datasets.load_dataset(spec.path, name, split=split, data_files=spec.data_files)
    except Exception as e:  # network, missing dataset, schema: one line
        raise LmkitError(f"hub dataset {spec.path}{'/' + name if name else ''} ({split}): cannot be loaded "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); give --data PATH instead")


def _field(source: str, n: int, row: dict, key: str):
    if key not in row or row[key] is None:
        raise LmkitError(f"{source}: row {n}: field '{key}' missing")
    return row[key]


def convert(bench: str, source: str, n: int, r: dict, subject: str = "") -> dict:
    """One hub row -> the row bench.py expects (the same fields as the shipped files give)."""
    f = lambda k: _field(source, n, r, k)  # noqa: E731
    if bench == "hellaswag":
        ctx = f"{f('activity_label')}: {f('ctx_a')} {str(f('ctx_b')).capitalize()}"
        return {"ctx": ctx, "endings": list(f("endings")), "label": int(f("label")), "_row": n}
    if bench.startswith("arc"):
        ch = f("choices")
        labels = list(ch["label"])
        if f("answerKey") not in labels:
            raise LmkitError(f"{source}: row {n}: field 'answerKey' {r['answerKey']!r} is none of {labels}")
        return {"question": f("question"), "choices": list(ch["text"]), "gold": labels.index(r["answerKey"]),
                "_row": n}
    if bench == "mmlu":
        return {"question": f("question"), "choices": list(f("choices")), "gold": int(f("answer")),
                "subject": r.get("subject") or subject, "_row": n}
    if bench in ("ceval", "cmmlu"):
        q, a = ("question", "answer") if bench == "ceval" else ("Question", "Answer")
        if f(a) not in LETTERS:
            raise LmkitError(f"{source}: row {n}: field '{a}' must be one of A B C D")
        return {"question": f(q), "choices": [f(k) for k in LETTERS], "gold": LETTERS.index(r[a]),
                "subject": subject, "_row": n}
    if bench == "lambada":
        return {"text": f("text"), "_row": n}
    if bench == "piqa":
        return {"goal": f("goal"), "sol1": f("sol1"), "sol2": f("sol2"), "label": int(f("label")), "_row": n}
    if bench == "winogrande":
        return {"sentence": f("sentence"), "option1": f("option1"), "option2": f("option2"),
                "gold": int(f("answer")) - 1, "_row": n}
    return {"sentence": f("sentence").strip(), "label": int(f("label")), "_row": n}


def read_hub(bench: str) -> Loaded:
    spec = HUB[bench]
    source = f"hf:{spec.path}" + (f"/{spec.name}" if spec.name and "{" not in spec.name else "")
    if spec.name != "{subject}":
        rows = [convert(bench, source, n, dict(r)) for n, r in enumerate(_load(spec, spec.split, spec.name), 1)]
        loaded = Loaded(rows, source)
        if spec.shots_split:  # MMLU's "all": exemplars per subject from its dev split
            for n, r in enumerate(_load(spec, spec.shots_split, spec.name), 1):
                s = convert(bench, source, n, dict(r))
                loaded.shots.setdefault(s["subject"], []).append(s)
        for r in rows:
            loaded.names.setdefault(r.get("subject", ""), r.get("subject", "").replace("_", " "))
        return loaded
    try:
        import datasets
        subjects = sorted(datasets.get_dataset_config_names(spec.path))
    except Exception as e:
        raise LmkitError(f"hub dataset {spec.path}: cannot list its subjects ({e}); give --data PATH instead")
    loaded = Loaded([], source)
    for subject in subjects:
        loaded.rows += [convert(bench, source, n, dict(r), subject)
                        for n, r in enumerate(_load(spec, spec.split, subject), 1)]
        loaded.shots[subject] = [convert(bench, source, n, dict(r), subject)
                                 for n, r in enumerate(_load(spec, spec.shots_split, subject), 1)]
        loaded.names[subject] = subject.replace("_", " ")
    return loaded
