"""Training the nano SentencePiece tokenizer: code round-trips, tags are single pieces."""

import hashlib

from azr_jax.models.tokenizer import load_tokenizer
from azr_jax.nano.corpus import generate_tasks
from azr_jax.nano.tokenizer_train import EOS_ID, PAD_ID, train_tokenizer
from azr_jax.nano.transcripts import solve_response


def _texts():
    tasks = generate_tasks(0, 150)
    return [t.source + "\nAssistant: <think>" + solve_response("deduction", t) for t in tasks]


def test_train_roundtrip_and_determinism(tmp_path):
    texts = _texts()
    a = train_tokenizer(texts, tmp_path / "a" / "tokenizer.model", vocab_size=400)
    b = train_tokenizer(texts, tmp_path / "b" / "tokenizer.model", vocab_size=400)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    tok = load_tokenizer(a)
    assert tok.eos_id == EOS_ID and tok.pad_id == PAD_ID
    for text in texts[:20] + ["def g(x):\n    if x:\n        return  'a  b'\n", "unseen ✓ text\t!"]:
        assert tok.decode(tok.encode(text)) == text  # indentation, double spaces, unseen characters
    for tag in ("<think>", "</think>", "<answer>", "</answer>", "\n"):
        assert len(tok.encode(tag)) == 1, tag
    # no dummy prefix: encoding a split prompt/response gives the same text back
    prompt, response = texts[0].split("<think>")
    ids = tok.encode(prompt + "<think>") + tok.encode(response)
    assert tok.decode(ids) == texts[0]


def test_a_corpus_of_a_few_programs_trains_a_tokenizer(tmp_path):
    """SentencePiece refuses an input_sentence_size of 1 to 100: a corpus of three programs (15
    transcripts) crashed `pretrain` with its internal error."""
    from azr_jax.config import load_config
    from azr_jax.models.tokenizer import load_tokenizer
    from azr_jax.nano.pretrain import corpus_tasks, corpus_transcripts
    from azr_jax.nano.tokenizer_train import train_tokenizer

    cfg = load_config("configs/nano_base.py", ["pretrain.corpus_programs=3"])
    texts = [t.prompt + t.response for t in corpus_transcripts(cfg, corpus_tasks(cfg))]
    assert len(texts) <= 100
    tok = load_tokenizer(train_tokenizer(texts, tmp_path / "tokenizer.model", vocab_size=1024))
    assert tok.decode(tok.encode(texts[0])) == texts[0]


def test_texts_may_be_any_iterable(tmp_path):
    # `texts` is documented as an Iterable: a generator trains the same tokenizer as its list
    texts = _texts()
    a = train_tokenizer(texts, tmp_path / "a.model", vocab_size=400)
    b = train_tokenizer((t for t in texts), tmp_path / "b.model", vocab_size=400)
    assert a.read_bytes() == b.read_bytes()


def test_a_sentencepiece_failure_without_a_message_is_still_one_line_naming_the_setting(tmp_path, monkeypatch):
    # the reason is the last line of SentencePiece's message, or the exception's type when it has none
    import pytest

    from azr_jax.errors import UserError
    from azr_jax.nano import tokenizer_train

    def fail(texts, buf, vocab_size):
        raise RuntimeError()

    monkeypatch.setattr(tokenizer_train, "_train", fail)
    with pytest.raises(UserError, match=r"^the tokenizer cannot be trained with pretrain.vocab_size=64: RuntimeError$"):
        train_tokenizer(["abc"], tmp_path / "t.model", vocab_size=64)
    assert not (tmp_path / "t.model").exists()
