"""docs/config.md is generated from azr_jax/config.py and must stay current; every key has a description."""

from pathlib import Path

from azr_jax.config import Config, _all_keys
from azr_jax.config_reference import field_comments, missing_descriptions, reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_the_config_reference_is_current():
    written = (ROOT / "docs" / "config.md").read_text()
    assert written == reference_markdown(), (
        "docs/config.md is stale: run `python -m azr_jax.config_reference > docs/config.md`")


def test_every_config_key_is_described_and_listed():
    assert missing_descriptions() == [], "give these keys a comment in azr_jax/config.py"
    text = reference_markdown()
    leaves = [k for k in _all_keys(Config) if k.count(".") == 1]
    assert leaves and all(f"| `{k}` |" in text for k in leaves)


def test_comments_above_and_beside_a_field_are_its_description():
    source = (
        "class S:\n"
        "    a: int = 1  # beside a\n"
        "    # above b,\n"
        "    # two lines\n"
        "    b: int = 2  # and beside\n"
        "\n"
        "    c: int = 3\n"
        "    # a comment after the last field belongs to nothing\n"
    )
    assert field_comments(source) == {("S", "a"): "beside a", ("S", "b"): "above b, two lines and beside",
                                      ("S", "c"): ""}


def test_a_key_without_a_comment_is_reported(monkeypatch):
    """The check above passes only while missing_descriptions can say otherwise: a top-level key
    and a section key whose comments are gone are both named."""
    from azr_jax import config_reference

    comments = config_reference._config_comments()
    gone = {("Config", "name"), ("RLSection", "kl_type")}
    monkeypatch.setattr(config_reference, "_config_comments",
                        lambda: {k: v for k, v in comments.items() if k not in gone})
    assert missing_descriptions() == ["name", "rl.kl_type"]


def test_allowed_values_are_listed_unless_the_comment_names_each_as_a_word():
    from azr_jax.config_reference import _describe

    assert _describe("token or sequence", ("token", "sequence")) == "token or sequence."
    # `token` inside `token-mean` is another value, not this one
    assert _describe("token-mean or sequence", ("token", "sequence")) == (
        "token-mean or sequence. One of: `token`, `sequence`.")
