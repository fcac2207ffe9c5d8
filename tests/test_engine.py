"""The batched engine (engine.py) gives exactly the tokens of the plain reference loop (sampling.py).

Greedy and seeded sampling, with and without penalties, for a GPT with learned positions, a GPT with
rotary positions and the LSTM; a prompt and generation that outgrow block_size (the engine rebuilds
its cache over the last block_size tokens, which is the window the reference re-reads every step);
and every row of a ragged, left-padded batch against the reference for that row alone.
"""
from dataclasses import replace

import pytest
import torch

from lmkit.config import ModelConfig
from lmkit.engine import DecodeSession, generate_ids
from lmkit.models import build_model
from lmkit.sampling import SamplingConfig, generate_reference

BLOCK = 16
MODELS = {"gpt-learned": dict(pos="learned"), "gpt-rope": dict(pos="rope", n_kv_head=2), "lstm": dict(type="lstm")}
CONFIGS = {
    "greedy": dict(temperature=0),
    "sampled": dict(temperature=0.9, top_k=20, seed=3),
    "penalised": dict(temperature=0.9, top_k=20, seed=3, repetition_penalty=1.3, frequency_penalty=0.5,
                      presence_penalty=0.3),
    "greedy-penalised": dict(temperature=0, repetition_penalty=1.5, frequency_penalty=0.4),
    "nucleus": dict(temperature=1.2, top_k=None, top_p=0.9, min_p=0.02, seed=11),
    "biased": dict(temperature=0.9, top_k=20, seed=3, logit_bias={3: 2.0, 7: -100.0}),  # OpenAI's logit_bias
}
PROMPTS = [[5, 9, 2, 7, 1, 3, 8, 30, 12, 4], [4], [11, 12, 13], [6, 6, 6, 6, 6]]


def tiny(kind: str):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**dict(vocab_size=40, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32),
                                      **MODELS[kind]})).eval()


def engine_rows(model, prompts, cfg, eos_id=None, use_cache=True) -> list[list[int]]:
    """Each row's tokens from generate_ids, cut after the row's first EOS (later ones are filler)."""
    rows = torch.stack(list(generate_ids(model, prompts, cfg, eos_id=eos_id, use_cache=use_cache)), 1).tolist()
    if eos_id is not None and cfg.stop_at_eos:
        rows = [r[:r.index(eos_id) + 1] if eos_id in r else r for r in rows]
    return rows


@pytest.mark.parametrize("sampling", CONFIGS)
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("length", [8, 30], ids=["fits", "overflows"])  # 10 + 30 > block_size 16
def test_engine_gives_the_reference_tokens(kind, sampling, length):
    model = tiny(kind)
    cfg = SamplingConfig(max_new_tokens=length, **CONFIGS[sampling])
    expected = generate_reference(model, PROMPTS[0], cfg)
    assert len(expected) == length
    assert engine_rows(model, [PROMPTS[0]], cfg) == [expected]
    assert engine_rows(model, [PROMPTS[0]], cfg, use_cache=False) == [expected]


@pytest.mark.parametrize("sampling", ["greedy", "penalised"])
@pytest.mark.parametrize("kind", MODELS)
def test_each_row_of_a_ragged_batch_gives_its_reference_tokens(kind, sampling):
    """One config for the batch: row i draws from seed + i, as a request with n choices does."""
    model = tiny(kind)
    cfg = SamplingConfig(max_new_tokens=20, **CONFIGS[sampling])  # the longest row outgrows the context
    for i, row in enumerate(engine_rows(model, PROMPTS, cfg)):
        alone = cfg if cfg.seed is None else replace(cfg, seed=cfg.seed + i)
        assert row == generate_reference(model, PROMPTS[i], alone), (kind, i)


@pytest.mark.parametrize("kind", MODELS)
def test_rows_with_their_own_configs_and_eos(kind):
    """Different configs per row (DecodeSession takes one each) and an EOS that ends rows at different steps."""
    model = tiny(kind)
    cfgs = [SamplingConfig(max_new_tokens=25, **CONFIGS[name]) for name in ("sampled", "greedy", "nucleus")]
    eos = generate_reference(model, PROMPTS[2], cfgs[1])[4]  # a token the greedy row generates
    expected = [generate_reference(model, p, c, eos_id=eos) for p, c in zip(PROMPTS, cfgs)]
    assert any(len(e) < 25 for e in expected)
    session = DecodeSession(model, PROMPTS[:3], cfgs)
    got, live = [[] for _ in cfgs], [0, 1, 2]
    while live:
        tokens = session.step().tokens.tolist()
        for b, row in enumerate(live):
            got[row].append(tokens[b])
        still = [b for b, row in enumerate(live) if got[row][-1] != eos and len(got[row]) < 25]
        live = [live[b] for b in still]
        if live:
            session.keep(still)
    assert got == expected


def test_a_truncated_prompt_keeps_its_last_block_size_tokens():
    model = tiny("gpt-rope")
    long = list(range(1, 30))
    cfg = SamplingConfig(max_new_tokens=6, truncate=True, **CONFIGS["sampled"])
    assert engine_rows(model, [long], cfg) == [generate_reference(model, long, cfg)]
    assert generate_reference(model, long, cfg) == generate_reference(model, long[-BLOCK:], cfg)


def test_logit_bias_follows_rows_through_merge_and_keep():
    """The session builds its logit_bias tensor once; merge() and keep() must carry it with the rows."""
    model = tiny("gpt-rope")
    plain, forced = SamplingConfig(temperature=0), SamplingConfig(temperature=0, logit_bias={7: 100.0})
    alone = DecodeSession(model, [PROMPTS[2]], plain)
    want = [int(alone.step().tokens[0]) for _ in range(5)]
    a, b = DecodeSession(model, [PROMPTS[0]], forced), DecodeSession(model, [PROMPTS[2], PROMPTS[1]], plain)
    got_a, got_b = [int(a.step().tokens[0])], [int(b.step().tokens[0])]
    a.merge(b)
    a.keep([1, 0])  # the plain row first, the biased row second; the third row leaves
    for _ in range(4):
        t = a.step().tokens
        got_b.append(int(t[0]))
        got_a.append(int(t[1]))
    assert got_a == [7] * 5 and got_b == want
