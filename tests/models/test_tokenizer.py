"""Tokenizer wrapper vs transformers / sentencepiece, on tokenizers trained inside the test."""

import io
import json

import pytest

from azr_jax.errors import UserError
from azr_jax.models.tokenizer import load_tokenizer

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = (
    [f"def f{i}(x, y={i}):\n    return [x * {i} for _ in range(y)]\n" for i in range(150)]
    + [f"# commentaire numéro {i}: héllo wörld, 你好 {i}\n" for i in range(50)]
    + ["class A:\n\tdef __init__(self):\n\t\tself.v = {'a': 1, \"b\": 2.5}\n"] * 20
)
PROBES = [
    "def g(z):\n    return z ** 2\n",
    "  leading spaces and trailing   ",
    "unicode: é ü 你好 🙂 \t tabs\n\n",
    "<|im_start|>user\nWrite code<|im_end|>\n<|im_start|>assistant\n",
    "",
]


def _train_bpe(directory, tokenizer_config=None, generation_config=None, model_config=None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    for name, content in (("tokenizer_config.json", tokenizer_config), ("generation_config.json", generation_config),
                          ("config.json", model_config)):
        if content is not None:
            (directory / name).write_text(json.dumps(content))
    return directory


def _train_sentencepiece(directory):
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=400,
                                   model_type="bpe", character_coverage=1.0, byte_fallback=True,
                                   minloglevel=2)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.model").write_bytes(buf.getvalue())
    return directory


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return _train_bpe(tmp_path_factory.mktemp("bpe"),
                      tokenizer_config={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
                                        "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"},
                      generation_config={"eos_token_id": [2, 0]})


def test_bpe_matches_transformers_fast_tokenizer(bpe_dir):
    from transformers import AutoTokenizer

    ours = load_tokenizer(bpe_dir)
    theirs = AutoTokenizer.from_pretrained(str(bpe_dir))
    for text in PROBES:
        ids = ours.encode(text)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"], text
        for skip in (True, False):
            assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    assert ours.decode(ours.encode(PROBES[2])) == PROBES[2]  # byte-level BPE is lossless
    assert ours.vocab_size == len(theirs) == 500
    assert (ours.eos_id, ours.pad_id, ours.bos_id) == (theirs.eos_token_id, theirs.pad_token_id, None) == (2, 0, None)
    assert ours.eos_ids == (2, 0)  # tokenizer EOS first, then generation_config's extra stop ids
    assert ours.special_tokens == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    assert ours.token_to_id("<|im_start|>") == 1 and ours.token_to_id("no such token") is None
    assert ours.encode("abc", add_eos=True)[-1] == 2
    with pytest.raises(UserError, match="no BOS"):
        ours.encode("abc", add_bos=True)


def test_bpe_batch_encode_matches_single(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    assert tok.encode_batch(PROBES, add_eos=True) == [tok.encode(t, add_eos=True) for t in PROBES]


def test_bpe_save_roundtrip_loads_in_transformers(bpe_dir, tmp_path):
    from transformers import AutoTokenizer

    ours = load_tokenizer(bpe_dir)
    ours.save(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    theirs = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    assert not again.is_sentencepiece
    for text in PROBES:
        assert again.encode(text) == ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
    assert (again.eos_id, again.pad_id, again.bos_id) == (ours.eos_id, ours.pad_id, ours.bos_id)
    assert theirs.eos_token_id == ours.eos_id and theirs.pad_token_id == ours.pad_id
    assert again.chat_template == ours.chat_template is not None


def test_special_ids_fall_back_to_generation_and_model_config(tmp_path):
    # No tokenizer_config.json: ids come from generation_config.json, then config.json.
    d = _train_bpe(tmp_path / "a", generation_config={"eos_token_id": 2}, model_config={"bos_token_id": 1, "eos_token_id": 0})
    tok = load_tokenizer(d)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)  # pad falls back to EOS
    d = _train_bpe(tmp_path / "b")
    tok = load_tokenizer(d / "tokenizer.json")  # a file path works too
    assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.eos_ids) == (None, None, 0, ())
    # Stop ids: generation_config.json's list; without that file, config.json's (as transformers
    # derives the generation config from it).
    d = _train_bpe(tmp_path / "c", model_config={"eos_token_id": [2, 3]})
    assert load_tokenizer(d).eos_ids == (2, 3)
    d = _train_bpe(tmp_path / "d", generation_config={"eos_token_id": [2]}, model_config={"eos_token_id": [2, 3]})
    assert load_tokenizer(d).eos_ids == (2,)


