"""Speculative decoding (speculative.py): a draft model proposes, the target verifies.

Greedy tokens equal the target's alone (a ragged batch, a different random draft so rejections happen,
the target as its own draft so everything is accepted, a generation that outgrows the context); the
distribution of sampled tokens is the target's (chi-square over the first two tokens on a 6-token
vocabulary, against exact probabilities; the draft's own distribution fails the same test); a seeded
row's tokens do not depend on k or on its batch-mates; the server with a draft replies as without;
bad input is refused in one line.
"""
import pytest
import torch

import lmkit
from lmkit.api import LM
from lmkit.config import ModelConfig
from lmkit.engine import DecodeSession, generate_ids
from lmkit.errors import LmkitError
from lmkit.models import build_model
from lmkit.sampling import SamplingConfig, process_logits
from lmkit.speculative import SpeculativeSession

PROMPTS = [[5, 9, 2, 7, 1, 3, 8, 30, 12, 4], [4], [11, 12, 13], [6, 6, 6, 6, 6]]
CHI2_DF15_P001 = 37.70  # chi-square critical value, 15 degrees of freedom, p = 0.001


def tiny(seed: int, vocab: int = 40, scale: float = 1.0, **kw):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**{**dict(vocab_size=vocab, block_size=16, n_layer=2, n_head=4, n_embd=32,
                                              tie_embeddings=False), **kw})).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)  # sharper distributions than a fresh model's near-uniform ones
    return model


def decode(session, n: int) -> list[list[int]]:
    return torch.stack([session.step().tokens for _ in range(n)], 1).tolist()


@pytest.mark.parametrize("n", [8, 30], ids=["fits", "overflows"])  # 10 + 30 > block_size 16
@pytest.mark.parametrize("k", [1, 4])
def test_greedy_tokens_are_the_targets(n, k):
    target, other = tiny(0, scale=8), tiny(1, scale=8, n_layer=1, pos="rope")
    cfg = SamplingConfig(max_new_tokens=n, temperature=0)
    alone = torch.stack(list(generate_ids(target, PROMPTS, cfg)), 1).tolist()
    for draft, all_accepted in ((other, False), (target, True)):
        s = SpeculativeSession(target, PROMPTS, cfg, draft=draft, draft_tokens=k)
        assert decode(s, n) == alone
        assert (s.accepted == s.proposed) == all_accepted and s.accepted > 0


def exact_two_tokens(model, prompt, cfg, V):
    """P(x1, x2) under the processed distribution (temperature, top-k) of `model`, computed directly."""
    probs = lambda ids: process_logits(model(torch.tensor([ids]))[0][:, -1], [cfg], None, None).softmax(-1)[0]
    with torch.no_grad():
        first = probs(prompt)
        return torch.stack([first[a] * probs(prompt + [a]) for a in range(V)])


def chi_square(tokens: torch.Tensor, P: torch.Tensor) -> float:
    V, N = P.size(0), tokens.size(0)
    counts = torch.zeros(V, V).index_put_((tokens[:, 0], tokens[:, 1]), torch.ones(N), accumulate=True)
    expected = P * N
    assert counts[expected == 0].sum() == 0, "a pair the target gives probability 0"
    return float(((counts - expected) ** 2 / expected.clamp(min=1e-12)).sum())


def test_sampling_keeps_the_targets_distribution():
    V, N, prompt = 6, 4000, [1, 2, 3]
    target, draft = tiny(0, vocab=V, scale=12, n_head=2, n_embd=16), tiny(1, vocab=V, scale=12, n_layer=1, n_head=2, n_embd=16)
    cfg = SamplingConfig(max_new_tokens=2, temperature=0.8, top_k=4, seed=123)
    P = exact_two_tokens(target, prompt, cfg, V)
    assert int((P > 0).sum()) == 16  # top-k 4, twice: 16 cells, 15 degrees of freedom
    s = SpeculativeSession(target, [prompt] * N, cfg, draft=draft, draft_tokens=2)  # rows draw from seed + i
    assert chi_square(torch.tensor(decode(s, 2)), P) < CHI2_DF15_P001
    assert 0.1 < s.accepted / s.proposed < 0.9  # rejections and residual draws both happened
    drafts_own = torch.tensor(decode(DecodeSession(draft, [prompt] * N, cfg), 2))
    with pytest.raises(AssertionError):  # the test has power: the draft's own samples fail it
        assert chi_square(drafts_own, P) < CHI2_DF15_P001


