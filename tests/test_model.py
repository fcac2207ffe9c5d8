import itertools

import pytest
import torch

from lmkit.config import ModelConfig
from lmkit.engine import generate_ids
from lmkit.sampling import SamplingConfig
from lmkit.models import build_model

VARIANTS = [dict(pos=p, norm=n, mlp=m, bias=b, tie_embeddings=t)
            for p, n, m, b, t in itertools.product(["learned", "sinusoidal", "rope"], ["layernorm", "rmsnorm"],
                                                   ["gelu", "swiglu"], [True, False], [True, False])
            if (b, t) in ((True, True), (False, False))]


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=50, block_size=24, n_layer=2, n_head=4, n_embd=32)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("kw", VARIANTS + [dict(pos="rope", n_kv_head=2), dict(mlp="gelu_tanh")],
                         ids=lambda kw: "-".join(map(str, kw.values())))
def test_causality_changing_the_future_never_changes_the_past(kw):
    torch.manual_seed(0)
    model = build_model(small(**kw)).eval()
    x = torch.randint(0, 50, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        a, b = model(x)[0], model(y)[0]
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:], atol=1e-3)


@pytest.mark.parametrize("kw", [dict(), dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)])
def test_tiny_model_overfits_one_batch(kw):
    torch.manual_seed(0)
    model = build_model(small(**kw))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 50, (4, 24))
    y = torch.roll(x, -1, dims=1)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_initial_loss_is_near_uniform():
    torch.manual_seed(0)
    model = build_model(small())
    x, y = torch.randint(0, 50, (2, 4, 24))
    _, loss = model(x, y)
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.1  # ≈ ln V: nothing learned yet


def test_weight_tying_shares_one_matrix():
    tied, untied = build_model(small()), build_model(small(tie_embeddings=False))
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.lm_head.weight is not untied.wte.weight
    d = 50 * 32
    assert sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters()) == d


@pytest.mark.parametrize("kw", [dict(pos="learned"), dict(pos="sinusoidal"), dict(pos="rope", n_kv_head=1)])
def test_greedy_with_kv_cache_equals_without(kw):
    torch.manual_seed(0)
    model = build_model(small(**kw)).eval()
    prompt = torch.randint(0, 50, (3, 5))
    cfg = SamplingConfig(max_new_tokens=40, temperature=0)  # 45 > block_size 24: the window slides too
    with_cache = torch.stack(list(generate_ids(model, prompt, cfg, use_cache=True)), 1)
    without = torch.stack(list(generate_ids(model, prompt, cfg, use_cache=False)), 1)
    assert with_cache.shape == (3, 40)
    assert torch.equal(with_cache, without)


def test_cached_logits_match_full_forward():
    torch.manual_seed(0)
    model = build_model(small(pos="rope")).eval()
    x = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        full = model(x)[0]
        cache = model.make_cache(2)
        parts = [model(x[:, :7], cache=cache)[0], model(x[:, 7:10], cache=cache)[0]]
        parts += [model(x[:, i:i + 1], cache=cache)[0] for i in range(10, 16)]
    assert torch.allclose(full, torch.cat(parts, 1), atol=1e-5)


def test_sampling_seed_repeats_and_top_k_one_is_greedy():
    torch.manual_seed(0)
    model = build_model(small()).eval()
    prompt = torch.randint(0, 50, (1, 4))
    run = lambda **kw: torch.stack(list(generate_ids(model, prompt, SamplingConfig(max_new_tokens=15, **kw))), 1)
    assert torch.equal(run(temperature=1.0, seed=7), run(temperature=1.0, seed=7))
    assert torch.equal(run(temperature=1.0, top_k=1, seed=3), run(temperature=0))
    assert torch.equal(run(temperature=1.0, top_p=1e-6, seed=3), run(temperature=0))


def test_grouped_query_decode_step_attends_like_the_repeated_heads():
    """One new token with fewer K/V heads takes a path with no copy of the cache; it must give what attending
    over K/V heads repeated n_head/n_kv_head times gives, with and without a padding mask."""
    import torch.nn.functional as F
    from lmkit.models.attention import attend
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 6, 1, 8, generator=g), torch.randn(3, 2, 20, 8, generator=g), torch.randn(3, 2, 20, 8, generator=g)
    mask = torch.ones(3, 1, 1, 20, dtype=torch.bool)
    mask[1, ..., :7] = False  # a left-padded row
    for m in (None, mask):
        want = F.scaled_dot_product_attention(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1), attn_mask=m)
        got = attend(q, k, v, causal=False, mask=m)
        assert got.shape == want.shape and (got - want).abs().max() < 1e-6
    tiled = F.scaled_dot_product_attention(q, k.repeat(1, 3, 1, 1), v.repeat(1, 3, 1, 1))  # heads grouped j, j+2, j+4
    assert (tiled - attend(q, k, v, causal=False)).abs().max() > 1e-2  # the grouping is checked, not just the shape
