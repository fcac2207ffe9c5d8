"""Issue 9 levers: QK-norm, ReLU², logit soft-capping, untied head, Muon, WSD schedule, progressive stacking."""
import io
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import lmkit
from lmkit import LmkitError
from lmkit.cli import main
from lmkit.config import Config, load_config, load_json
from lmkit.runs.hf_export import export_format
from lmkit.models import build_model
from lmkit.train.grow import grow_model, layer_sources
from lmkit.train.optim import MuonAdamW, lr_at, make_optimizer, newton_schulz
from lmkit.train.trainer import Trainer
from conftest import tiny_config


def _evals(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl") if "val_loss" in line]


@pytest.mark.parametrize("options", [
    {"model": {"qk_norm": True, "mlp": "relu2"}},
    {"model": {"logit_softcap": 15.0, "tie_embeddings": False}, "train": {"lr_schedule": "wsd"}},
    {"train": {"optimizer": "muon", "muon_lr": 0.02}},
    {"model": {"pos": "rope", "norm": "rmsnorm", "mlp": "relu2", "qk_norm": True, "tie_embeddings": False,
               "bias": False, "logit_softcap": 15.0}, "train": {"optimizer": "muon", "lr_schedule": "wsd"}},
], ids=["qk_norm+relu2", "softcap+untied+wsd", "muon", "all"])
def test_each_lever_trains(text_file, tmp_path, options):
    cfg = tiny_config(tmp_path / "run", text_file, max_iters=40, eval_interval=40, eval_iters=4)
    for section, values in options.items():
        for k, v in values.items():
            setattr(getattr(cfg, section), k, v)
    trainer = Trainer(cfg, progress=False)
    result = trainer.fit()
    first, last = _evals(result.out_dir)[0], _evals(result.out_dir)[-1]
    assert last["val_loss"] < 0.7 * first["val_loss"], (first, last)
    # the run reloads with the same options: the trained model's logits exactly, and greedy generation (with
    # the cache) gives the tokens of a plain argmax loop over the trained model
    lm, model = lmkit.load(result.out_dir), trainer.model.eval()
    ids = torch.tensor([lm.tokenizer.encode("1 little")])
    with torch.no_grad():
        assert torch.equal(lm.model(ids)[0], model(ids)[0])
        for _ in range(6):
            ids = torch.cat([ids, model(ids)[0][:, -1:].argmax(-1)], dim=1)
    assert lm.generate("1 little", max_new_tokens=6, temperature=0) == lm.tokenizer.decode(ids[0, -6:].tolist())


@pytest.mark.parametrize("T", [16, 64])
def test_bf16_attention_on_cpu_takes_the_explicit_kernel_and_matches_fp32(T):
    from lmkit.models.attention import attend, attend_explicit, short_bf16_on_cpu
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 16) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    assert short_bf16_on_cpu(qb, kb, vb, None) and not short_bf16_on_cpu(q, k, v, None)
    assert not short_bf16_on_cpu(qb[:, :, :1], kb, vb, None)  # a decode step (Tq != Tk) goes to SDPA
    y = attend(qb, kb, vb, causal=True)
    assert y.dtype == torch.bfloat16
    assert (y.float() - ref).abs().max() < 0.05  # bf16 has 8 bits of mantissa
    assert torch.equal(y, attend_explicit(qb, kb, vb, causal=True))
    # causal: the first query sees only the first key, so its output is v[0] exactly (up to bf16)
    assert torch.allclose(y[:, :, 0].float(), vb[:, :, 0].float())
    y.float().sum().backward()
    q32 = q.clone().requires_grad_()
    torch.nn.functional.scaled_dot_product_attention(q32, k, v, is_causal=True).sum().backward()
    assert (qb.grad.float() - q32.grad).abs().max() < 0.1


def test_training_under_bf16_autocast_on_cpu(text_file, tmp_path):
    cfg = tiny_config(tmp_path / "run", text_file, max_iters=40, eval_interval=40, eval_iters=4)
    cfg.train.dtype = "bfloat16"
    result = lmkit.train(cfg, progress=False)
    first, last = _evals(result.out_dir)[0], _evals(result.out_dir)[-1]
    assert last["val_loss"] < 0.7 * first["val_loss"], (first, last)
    assert all(t.dtype == torch.float32 for t in load_file(result.out_dir / "model.safetensors").values())


