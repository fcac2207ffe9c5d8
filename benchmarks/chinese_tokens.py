"""Tokens per character on Chinese text: byte-level BPE against BPE over characters (bpe-chars), 8k and 32k
(issue 20, part 5). Counts, not timings: the machine's load does not change them.

Corpora from ../shared/data: the 40,021 Tang poems (chinese_poetry_tang/poet.tang.*.json, lines joined by
newlines, Traditional characters as in the files) and the Chinese side of cmn_eng/cmn.txt (29,155 sentences,
second tab-separated column). Each tokenizer is trained on the whole corpus and measured on every 10th
document (Tang) / line (cmn): tokens per character, and the share of characters a token boundary cuts
(their UTF-8 bytes split between two tokens), overall and among characters the vocabulary has whole.

    python benchmarks/chinese_tokens.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report  # noqa: E402

from lmkit.data.sources import iter_documents  # noqa: E402
from lmkit.tokenizer import Tokenizer  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def corpora() -> dict[str, list[str]]:
    tang = [t for _, t in iter_documents(str(SHARED / "chinese_poetry_tang" / "poet.tang.*.json"),
                                         text_field="paragraphs")]
    cmn = [line.split("\t")[1] for line in (SHARED / "cmn_eng" / "cmn.txt").read_text(encoding="utf-8")
           .removeprefix("\ufeff").splitlines() if line.count("\t") >= 1]
    return {"Tang poems": tang, "cmn_eng (Chinese side)": cmn}


def measure(tok: Tokenizer, texts: list[str]) -> tuple[float, float, float]:
    """tokens per character, share of characters cut, share of in-vocabulary characters cut."""
    vocab = tok.hf.get_vocab()
    single = {c for c in vocab if len(c) == 1}
    if tok.kind == "bpe":  # byte-level: a character is whole in the vocabulary when its bytes are one token
        from tokenizers import pre_tokenizers
        whole = {c for c in {ch for t in texts for ch in t}
                 if len(pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(c)) == 1
                 and pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(c)[0][0] in vocab}
    else:
        whole = single
    chars = tokens = cut = cut_known = known = 0
    for enc, text in zip(tok.hf.encode_batch(texts, add_special_tokens=False), texts):
        tokens += len(enc.ids)
        bounds, pos = set(), 0
        for t in enc.tokens:
            pos += len(t) if tok.kind == "bpe" else 1 if (len(t) == 6 and t.startswith("<0x")) else len(t.encode())
            bounds.add(pos)
        at = 0
        for ch in text:
            n = len(ch.encode("utf-8"))
            c = any(b in bounds for b in range(at + 1, at + n))
            cut += c
            if ch in whole:
                known += 1
                cut_known += c
            at += n
        chars += len(text)
    return tokens / chars, cut / chars, cut_known / max(1, known)


def main() -> None:
    rows = []
    for name, texts in corpora().items():
        sample = texts[::10]
        for vocab in (8000, 32000):
            for kind in ("bpe", "bpe-chars"):
                tok = Tokenizer.train(texts, kind=kind, vocab_size=vocab)
                tpc, cut, cut_known = measure(tok, sample)
                rows.append([name, f"{vocab // 1000}k", kind, f"{tok.vocab_size:,}", f"{tpc:.3f}", f"{cut:.2%}",
                             f"{cut_known:.2%}"])
                print(rows[-1], flush=True)
    report("Chinese: tokens per character, byte-level BPE vs bpe-chars (issue 20)",
           ["corpus", "vocab", "tokenizer", "tokens", "tokens / char", "chars cut", "in-vocab chars cut"], rows,
           "Counts on every 10th document (Tang) / sentence (cmn) of each corpus, the tokenizer trained on all of "
           "it. 'chars cut': a token boundary falls inside the character's UTF-8 bytes. 'in-vocab chars cut': "
           "the same among characters the vocabulary holds as one token (byte-level: the character's bytes are one "
           "token). bpe-chars cuts only characters outside its vocabulary (byte fallback).")


if __name__ == "__main__":
    main()
