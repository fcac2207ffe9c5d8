"""The generation engine: padding, batching, sampling options, stop strings, logprobs, beam search."""
import pytest
import torch

import lmkit
from lmkit.beam import beam_search
from lmkit.config import ModelConfig
from lmkit.errors import LmkitError
from lmkit.engine import DecodeSession, generate_ids
from lmkit.sampling import SamplingConfig, process_logits, sampling_config
from lmkit.textstream import StopStrings
from lmkit.models import build_model

PROMPTS = [[5, 9, 2, 7, 1, 3, 8], [4], [11, 12, 13], [6, 6, 6, 6, 6]]


def small(**kw):
    torch.manual_seed(0)
    base = dict(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32)
    return build_model(ModelConfig(**{**base, **kw})).eval()


def alone(model, prompt, cfg):
    return torch.stack(list(generate_ids(model, torch.tensor([prompt]), cfg)), 1)[0].tolist()


@pytest.mark.parametrize("kw", [dict(pos="learned"), dict(pos="sinusoidal"), dict(pos="rope", n_kv_head=2)])
def test_padded_forward_matches_each_row_alone(kw):
    model = small(**kw)
    L = max(map(len, PROMPTS))
    idx = torch.tensor([[0] * (L - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in PROMPTS])
    with torch.no_grad():
        batched = model(idx, attention_mask=mask)[0]
        for i, p in enumerate(PROMPTS):
            single = model(torch.tensor([p]))[0][0]
            assert torch.allclose(batched[i, L - len(p):], single, atol=1e-5)
    assert not torch.isnan(batched).any()


@pytest.mark.parametrize("kw", [dict(pos="learned"), dict(pos="rope", n_kv_head=1)])
def test_batch_of_different_lengths_gives_each_prompts_greedy_tokens(kw):
    model = small(**kw)
    cfg = SamplingConfig(max_new_tokens=20, temperature=0)
    together = torch.stack(list(generate_ids(model, PROMPTS, cfg)), 1).tolist()
    for p, row in zip(PROMPTS, together):
        assert row == alone(model, p, cfg)
    no_cache = torch.stack(list(generate_ids(model, PROMPTS, cfg, use_cache=False)), 1).tolist()
    assert no_cache == together


def test_rows_leaving_the_batch_do_not_change_the_others():
    model = small(pos="rope")
    cfg = SamplingConfig(max_new_tokens=12, temperature=0)
    dec = DecodeSession(model, PROMPTS, cfg)
    out = [[] for _ in PROMPTS]
    live = [0, 1, 2, 3]
    for t in range(12):
        tokens = dec.step().tokens.tolist()
        for b, row in enumerate(live):
            out[row].append(tokens[b])
        if t == 3:  # the longest prompt (row 0) leaves: its padding-free column goes, the cache shifts
            live = [1, 2, 3]
            dec.keep([1, 2, 3])
        if t == 7:
            live = [2]
            dec.keep([1])
    assert out[2] == alone(model, PROMPTS[2], cfg)
    assert out[3] == alone(model, PROMPTS[3], cfg)[:8]
    assert out[1][:8] == alone(model, PROMPTS[1], cfg)[:8]


def test_seed_reproduces_a_row_whatever_it_is_batched_with():
    model = small()
    a = SamplingConfig(max_new_tokens=15, temperature=1.0, top_k=None, seed=7)
    other = SamplingConfig(max_new_tokens=15, temperature=1.3, top_p=0.9, seed=1)
    solo = DecodeSession(model, [PROMPTS[0]], a)
    solo_tokens = [solo.step().tokens[0].item() for _ in range(15)]
    mixed = DecodeSession(model, [PROMPTS[2], PROMPTS[0]], [other, a])
    mixed_tokens = [mixed.step().tokens[1].item() for _ in range(15)]
    assert solo_tokens == mixed_tokens
    b = SamplingConfig(max_new_tokens=15, temperature=1.0, top_k=None, seed=8)
    assert alone(model, PROMPTS[0], b) != solo_tokens


def test_filters_on_known_logits():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    finite = lambda **kw: torch.isfinite(process_logits(logits, [SamplingConfig(**kw)], None, None))[0].tolist()
    assert finite(temperature=1, top_k=2) == [True, True, False, False, False]
    # probs ≈ .636 .234 .086 .032 .012: top_p 0.8 needs the first two, 0.9 the first three
    assert finite(temperature=1, top_k=None, top_p=0.8) == [True, True, False, False, False]
    assert finite(temperature=1, top_k=None, top_p=0.9) == [True, True, True, False, False]
    assert finite(temperature=1, top_k=None, min_p=0.1) == [True, True, True, False, False]  # p ≥ .0636
    seen = torch.tensor([[True, False, False, False, False]])
    out = process_logits(logits, [SamplingConfig(temperature=1, top_k=None, repetition_penalty=2.0)], None, seen)
    assert out[0, :2].tolist() == [2.0, 3.0]
    counts = torch.tensor([[0.0, 3.0, 0.0, 0.0, 0.0]])
    cfg = SamplingConfig(temperature=0.5, top_k=None, frequency_penalty=0.5, presence_penalty=1.0)
    assert process_logits(logits, [cfg], counts, None)[0].tolist() == [8.0, 1.0, 4.0, 2.0, 0.0]  # (3−1.5−1)/0.5


def test_penalties_stop_repetition():
    model = small()
    base = alone(model, [1, 2, 3], SamplingConfig(max_new_tokens=30, temperature=0))
    assert len(set(base)) < 30  # an untrained model repeats itself
    out = alone(model, [1, 2, 3], SamplingConfig(max_new_tokens=30, temperature=0, frequency_penalty=2.0,
                                                  presence_penalty=2.0))
    assert len(set(out)) == 30
    out = alone(model, [1, 2, 3], SamplingConfig(max_new_tokens=30, temperature=0, repetition_penalty=1e9))
    assert len(set(out)) == 30 and not {1, 2, 3} & set(out)


def test_stop_strings_across_token_boundaries():
    s = StopStrings(["o W", "END"])
    assert s.push("Hel") == ("Hel", False)
    assert s.push("lo") == ("l", False)  # "lo" may start "o W": hold "o"
    assert s.push(" Wo") == ("", True)  # "Hell" shown, then the stop string
    s = StopStrings(["END"])
    assert s.push("aE") == ("a", False)
    assert s.push("N") == ("", False)
    assert s.push("x") == ("ENx", False)
    assert s.flush() == ""


def test_logprobs_and_alternatives():
    model = small()
    dec = DecodeSession(model, [PROMPTS[0]], SamplingConfig(temperature=0, logprobs=3))
    step = dec.step()
    with torch.no_grad():
        ref = model(torch.tensor([PROMPTS[0]]))[0][0, -1].log_softmax(-1)
    assert step.tokens[0] == ref.argmax()
    assert step.logprobs[0].item() == pytest.approx(ref.max().item(), abs=1e-5)
    assert step.top_ids[0].tolist() == ref.topk(3).indices.tolist()
    assert step.top_logprobs[0].tolist() == pytest.approx(ref.topk(3).values.tolist(), abs=1e-5)


def test_prompt_longer_than_context():
    model = small()
    long = list(range(40)) + [1, 2]
    with pytest.raises(LmkitError, match="prompt is 42 tokens, longer than the model's context of 32"):
        DecodeSession(model, [long], SamplingConfig())
    cfg = SamplingConfig(max_new_tokens=5, temperature=0, truncate=True)
    assert alone(model, long, cfg) == alone(model, long[-32:], cfg)


def test_sampling_config_errors():
    with pytest.raises(LmkitError, match=r"top_p must be in \(0, 1\] \(got 1.5\)"):
        sampling_config(top_p=1.5)
    with pytest.raises(LmkitError, match="temperature must be >= 0"):
        sampling_config(temperature=-1)
    with pytest.raises(LmkitError, match="unknown sampling option 'top_n'"):
        sampling_config(top_n=3)
    with pytest.raises(LmkitError, match=r"seed must be in \[0, 2\*\*62\)"):
        sampling_config(seed=2**64)


def test_a_tiny_temperature_is_greedy_not_nan():
    model = small()
    assert alone(model, [1, 2], SamplingConfig(max_new_tokens=8, temperature=1e-30, seed=0)) == \
        alone(model, [1, 2], SamplingConfig(max_new_tokens=8, temperature=0))


def test_beam_search_one_beam_is_greedy_and_many_beams_are_exact():
    model = small()
    prompt = [3, 1, 4]
    assert beam_search(model, prompt, num_beams=1, max_new_tokens=10) == \
        alone(model, prompt, SamplingConfig(max_new_tokens=10, temperature=0))
    with torch.no_grad():  # exhaustive search over all 50 × 50 two-token continuations
        first = model(torch.tensor([prompt]))[0][0, -1].log_softmax(-1)
        seconds = model(torch.tensor([prompt + [a] for a in range(50)]))[0][:, -1].log_softmax(-1)  # (50, 50)
        total = first[:, None] + seconds
        a, b = divmod(int(total.argmax()), 50)
    assert beam_search(model, prompt, num_beams=50, max_new_tokens=2, length_penalty=0) == [a, b]


def test_api_batches_stops_and_streams(trained_run):
    lm = lmkit.load(trained_run)
    prompts = ["To be", "床前", "T"]
    batch = lm.generate(prompts, max_new_tokens=25, temperature=0)
    assert batch == [lm.generate(p, max_new_tokens=25, temperature=0) for p in prompts]
    full = batch[0]
    assert "".join(lm.stream("To be", max_new_tokens=25, temperature=0)) == full
    cut = full[3:6]  # a stop string in the middle of the greedy text ends it just before
    assert lm.generate("To be", max_new_tokens=25, temperature=0, stop=[cut]) == full[:full.index(cut)]
    assert lm.beam_search("To be", num_beams=1, max_new_tokens=10) == full[:10]


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0)], ids=["shorter-joins", "longer-joins"])
def test_a_request_joining_a_running_batch_gets_its_own_greedy_tokens(order):
    model = small(pos="rope")
    cfg = SamplingConfig(max_new_tokens=10, temperature=0)
    prompts = [PROMPTS[i] for i in order]
    dec = DecodeSession(model, prompts[:2], cfg)
    out = {0: [], 1: [], 2: []}
    for _ in range(4):
        tokens = dec.step().tokens.tolist()
        out[0].append(tokens[0]), out[1].append(tokens[1])
    late = DecodeSession(model, [prompts[2]], cfg)
    out[2].append(late.step().tokens[0].item())
    tokens = dec.step().tokens.tolist()
    out[0].append(tokens[0]), out[1].append(tokens[1])
    dec.merge(late)
    for _ in range(5):
        tokens = dec.step().tokens.tolist()
        for row in range(3):
            out[row].append(tokens[row])
    for row in range(3):
        assert out[row] == alone(model, prompts[row], cfg)[:len(out[row])], row