def test_a_seed_gives_the_same_tokens_whatever_k_and_batch():
    target, draft = tiny(0, scale=8), tiny(1, scale=8, n_layer=1)
    cfg = SamplingConfig(max_new_tokens=12, temperature=0.9, top_p=0.9, seed=7)
    other = SamplingConfig(max_new_tokens=12, temperature=1.0, seed=99)
    alone = decode(SpeculativeSession(target, [PROMPTS[0]], cfg, draft=draft, draft_tokens=1), 12)[0]
    batch = decode(SpeculativeSession(target, PROMPTS[:2], [cfg, other], draft=draft, draft_tokens=4), 12)[0]
    assert alone == batch


def test_keep_and_merge_give_the_targets_greedy_tokens():
    target, draft = tiny(0, scale=8), tiny(1, scale=8, n_layer=1)
    cfg = SamplingConfig(max_new_tokens=10, temperature=0)
    alone = torch.stack(list(generate_ids(target, PROMPTS, cfg)), 1).tolist()
    a = SpeculativeSession(target, PROMPTS[:2], cfg, draft=draft, draft_tokens=3)
    got = decode(a, 3)
    b = SpeculativeSession(target, PROMPTS[2:], cfg, draft=draft, draft_tokens=3)
    late = decode(b, 1)
    a.merge(b)
    rest = decode(a, 5)
    a.keep([3, 0])  # rows 1 and 2 leave, the other two swap
    tail = decode(a, 2)
    assert got[0] + rest[0] + tail[1] == alone[0][:10] and got[1] + rest[1] == alone[1][:8]
    assert late[0] + rest[2] == alone[2][:6] and late[1] + rest[3] + tail[0] == alone[3][:8]


def test_refused_in_one_line(trained_run):
    target = tiny(0)
    with pytest.raises(LmkitError, match="do not share a vocabulary"):
        SpeculativeSession(target, PROMPTS, SamplingConfig(), draft=tiny(1, vocab=41))
    with pytest.raises(LmkitError, match="^frequency_penalty: not available with a draft model"):
        SpeculativeSession(target, PROMPTS, SamplingConfig(frequency_penalty=0.5), draft=target)
    lm = lmkit.load(trained_run)
    stranger = LM(tiny(2, vocab=lm.tokenizer.vocab_size), lmkit.tokenizer.Tokenizer.train(["abc xyz"], kind="char"),
                  lm.config)
    with pytest.raises(LmkitError, match=f"^draft: the draft and {trained_run} do not share a tokenizer") as e:
        lm.generate("To be", draft=stranger)
    assert "\n" not in str(e.value)


def test_generate_and_server_with_a_draft(trained_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from lmkit.serve import create_app
    lm = lmkit.load(trained_run)
    cfg = lm.model.config
    torch.manual_seed(5)  # a random draft of the same shape family: proposals get rejected
    small = LM(build_model(ModelConfig(**{**cfg.__dict__, "n_layer": 1})).eval(), lm.tokenizer, lm.config)
    greedy = dict(max_new_tokens=20, temperature=0)
    plain = lm.generate(["To be", "床"], **greedy)
    assert lm.generate(["To be", "床"], draft=small, draft_tokens=3, **greedy) == plain
    body = {"model": trained_run.name, "prompt": "To be", "max_tokens": 20, "temperature": 0}
    with TestClient(create_app(lm, draft=small, draft_tokens=3)) as client:
        reply = client.post("/v1/completions", json=body)
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == plain[0]
        refused = client.post("/v1/completions", json={**body, "presence_penalty": 0.5})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "presence_penalty"
