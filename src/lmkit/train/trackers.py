"""Where a run's metrics go besides metrics.jsonl: TensorBoard (by default), trackio, Weights & Biases, MLflow.

`logger = ["tensorboard", "wandb"]` (train.logger; any subset, `none` = metrics.jsonl only). Every record that
RunLog writes to metrics.jsonl goes to each tracker as scalars at its step, under the tags of `tag()`:

    loss → loss/train   val_loss → loss/val   train_loss → loss/train_eval   lr → train/lr
    grad_norm → train/grad_norm   tok_per_s → throughput/tokens_per_s   mfu → throughput/mfu
    memory_gb → memory/peak_gb    any other number of an evaluation (accuracy, macro_f1, …) → eval/<key>

and the samples generated at each evaluation go as text (TensorBoard, MLflow). Only the main process logs.
Each tracker's package is imported only when it is asked for; a missing one stops the run before it starts,
naming the pip extra (the default TensorBoard alone only says so and goes on without it). A tracker that
fails mid-run (W&B offline, a full disk) is warned about once and dropped: training goes on.

TensorBoard's event files live in the run directory itself, so `tensorboard --logdir runs/` shows each run
by its folder name. A resumed run opens its writer with purge_step = the checkpoint's step, which makes
TensorBoard drop what the stopped run logged from that step on (as metrics.jsonl loses those records, see
log.keep_records_before), then replays the records metrics.jsonl keeps at that step: the curves continue
with no step twice. W&B, trackio and MLflow continue the same run (its id is kept in trackers.json); they
cannot take back what the stopped run logged after its checkpoint (W&B drops the steps it has seen, MLflow
keeps both values).
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import math
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..config_rules import LOGGERS
from ..errors import LmkitError
from ..io import atomic_write_text

TAGS = {"loss": "loss/train", "val_loss": "loss/val", "train_loss": "loss/train_eval", "lr": "train/lr",
        "grad_norm": "train/grad_norm", "tok_per_s": "throughput/tokens_per_s", "mfu": "throughput/mfu",
        "memory_gb": "memory/peak_gb"}
NOT_SCALARS = ("step", "tokens", "time", "epoch")
EVENTS = "events.out.tfevents."  # TensorBoard's event file names start so
IDS = "trackers.json"  # the W&B / MLflow / trackio run ids, so that --resume continues the same run


def tag(key: str) -> str:
    return TAGS.get(key, f"eval/{key}")


def scalars(record: dict) -> dict[str, float]:
    """The tracked scalars of a metrics.jsonl record: {tag: value}, finite numbers only."""
    return {tag(k): float(v) for k, v in record.items() if k not in NOT_SCALARS and type(v) in (int, float)
            and math.isfinite(v)}


def check(names: list[str], default: bool) -> list[str]:
    """The trackers to open, each package found (not imported). A missing one is an LmkitError naming its pip
    extra; `default` (the config left logger as it is): a missing TensorBoard is a note, and the run goes on."""
    out = []
    for name in dict.fromkeys(names):
        if name not in LOGGERS:
            raise LmkitError(f"config: logger '{name}' is not one of {', '.join(LOGGERS)} (or none)")
        if importlib.util.find_spec(name) is None:
            hint = f"pip install 'lmkit[{name}]'"
            if default and name == "tensorboard":
                print(f"note: metrics go to metrics.jsonl only: TensorBoard needs the tensorboard package ({hint}; "
                      "logger = none says so and silences this)", file=sys.stderr)
                continue
            raise LmkitError(f"logger '{name}' needs the {name} package, which is not installed: {hint}")
        out.append(name)
    return out


class Tracker:
    """One tracker: scalars at a step; text and flush do nothing unless the tracker has them."""

    def scalars(self, step: int, values: dict) -> None:
        raise NotImplementedError

    def text(self, step: int, tag: str, text: str) -> None:
        pass  # W&B and trackio show strings poorly; the samples are in samples.jsonl and the report

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoard(Tracker):
    def __init__(self, out: Path, run: dict):
        from torch.utils.tensorboard import SummaryWriter
        files = sorted(out.glob(EVENTS + "*"))  # a new run has none (log.remove_run_files)
        if run["resumed"] and files:  # the new file must sort after the old ones, named by the second they were made
            newest = max(_seconds(f) for f in files)
            while int(time.time()) <= newest:
                time.sleep(0.05)
        self.writer = SummaryWriter(str(out), purge_step=run["step"] if run["resumed"] else None, flush_secs=10)

    def scalars(self, step: int, values: dict) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.writer.add_text(tag, text, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _seconds(f: Path) -> int:
    try:
        return int(f.name[len(EVENTS):].split(".")[0])
    except ValueError:
        return 0


class WandB(Tracker):
    def __init__(self, out: Path, run: dict):
        self.wandb = importlib.import_module("wandb")
        self.run = self.wandb.init(project=run["project"], name=run["name"], dir=str(out), config=run["config"],
                                   id=run["ids"].get("wandb"), resume="allow")
        run["ids"]["wandb"] = self.run.id

    def scalars(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackio(Tracker):
    def __init__(self, out: Path, run: dict):
        self.trackio = importlib.import_module("trackio")
        self.trackio.init(project=run["project"], name=run["ids"].get("trackio", run["name"]), config=run["config"],
                          resume="allow")
        run["ids"]["trackio"] = run["ids"].get("trackio", run["name"])
        self.with_step = "step" in inspect.signature(self.trackio.log).parameters

    def scalars(self, step: int, values: dict) -> None:
        self.trackio.log(values, step=step) if self.with_step else self.trackio.log({**values, "step": step})

    def close(self) -> None:
        self.trackio.finish()


class MLflow(Tracker):
    def __init__(self, out: Path, run: dict):
        self.mlflow = importlib.import_module("mlflow")
        known = run["ids"].get("mlflow")
        active = self.mlflow.start_run(run_id=known, run_name=None if known else run["name"])
        run["ids"]["mlflow"] = active.info.run_id
        if not known:
            self.mlflow.log_params(_flat(run["config"]))

    def scalars(self, step: int, values: dict) -> None:
        self.mlflow.log_metrics(values, step=step)

    def text(self, step: int, tag: str, text: str) -> None:
        self.mlflow.log_text(text, f"{tag}/step_{step:08d}.txt")

    def close(self) -> None:
        self.mlflow.end_run()


KINDS = {"tensorboard": TensorBoard, "wandb": WandB, "trackio": Trackio, "mlflow": MLflow}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class Trackers:
    """The open trackers of one fit(): `scalars(record)`, `text(step, tag, text)`, `flush()`, `close()`.
    `names` already checked (check()); none on ranks other than 0."""

    def __init__(self, out: Path, names: list[str], config: dict, step: int, resumed: bool,
                 kept: list[dict] = ()):
        self.out, self.open = Path(out), {}
        ids = _read_ids(self.out / IDS) if resumed else {}
        run = {"name": self.out.name, "project": os.environ.get("WANDB_PROJECT", "lmkit"), "config": config,
               "step": step, "resumed": resumed, "ids": ids}
        before = dict(ids)
        for name in names:
            self._call(name, lambda n=name: self.open.__setitem__(n, KINDS[n](self.out, run)), opening=True)
        if ids != before:
            atomic_write_text(self.out / IDS, json.dumps(ids, indent=2) + "\n")
        for record in kept:  # resumed: what metrics.jsonl keeps at the checkpoint's step, which the purge took
            if record.get("step") == step:  # (the others still hold it)
                self.scalars(record, only="tensorboard")

    def scalars(self, record: dict, only: str | None = None) -> None:
        values = scalars(record)
        if values:
            self._each("scalars", record["step"], values, only=only)

    def text(self, step: int, tag: str, text: str) -> None:
        self._each("text", step, tag, text)

    def flush(self) -> None:
        self._each("flush")

    def close(self) -> None:
        self._each("close")
        self.open = {}

    def _each(self, method: str, *args, only: str | None = None) -> None:
        """Call `method(*args)` on each open tracker (or on `only`), through _call."""
        for name in [n for n in self.open if only in (None, n)]:
            self._call(name, lambda n=name: getattr(self.open[n], method)(*args))

    def _call(self, name: str, fn, opening: bool = False) -> None:
        """Run one tracker's call; the first failure warns once and drops the tracker."""
        try:
            fn()
        except Exception as e:  # whatever a tracker raises, training goes on
            self.open.pop(name, None)
            what = "could not start" if opening else "failed"
            reason = (str(e).splitlines() or [""])[0][:160]
            tqdm.write(f"warning: {name} logging {what} ({type(e).__name__}: {reason}); training goes on "
                       f"without it (metrics.jsonl has everything)", file=sys.stderr)


def _read_ids(path: Path) -> dict:
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
        return ids if isinstance(ids, dict) else {}
    except (OSError, ValueError):
        return {}
