"""Structured output: JSON mode and JSON Schema enforced while decoding (grammar.py), in the Python API,
the engine's batches, the server's scheduler and `lmkit generate --json-schema`."""
import json
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest

from conftest import MIXED, tiny_config

TEXT = ("To be, or not to be, that is the question.\n" * 40
        + 'the {"a": 1, "b": [true, null]} end\n' * 10 + "床前明月光\n" * 5)
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "b": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
                                           "hint": {"type": "string", "maxLength": 6},
                                           "side": {"enum": ["the", "be"]}},
          "required": ["a", "b", "hint", "side"]}


def _train(base: Path, kind: str) -> Path:
    from lmkit import train
    base.mkdir(parents=True, exist_ok=True)
    (base / "text.txt").write_text(TEXT * (2 if kind == "char" else 24), encoding="utf-8")
    cfg = tiny_config(base / "run", base / "text.txt", max_iters=30)
    cfg.data.tokenizer = kind
    cfg.model.block_size = 64
    if kind == "bpe":  # room for a tools section in the prompt
        cfg.data.vocab_size, cfg.model.block_size = 300, 640
    return train(cfg, progress=False).out_dir


@pytest.fixture(scope="module")
def bpe_lm(tmp_path_factory):
    import lmkit
    return lmkit.load(_train(tmp_path_factory.mktemp("bpe"), "bpe"))


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    import lmkit
    return lmkit.load(_train(tmp_path_factory.mktemp("char"), "char"))


def _valid(text: str, schema=SCHEMA) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def test_token_bytes_spell_the_text_of_every_tokenizer(bpe_lm, char_lm):
    from lmkit.grammar import token_bytes
    for lm in (bpe_lm, char_lm):
        tok = lm.tokenizer
        vocab = token_bytes(tok, lm.model.config.vocab_size)
        assert len(vocab) == lm.model.config.vocab_size and vocab[tok.eot_id] == b""  # specials are empty
        text = MIXED if tok.kind == "bpe" else "To be, or not {\"a\": 1} 床前明月光"
        assert b"".join(vocab[i] for i in tok.encode(text)) == text.encode("utf-8")


def test_fifty_seeded_answers_validate_and_unconstrained_ones_do_not(bpe_lm, char_lm):
    for lm in (bpe_lm, char_lm):
        prompts = ["the"] * 50  # one batch: row i draws from seed 7 + i
        free = lm.generate(prompts, max_new_tokens=40, seed=7, temperature=1.0)
        assert sum(map(_valid, free)) == 0
        answers = lm.generate(prompts, max_new_tokens=100, seed=7, temperature=1.0, json_schema=SCHEMA)
        bad = [a for a in answers if not _valid(a)]
        assert not bad, (lm.tokenizer.kind, bad[:3])
        assert len(set(answers)) > 5  # sampled, not one forced answer
        again = lm.generate(prompts[:3], max_new_tokens=100, seed=7, temperature=1.0, json_schema=SCHEMA)
        assert again == answers[:3]  # seeded: the same answers, as a batch of 3 or of 50
    # JSON mode: any object; greedy and JSON text of a schema work as well
    from lmkit.sampling import sampling_config
    from lmkit.textstream import stream_pieces
    texts, finish = [""] * 8, [None] * 8
    for piece in stream_pieces(bpe_lm.model, bpe_lm.tokenizer, [bpe_lm.encode_prompt("the")] * 8,
                               sampling_config(max_new_tokens=80, seed=1, json_schema=True)):
        texts[piece.row] += piece.text
        finish[piece.row] = piece.finish_reason or finish[piece.row]
    done = [t for t, f in zip(texts, finish) if f == "stop"]  # an unbounded string may run past max_new_tokens
    assert len(done) >= 2 and all(isinstance(json.loads(t), dict) for t in done), texts
    greedy = bpe_lm.generate("the", max_new_tokens=60, temperature=0, json_schema=json.dumps(SCHEMA))
    assert _valid(greedy) and greedy == bpe_lm.generate("the", max_new_tokens=60, temperature=0, json_schema=SCHEMA)
    streamed = "".join(bpe_lm.stream("the", max_new_tokens=60, seed=3, json_schema=SCHEMA))
    assert _valid(streamed)


def test_a_schema_that_cannot_be_compiled_or_spelled_fails_clearly(bpe_lm, char_lm):
    from lmkit.errors import LmkitError
    with pytest.raises(LmkitError, match="json_schema: the grammar library cannot compile this schema: .*nonsense"):
        bpe_lm.generate("the", json_schema={"type": "nonsense"})
    with pytest.raises(LmkitError, match="json_schema must be a JSON Schema"):
        bpe_lm.generate("the", json_schema=["not", "a", "schema"])
    with pytest.raises(LmkitError, match="not JSON"):
        bpe_lm.generate("the", json_schema="{oops")
    # a character vocabulary spells only what it saw: 'm' never occurs in TEXT
    with pytest.raises(LmkitError, match="no token for 'm' .*'name'"):
        char_lm.generate("the", json_schema={"type": "object", "properties": {"name": {"type": "string"}}})


