"""Train the nano SentencePiece tokenizer on the procedural corpus.

Settings that matter for code: identity normalisation and no whitespace collapsing (Python
indentation must survive a round trip), newline as its own piece, digits split one per piece (arithmetic), byte fallback (any text encodes), no dummy prefix
(so `encode(prompt) + encode(response)` matches how the sampler continues a prompt), and the
AZR tags as single tokens.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from azr_jax.errors import UserError

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# "    " never matches: SentencePiece turns spaces into "▁" before it looks for these, so the
# 4-space indent is whatever pieces training learns (the shipped base's: four "▁"). Kept, so
# that the shipped tokenizer rebuilds identically (the entry takes a piece id).
SPECIAL_PIECES = ["\n", "    ", "<think>", "</think>", "<answer>", "</answer>", "```"]


def train_tokenizer(texts: Iterable[str], out_path: str | Path, *, vocab_size: int = 1024) -> Path:
    """Train a unigram SentencePiece model on `texts` and write it to `out_path` (a `.model` file).

    Training is deterministic for a fixed input order: one thread, no sentence sampling or
    shuffling (the whole corpus is used in the order given).
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    buf = io.BytesIO()
    try:
        _train(texts, buf, vocab_size)
    except RuntimeError as e:  # SentencePiece's own checks, e.g. fewer pieces than characters
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        # Its C++ source location and failed condition ("INTERNAL: src/x.cc(638) [a <= b] ") say nothing to a user.
        reason = re.sub(r"^[A-Z_]+: \S+\(\d+\) \[.*?\]\s*", "", reason) or reason
        need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", reason)
        if need:  # its advice names its own --character_coverage flag, which azr-jax does not expose
            raise UserError(f"pretrain.vocab_size={vocab_size} is too small for the corpus: its characters, byte "
                            f"and special pieces need {need.group(1)}; set pretrain.vocab_size >= {need.group(1)}") from None
        raise UserError(f"the tokenizer cannot be trained with pretrain.vocab_size={vocab_size}: {reason}") from None
    out_path.write_bytes(buf.getvalue())
    return out_path


def _train(texts: list[str], buf: io.BytesIO, vocab_size: int) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # small corpora may support fewer pieces; take what they give
        model_type="unigram",
        user_defined_symbols=SPECIAL_PIECES,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        max_sentence_length=1 << 20,
        input_sentence_size=max(len(texts), 101),  # every sentence; SentencePiece refuses 1-100 (0 differs)
        shuffle_input_sentence=False,
        num_threads=1,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        minloglevel=2,
    )