def test_softcap_bounds_logits_and_qk_norm_normalises():
    cfg = Config().model
    cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size = 50, 1, 2, 16, 8
    cfg.logit_softcap = 2.0
    model = build_model(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000)  # raw logits in the hundreds
    logits, _ = model(torch.randint(0, 50, (2, 8)))
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9
    cfg.logit_softcap, cfg.qk_norm = 0.0, True
    for norm, kind in (("rmsnorm", torch.nn.RMSNorm), ("layernorm", torch.nn.LayerNorm)):  # the model's own norm
        cfg.norm = norm
        attn = build_model(cfg).h[0].attn
        assert isinstance(attn.q_norm, kind) and isinstance(attn.k_norm, kind)
        q = torch.randn(2, 2, 8, 8) * 50 + 3
        assert torch.allclose(attn.q_norm(q).pow(2).mean(-1), torch.ones(2, 2, 8), atol=1e-3)


@pytest.mark.parametrize("shape", [(64, 16), (16, 64), (32, 32), (3, 48, 12)])
def test_newton_schulz_orthogonalises(shape):
    torch.manual_seed(0)
    g = torch.randn(shape) * 1e-3  # the scale of the gradient does not matter
    o = newton_schulz(g)
    assert o.shape == g.shape
    sv = torch.linalg.svdvals(o)
    assert sv.min() > 0.6 and sv.max() < 1.25, sv  # every singular value pushed towards 1
    # same singular vectors as g: O ≈ U Vᵀ of g's SVD
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh
    assert (o * polar).sum() / (o.norm() * polar.norm()) > 0.9


def test_muon_groups_and_state_round_trip():
    cfg = Config()
    cfg.model.vocab_size, cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd = 40, 2, 2, 16
    cfg.model.block_size, cfg.model.tie_embeddings = 8, False
    cfg.train.optimizer = "muon"
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = make_optimizer(model, cfg.train, "cpu")
    assert isinstance(opt, MuonAdamW)
    muon = {id(p) for g in opt.param_groups if g["muon"] for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon}
    assert names == {f"h.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")}
    assert [g["lr"] * g["lr_mult"] for g in opt.param_groups if g["muon"]] == [pytest.approx(0.02)]
    x = torch.randint(0, 40, (4, 8))

    def step(m, o):
        _, loss = m(x, x)
        loss.backward()
        o.step()
        o.zero_grad()
        return loss.item()

    losses = [step(model, opt) for _ in range(3)]
    assert losses[-1] < losses[0]
    twin = build_model(cfg.model)
    twin.load_state_dict(model.state_dict())
    twin_opt = make_optimizer(twin, cfg.train, "cpu")
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)  # as a checkpoint does: a copy, not the live tensors
    twin_opt.load_state_dict(torch.load(io.BytesIO(saved.getvalue()), weights_only=True))
    step(model, opt), step(twin, twin_opt)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_wsd_schedule_numbers():
    cfg = Config().train
    cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.max_iters, cfg.lr_decay_iters = 1e-2, 1e-3, 10, 100, 0
    cfg.lr_schedule, cfg.decay_fraction = "wsd", 0.2
    assert lr_at(0, cfg) == pytest.approx(1e-2 / 11)
    assert lr_at(10, cfg) == lr_at(79, cfg) == 1e-2  # stable until the last 20 steps
    assert lr_at(90, cfg) == pytest.approx(1e-2 + 0.5 * (1e-3 - 1e-2))
    assert lr_at(100, cfg) == 1e-3
    cfg.lr_schedule = "cosine"
    assert lr_at(55, cfg) == pytest.approx(1e-3 + 0.5 * (1e-2 - 1e-3))


def test_new_options_are_validated_and_refused_at_hf_export():
    with pytest.raises(LmkitError, match="mlp = 'relu3' is not one of"):
        load_config(None, ["mlp=relu3"])
    with pytest.raises(LmkitError, match="logit_softcap must be >= 0"):
        load_config(None, ["logit_softcap=-1"])
    with pytest.raises(LmkitError, match="optimizer = 'sgd' is not one of adamw, muon"):
        load_config(None, ["optimizer=sgd"])
    with pytest.raises(LmkitError, match="muon.*fsdp"):
        load_config(None, ["optimizer=muon", "parallel=fsdp"])
    with pytest.raises(LmkitError, match="GPT-2 cannot hold qk_norm = True"):
        export_format(load_config(None, ["qk_norm=true"]))


def _loss_on(model, ids):
    model.eval()
    with torch.no_grad():
        return model(ids[:, :-1], ids[:, 1:])[1].item()


