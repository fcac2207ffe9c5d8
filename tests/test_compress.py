import pytest
import torch

import lmkit
from lmkit import LmkitError
from lmkit.cli import main
from lmkit.compress import prune_run, quantize_int8, sparsity_of


def _logits(lm, text="To be, or not to be"):
    with torch.no_grad():
        return lm.model(torch.tensor([lm.tokenizer.encode(text)]))[0]


def test_int8_is_smaller_and_close(trained_run, tmp_path):
    r = quantize_int8(trained_run, tmp_path / "q")
    assert r["bytes_after"] < 0.6 * r["bytes_before"]  # embeddings stay fp32 in this tiny model
    fp32, int8 = lmkit.load(trained_run), lmkit.load(tmp_path / "q")
    a, b = _logits(fp32), _logits(int8)
    assert (a - b).abs().max().item() < 0.05 * a.abs().max().item()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean().item() > 0.9
    assert len(int8.generate("To be", max_new_tokens=10, temperature=0)) > 0


def test_unstructured_pruning_keeps_its_zeros_through_recovery(corpus_dir, tmp_path):
    from conftest import tiny_config
    run = lmkit.train(tiny_config(tmp_path / "run", corpus_dir, max_iters=80), progress=False).out_dir
    r = prune_run(run, tmp_path / "p", sparsity=0.7, finetune_iters=30, progress=False)
    assert r["weight_sparsity"] >= 0.499
    assert r["val_loss_recovered"] < r["val_loss_pruned"]       # the short fine-tune wins some back
    pruned = lmkit.load(tmp_path / "p")
    assert sparsity_of(pruned.model) >= 0.499


def test_structured_pruning_shrinks_the_mlp(trained_run, tmp_path):
    base = lmkit.load(trained_run)
    r = prune_run(trained_run, tmp_path / "s", sparsity=0.5, structured=True, progress=False)
    assert r["mlp_hidden"] == base.config.model.hidden_dim // 2
    assert r["params_after"] < r["params_before"]
    small = lmkit.load(tmp_path / "s")
    assert small.model.h[0].mlp.fc.out_features == r["mlp_hidden"]
    assert _logits(small).shape == _logits(base).shape


def test_prune_rejects_bad_sparsity(trained_run, tmp_path, capsys):
    with pytest.raises(LmkitError, match="sparsity must be in"):
        prune_run(trained_run, tmp_path / "x", sparsity=1.5)
    assert main(["quantize", str(trained_run), "--out", str(tmp_path / "q")]) == 0
    assert main(["quantize", str(trained_run), "--out", str(tmp_path / "q")]) == 2
    assert "not empty" in capsys.readouterr().err


def test_onnx_export_matches_with_dynamic_axes(trained_run, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from lmkit.compress import check_onnx, export_onnx
    lm = lmkit.load(trained_run)
    r = export_onnx(lm, tmp_path / "m.onnx")
    assert r["max_abs_diff"] <= 1e-4
    assert check_onnx(lm, tmp_path / "m.onnx", shapes=((5, 3), (1, lm.config.model.block_size))) <= 1e-4