@pytest.mark.parametrize("kw", [dict(pos="learned"), dict(pos="sinusoidal"), dict(pos="rope", n_kv_head=2)])
def test_fast_path_gives_the_plain_paths_tokens(kw):
    """DecodeSession(fast=True) (inference mode) and fast=False (no_grad) decode the same tokens: greedy and
    seeded sampling, a padded batch, a row leaving it, a request joining it, and sliding past the context."""
    model = small(**kw)
    greedy = SamplingConfig(max_new_tokens=40, temperature=0)  # 7 + 40 > block_size 32: slides
    sampled = SamplingConfig(max_new_tokens=40, temperature=0.9, top_k=20, seed=3, repetition_penalty=1.3)
    runs = {}
    for fast in (True, False):
        out = [torch.stack(list(generate_ids(model, PROMPTS, cfg, fast=fast)), 1).tolist() for cfg in (greedy, sampled)]
        dec = DecodeSession(model, PROMPTS[:2], sampled, fast=fast)
        steps = [dec.step().tokens.tolist(), dec.step().tokens.tolist()]
        dec.keep([1])
        late = DecodeSession(model, [PROMPTS[2]], greedy, fast=fast)
        steps.append(late.step().tokens.tolist())
        steps.append(dec.step().tokens.tolist())
        dec.merge(late)
        steps += [dec.step().tokens.tolist() for _ in range(6)]
        runs[fast] = out, steps
        assert out[0] != out[1]  # sampling is on in the second run
    assert runs[True] == runs[False]
    with pytest.raises(RuntimeError, match="[Ii]nference"):  # the fast path's tensors stay out of autograd
        dec = DecodeSession(model, PROMPTS[:1], greedy)
        dec.cache.k.add_(1)


def test_sampling_config_imports_no_torch():
    """The CLI builds its flags from sampling_config.py before anything heavy is imported."""
    import subprocess
    import sys
    from pathlib import Path
    src = Path(lmkit.__file__).parent
    code = ("import sys, types; pkg = types.ModuleType('lmkit'); pkg.__path__ = [%r]; sys.modules['lmkit'] = pkg\n"
            "from lmkit.sampling_config import SAMPLING_DEFAULTS, SamplingConfig\n"
            "assert SAMPLING_DEFAULTS == vars(SamplingConfig()), SAMPLING_DEFAULTS\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')))" % str(src))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
