"""Inference precision: lmkit.load(dtype=...) and --dtype on generate / chat / serve."""
import pytest
import torch

import lmkit
from lmkit.cli import main
from lmkit.compress import quantize
from lmkit.models import precision
from lmkit.models.quant import QuantLinear


def test_bfloat16_weights_give_the_float32_logits_within_bf16_rounding(trained_run):
    ref, half = lmkit.load(trained_run), lmkit.load(trained_run, dtype="bfloat16")
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in ref.model.parameters()} == {torch.float32}
    idx = torch.tensor([half.tokenizer.encode("To be, or not to be")])
    with torch.no_grad():
        a, b = ref.model(idx)[0].float(), half.model(idx)[0].float()
    # measured: max |Δlogit| 0.05 on logits of spread ~10 (bf16 keeps 8 significant bits)
    assert (a - b).abs().max() < 0.02 * (a.max() - a.min())
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
    text = half.generate("To be", max_new_tokens=12, temperature=0)
    assert isinstance(text, str) and len(text) > 0


def test_auto_is_the_machines_choice(trained_run, monkeypatch):
    monkeypatch.setattr(precision, "fast_bf16", lambda: False)
    assert next(lmkit.load(trained_run, dtype="auto").model.parameters()).dtype == torch.float32
    monkeypatch.setattr(precision, "fast_bf16", lambda: True)
    assert next(lmkit.load(trained_run, dtype="auto").model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("bits", [8, 4])
def test_a_quantized_run_keeps_its_kernels_under_any_dtype(trained_run, tmp_path, bits):
    q = tmp_path / f"q{bits}"
    quantize(trained_run, q, bits)
    lm = lmkit.load(q, dtype="bfloat16")
    layers = [m for m in lm.model.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.weight_scale.dtype == torch.float32 for m in layers)
    assert {p.dtype for p in lm.model.parameters()} == {torch.float32}
    assert torch.equal(lm.model(torch.tensor([[1, 2, 3]]))[0], lmkit.load(q).model(torch.tensor([[1, 2, 3]]))[0])


def test_cli_dtype_flag(trained_run, capsys):
    assert main(["generate", str(trained_run), "--prompt", "To be", "--max-new-tokens", "6", "--temperature", "0",
                 "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.strip()
    with pytest.raises(SystemExit) as e:
        main(["generate", str(trained_run), "--dtype", "float64"])
    assert e.value.code != 0
    assert "--dtype: invalid choice: 'float64'" in capsys.readouterr().err
    for command in ("generate", "chat", "serve"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--dtype" in capsys.readouterr().out


def test_lstm_runs_in_bfloat16(tmp_path):
    from conftest import tiny_config
    from lmkit import Tokenizer
    from lmkit.models import build_model
    from lmkit.runs import save_run
    cfg = tiny_config(tmp_path / "lstm", tmp_path / "none")
    tok = Tokenizer.train(["abcdefghij"], kind="char")
    cfg.model.type, cfg.model.vocab_size = "lstm", tok.vocab_size
    save_run(tmp_path / "lstm", cfg, tok, model=build_model(cfg.model))
    lm = lmkit.load(tmp_path / "lstm", dtype="bfloat16")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert isinstance(lm.generate("abc", max_new_tokens=5, temperature=0), str)
