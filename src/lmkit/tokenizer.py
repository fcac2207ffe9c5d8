"""Tokenizers: byte-level BPE (GPT-2 style) and character level, both on Hugging Face `tokenizers`.

Byte-level BPE works on the UTF-8 bytes of the text, so encode -> decode gives back any text exactly,
Chinese and emoji included. The character tokenizer has one token per character seen in training
(plus specials); characters it never saw become <unk>. Both save as a standard `tokenizer.json`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, trainers

from .errors import LmkitError

EOT = "<|endoftext|>"  # separates documents; also the end-of-sequence token for generation
UNK = "<unk>"
EOS_NAMES = (EOT, "</s>", "<|end_of_text|>", "<eos>")  # what imported tokenizers call it


class Tokenizer:
    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self.eot_id = next((i for i in map(hf.token_to_id, EOS_NAMES) if i is not None), None)

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], kind: str = "bpe", vocab_size: int = 4096,
              special_tokens: tuple[str, ...] = (EOT,), show_progress: bool = False) -> "Tokenizer":
        if kind == "char":
            return cls._train_char(texts, special_tokens)
        if kind != "bpe":
            raise LmkitError(f"tokenizer: unknown type '{kind}' (use 'bpe' or 'char')")
        minimum = 256 + len(special_tokens)
        if vocab_size < minimum:
            raise LmkitError(f"tokenizer: vocab_size {vocab_size} is too small: byte-level BPE needs at least "
                             f"{minimum} (256 bytes + {len(special_tokens)} special tokens)")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=show_progress)
        hf.train_from_iterator(_checked(texts), trainer)
        return cls(hf)

    @classmethod
    def _train_char(cls, texts: Iterable[str], special_tokens: tuple[str, ...]) -> "Tokenizer":
        chars: set[str] = set()
        for t in _checked(texts):
            chars.update(t)
        specials = list(dict.fromkeys([*special_tokens, UNK]))
        vocab = {tok: i for i, tok in enumerate(specials + sorted(chars - set(specials)))}
        hf = HFTokenizer(models.WordLevel(vocab, unk_token=UNK))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one piece per char
        hf.decoder = decoders.Fuse()  # join pieces with nothing in between
        hf.add_special_tokens(specials)
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise LmkitError(f"{path}: no such tokenizer file")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises plain Exception on malformed JSON
            raise LmkitError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})")

    def save(self, path: str | Path) -> None:
        from .io import atomic_path
        with atomic_path(path) as tmp:
            self.hf.save(str(tmp))

    # ---- using ------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def kind(self) -> str:
        return "char" if isinstance(self.hf.model, models.WordLevel) else "bpe"

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once; the Rust side spreads the work over all cores."""
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # fast: no offsets
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)


def _checked(texts: Iterable[str]) -> Iterator[str]:
    n = 0
    for t in texts:
        if t:
            n += 1
            yield t
    if n == 0:
        raise LmkitError("tokenizer: the training corpus is empty")
