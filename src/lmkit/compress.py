"""Smaller, faster models for CPU inference: int8 / int4 weights, magnitude pruning, ONNX export, for a
GPT and for a BERT encoder (an lmkit run or a Hugging Face folder such as all-MiniLM-L6-v2).

Quantization (models/quant.py): every block Linear weight and the output head are stored as
round(w / s) in int8 or int4, with one scale s per output row or per group of 32 / 64 / 128 inputs
(about 4× / 6× smaller than fp32, scales included); activations stay float. On load each layer runs the
kernel measured fastest for its kind (QuantLinear).
Pruning ("模型裁剪"): zero the fraction `sparsity` of each block weight matrix with the smallest |w|
(unstructured), or (structured) drop whole MLP hidden units with the smallest weight norm, which
shrinks the matrices and so the compute.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from .data.shards import is_prepared, open_split
from .errors import LmkitError
from .evaluate.lm import score_tokens
from .io import atomic_path, atomic_write_text
from .models.classifier import mean_pool
from .models.int8 import block_linears
from .models.quant import check_settings, check_widths, describe, quantizable, replace_linears
from .runs import FLOAT, check_target, open_run, save_run
from .runs.detect import MARKERS
from .train.trainer import Trainer


def _source_bytes(path: Path) -> int:
    """Size of the weights a model directory was read from (model.safetensors, or a Hugging Face
    folder's shards / pytorch_model.bin)."""
    files = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else \
        sorted(path.glob("*.safetensors")) or [path / "pytorch_model.bin"]
    return sum(f.stat().st_size for f in files if f.is_file())


# ---- int8 / int4 --------------------------------------------------------------------------------------
def quantize(run_dir: str | Path, out_dir: str | Path, bits: int = 8, group_size: int | None = None,
             overwrite: bool = False, head: bool = True) -> dict:
    """Write a copy of the run (GPT, or a BERT encoder: an lmkit run or a Hugging Face folder such as
    all-MiniLM-L6-v2) with int8 or int4 weights in its block Linears and (`head`) its output head, a tied
    one as a quantized copy beside the float embedding (models/quant.py); returns sizes before and after. Bits other than 4 / 8, a group
    size that does not divide a layer's width, another family or an already quantized run: LmkitError
    before anything is written."""
    group_size = check_settings(bits, group_size)
    check_target(out_dir, overwrite, source=run_dir)
    run = open_run(run_dir, accept=FLOAT, families=("gpt", "bert"), purpose="quantize",
                   hints={"int8": "it is already quantized{source}"})
    linears = quantizable(run.model, head)
    check_widths(linears, group_size)
    modules = sorted(linears)
    replace_linears(run.model, modules, bits, group_size)
    sd = {k: v.detach().contiguous() for k, v in run.model.state_dict().items()}
    if run.config.model.tie_embeddings:
        sd.pop("lm_head.weight", None)
    method = describe(bits, group_size)
    out = save_run(out_dir, run.config, run.tokenizer, state_dict=sd, chat_template=run.chat_template,
                   overwrite=overwrite, metadata={"quantization": method},
                   marker=("int8", {"method": method, "bits": bits, "group_size": group_size, "modules": modules,
                                    "source": str(run.path)}))
    return {"bytes_before": _source_bytes(run.path), "bytes_after": (out / "model.safetensors").stat().st_size,
            "modules": len(modules), "method": method}


# ---- pruning ----------------------------------------------------------------------------------------
def magnitude_masks(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """For each block weight matrix, a 0/1 mask that zeros its `sparsity` fraction of smallest |w|."""
    masks = {}
    for name, lin in block_linears(model).items():
        w = lin.weight.detach().abs().flatten()
        k = int(sparsity * w.numel())
        mask = torch.ones_like(w)
        if k:
            mask[w.topk(k, largest=False).indices] = 0.0
        masks[f"{name}.weight"] = mask.view_as(lin.weight)
    return masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask)


def prune_mlp_units(model: nn.Module, sparsity: float) -> int:
    """Structured pruning: keep the (1 − sparsity) MLP hidden units of each block with the largest
    ‖fc row‖·‖proj column‖; returns the new hidden size. The model's config is updated to match."""
    cfg = model.config
    hidden = cfg.hidden_dim
    keep = max(1, round(hidden * (1 - sparsity)))
    for block in model.h:
        fc, proj = block.mlp.fc, block.mlp.proj
        rows = fc.weight.detach()
        if cfg.mlp == "swiglu":  # fc holds [gate; up]: a unit is a gate row, an up row and a proj column
            gate, up = rows.chunk(2)
            score = gate.norm(dim=1) * up.norm(dim=1) * proj.weight.detach().norm(dim=0)
            idx = score.topk(keep).indices.sort().values
            sel = torch.cat([idx, idx + hidden])
        else:
            score = rows.norm(dim=1) * proj.weight.detach().norm(dim=0)
            sel = idx = score.topk(keep).indices.sort().values
        new_fc = nn.Linear(fc.in_features, len(sel), bias=fc.bias is not None)
        new_proj = nn.Linear(keep, proj.out_features, bias=proj.bias is not None)
        with torch.no_grad():
            new_fc.weight.copy_(fc.weight[sel])
            if fc.bias is not None:
                new_fc.bias.copy_(fc.bias[sel])
            new_proj.weight.copy_(proj.weight[:, idx])
            if proj.bias is not None:
                new_proj.bias.copy_(proj.bias)
        block.mlp.fc, block.mlp.proj = new_fc, new_proj
    cfg.mlp_hidden = keep
    return keep


def sparsity_of(model: nn.Module) -> float:
    ws = [m.weight for m in block_linears(model).values()]
    return sum((w == 0).sum().item() for w in ws) / sum(w.numel() for w in ws)


# ---- ONNX -------------------------------------------------------------------------------------------
class _LogitsOnly(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids)[0]


class _SentenceEmbeddings(nn.Module):
    """An encoder's mean-pooled, L2-normalised embedding, the same function as `search.Encoder`'s."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return mean_pool(self.model.encode(input_ids, attention_mask=attention_mask), attention_mask)


def is_encoder(lm) -> bool:
    return not getattr(lm.model, "is_causal", True)


def export_onnx(lm, out: str | Path, check: bool = True) -> dict:
    """A GPT: input_ids (batch, seq) -> logits (batch, seq, vocab). A BERT encoder: input_ids and
    attention_mask (batch, seq) -> sentence embeddings (batch, n_embd). Batch and sequence axes are
    dynamic; the result is verified with onnxruntime."""
    import logging
    import warnings
    out = Path(out)
    encoder = is_encoder(lm)
    model = (_SentenceEmbeddings if encoder else _LogitsOnly)(lm.model).eval()
    example = torch.randint(0, lm.config.model.vocab_size, (2, min(8, lm.config.model.block_size)))
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=lm.config.model.block_size)
    if encoder:
        mask = torch.ones_like(example)
        mask[1, -3:] = 0  # trace with padding, as real batches have
        args, names, outputs = (example, mask), ["input_ids", "attention_mask"], ["embeddings"]
    else:
        args, names, outputs = (example,), ["input_ids"], ["logits"]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(model, args, dynamo=True, input_names=names, output_names=outputs,
                                        dynamic_shapes={n: {0: batch, 1: seq} for n in names}, verbose=False)
        except ImportError as e:
            raise LmkitError(f"export-onnx needs the onnx and onnxscript packages ({e}); pip install -e '.[onnx]'")
    with atomic_path(out) as tmp:
        program.save(str(tmp))
    result = {"path": str(out), "bytes": out.stat().st_size, "output": outputs[0]}
    if check:
        result["max_abs_diff"] = check_onnx(lm, out)
    return result


def onnx_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx(lm, path: str | Path, shapes=((1, 5), (3, 11))) -> float:
    """Largest |output(onnxruntime) − output(lmkit)| over test batches of different shapes: logits for a
    GPT, sentence embeddings (with the last rows padded) for an encoder."""
    import numpy as np
    session = onnx_session(path)
    encoder = is_encoder(lm)
    model = (_SentenceEmbeddings if encoder else _LogitsOnly)(lm.model).eval()
    worst = 0.0
    g = torch.Generator().manual_seed(0)
    for b, t in shapes:
        t = min(t, lm.config.model.block_size)
        x = torch.randint(0, lm.config.model.vocab_size, (b, t), generator=g)
        if encoder:
            mask = torch.ones_like(x)
            for i in range(1, b):  # rows of different lengths
                mask[i, max(1, t - 2 * i):] = 0
            inputs, feeds = (x, mask), {"input_ids": x.numpy(), "attention_mask": mask.numpy()}
        else:
            inputs, feeds = (x,), {"input_ids": x.numpy()}
        got = session.run(None, feeds)[0]
        with torch.no_grad():
            ref = model(*inputs).numpy()
        worst = max(worst, float(np.abs(got - ref).max()))
    return worst


def _run_data_dir(run) -> Path | None:
    """The prepared data the run was trained on, if it is still there."""
    for d in (run.path / "data", Path(run.config.data.data)):
        if is_prepared(d):
            return d
    return None


def val_loss(model, data_dir: Path, block_size: int, max_tokens: int = 20_000) -> float:
    ids = open_split(data_dir, "val")[: max_tokens + 1].astype("int64").tolist()
    s = score_tokens(model, ids, block_size, batch_size=16)
    return s["nll"] / s["n"]


def prune_run(run_dir: str | Path, out_dir: str | Path, sparsity: float, structured: bool = False,
              finetune_iters: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Prune a run and optionally fine-tune it briefly to recover; report val loss at each stage."""
    if not 0 < sparsity < 1:
        raise LmkitError(f"prune: --sparsity must be in (0, 1) (got {sparsity})")
    out_dir = check_target(out_dir, overwrite, source=run_dir)
    run = open_run(run_dir, accept=FLOAT, families=("gpt", "bert"), purpose="prune")
    model = run.model
    data_dir = _run_data_dir(run)
    if finetune_iters and data_dir is None:
        raise LmkitError(f"{run_dir}: its prepared data is gone, so there is nothing to fine-tune on")
    block = run.config.model.block_size
    report = {"sparsity": sparsity, "structured": structured}
    if data_dir is not None:
        report["val_loss_before"] = val_loss(model, data_dir, block)
    params_before = sum(p.numel() for p in model.parameters())
    masks = None
    if structured:
        report["mlp_hidden"] = prune_mlp_units(model, sparsity)
    else:
        masks = magnitude_masks(model, sparsity)
        apply_masks(model, masks)
    report["weight_sparsity"] = round(sparsity_of(model), 4)
    report["params_before"], report["params_after"] = params_before, sum(p.numel() for p in model.parameters())
    if data_dir is not None:
        report["val_loss_pruned"] = val_loss(model, data_dir, block)
    cfg = run.config
    marker = ("pruned", {"source": str(run.path), **report})
    if finetune_iters:
        cfg.train.out_dir, cfg.data.data = str(out_dir), str(data_dir)
        t = cfg.train
        t.max_iters, t.warmup_iters, t.lr_decay_iters = finetune_iters, 0, finetune_iters
        t.learning_rate, t.min_lr = t.min_lr * 3, t.min_lr  # a gentle recovery, not a second pretraining
        t.eval_interval = max(1, finetune_iters)
        Trainer(cfg, overwrite=overwrite, progress=progress, init_model=model,
                after_step=(lambda m: apply_masks(m, masks)) if masks else None).fit()
        report["val_loss_recovered"] = val_loss(model, data_dir, block)
        report["weight_sparsity"] = round(sparsity_of(model), 4)
        atomic_write_text(out_dir / MARKERS["pruned"], json.dumps({**marker[1], **report}, indent=2) + "\n")
    else:
        save_run(out_dir, cfg, run.tokenizer, model=model, chat_template=run.chat_template, marker=marker,
                 overwrite=overwrite)
    return report
