"""models/bert.py in Hugging Face's BERT format (BertModel / BertForMaskedLM): name table and config.json.

The architecture is the same, so pretrained weights load unchanged: the names differ, and Hugging Face's
separate query, key and value projections are lmkit's one fused `attn.qkv`. The masked-LM decoder matrix
is the token embedding in both (tied), so only its bias is stored. One table serves import and export
(models/hf_names.py applies it either way).
"""
from __future__ import annotations

import dataclasses

import torch

from ..config import ModelConfig
from ..errors import LmkitError
from .bert import BERT
from .hf_names import Rule, Table


def names(m: ModelConfig) -> Table:
    """The name table of a BERT with these settings (BertForMaskedLM's names)."""
    b, layer = "bert.", "bert.encoder.layer.{i}."
    return Table([
        Rule("wte.weight", b + "embeddings.word_embeddings.weight"),
        Rule("wpe.weight", b + "embeddings.position_embeddings.weight"),
        Rule("wtt.weight", b + "embeddings.token_type_embeddings.weight"),
        Rule("ln_emb.{p}", b + "embeddings.LayerNorm.{p}"),
        Rule("h.{i}.attn.qkv.{p}", *(layer + f"attention.self.{n}.{{p}}" for n in ("query", "key", "value")),
             sizes=(m.n_embd,) * 3),
        Rule("h.{i}.attn.proj.{p}", layer + "attention.output.dense.{p}"),
        Rule("h.{i}.ln_1.{p}", layer + "attention.output.LayerNorm.{p}"),
        Rule("h.{i}.mlp.fc.{p}", layer + "intermediate.dense.{p}"),
        Rule("h.{i}.mlp.proj.{p}", layer + "output.dense.{p}"),
        Rule("h.{i}.ln_2.{p}", layer + "output.LayerNorm.{p}"),
        Rule("mlm_dense.{p}", "cls.predictions.transform.dense.{p}"),
        Rule("mlm_ln.{p}", "cls.predictions.transform.LayerNorm.{p}"),
        Rule("mlm_bias", "cls.predictions.bias"),
    ], base=b, heads=("cls.", "classifier."),
        # the pooler and next-sentence head (lmkit's BERT has neither), a classification head (read on its own
        # by import-hf), the decoder (= the embeddings and cls.predictions.bias again), a position-id buffer
        ignored=(b + "pooler.dense.{p}", "cls.seq_relationship.{p}", "classifier.{p}", "cls.predictions.decoder.{p}",
                 b + "embeddings.position_ids"))


def fresh_mlm_head(m: ModelConfig) -> dict[str, torch.Tensor]:
    """A BertModel checkpoint has no masked-LM head: lmkit's starts from its usual initialisation."""
    head = BERT(dataclasses.replace(m, n_layer=0)).state_dict()
    return {k: v for k, v in head.items() if k.startswith("mlm_")}


def config_from_hf(hc: dict, where: str) -> ModelConfig:
    """A Hugging Face BERT config.json -> ModelConfig, keeping its dropout for fine-tuning (eval() turns it
    off). Options lmkit's BERT lacks are refused (`where` names the file in the message)."""
    if hc.get("position_embedding_type", "absolute") != "absolute":
        raise LmkitError(f"{where}: only absolute positions are supported")
    if hc.get("hidden_act", "gelu") != "gelu":
        raise LmkitError(f"{where}: hidden_act '{hc.get('hidden_act')}' is not supported (gelu)")
    return ModelConfig(type="bert", vocab_size=hc["vocab_size"], block_size=hc["max_position_embeddings"],
                       n_layer=hc["num_hidden_layers"], n_head=hc["num_attention_heads"], n_embd=hc["hidden_size"],
                       mlp_hidden=hc["intermediate_size"], norm_eps=hc.get("layer_norm_eps", 1e-12),
                       type_vocab_size=hc.get("type_vocab_size", 2), mlp="gelu", bias=True, pos="learned",
                       dropout=hc.get("hidden_dropout_prob", 0.1))


def config_to_hf(m: ModelConfig) -> dict:
    """ModelConfig -> a BertForMaskedLM config.json; refused for the options Hugging Face BERT lacks."""
    if m.norm_position == "pre":
        raise LmkitError("export-hf: Hugging Face BERT is post-LN; this model has norm_position = 'pre'")
    if m.pos != "learned":
        raise LmkitError(f"export-hf: Hugging Face BERT has learned positions; this model has pos = '{m.pos}'")
    return {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": m.vocab_size,
            "hidden_size": m.n_embd, "num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head,
            "intermediate_size": m.hidden_dim, "hidden_act": "gelu", "max_position_embeddings": m.block_size,
            "type_vocab_size": m.type_vocab_size, "layer_norm_eps": m.norm_eps, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "tie_word_embeddings": True, "pad_token_id": 0}
