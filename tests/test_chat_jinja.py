"""A model's own Jinja chat template (chat_jinja.py): the same text and ids as transformers'
apply_chat_template, for ChatML/Qwen-, Llama 3- and Mistral-style templates in tiny Hugging Face folders."""
import json

import pytest

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

from lmkit.chat import PLAIN, load_template  # noqa: E402
from lmkit.chat_jinja import JinjaTemplate, load_hf_template  # noqa: E402
from lmkit.cli import main  # noqa: E402
from lmkit.errors import LmkitError  # noqa: E402
from lmkit.tokenizer import Tokenizer  # noqa: E402

CHATML = (  # Qwen2.5-style: a default system prompt; the reply marked with {% generation %}
    "{%- for message in messages %}"
    "{%- if loop.first and message['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")

LLAMA3 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL = """{{- bos_token }}
{%- set ns = namespace(system='', turn=0) %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {%- if not loop.first %}{{ raise_exception('The system prompt must come first') }}{% endif %}
        {%- set ns.system = message['content'] %}
        {%- continue %}
    {%- endif %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('Unknown role: ' + message['role'] | tojson + ' (user, assistant, system)') }}
    {%- endif %}
    {%- if (message['role'] == 'user') != (ns.turn % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- set ns.turn = ns.turn + 1 %}
    {%- if message['role'] == 'user' %}
        {%- if loop.last and ns.system %}
            {{- '[INST] ' + ns.system + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- '[INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- else %}
        {{- ' ' + message['content'] + eos_token }}
    {%- endif %}
{%- endfor %}
"""

TEXT = "Hello there, how are you? Be brief. 你好，世界 system user assistant add 1 and 2 gives 3."
SYSTEM, HISTORY = {"role": "system", "content": "Be brief."}, [
    {"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "how are you?"},
    {"role": "user", "content": "你好，世界"}]


def hf_folder(path, template, specials, config, eos_ids, bos=None):
    """A tiny Hugging Face tokenizer folder: byte-level BPE with the template's special tokens added."""
    path.mkdir()
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator([TEXT] * 5, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.add_special_tokens(specials)
    if bos:  # as Llama 3's tokenizer.json does: a bos for plain encodes (never for a rendered chat)
        hf.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, hf.token_to_id(bos))])
    hf.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": template, **config}))
    ids = [hf.token_to_id(t) for t in eos_ids]
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": ids[0] if len(ids) == 1 else ids}))
    return path


FAMILIES = {
    "chatml": dict(template=CHATML, specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                   config={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None},
                   eos_ids=["<|im_end|>", "<|endoftext|>"]),
    "llama3": dict(template=LLAMA3, specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                              "<|end_header_id|>", "<|eot_id|>"],
                   config={"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>", "special": True,
                                                                            "__type": "AddedToken"}},
                   eos_ids=["<|end_of_text|>", "<|eot_id|>"], bos="<|begin_of_text|>"),
    "mistral": dict(template=MISTRAL, specials=["<unk>", "<s>", "</s>"],
                    config={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, eos_ids=["</s>"]),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    name = request.param
    folder = hf_folder(tmp_path_factory.mktemp("hf") / name, **FAMILIES[name])
    tok = Tokenizer.load(folder)
    return name, folder, tok, load_template(folder, tok), transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("msgs", [HISTORY, [SYSTEM] + HISTORY, HISTORY[:1]], ids=["history", "system", "one"])
def test_text_and_ids_equal_transformers(family, msgs):
    name, folder, tok, template, theirs = family
    assert isinstance(template, JinjaTemplate) and template.special
    text, stops = template.prompt([(m["role"], m["content"]) for m in msgs])
    assert text == theirs.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = theirs.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert tok.encode(text) == ids
    for marker in FAMILIES[name]["specials"]:  # each special token in the text is one id
        if marker in text:
            assert ids.count(tok.hf.token_to_id(marker)) == text.count(marker)
    # every eos id of generation_config.json (and the eos token) ends the reply
    assert set(stops) == set(FAMILIES[name]["eos_ids"]) | {FAMILIES[name]["config"]["eos_token"]
                                                          if name != "llama3" else "<|eot_id|>"}
    assert template.jinja() == FAMILIES[name]["template"]


def test_sft_trains_on_the_replies_only(family):
    name, folder, tok, template, theirs = family
    msgs = [SYSTEM] + HISTORY + [{"role": "assistant", "content": "gives 3."}]
    ids, reply = template.encode(tok, msgs)
    assert ids == theirs.apply_chat_template(msgs, tokenize=True, return_dict=False)
    eos = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "mistral": "</s>"}[name]
    trained = tok.decode([i for i, r in zip(ids, reply) if r]).split(eos)
    assert [t.strip() for t in trained] == ["how are you?", "gives 3.", ""]  # Mistral's: " how are you?"
    if name == "chatml":  # the template marks its replies: the same mask as transformers'
        out = theirs.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert reply == [bool(m) for m in out["assistant_masks"]]