def test_server_response_format_on_chat_and_completions(bpe_lm):
    from test_serve import live_server
    from lmkit.serve import create_app
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
    with live_server(create_app(bpe_lm)) as url:
        model = bpe_lm.path.name
        r = httpx.post(f"{url}/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "the"}], "n": 4, "seed": 5,
            "max_tokens": 60, "response_format": fmt}, timeout=60).json()
        assert all(_valid(c["message"]["content"]) for c in r["choices"]), r
        r = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "the", "max_tokens": 80, "seed": 1,
                                                      "n": 8, "response_format": {"type": "json_object"}},
                       timeout=60).json()
        done = [c["text"] for c in r["choices"] if c["finish_reason"] == "stop"]
        assert len(done) >= 2 and all(isinstance(json.loads(t), dict) for t in done), r
        # streamed, side by side with unconstrained requests in the scheduler's batch: each row its own matcher
        import concurrent.futures as cf

        def stream(i):
            body = {"model": model, "prompt": "the", "max_tokens": 60, "seed": i, "stream": True}
            if i % 2:
                body["response_format"] = fmt
            text = ""
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as s:
                for line in s.iter_lines():
                    if line.startswith("data: {"):
                        text += json.loads(line[6:]).get("choices", [{"text": line}])[0]["text"]
            return text
        with cf.ThreadPoolExecutor(6) as ex:
            texts = list(ex.map(stream, range(6)))
        assert all(_valid(t) for t in texts[1::2]) and not any(_valid(t) for t in texts[::2]), texts
        alone = bpe_lm.generate("the", max_new_tokens=60, seed=3, temperature=1.0, top_k=None, top_p=1.0,
                                json_schema=SCHEMA)
        assert texts[3] == alone  # the batch changes nothing
        # bad formats: 400 naming the field
        for rf, param in [({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
                           "response_format.json_schema.schema"),
                          ({"type": "json_schema"}, "response_format"),
                          ({"type": "xml"}, "response_format.type"),
                          ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
                           "response_format.json_schema.name")]:
            r = httpx.post(f"{url}/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "x"}], "response_format": rf})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (rf, r.text)


def test_cli_generate_json_schema(bpe_lm, tmp_path, capsys):
    from lmkit.cli import main
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(SCHEMA))
    main(["generate", str(bpe_lm.path), "--prompt", "the", "--json-schema", str(f), "--seed", "4",
          "--max-new-tokens", "60"])
    assert _valid(capsys.readouterr().out.strip())
    for content, message in [("{oops", "not JSON"), ("[1]", "must hold a JSON Schema object"),
                             ('{"type": "nonsense"}', "cannot compile")]:
        f.write_text(content)
        assert main(["generate", str(bpe_lm.path), "--json-schema", str(f)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --json-schema {f}: ") and message in err and "Traceback" not in err


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "the weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string", "maxLength": 8},
                                                "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                                                "required": ["city", "days"]}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}}}


def test_tool_calls_with_the_openai_client_streaming_and_not(bpe_lm):
    import openai
    from test_serve import live_server
    from lmkit.serve import create_app
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
    with live_server(create_app(bpe_lm)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", timeout=60, max_retries=0)
        model, msgs = bpe_lm.path.name, [{"role": "user", "content": "the weather in Paris?"}]
        for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            r = client.chat.completions.create(model=model, messages=msgs, tools=[WEATHER, ADD], tool_choice=choice,
                                               seed=3, n=3)
            for c in r.choices:
                assert c.finish_reason == "tool_calls" and c.message.content is None, c
                call, = c.message.tool_calls
                assert call.type == "function" and call.id.startswith("call_")
                jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
                assert isinstance(choice, str) or call.function.name == "get_weather"
        # streamed: the call arrives whole in one delta, the last chunk says tool_calls
        stream = client.chat.completions.create(model=model, messages=msgs, tools=[WEATHER], tool_choice="required",
                                                seed=3, stream=True)
        calls, finish, content = [], None, ""
        for ch in stream:
            d = ch.choices[0].delta
            calls += d.tool_calls or []
            content += d.content or ""
            finish = ch.choices[0].finish_reason or finish
        assert finish == "tool_calls" and content == "" and len(calls) == 1 and calls[0].index == 0
        jsonschema.validate(json.loads(calls[0].function.arguments), schemas["get_weather"])
        # the call and the tool's result go back in; "none" and "auto" answer in text (this model never calls)
        history = msgs + [{"role": "assistant", "content": None, "tool_calls": [
            {"id": calls[0].id, "type": "function", "function": {"name": "get_weather",
                                                                "arguments": calls[0].function.arguments}}]},
                          {"role": "tool", "tool_call_id": calls[0].id, "content": '{"temperature": 21}'}]
        for tool_choice in ("none", "auto"):
            r = client.chat.completions.create(model=model, messages=history, tools=[WEATHER], tool_choice=tool_choice,
                                               max_tokens=8, seed=1)
            assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.tool_calls is None
        # bad input: 400 naming the field
        bad = {**WEATHER, "function": {**WEATHER["function"], "parameters": {"type": "nonsense"}}}
        for extra, param in [({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools[0].function.name"),
                             ({"tools": [bad]}, "tools[0].function.parameters"),
                             ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                              "tool_choice"),
                             ({"tool_choice": "required"}, "tool_choice"),
                             ({"tools": [WEATHER, WEATHER]}, "tools"),
                             ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
                             ({"messages": [{"role": "user", "content": None}]}, "messages[0]")]:
            r = httpx.post(f"{url}/v1/chat/completions", json={"model": model, "messages": msgs, **extra})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)


def test_tool_call_parser_and_templates():
    from lmkit.chat import PLAIN, TOKENS
    from lmkit.chat_jinja import JinjaTemplate
    from lmkit.serve.tools import ToolCallParser
    p = ToolCallParser(["add"])
    text = 'Sure. <tool_call>{"name": "add", "arguments": {"x": 1, "y": 2}}</tool_call> <tool_call>{"name": "sub", ' \
           '"arguments": {}}</tool_call> done <tool_'
    pieces = [p.push(text[i:i + 5]) for i in range(0, len(text), 5)]
    content = "".join(c for c, _ in pieces) + p.flush()
    calls = [c for _, cs in pieces for c in cs]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"x": 1, "y": 2}]
    assert content == 'Sure.  <tool_call>{"name": "sub", "arguments": {}}</tool_call> done <tool_'  # unknown: text
    assert all("<tool" not in c for c, _ in pieces[:2])  # the start of a call is held back
    msgs = [{"role": "user", "content": "add 1 and 2"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "add", "arguments": '{"x": 1, "y": 2}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "3"}]
    for template in (PLAIN, TOKENS):  # lmkit's own templates: a tools section in the system turn
        prompt, _ = template.prompt(msgs, tools=[ADD])
        assert prompt.index('"name": "add"') < prompt.index("add 1 and 2")
        assert '<tool_call>{"name": "add", "arguments": {"x": 1, "y": 2}}</tool_call>' in prompt
        assert "<tool_response>3</tool_response>" in prompt
    jinja = JinjaTemplate("{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}"
                          "<{{ m.role }}>{{ m.content }}{% for c in m.tool_calls or [] %}{{ c.function.name }}"
                          "{{ c.function.arguments.x }}{% endfor %}{% endfor %}", {}, [], ())
    prompt, _ = jinja.prompt(msgs, tools=[ADD])  # a template that takes tools renders them its own way
    assert prompt == "[add]<user>add 1 and 2<assistant>add1<tool>3"
    plain_jinja = JinjaTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}", {}, [], ())
    prompt, _ = plain_jinja.prompt(msgs, tools=[ADD])  # one that does not: lmkit's tools section
    assert prompt.startswith("<system>You can call these functions") and "<user><tool_response>3" in prompt


def test_a_constrained_session_merges_into_a_free_one_and_keeps_its_matcher(bpe_lm):
    from lmkit.engine import DecodeSession
    from lmkit.sampling import sampling_config
    tok, model = bpe_lm.tokenizer, bpe_lm.model
    free, constrained = sampling_config(max_new_tokens=60, seed=1), sampling_config(max_new_tokens=60, seed=2,
                                                                                    json_schema=SCHEMA)

    def run():
        a = DecodeSession(model, [bpe_lm.encode_prompt("the")] * 2, free, pad_id=tok.eot_id, tokenizer=tok)
        first = [a.step().tokens.tolist()]
        b = DecodeSession(model, [bpe_lm.encode_prompt("the")], constrained, pad_id=tok.eot_id, tokenizer=tok)
        first.append(b.step().tokens.tolist())
        a.merge(b, pad_id=tok.eot_id)
        rows = [[first[0][0]], [first[0][1]], [first[1][0]]]
        for _ in range(59):
            for r, t in zip(rows, a.step().tokens.tolist()):
                r.append(t)
        return rows
    rows = run()
    text = tok.decode(rows[2][:rows[2].index(tok.eot_id)])
    alone = bpe_lm.generate("the", max_new_tokens=60, seed=2, json_schema=SCHEMA)
    assert _valid(text) and text == alone
    a_free = tok.decode(rows[0])
    assert not _valid(a_free)


def test_a_session_whose_constrained_rows_left_merges_with_a_free_one(bpe_lm):
    from lmkit.engine import DecodeSession
    from lmkit.sampling import sampling_config
    tok, model = bpe_lm.tokenizer, bpe_lm.model
    free, constrained = sampling_config(max_new_tokens=8, seed=1), sampling_config(max_new_tokens=8, json_schema=SCHEMA)
    a = DecodeSession(model, [bpe_lm.encode_prompt("the")] * 2, [constrained, free], pad_id=tok.eot_id, tokenizer=tok)
    a.step()
    a.keep([1])  # the constrained row is gone: a's masks hold only None
    b = DecodeSession(model, [bpe_lm.encode_prompt("the")], free, pad_id=tok.eot_id, tokenizer=tok)
    b.step()
    a.merge(b, pad_id=tok.eot_id)
    assert a.masks.rows == [None, None] and a.step().tokens.shape == (2,)
