"""Prefix caching (prefix_cache.py): prompts that share a prefix reuse its keys and values, with the tokens
and (to float rounding) the log-probabilities of decoding without it; the cache keys blocks by the whole
prefix, evicts the least recently used leaf under its byte budget; the scheduler prefills a wave sharing a
new prefix in two parts so most of it hits; the server gives the same replies with and without it and
counts the hits in /metrics."""
import asyncio

import httpx
import pytest
import torch

import lmkit
from lmkit.config import ModelConfig
from lmkit.engine import DecodeSession
from lmkit.errors import LmkitError
from lmkit.models import build_model
from lmkit.prefix_cache import PrefixCache
from lmkit.sampling import SamplingConfig, generate_reference
from lmkit.serve import create_app
from lmkit.serve.scheduler import Scheduler

BLOCK = 96
MODELS = {"learned": dict(pos="learned"), "rope-gqa": dict(pos="rope", n_kv_head=2),
          "rope-window": dict(pos="rope", norm="rmsnorm", sliding_window=24)}
GREEDY = SamplingConfig(max_new_tokens=12, temperature=0, logprobs=5)
SAMPLED = SamplingConfig(max_new_tokens=12, temperature=0.9, top_k=20, seed=5, logprobs=5)


def tiny(kind: str, **over):
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**dict(vocab_size=50, block_size=BLOCK, n_layer=2, n_head=4, n_embd=32),
                                      **MODELS[kind], **over})).eval()


