"""A conversation longer than the model's context: `lmkit chat` and the API's truncate_history keep the system
prompt, leave out the oldest turns and say so; without the opt-in the API answers OpenAI's 400."""
import io

import pytest

import lmkit
from lmkit.serve.terminal import chat, fit_turns

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from lmkit.serve import create_app  # noqa: E402

SYSTEM = ("system", "Be kind.")
TURNS = [("user", "To be, or not"), ("assistant", "to be, that is"), ("user", "the question"),
         ("assistant", "whether tis"), ("user", "nobler in the mind")]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A char model with a 96-token context: the system prompt and the last turn fit, the conversation not."""
    from conftest import tiny_config
    base = tmp_path_factory.mktemp("chat96")
    data = base / "text.txt"
    data.write_text("System: Be kind.\n\nUser: To be, or not\n\nAssistant: to be, that is\n\n" * 40, encoding="utf-8")
    cfg = tiny_config(base / "run", data, max_iters=10)
    cfg.model.block_size = 96
    return lmkit.load(lmkit.train(cfg, progress=False).out_dir)


def test_fit_turns_keeps_the_system_prompt_and_the_last_turn(lm):
    block = lm.model.config.block_size
    messages = [SYSTEM] + TURNS
    text, stops, n, dropped = fit_turns(lm, messages, min_reply=4)
    assert dropped >= 2 and len(messages) == 1 + len(TURNS) - dropped
    assert messages[0] == SYSTEM and messages[-1] == TURNS[-1]
    assert messages[1][0] == "user"  # what is left starts at a user turn
    assert n + 4 <= block and n == len(lm.encode_prompt(text))
    whole, _ = lm.chat_prompt([SYSTEM] + TURNS)
    assert len(lm.encode_prompt(whole)) + 4 > block  # the whole conversation did not fit


def test_terminal_chat_says_what_it_left_out(lm):
    lines = iter(["To be, or not to be", "that is the question", "whether tis nobler", "/quit"])
    out = io.StringIO()
    chat(lm, input=lambda _: next(lines), out=out, system="Be kind.", max_new_tokens=8, temperature=0)
    text = out.getvalue()
    assert text.count("model> ") == 3
    assert "oldest message" in text and "the system prompt stays" in text


def test_api_keeps_openai_behaviour_unless_asked(lm):
    with TestClient(create_app(lm)) as client:  # the lifespan starts the scheduler
        check_api(client, lm)


def check_api(client, lm):
    model = lm.path.name
    messages = [{"role": r, "content": c} for r, c in [SYSTEM] + TURNS]
    r = client.post("/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": 4})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = client.post("/v1/chat/completions", json={"model": model, "messages": messages, "max_tokens": 4,
                                                  "temperature": 0, "truncate_history": True})
    assert r.status_code == 200, r.text
    dropped = int(r.headers["X-Lmkit-Dropped-Messages"])
    kept = [SYSTEM] + TURNS
    fit_turns(lm, kept, min_reply=4)
    assert dropped == 1 + len(TURNS) - len(kept)
    text, stops = lm.chat_prompt(kept)  # the reply is the one to the conversation that was kept
    expected = lm.generate(text, max_new_tokens=4, temperature=0, stop=stops)
    assert r.json()["choices"][0]["message"]["content"] == expected
    r = client.post("/v1/chat/completions", json={"model": model, "messages": messages[-1:], "max_tokens": 4,
                                                  "truncate_history": True})
    assert r.status_code == 200 and "X-Lmkit-Dropped-Messages" not in r.headers