def test_grow_starts_from_the_shallow_loss_and_training_continues(trained_run, tmp_path, capsys):
    assert layer_sources(2, 4) == [0, 0, 1, 1] and layer_sources(4, 6) == [0, 0, 1, 2, 2, 3]
    out = tmp_path / "grown"
    assert main(["grow", str(trained_run), "--n-layer", "4", "--out", str(out)]) == 0
    shallow, grown = lmkit.load(trained_run), lmkit.load(out)
    # layers 0, 0, 1, 1: each first copy is its layer; a further copy has zero output projections (identity)
    for i, src in enumerate(layer_sources(2, 4)):
        mine, theirs = grown.model.h[i].state_dict(), shallow.model.h[src].state_dict()
        for k, v in mine.items():
            if i % 2 and k.split(".")[1] == "proj":
                assert not v.any(), (i, k)
            else:
                assert torch.equal(v, theirs[k]), (i, k)
    text = "To be, or not to be, that is the question.\n" * 2
    ids = torch.tensor([shallow.tokenizer.encode(text)[:32]])
    fresh = build_model(grown.config.model)
    l_shallow, l_grown, l_fresh = _loss_on(shallow.model, ids), _loss_on(grown.model, ids), _loss_on(fresh, ids)
    assert abs(l_grown - l_shallow) < 1e-4, (l_shallow, l_grown)
    assert l_fresh > l_shallow + 1.0, (l_shallow, l_fresh)

    # continue training the grown model: its first evaluation is the shallow run's, not a fresh model's
    cfg = load_json(trained_run / "config.json")
    shallow_val = _evals(trained_run)[-1]["val_loss"]
    cfg.model.n_layer, cfg.train.init_from, cfg.train.out_dir, cfg.train.max_iters = 4, str(out), str(tmp_path / "deep"), 20
    result = lmkit.train(cfg, progress=False)
    evals = _evals(result.out_dir)
    assert abs(evals[0]["val_loss"] - shallow_val) < 0.05, (evals[0], shallow_val)
    uniform = math.log(grown.config.model.vocab_size)  # where a fresh model starts
    assert evals[0]["val_loss"] < uniform - 0.4 and evals[-1]["val_loss"] < uniform - 0.4, (uniform, evals)
    # the copies have left the identity: their output projections are no longer zero
    w = load_file(str(result.out_dir / "model.safetensors"))
    assert w["h.1.mlp.proj.weight"].abs().max() > 0

    settings = "init_from: .*grown is an lmkit GPT run .* and has other model settings \\(n_layer = 4 there, 6 here"
    with pytest.raises(LmkitError, match=settings):
        cfg.model.n_layer, cfg.train.out_dir = 6, str(tmp_path / "deeper")
        lmkit.train(cfg, progress=False)
    capsys.readouterr()
    assert main(["grow", str(trained_run), "--n-layer", "1", "--out", str(tmp_path / "x")]) == 2
    assert "--n-layer 1 must be larger than the model's 2 layers" in capsys.readouterr().err
    assert main(["grow", str(tmp_path / "nothing"), "--n-layer", "4", "--out", str(tmp_path / "x")]) == 2
    assert "nothing: no such run directory" in capsys.readouterr().err
    assert main(["grow", str(trained_run), "--n-layer", "4", "--out", str(out)]) == 2  # out holds the grown run
    assert "folder is not empty (use --overwrite" in capsys.readouterr().err


def test_grow_and_init_from_refuse_an_int8_run_in_one_line(trained_run, tmp_path, capsys):
    q = tmp_path / "q"
    assert main(["quantize", str(trained_run), "--out", str(q)]) == 0
    capsys.readouterr()
    assert main(["grow", str(q), "--n-layer", "4", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is an int8 run" in err and "use the float run it came from" in err, err
    assert not (tmp_path / "g").exists()
    cfg = load_json(trained_run / "config.json")
    cfg.train.init_from, cfg.train.out_dir, cfg.train.max_iters = str(q), str(tmp_path / "r"), 2
    with pytest.raises(LmkitError, match=r"q is an int8 run \(made by lmkit quantize\); init_from takes .*float run"):
        lmkit.train(cfg, progress=False)


def test_grow_model_is_exact_with_rope_and_rmsnorm():
    cfg = Config().model
    cfg.vocab_size, cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size = 30, 3, 2, 16, 16
    cfg.pos, cfg.norm, cfg.mlp, cfg.qk_norm, cfg.bias = "rope", "rmsnorm", "relu2", True, False
    torch.manual_seed(0)
    model = build_model(cfg)
    for p in model.parameters():  # a "trained" model: no zero projections anywhere
        torch.nn.init.normal_(p, std=0.1)
    deep = grow_model(model, 7)
    ids = torch.randint(0, 30, (2, 16))
    assert torch.allclose(model(ids)[0], deep(ids)[0], atol=1e-5)
    assert len(deep.h) == 7 and model.config.n_layer == 3
