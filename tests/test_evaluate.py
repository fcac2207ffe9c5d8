import json
import math

import torch

import lmkit
from lmkit.cli import main
from lmkit.evaluate.lm import evaluate_lm
from lmkit.tokenizer import Tokenizer

TEXT = "To be, or not to be, that is the question.\n床前明月光\n" * 6


def test_perplexity_is_exp_of_the_mean_token_loss(trained_run, tmp_path):
    f = tmp_path / "held_out.txt"
    f.write_text(TEXT, encoding="utf-8")
    lm = lmkit.load(trained_run)
    s = evaluate_lm(lm, str(f), progress=False)
    # independently: the model's own mean loss on each window, weighted by its length
    eot = lm.tokenizer.eot_id
    ids = torch.tensor([eot] + lm.tokenizer.encode(TEXT) + [eot])
    B = lm.config.model.block_size
    total, n = 0.0, 0
    with torch.no_grad():
        for s0 in range(0, len(ids) - 1, B):
            w = ids[s0:s0 + B + 1]
            _, loss = lm.model(w[None, :-1], w[None, 1:])
            total += loss.item() * (len(w) - 1)
            n += len(w) - 1
    assert s.tokens == n == len(ids) - 1
    assert math.isclose(s.loss, total / n, rel_tol=1e-5)
    assert math.isclose(s.perplexity, math.exp(total / n), rel_tol=1e-5)
    assert s.bytes == len(TEXT.encode("utf-8"))
    assert 0 <= s.top1_accuracy <= s.top5_accuracy <= 1
    assert s.top5_accuracy > 0.5  # the run was trained on this very text


class UniformModel(torch.nn.Module):
    """Gives every token the same probability: the loss per token is exactly ln V."""
    is_causal = True

    def __init__(self, vocab, block):
        super().__init__()
        self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))
        self.config = type("C", (), {"block_size": block})()

    def forward(self, idx, targets=None, **_):
        return torch.zeros(*idx.shape, self.vocab) + self.w, None


def test_bits_per_byte_by_hand(tmp_path):
    text = "你好ab"  # 3 + 3 + 1 + 1 = 8 UTF-8 bytes, 4 characters
    tok = Tokenizer.train([text], kind="char")
    V = tok.vocab_size  # <|endoftext|>, <unk>, and the 4 characters
    lm = lmkit.LM(UniformModel(V, 16), tok, type("Cfg", (), {"model": type("M", (), {"block_size": 16})()})())
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    s = evaluate_lm(lm, str(f), progress=False)
    assert s.tokens == 5  # 4 characters and the closing <|endoftext|>
    assert math.isclose(s.bits_per_byte, 5 * math.log2(V) / 8, rel_tol=1e-6)  # float32 log-softmax
    assert math.isclose(s.perplexity, V, rel_tol=1e-6)


def test_evaluate_cli_writes_json(trained_run, tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text(TEXT, encoding="utf-8")
    assert main(["evaluate", str(trained_run), "--data", str(f), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "bits per byte" in out
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["tokens"] > 0 and math.isclose(scores["perplexity"], math.exp(scores["loss"]), rel_tol=1e-6)
    assert main(["evaluate", str(trained_run), "--data", str(tmp_path / "missing.txt")]) == 2


def test_max_tokens_limits_the_count(trained_run, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text(TEXT * 5, encoding="utf-8")
    s = evaluate_lm(lmkit.load(trained_run), str(f), max_tokens=50, progress=False)
    assert s.tokens == 50 and 40 <= s.bytes <= 150