def test_a_template_that_raises_gives_its_message(tmp_path):
    folder = hf_folder(tmp_path / "mistral", **FAMILIES["mistral"])
    template = load_hf_template(folder, Tokenizer.load(folder))
    with pytest.raises(LmkitError, match="refused the conversation: Conversation roles must alternate") as e:
        template.prompt([("user", "a"), ("user", "b")])
    assert "\n" not in str(e.value)
    with pytest.raises(LmkitError, match=r'Unknown role: "tool" \(user, assistant, system\)'):
        template.prompt([{"role": "tool", "content": "a"}])
    with pytest.raises(LmkitError, match="The system prompt must come first"):
        template.prompt([("user", "a"), ("system", "b")])


def test_a_run_keeps_the_template(family, tmp_path):
    """import-hf copies the template into the run: chat_template.jinja + generation.json; load_template reads it."""
    name, folder, tok, template, theirs = family
    template.save(tmp_path)
    (tmp_path / "tokenizer.json").write_text((folder / "tokenizer.json").read_text())
    again = load_template(tmp_path, tok)
    msgs = [("system", "Be brief."), ("user", "Hello there")]
    assert isinstance(again, JinjaTemplate) and again.prompt(msgs) == template.prompt(msgs)


def test_where_the_template_comes_from(tmp_path):
    folder = hf_folder(tmp_path / "f", **FAMILIES["chatml"])
    tok = Tokenizer.load(folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    cfg["chat_template"] = [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ 'd' }}"}]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_hf_template(folder, tok).prompt([("user", "a")])[0] == "d"
    (folder / "chat_template.jinja").write_text("{{ 'j' + messages[0].content }}")  # takes priority
    assert load_hf_template(folder, tok).prompt([("user", "a")])[0] == "ja"
    (folder / "chat_template.jinja").write_text("{% for %}")
    with pytest.raises(LmkitError, match="does not compile"):
        load_hf_template(folder, tok)
    (folder / "chat_template.jinja").unlink()
    del cfg["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    assert load_hf_template(folder, tok) is None and load_template(folder, tok) is PLAIN


def test_generate_chat_with_a_template_that_raises_is_one_error_line(tmp_path, capsys):
    folder = hf_folder(tmp_path / "m", template="{{ raise_exception('This model has no\\nchat mode') }}",
                       specials=["<|endoftext|>"], config={"eos_token": "<|endoftext|>"}, eos_ids=["<|endoftext|>"])
    tiny_gpt2(folder)
    capsys.readouterr()
    assert main(["generate", str(folder), "--chat", "--prompt", "Hello", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: ") and err.rstrip().endswith("refused the conversation: This model has no chat mode")


def tiny_gpt2(folder):
    tok = Tokenizer.load(folder)
    cfg = transformers.GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=16, n_layer=1, n_head=2,
                                  bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(folder)
    return tok


def test_sft_on_a_model_with_its_own_template_keeps_it(tmp_path):
    import lmkit
    from lmkit.finetune.sft import SFTConfig, finetune_sft
    folder = hf_folder(tmp_path / "base", **FAMILIES["chatml"])
    tiny_gpt2(folder)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"instruction": w, "output": "you"}) + "\n" for w in ["Hello", "there"] * 8))
    r = finetune_sft(SFTConfig(base=str(folder), data=str(data), out=str(tmp_path / "out"), progress=False,
                               overrides=["max_iters=2", "eval_interval=2", "eval_iters=1", "batch_size=4",
                                          "warmup_iters=1", "dtype=float32"]))
    assert (r.out_dir / "chat_template.jinja").read_text() == CHATML
    lm, base = lmkit.load(r.out_dir), lmkit.load(folder)
    assert isinstance(lm.chat_template, JinjaTemplate)
    assert lm.chat_prompt([("user", "Hello")]) == base.chat_prompt([("user", "Hello")])
    assert lm.chat_template.stops == base.chat_template.stops  # generation_config's eos and the eos token
    assert set(lm.chat_template.stops) == {"<|im_end|>", "<|endoftext|>"}


def test_import_hf_keeps_the_template(tmp_path):
    import lmkit
    from lmkit.runs.hf import import_hf
    folder = hf_folder(tmp_path / "src", **FAMILIES["llama3"])
    tiny_gpt2(folder)
    out = import_hf(folder, tmp_path / "run")
    assert (out / "chat_template.jinja").read_text() == LLAMA3
    lm, base = lmkit.load(out), lmkit.load(folder)
    assert lm.chat_prompt([("system", "Be brief."), ("user", "Hello")]) == base.chat_prompt(
        [("system", "Be brief."), ("user", "Hello")])


def test_export_hf_keeps_the_models_own_template_and_special_tokens(tmp_path):
    from transformers import AutoTokenizer
    from lmkit.runs.hf import import_hf
    from lmkit.runs.hf_export import export_hf
    folder = hf_folder(tmp_path / "src", **FAMILIES["llama3"])
    tiny_gpt2(folder)
    out = export_hf(import_hf(folder, tmp_path / "run"), tmp_path / "back")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    want = AutoTokenizer.from_pretrained(folder).apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    got = AutoTokenizer.from_pretrained(out).apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert got == want and want.startswith("<|begin_of_text|>")
    config = json.loads((out / "config.json").read_text())
    source = json.loads((folder / "generation_config.json").read_text())
    assert config["eos_token_id"] == source["eos_token_id"]