def test_stop_ids_are_the_tokenizer_eos_then_the_generation_config_list(tmp_path):
    """An instruct tokenizer's EOS (<|im_end|>, id 2) need not be in generation_config.json's
    list; generation stops on both, the tokenizer's own first and without repeats."""
    for name, listed in (("a", [0]), ("b", [0, 2])):
        d = _train_bpe(tmp_path / name, tokenizer_config={"eos_token": "<|im_end|>"},
                       generation_config={"eos_token_id": listed})
        assert load_tokenizer(d).eos_ids == (2, 0)


def test_special_tokens_map_and_chat_template_file_take_priority_as_in_transformers(tmp_path):
    """special_tokens_map.json's tokens win over tokenizer_config.json's and over the configs'
    ids; chat_template.jinja wins over tokenizer_config.json's template."""
    from transformers import AutoTokenizer

    d = _train_bpe(tmp_path / "a", tokenizer_config={"eos_token": "<|im_start|>", "chat_template": "OLD"},
                   generation_config={"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0})
    (d / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "pad_token": "<|im_end|>"}))
    (d / "chat_template.jinja").write_text("NEW")
    ours, theirs = load_tokenizer(d), AutoTokenizer.from_pretrained(str(d))
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (theirs.bos_token_id, theirs.eos_token_id,
                                                       theirs.pad_token_id) == (1, 2, 2)
    assert ours.chat_template == theirs.chat_template == "NEW"
    ours.save(tmp_path / "saved")  # the saved tokenizer_config.json carries the resolved tokens
    assert (load_tokenizer(tmp_path / "saved").eos_id, load_tokenizer(tmp_path / "saved").chat_template) == (2, "NEW")
    (d / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|nope|>"}))
    with pytest.raises(UserError, match="special_tokens_map.json names eos_token"):
        load_tokenizer(d)
    # named templates: the one called "default"
    d = _train_bpe(tmp_path / "b", tokenizer_config={"chat_template": [{"name": "tool_use", "template": "T"},
                                                                       {"name": "default", "template": "D"}]})
    assert load_tokenizer(d).chat_template == "D"


def test_sentencepiece_matches_processor_and_roundtrips(tmp_path):
    import sentencepiece as spm

    d = _train_sentencepiece(tmp_path / "sp")
    sp = spm.SentencePieceProcessor(model_file=str(d / "tokenizer.model"))
    tok = load_tokenizer(d)
    assert tok.vocab_size == 400
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
    assert tok.special_tokens == {"<unk>": 0, "<s>": 1, "</s>": 2}
    text = "def g(z):\n    return z ** 2  # 你好 🙂"
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids == [1] + sp.encode(text) + [2]
    assert tok.decode(ids) == sp.decode(sp.encode(text))
    assert tok.decode(ids, skip_special_tokens=False) == "<s>" + sp.decode(sp.encode(text)) + "</s>"
    assert "🙂" in tok.decode(ids)  # byte fallback keeps characters outside the training corpus
    for bad_id in (400, -1):  # as the tokenizer.json backend
        with pytest.raises(UserError, match=f"token id {bad_id} is outside the vocabulary \\(size 400\\)"):
            tok.decode([5, bad_id])
        assert tok.id_to_token(bad_id) is None  # as tokenizers' id_to_token answers (no exception)
    assert tok.id_to_token(2) == "</s>"
    assert tok.token_to_id("</s>") == 2 and tok.token_to_id("<unk>") == 0  # the unk piece itself maps to unk ...
    assert tok.token_to_id("no such piece") is None  # ... an unknown piece does not
    tok.save(tmp_path / "saved")
    again = load_tokenizer(tmp_path / "saved")
    assert again.encode(text) == tok.encode(text) and again.eos_id == tok.eos_id
    assert again.is_sentencepiece  # `convert` then warns: transformers reads it with other ids


def test_bad_tokenizer_inputs_raise_user_error(tmp_path, bpe_dir):
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no tokenizer in"):
        load_tokenizer(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(UserError, match="cannot read tokenizer"):
        load_tokenizer(bad)
    (bad / "tokenizer.json").write_text((bpe_dir / "tokenizer.json").read_text())
    (bad / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_tokenizer(bad)
    (bad / "tokenizer_config.json").write_text('{"eos_token": "<|nope|>"}')
    with pytest.raises(UserError, match="not in the vocabulary"):
        load_tokenizer(bad)
    (bad / "tokenizer_config.json").write_text('{}')
    (bad / "generation_config.json").write_text('{"eos_token_id": 9999}')
    with pytest.raises(UserError, match="outside the tokenizer vocabulary"):
        load_tokenizer(bad)
    size = load_tokenizer(bpe_dir).vocab_size  # one past the last id is outside too
    (bad / "generation_config.json").write_text(json.dumps({"eos_token_id": size}))
    with pytest.raises(UserError, match=f"eos token id {size} is outside the tokenizer vocabulary"):
        load_tokenizer(bad)
    tok = load_tokenizer(bpe_dir)
    for bad_id in (tok.vocab_size, -1):  # the Rust decoder dropped the first silently, overflowed on the second
        with pytest.raises(UserError, match=f"token id {bad_id} is outside the vocabulary"):
            tok.decode([1, bad_id, 2])
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models as rust_models

    gappy = tmp_path / "gappy"  # ids 0, 2, 3: id 1 is inside the range and still unknown
    gappy.mkdir()
    RustTokenizer(rust_models.WordLevel({"a": 0, "b": 2, "[UNK]": 3}, unk_token="[UNK]")).save(
        str(gappy / "tokenizer.json"))
    with pytest.raises(UserError, match="token id 1 is outside the vocabulary"):
        load_tokenizer(gappy).decode([0, 1])
    sp_bad = tmp_path / "spbad"
    sp_bad.mkdir()
    (sp_bad / "tokenizer.model").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="SentencePiece"):
        load_tokenizer(sp_bad)


def test_booleans_in_the_configs_are_not_token_ids(tmp_path):
    """JSON true is not the id 1: a boolean bos id, or one in the stop list, is left out."""
    d = _train_bpe(tmp_path / "a", generation_config={"bos_token_id": True, "eos_token_id": [2, True]})
    tok = load_tokenizer(d)
    assert (tok.bos_id, tok.eos_id, tok.eos_ids) == (None, 2, (2,))


def test_encode_leaves_out_what_the_post_processor_would_add(tmp_path):
    """A tokenizer.json whose post-processor prepends a BOS (as Llama 3's does): encode and
    encode_batch return the text's ids only (transformers' add_special_tokens=False)."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    d = _train_bpe(tmp_path / "a")
    rust = Tokenizer.from_file(str(d / "tokenizer.json"))
    rust.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    rust.save(str(d / "tokenizer.json"))
    tok = load_tokenizer(d)
    plain = rust.encode("def g", add_special_tokens=False).ids
    assert rust.encode("def g").ids == [1] + plain  # the post-processor is in effect
    assert tok.encode("def g") == plain and tok.encode_batch(["def g"]) == [plain]


def test_an_empty_generation_config_adds_no_stop_ids_from_config_json(tmp_path):
    """With a generation_config.json present, its (here absent) eos list is the one used, as
    transformers does; config.json's list counts only when that file does not exist."""
    d = _train_bpe(tmp_path / "a", generation_config={}, model_config={"eos_token_id": [2, 3]})
    assert load_tokenizer(d).eos_ids == (2,)


def test_the_last_id_decodes_when_the_one_before_it_is_a_gap(tmp_path):
    """Vocabulary ids 0, 1, 3: id 3 (the last) decodes, id 2 (a gap) is refused."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import models as rust_models

    d = tmp_path / "gappy"
    d.mkdir()
    vocab = {"a": 0, "b": 1, "[UNK]": 3}
    RustTokenizer(rust_models.WordLevel(vocab, unk_token="[UNK]")).save(str(d / "tokenizer.json"))
    tok = load_tokenizer(d)
    assert tok.decode([0, 3]) == "a [UNK]"
    with pytest.raises(UserError, match="token id 2 is outside the vocabulary"):
        tok.decode([2])


def test_special_tokens_leave_out_added_tokens_that_are_not_special(tmp_path):
    """An added token marked non-special (as Qwen3's <think>) is not in `special_tokens`."""
    from tokenizers import AddedToken, Tokenizer

    d = _train_bpe(tmp_path / "a")
    rust = Tokenizer.from_file(str(d / "tokenizer.json"))
    rust.add_tokens([AddedToken("<think>", special=False)])
    rust.save(str(d / "tokenizer.json"))
    tok = load_tokenizer(d)
    assert tok.token_to_id("<think>") == 500
    assert tok.special_tokens == {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}


def test_special_tokens_map_entries_without_a_token_do_not_hide_tokenizer_config(tmp_path):
    """A null (or content-less) entry in special_tokens_map.json names no token, so the
    tokenizer_config.json one still applies."""
    d = _train_bpe(tmp_path / "a", tokenizer_config={"eos_token": "<|im_end|>", "pad_token": "<|im_start|>"})
    (d / "special_tokens_map.json").write_text(json.dumps({"eos_token": None, "pad_token": {"lstrip": False}}))
    tok = load_tokenizer(d)
    assert (tok.eos_id, tok.pad_id) == (2, 1)


def test_save_leaves_out_the_load_time_keys_of_tokenizer_config(tmp_path):
    """transformers writes where it loaded from (name_or_path, ...) into tokenizer_config.json;
    a saved copy does not carry that stale location on."""
    d = _train_bpe(tmp_path / "a", tokenizer_config={"eos_token": "<|im_end|>", "name_or_path": "/old/place",
                                                      "is_local": True, "local_files_only": True,
                                                      "model_max_length": 4096})
    load_tokenizer(d).save(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert saved["model_max_length"] == 4096 and saved["eos_token"] == "<|im_end|>"
    assert not {"name_or_path", "is_local", "local_files_only"} & set(saved)


def test_every_listed_stop_id_must_be_in_the_vocabulary(tmp_path):
    """Not only the EOS itself: an extra stop id of generation_config.json past the vocabulary is refused."""
    d = _train_bpe(tmp_path / "a", tokenizer_config={"eos_token": "<|im_end|>"},
                   generation_config={"eos_token_id": [2, 500]})
    with pytest.raises(UserError, match="eos token id 500 is outside the tokenizer vocabulary"):
        load_tokenizer(d)


def test_save_writes_the_resolved_special_tokens_and_keeps_the_tokenizer_class(tmp_path):
    """Special ids that came from generation_config.json (not saved alongside) are written into
    the saved tokenizer_config.json as tokens, and a declared tokenizer_class is kept."""
    d = _train_bpe(tmp_path / "a", tokenizer_config={"tokenizer_class": "Qwen2Tokenizer"},
                   generation_config={"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1})
    load_tokenizer(d).save(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "Qwen2Tokenizer"
    again = load_tokenizer(tmp_path / "saved")
    assert (again.bos_id, again.eos_id, again.pad_id) == (0, 2, 1)


def test_a_directory_with_both_tokenizer_files_loads_tokenizer_json(tmp_path, bpe_dir):
    """tokenizer.json wins over a tokenizer.model beside it (here not even a valid one)."""
    d = tmp_path / "both"
    d.mkdir()
    (d / "tokenizer.json").write_text((bpe_dir / "tokenizer.json").read_text())
    (d / "tokenizer.model").write_bytes(b"\x00not a sentencepiece model")
    tok = load_tokenizer(d)
    assert not tok.is_sentencepiece and tok.source == d / "tokenizer.json"