def ids(n: int, seed: int) -> list[int]:
    return torch.randint(1, 50, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def decode(model, prompts, cfg, prefix_cache=None):
    """(tokens (B, n) as lists, top log-probabilities (B, n, 5), top ids, the session) of one session."""
    s = DecodeSession(model, prompts, cfg, prefix_cache=prefix_cache)
    steps = [s.step() for _ in range(cfg.max_new_tokens)]
    return (torch.stack([x.tokens for x in steps], 1).tolist(), torch.stack([x.top_logprobs for x in steps], 1),
            torch.stack([x.top_ids for x in steps], 1), s)


def same_as_without(model, prompts, cfg, pc):
    """Decode with the cache and without: same tokens and top ids, log-probabilities within 1e-5."""
    ref_tokens, ref_lp, ref_ids, _ = decode(model, prompts, cfg)
    tokens, lp, top, s = decode(model, prompts, cfg, pc)
    assert tokens == ref_tokens
    assert torch.equal(top, ref_ids)
    assert (lp - ref_lp).abs().max() < 1e-5
    return s


@pytest.mark.parametrize("cfg", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("kind", MODELS)
def test_ragged_prompts_sharing_a_prefix_decode_as_without_the_cache(kind, cfg):
    model, system = tiny(kind), ids(40, 0)  # 2 full blocks of 16 and 8 tokens more
    pc = PrefixCache(model)
    first = [system + ids(n, 10 + n) for n in (3, 9, 1)]
    s = same_as_without(model, first, cfg, pc)
    assert s.reused == [0, 0, 0] and pc.hit_tokens == 0 and pc.lookup_tokens == 43 + 49 + 41
    assert len(pc) == 2 + 1  # the shared 2 blocks once, and the third block of the 49-token prompt
    kv_heads = model.config.n_kv_head or model.config.n_head
    assert pc.bytes == 3 * (2 * 2 * kv_heads * 16 * 8 * 4)  # 3 blocks of K and V · layers · heads · 16 · 8 · fp32
    second = [system + ids(n, 20 + n) for n in (5, 2, 20, 12)]  # lengths 45, 42, 60, 52
    suffix = max(len(p) - 32 for p in second)  # every row finds 32 tokens; the prefill is 28 columns wide
    s = same_as_without(model, second, cfg, pc)
    assert s.reused == [32 - (suffix - (len(p) - 32)) for p in second] == [17, 14, 32, 24]
    assert pc.hit_tokens == sum(s.reused) and pc.lookup_tokens == 133 + 45 + 42 + 60 + 52


def test_a_prompt_finds_exactly_its_cached_prefix_and_never_its_last_token():
    model = tiny("rope-gqa")
    pc = PrefixCache(model)
    a = ids(40, 1)
    same_as_without(model, [a], GREEDY, pc)  # stores a[:16] and a[:32]
    b = a[:24] + ids(16, 2)  # diverges inside the second block: only the first is its own
    assert same_as_without(model, [b], GREEDY, pc).reused == [16]
    c = ids(16, 3) + a[16:40]  # a's second block after another first block: not a's prefix
    assert same_as_without(model, [c], GREEDY, pc).reused == [0]
    assert same_as_without(model, [a[:32] + [7]], GREEDY, pc).reused == [32]
    assert same_as_without(model, [a[:32]], GREEDY, pc).reused == [16]  # the 32nd token is computed
    assert same_as_without(model, [a + ids(30, 4)], GREEDY, pc).reused == [32]


@pytest.mark.parametrize("kind", ["learned", "rope-gqa"])
def test_hits_then_long_generation_and_merged_sessions_give_the_reference_tokens(kind):
    model = tiny(kind)
    pc = PrefixCache(model)
    system = ids(50, 5)
    cfg = SamplingConfig(max_new_tokens=40, temperature=0.8, top_k=10, seed=2)  # 70 + 40 > block_size 96
    prompts = [system + ids(20, 6), system + ids(4, 7)]
    DecodeSession(model, [system + [1]], cfg, prefix_cache=pc).step()  # stores the system prompt's 3 blocks
    a = DecodeSession(model, prompts[:1], cfg, prefix_cache=pc)
    b = DecodeSession(model, prompts[1:], cfg, prefix_cache=pc)
    assert a.reused == b.reused == [48]
    first = [a.step().tokens, b.step().tokens]
    a.merge(b)
    rows = torch.cat([torch.cat(first)[:, None], torch.stack([a.step().tokens for _ in range(39)], 1)], 1).tolist()
    assert rows == [generate_reference(model, p, cfg) for p in prompts]


def test_least_recently_used_leaves_are_evicted_under_the_byte_budget():
    model = tiny("rope-gqa")  # a block: 2 layers · 2 kv heads · 16 tokens · head size 8 · K and V · 4 bytes
    block = 2 * 2 * 16 * 8 * 2 * 4
    pc = PrefixCache(model, max_bytes=3 * block)
    k = v = torch.zeros(2, 2, 40, 8)
    a, b, c, d = ids(40, 1), ids(17, 2), ids(17, 3), ids(40, 4)
    found = lambda p: pc.cached_tokens(p)  # noqa: E731
    pc.store(a, k, v)
    pc.store(b, k, v)
    assert (found(a), found(b), pc.bytes, len(pc)) == (32, 16, 3 * block, 3)
    assert pc.lookup(a) is not None  # a is now more recent than b
    pc.store(c, k, v)
    assert (found(a), found(b), found(c)) == (32, 0, 16)  # b went, not a's first block (stored before b)
    pc.store(d, k, v)  # a's two blocks go, its second first (a first block is not evicted before its rest)
    assert (found(a), found(c), found(d), pc.bytes) == (0, 16, 32, 3 * block)
    one = PrefixCache(model, max_bytes=block)
    one.store(a, k, v)  # the first block fits; the second would need it evicted, and it is what it continues
    assert (one.cached_tokens(a), one.bytes) == (16, block)
    none = PrefixCache(model, max_bytes=block - 1)
    none.store(a, k, v)
    assert (none.cached_tokens(a), none.bytes, len(none)) == (0, 0, 0)


def test_the_lstm_and_use_cache_false_ignore_it_and_another_models_cache_is_refused():
    lstm = build_model(ModelConfig(type="lstm", vocab_size=50, block_size=BLOCK, n_layer=1, n_embd=32)).eval()
    pc = PrefixCache(lstm)
    prompts = [ids(40, 1), ids(40, 1) + [3]]
    assert not pc.enabled
    tokens, _, _, s = decode(lstm, prompts, GREEDY, pc)
    assert s.reused is None and len(pc) == 0 and tokens == decode(lstm, prompts, GREEDY)[0]
    gpt = tiny("learned")
    assert DecodeSession(gpt, prompts, GREEDY, use_cache=False, prefix_cache=PrefixCache(gpt)).reused is None
    with pytest.raises(LmkitError, match="^prefix_cache: this PrefixCache was built for another model$"):
        DecodeSession(tiny("rope-gqa"), prompts, GREEDY, prefix_cache=PrefixCache(gpt))


# ---- the scheduler and the server ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    """A tiny char run with room for a system prompt: block_size 128."""
    from conftest import tiny_config
    base = tmp_path_factory.mktemp("prefix")
    data = base / "text.txt"
    data.write_text("System: Answer in verse, briefly and kindly.\n\nUser: To be\n\nAssistant: Or not to be, that is "
                    "the question.\n" * 40, encoding="utf-8")
    cfg = tiny_config(base / "run", data, max_iters=10)
    cfg.model.block_size = 128
    return lmkit.train(cfg, progress=False).out_dir


def wave(lm, prompts, prefix_cache):
    """Submit every prompt before the scheduler starts (one admitted wave); the replies, greedy."""
    scheduler = Scheduler(lm.model, lm.tokenizer, prefix_cache=prefix_cache)
    cfg = SamplingConfig(max_new_tokens=6, temperature=0)

    async def run():
        jobs = [scheduler.submit([(lm.encode_prompt(p), cfg)]) for p in prompts]
        scheduler.start()
        out = []
        for job in jobs:
            text = ""
            while (item := await job.queue.get()) is not None:
                text += item.text
            out.append(text)
        return out
    try:
        return asyncio.run(run())
    finally:
        scheduler.stop()


def test_a_wave_sharing_a_new_prefix_prefills_one_job_first_and_the_rest_hit(chat_run):
    lm = lmkit.load(chat_run)
    system = "System: Answer in verse, briefly and kindly.\n\n"  # 46 characters: 2 full blocks
    prompts = [f"{system}User: {q}\n\nAssistant:" for q in ("To be", "Or not", "That is", "the q")]
    pc = PrefixCache(lm.model)
    assert wave(lm, prompts, pc) == wave(lm, prompts, None)
    lengths = [len(lm.encode_prompt(p)) for p in prompts]
    assert pc.lookup_tokens == sum(lengths)
    # the first job alone, then 3 that find the 48 tokens (52 shared: system prompt and "User: ") it stored,
    # but for the columns the widest of them computes anyway
    assert pc.hit_tokens == sum(48 - (max(lengths[1:]) - m) for m in lengths[1:]) > 100


def chat(url, model, system, question):
    body = {"model": model, "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]["content"]


def test_the_server_replies_the_same_with_and_without_it_and_counts_hits(chat_run):
    from test_serve import live_server
    from test_serve_ops import _samples
    lm = lmkit.load(chat_run)
    system, questions = "Answer in verse, briefly and kindly.", ["To be", "Or not to be"]
    replies, counts = {}, {}
    for on in (True, False):
        with live_server(create_app(lm, prefix_cache=on)) as url:
            replies[on] = [chat(url, lm.path.name, system, q) for q in questions]
            counts[on] = _samples(httpx.get(f"{url}/metrics").text)
    assert replies[True] == replies[False]
    on, off = counts[True], counts[False]
    prompt = len(lm.encode_prompt(lm.chat_prompt([("system", system), ("user", questions[0])])[0]))
    assert on["lmkit_prefix_cache_hit_tokens_total"] == 48 > prompt // 2  # the second request's system prompt
    assert on["lmkit_prefix_cache_lookup_tokens_total"] == on["lmkit_prompt_tokens_total"]
    assert on["lmkit_prefix_cache_bytes"] > 0
    assert off["lmkit_prefix_cache_hit_tokens_total"] == off["lmkit_prefix_cache_bytes"] == 0


def test_serve_flags_reach_serve(chat_run, monkeypatch):
    from lmkit.cli import main
    got = {}
    monkeypatch.setattr("lmkit.serve.serve", lambda run_dir, **kw: got.update(kw))
    assert main(["serve", str(chat_run), "--no-prefix-cache", "--prefix-cache-mb", "8"]) == 0
    assert (got["prefix_cache"], got["prefix_cache_mb"]) == (False, 8.0)
    assert main(["serve", str(chat_run)]) == 0
    assert (got["prefix_cache"], got["prefix_cache_mb"]) == (True, 256.0)
