"""Tokenizers: byte-level BPE (GPT-2 style), WordPiece (BERT) and character level, all on Hugging Face
`tokenizers`.

Byte-level BPE works on the UTF-8 bytes of the text, so encode -> decode gives back any text exactly,
Chinese and emoji included; its merges may cut a character's bytes apart, or join the end of one character
with the start of the next. `bpe-chars` is BPE over characters with byte fallback (as SentencePiece's BPE):
its alphabet is the corpus's commonest characters and its merges join whole characters, so a character in
the vocabulary is never cut; one that is not becomes its UTF-8 bytes (<0xE9><0xBE><0x98>), so it too
round-trips exactly. Use it for Chinese and Japanese. The character tokenizer has one token per character seen in training
(plus specials); characters it never saw become <unk>, with a warning on stderr (once per tokenizer,
with the count) the first time that happens. WordPiece lower-cases, splits on whitespace and
punctuation, and breaks each word into the longest known pieces ("playing" -> "play", "##ing"), with
BERT's special tokens [PAD] [UNK] [CLS] [SEP] [MASK]; a BERT `vocab.txt` loads as well. All save as a
standard `tokenizer.json`.
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from numbers import Integral
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .errors import LmkitError
from .io import atomic_path

CJK = "\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"  # CJK, kana, full-width
CJK_GAP = re.compile(f"(?<=[{CJK}]) (?=[{CJK}])")  # a space the WordPiece decoder put between two such characters
EOT = "<|endoftext|>"  # separates documents; also the end-of-sequence token for generation
KINDS = ("bpe", "bpe-chars", "wordpiece", "char")
# bpe-chars: GPT-2's word split (without the byte mapping); every piece of the text lands in some match
WORD_SPLIT = r"'(?:s|t|re|ve|m|ll|d)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))
UNK = "<unk>"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# what marks the end of a document: ours, then the names imported tokenizers use ([SEP] in BERT's)
EOS_NAMES = (EOT, "</s>", "<|end_of_text|>", "<eos>", "[SEP]")
# a sane maximum: the Rust trainers reserve room for vocab_size entries up front, so 10**10 would abort the
# process out of memory; a corpus gives fewer tokens than asked and the trainers then simply stop early
MAX_VOCAB = 1 << 20


class Tokenizer:
    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        hf.no_padding()  # a tokenizer.json from elsewhere may pad/truncate; lmkit pads its own batches
        hf.no_truncation()
        self.eot_id = next((i for i in map(hf.token_to_id, EOS_NAMES) if i is not None), None)
        self.pad_id, self.cls_id, self.sep_id, self.mask_id = (hf.token_to_id(t) for t in
                                                               ("[PAD]", "[CLS]", "[SEP]", "[MASK]"))
        # a char tokenizer's <unk>: encoding warns once when text maps to it (None: never checked)
        self._unk_id = hf.token_to_id(UNK) if isinstance(hf.model, models.WordLevel) else None

    # ---- building ---------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], kind: str = "bpe", vocab_size: int = 4096,
              special_tokens: tuple[str, ...] = (EOT,), show_progress: bool = False) -> "Tokenizer":
        if kind not in KINDS:
            raise LmkitError(f"tokenizer: unknown type '{kind}' (use {', '.join(repr(k) for k in KINDS)})")
        _check_vocab_size(vocab_size, kind, len(special_tokens))
        if kind == "char":
            return cls._train_char(texts, special_tokens)
        if kind == "wordpiece":
            return cls._train_wordpiece(texts, vocab_size, show_progress)
        if kind == "bpe-chars":
            return cls._train_char_bpe(texts, vocab_size, special_tokens, show_progress)
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=show_progress)
        hf.train_from_iterator(_checked(texts), trainer)
        return cls(hf)

    @classmethod
    def _train_char_bpe(cls, texts: Iterable[str], vocab_size: int, special_tokens: tuple[str, ...],
                        show_progress: bool) -> "Tokenizer":
        """BPE over characters: 256 byte tokens, then an alphabet of the commonest characters (at most 3/4
        of what is left), then merges of whole characters."""
        hf = HFTokenizer(models.BPE(byte_fallback=True))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_SPLIT), behavior="isolated")
        hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        budget = vocab_size - len(BYTE_TOKENS)
        trainer = trainers.BpeTrainer(vocab_size=budget, special_tokens=list(special_tokens),
                                      limit_alphabet=max(1, (budget - len(special_tokens)) * 3 // 4),
                                      show_progress=show_progress)
        hf.train_from_iterator(_checked(texts), trainer)
        state = json.loads(hf.to_str())
        model = state["model"]
        # a learned token spelled like a byte token ("<0x41>") would decode as that byte: drop it and its merges
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        bad = {t for t in model["vocab"] if t in BYTE_TOKENS}
        while True:
            keep = [m for m in merges if m[0] not in bad and m[1] not in bad and m[0] + m[1] not in bad]
            bad |= {m[0] + m[1] for m in merges if m not in keep}
            if len(keep) == len(merges):
                break
            merges = keep
        tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if t not in bad]
        model["vocab"] = {t: i for i, t in enumerate(tokens + list(BYTE_TOKENS))}
        model["merges"] = [list(m) for m in merges]
        for added in state["added_tokens"]:
            added["id"] = model["vocab"][added["content"]]
        return cls(HFTokenizer.from_str(json.dumps(state)))

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
    def _train_wordpiece(cls, texts: Iterable[str], vocab_size: int, show_progress: bool) -> "Tokenizer":
        hf = _bert_pipeline(HFTokenizer(models.WordPiece(unk_token="[UNK]")))
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(BERT_SPECIALS),
                                            show_progress=show_progress)
        hf.train_from_iterator(_checked(texts), trainer)
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """A tokenizer.json (or a folder holding one), or a BERT vocab.txt (lower-casing WordPiece)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json" if (path / "tokenizer.json").is_file() else path / "vocab.txt"
        if not path.is_file():
            raise LmkitError(f"{path}: no such tokenizer file")
        if path.suffix == ".txt":
            try:
                return cls(_bert_pipeline(HFTokenizer(models.WordPiece.from_file(str(path), unk_token="[UNK]"))))
            except Exception as e:
                raise LmkitError(f"{path}: not a valid WordPiece vocab.txt ({str(e).splitlines()[0]})")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # tokenizers raises plain Exception on malformed JSON
            raise LmkitError(f"{path}: not a valid tokenizer.json ({str(e).splitlines()[0]})")

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            self.hf.save(str(tmp))

    # ---- using ------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def kind(self) -> str:
        if isinstance(self.hf.model, models.WordPiece):
            return "wordpiece"
        if isinstance(self.hf.model, models.BPE) and self.hf.model.byte_fallback:
            return "bpe-chars"
        return "char" if isinstance(self.hf.model, models.WordLevel) else "bpe"

    def encode(self, text: str) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        self._warn_unknown([text], [ids])
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts at once; the Rust side spreads the work over all cores."""
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # fast: no offsets
        ids = [e.ids for e in encode(texts, add_special_tokens=False)]
        self._warn_unknown(texts, ids)
        return ids

    def _warn_unknown(self, texts: list[str], ids: list[list[int]]) -> None:
        """Once per tokenizer: how many characters of the text a char tokenizer has no token for (<unk>)."""
        if self._unk_id is None or not any(self._unk_id in seq for seq in ids):
            return
        vocab = self.hf.get_vocab()
        specials = [t.content for t in self.hf.get_added_tokens_decoder().values()]  # "<unk>" spelled out is one
        for s in specials:
            texts = [t.replace(s, "") for t in texts]
        unknown = Counter(c for t in texts for c in t if c not in vocab)
        if not unknown:
            return
        self._unk_id = None
        n, shown = sum(unknown.values()), ", ".join(repr(c) for c, _ in unknown.most_common(5))
        print(f"warning: {n} character{'s' * (n != 1)} ({len(unknown)} distinct: {shown}"
              f"{', …' if len(unknown) > 5 else ''}) not in this char tokenizer's vocabulary became <unk>; "
              "the model never saw them (warned once)", file=sys.stderr)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        text = self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)
        # WordPiece splits CJK text into single characters and its decoder joins tokens with spaces: rejoin them
        return CJK_GAP.sub("", text) if isinstance(self.hf.model, models.WordPiece) else text


def _check_vocab_size(vocab_size, kind: str, n_special: int) -> None:
    """vocab_size within what the kind needs and MAX_VOCAB; a char tokenizer takes its size from the corpus
    but still refuses a size that is no size at all."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, Integral):
        raise LmkitError(f"tokenizer: vocab_size must be an integer (got {vocab_size!r})")
    minimum = {"bpe": 256 + n_special, "bpe-chars": 512 + n_special, "wordpiece": 100, "char": 1}[kind]
    if vocab_size < minimum:
        need = {"bpe": f"byte-level BPE needs at least {minimum} (256 bytes + {n_special} special tokens)",
                "bpe-chars": f"character BPE needs at least {minimum} (256 byte tokens + {n_special} special "
                             "tokens + 256 for characters)",
                "wordpiece": "WordPiece needs at least 100", "char": "it must be at least 1"}[kind]
        raise LmkitError(f"tokenizer: vocab_size {vocab_size} is too small: {need}")
    if vocab_size > MAX_VOCAB:
        raise LmkitError(f"tokenizer: vocab_size {vocab_size} is too large (at most {MAX_VOCAB:,}; a corpus gives "
                         "far fewer tokens than that)")


def _bert_pipeline(hf: HFTokenizer) -> HFTokenizer:
    """BERT's uncased text handling around a WordPiece model; specials are matched before lower-casing."""
    hf.normalizer = normalizers.BertNormalizer(lowercase=True)
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    hf.decoder = decoders.WordPiece(prefix="##")
    hf.add_special_tokens([t for t in BERT_SPECIALS if t in hf.get_vocab()] or list(BERT_SPECIALS))
    return hf


def _checked(texts: Iterable[str]) -> Iterator[str]:
    n = 0
    for t in texts:
        if t:
            n += 1
            yield t
    if n == 0:
        raise LmkitError("tokenizer: the training corpus is empty")
