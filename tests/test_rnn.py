"""The LSTM / GRU language model: trained by the same Trainer, sampled by the same generate loop."""
import pytest
import torch

from conftest import tiny_config
from lmkit.config import ModelConfig
from lmkit.engine import generate_ids
from lmkit.models import build_model
from lmkit.sampling import SamplingConfig


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_trains_with_the_trainer_and_generates(tmp_path, cell):
    from lmkit import load, train
    data = tmp_path / "t.txt"
    data.write_text("abcdefgh\n" * 300, encoding="utf-8")
    cfg = tiny_config(tmp_path / "run", data, max_iters=40, learning_rate=2e-2, eval_interval=20)
    cfg.model.type, cfg.model.rnn = "lstm", cell
    r = train(cfg, progress=False)
    vals = [h["val_loss"] for h in r.history if "val_loss" in h]
    assert [h["step"] for h in r.history if "val_loss" in h] == [0, 20, 40]
    assert vals[0] > 2.0 and vals[-1] < 0.3 * vals[0], vals  # from ~ln(vocab) to well below
    lm = load(r.out_dir)
    assert type(lm.model.rnn) is {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]  # the cell it was trained as
    assert lm.generate("abc", max_new_tokens=5, temperature=0) == "defgh"
    assert lm.generate("fgh\na", max_new_tokens=4, temperature=0) == "bcde"  # across the line break


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_state_carries_between_steps_like_a_cache(cell):
    torch.manual_seed(0)
    model = build_model(ModelConfig(type="lstm", rnn=cell, vocab_size=20, block_size=8, n_layer=2, n_embd=16)).eval()
    idx = torch.randint(0, 20, (2, 5))
    cfg = SamplingConfig(max_new_tokens=12, temperature=0)  # runs past block_size: the state restarts
    with_state = torch.stack(list(generate_ids(model, idx, cfg)), dim=1)
    without = torch.stack(list(generate_ids(model, idx, cfg, use_cache=False)), dim=1)
    assert torch.equal(with_state[:, :3], without[:, :3])  # identical while the window holds everything
    full, _ = model(idx)
    state = model.make_cache(2)
    step_logits = [model(idx[:, t:t + 1], cache=state, last_only=True)[0] for t in range(5)]
    torch.testing.assert_close(torch.cat(step_logits, dim=1), full, atol=1e-5, rtol=1e-5)
    assert state.pos == 5


def test_rnn_batch_of_different_lengths_equals_each_alone():
    import torch
    from lmkit.config import ModelConfig
    from lmkit.engine import generate_ids
    from lmkit.sampling import SamplingConfig
    from lmkit.models import build_model
    torch.manual_seed(0)
    for rnn in ("lstm", "gru"):
        model = build_model(ModelConfig(type="lstm", rnn=rnn, vocab_size=30, n_layer=2, n_embd=16, block_size=64)).eval()
        prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]
        cfg = SamplingConfig(max_new_tokens=12, temperature=0)
        batch = torch.stack(list(generate_ids(model, prompts, cfg)), 1)
        for i, p in enumerate(prompts):
            alone = torch.stack(list(generate_ids(model, torch.tensor([p]), cfg)), 1)[0]
            assert torch.equal(batch[i], alone), (rnn, i)
