"""Tokenizers: Hugging Face `tokenizer.json` and SentencePiece `.model` behind one class.

Plain Python (no JAX): the data pipeline and `azr-jax score` use it on the host.

Special-token ids come from the files that ship beside the tokenizer, in this order:
`tokenizer_config.json` (token strings), then `generation_config.json`, then `config.json`
(token ids), then the SentencePiece model itself. `pad_id` falls back to `eos_id` when no pad
token is declared (as for Llama 3): padded positions are masked out, so any valid id works.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from azr_jax.errors import UserError
from azr_jax.jsonl import read_json_object

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
TOKENIZER_CONFIG = "tokenizer_config.json"
CHAT_TEMPLATE = "chat_template.jinja"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token")
# Written by transformers into tokenizer_config.json but describing the loading call, not the tokenizer.
_LOAD_TIME_KEYS = ("is_local", "local_files_only", "name_or_path")


def _read_json(path: Path) -> dict:
    """An optional JSON file of the tokenizer directory ({} when absent)."""
    return read_json_object(path, "tokenizer metadata") if path.is_file() else {}


def _token_text(spec: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ...}."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, dict) and isinstance(spec.get("content"), str):
        return spec["content"]
    return None


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


class _HFBackend:
    """`tokenizers.Tokenizer` (byte-level BPE for Qwen2.5 / Llama 3 / SmolLM2, or any tokenizer.json)."""

    def __init__(self, path: Path):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception on malformed files
            raise UserError(f"cannot read tokenizer {path}: {e}") from None
        # One past the largest id (added tokens included), which is the count for dense ids.
        vocab = self.tok.get_vocab(with_added_tokens=True)
        self._size = max(vocab.values(), default=-1) + 1
        # Ids in gaps of the vocabulary decode to nothing: they are refused as out of range are.
        self._known = None
        if len(set(vocab.values())) < self._size:
            self._known = np.zeros(self._size, bool)
            self._known[list(vocab.values())] = True

    def encode(self, text: str) -> list[int]:
        # Special-token strings in `text` (e.g. "<|im_start|>") still map to their ids, as in transformers.
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        # The Rust side drops an unknown id silently (and overflows on a negative one).
        _check_ids(ids, self._size, self._known)
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def vocab_size(self) -> int:
        return self._size

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tok.id_to_token(token_id)

    def special_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}

    def default_ids(self) -> dict[str, int | None]:
        return {}

    def save(self, directory: Path) -> None:
        self.tok.save(str(directory / TOKENIZER_JSON))


def _check_ids(ids: Sequence[int], size: int, known: np.ndarray | None = None) -> None:
    """UserError naming the first id outside [0, size), or (`known`) not in the vocabulary."""
    arr = np.asarray(ids, dtype=np.int64)
    bad = (arr < 0) | (arr >= size)
    if known is not None:
        bad |= ~known[np.clip(arr, 0, size - 1)]
    if bad.any():
        raise UserError(f"token id {int(arr[bad][0])} is outside the vocabulary (size {size})")


class _SentencePieceBackend:
    """`sentencepiece.SentencePieceProcessor` (Llama 2 / Mistral style `.model` files)."""

    def __init__(self, path: Path):
        import sentencepiece as spm

        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.load(str(path))
        except (OSError, RuntimeError) as e:
            raise UserError(f"cannot read SentencePiece model {path}: {e}") from None

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text, out_type=int))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self.sp.encode(list(texts), out_type=int)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        ids = [int(i) for i in ids]
        _check_ids(ids, self.sp.get_piece_size())
        if skip_special_tokens:
            return self.sp.decode([i for i in ids if not self._is_special(i)])
        # SentencePiece renders control pieces (<s>, </s>) as "": decode the ordinary runs and
        # splice the special pieces in as text (transformers also puts a space after a <s> it
        # shows: "<s> def", against "<s>def" here; the pipeline decodes with them skipped).
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            if self._is_special(i):
                if run:
                    parts.append(self.sp.decode(run))
                    run = []
                parts.append(self.sp.id_to_piece(i))
            else:
                run.append(i)
        if run:
            parts.append(self.sp.decode(run))
        return "".join(parts)

    def _is_special(self, i: int) -> bool:
        return bool(self.sp.is_control(i) or self.sp.is_unknown(i))

    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        # piece_to_id answers unk_id for unknown pieces; only the unk piece itself maps there.
        if i == self.sp.unk_id() and token != self.sp.id_to_piece(i):
            return None
        return i

    def id_to_token(self, token_id: int) -> str | None:
        if not 0 <= token_id < self.sp.get_piece_size():
            return None
        return self.sp.id_to_piece(token_id)

    def special_tokens(self) -> dict[str, int]:
        return {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size()) if self._is_special(i)}

    def default_ids(self) -> dict[str, int | None]:
        def opt(i: int) -> int | None:
            return i if i >= 0 else None

        return {"bos": opt(self.sp.bos_id()), "eos": opt(self.sp.eos_id()), "pad": opt(self.sp.pad_id())}

    def save(self, directory: Path) -> None:
        (directory / SENTENCEPIECE_MODEL).write_bytes(self.sp.serialized_model_proto())


class Tokenizer:
    """One interface over both backends; build it with `load_tokenizer`."""

    def __init__(self, backend: _HFBackend | _SentencePieceBackend, *, source: Path,
                 tokenizer_config: dict | None = None, generation_config: dict | None = None,
                 model_config: dict | None = None, chat_template: str | None = None,
                 special_tokens_map: dict | None = None):
        self._backend = backend
        self.source = source
        self._tokenizer_config = {k: v for k, v in (tokenizer_config or {}).items() if k not in _LOAD_TIME_KEYS}
        # transformers still reads special_tokens_map.json, and its tokens win over
        # tokenizer_config.json's (older and third-party checkpoints declare them only there).
        self._special_tokens_map = {k: v for k, v in (special_tokens_map or {}).items()
                                    if k in _SPECIAL_KEYS and _token_text(v) is not None}
        self._chat_template = chat_template
        self.bos_id, self.eos_id, self.pad_id, self.eos_ids = self._resolve_special_ids(
            generation_config, model_config or {})

    # -- special ids ---------------------------------------------------------------------------

    def _named_token_id(self, key: str) -> tuple[bool, int | None]:
        """(declared?, id) for `key` ("eos_token", ...) in special_tokens_map.json, else in
        tokenizer_config.json."""
        for source, table in ((SPECIAL_TOKENS_MAP, self._special_tokens_map), (TOKENIZER_CONFIG, self._tokenizer_config)):
            if key not in table:
                continue
            text = _token_text(table[key])
            if text is None:  # explicitly null, as Qwen2.5 writes "bos_token": null
                return True, None
            token_id = self._backend.token_to_id(text)
            if token_id is None:
                raise UserError(f"{source} names {key} {text!r}, which is not in the vocabulary")
            return True, token_id
        return False, None

    def _resolve_special_ids(self, generation_config: dict | None, cfg: dict):
        gen = generation_config or {}
        defaults = self._backend.default_ids()
        resolved: dict[str, int | None] = {}
        for name in ("bos", "eos", "pad"):
            declared, token_id = self._named_token_id(f"{name}_token")
            if not declared:
                ids = _as_id_list(gen.get(f"{name}_token_id")) or _as_id_list(cfg.get(f"{name}_token_id"))
                token_id = ids[0] if ids else defaults.get(name)
            resolved[name] = token_id
        eos_id = resolved["eos"]
        if resolved["pad"] is None:
            resolved["pad"] = eos_id if eos_id is not None else 0
        # Every id that ends a generation: the tokenizer's EOS plus generation_config's list
        # (Llama 3 Instruct stops on <|eot_id|> as well as <|end_of_text|>); without a
        # generation_config.json, config.json's list, from which transformers derives one.
        listed = gen.get("eos_token_id") if generation_config is not None else cfg.get("eos_token_id")
        stop = ([eos_id] if eos_id is not None else []) + _as_id_list(listed)
        eos_ids = tuple(dict.fromkeys(stop))
        size = self._backend.vocab_size()
        for name, token_id in (*resolved.items(), *(("eos", i) for i in eos_ids)):
            if token_id is not None and not 0 <= token_id < size:
                raise UserError(f"{name} token id {token_id} is outside the tokenizer vocabulary (size {size})")
        return resolved["bos"], eos_id, resolved["pad"], eos_ids

    # -- encode / decode -----------------------------------------------------------------------

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise UserError(f"encode expects a str, got {type(text).__name__}")
        ids = self._backend.encode(text)
        return self._add_bos_eos(ids, add_bos, add_eos)

    def encode_batch(self, texts: Iterable[str], add_bos: bool = False, add_eos: bool = False) -> list[list[int]]:
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise UserError(f"encode_batch expects strings, got {type(t).__name__}")
        return [self._add_bos_eos(ids, add_bos, add_eos) for ids in self._backend.encode_batch(texts)]

    def _add_bos_eos(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise UserError(f"tokenizer {self.source} has no BOS token, so add_bos=True is impossible")
            ids = [self.bos_id] + ids
        if add_eos:
            if self.eos_id is None:
                raise UserError(f"tokenizer {self.source} has no EOS token, so add_eos=True is impossible")
            ids = ids + [self.eos_id]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens)

    # -- vocabulary ----------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (may be below the model's padded embedding size)."""
        return self._backend.vocab_size()

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special token text -> id (added special tokens, or SentencePiece control pieces)."""
        return self._backend.special_tokens()

    @property
    def chat_template(self) -> str | None:
        """chat_template.jinja, else tokenizer_config.json's template (transformers' order); of a
        list of named templates, the one named "default" (the one used when none is named)."""
        if self._chat_template is not None:
            return self._chat_template
        template = self._tokenizer_config.get("chat_template")
        if isinstance(template, list):
            template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                            None)
        return template if isinstance(template, str) else None

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(int(token_id))

    # -- saving --------------------------------------------------------------------------------

    @property
    def is_sentencepiece(self) -> bool:
        """A SentencePiece `.model` (written as tokenizer.model), not a tokenizers `tokenizer.json`."""
        return isinstance(self._backend, _SentencePieceBackend)

    def save(self, directory: str | os.PathLike) -> None:
        """Write the tokenizer file plus tokenizer_config.json (and chat template) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._backend.save(directory)
        config = dict(self._tokenizer_config)
        for name, token_id in (("bos", self.bos_id), ("eos", self.eos_id), ("pad", self.pad_id)):
            if token_id is not None:
                config[f"{name}_token"] = self.id_to_token(token_id)
        if isinstance(self._backend, _HFBackend):
            config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        (directory / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
        if self._chat_template is not None:
            (directory / CHAT_TEMPLATE).write_text(self._chat_template, encoding="utf-8")

    def __repr__(self) -> str:
        kind = "tokenizer.json" if isinstance(self._backend, _HFBackend) else "sentencepiece"
        return f"Tokenizer({kind}, vocab_size={self.vocab_size}, eos_id={self.eos_id}, source={str(self.source)!r})"


def find_tokenizer_file(path: str | os.PathLike) -> Path | None:
    """The tokenizer file at `path` (a file, or a directory holding tokenizer.json / tokenizer.model)."""
    path = Path(path)
    if path.is_file():
        return path
    for name in (TOKENIZER_JSON, SENTENCEPIECE_MODEL):
        if (path / name).is_file():
            return path / name
    return None


def tokenizer_file(path: str | os.PathLike) -> Path:
    """The tokenizer file `load_tokenizer(path)` reads; one-line errors when there is none."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"tokenizer path {path} does not exist")
    file = find_tokenizer_file(path)
    if file is None:
        raise UserError(f"no tokenizer in {path}: expected {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL}")
    return file


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load `tokenizer.json` (HF tokenizers) or a SentencePiece `.model`, from a file or a directory.

    Sidecar files in the same directory (tokenizer_config.json, special_tokens_map.json,
    generation_config.json, config.json, chat_template.jinja) supply the special tokens and the
    chat template.
    """
    file = tokenizer_file(path)
    directory = file.parent
    backend = _HFBackend(file) if file.suffix == ".json" else _SentencePieceBackend(file)
    template_file = directory / CHAT_TEMPLATE
    generation_file = directory / "generation_config.json"
    return Tokenizer(
        backend,
        source=file,
        tokenizer_config=_read_json(directory / TOKENIZER_CONFIG),
        generation_config=_read_json(generation_file) if generation_file.is_file() else None,
        model_config=_read_json(directory / "config.json"),
        chat_template=template_file.read_text(encoding="utf-8") if template_file.is_file() else None,
        special_tokens_map=_read_json(directory / SPECIAL_TOKENS_MAP),
    )
