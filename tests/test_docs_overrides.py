"""The config keys users read about and copy name real keys: every `--set KEY=VALUE` in the README,
docs, configs and launch scripts, and every `section.key` in backticks in the README and docs (a
renamed or removed key would otherwise only fail when someone runs the command)."""

import dataclasses
import importlib
import re
from pathlib import Path

import pytest

from azr_jax.config import Config, apply_overrides
from azr_jax.errors import UserError
from azr_jax.models.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
USER_FACING = ["README.md", "docs/*.md", "configs/*.py", "launch/**/*.sh", "launch/**/*.md", "notebooks/*.py"]
SET_KEY = re.compile(r"--set(?:=|\s+)[\"']?([A-Za-z_][\w.]*)=")  # \s: a command wrapped after --set
PLACEHOLDERS = {"k", "section.key"}  # the syntax itself, written out in the docs
SECTIONS = "model|mesh|sampling|azr|sandbox|rl|optim|train|eval|pretrain"
BACKTICKED_KEY = re.compile(rf"`((?:{SECTIONS})\.[a-z_][\w.]*)(?:[=`]| [=<>])")  # also `rl.kl_coef > 0`
FILE_SUFFIXES = (".json", ".safetensors")  # e.g. `model.safetensors`, a file, not a key


def is_module_or_file(name: str) -> bool:
    """`rl.update.make_train_step`, `sampling.generate`: a name in the package, not a config key."""
    if name.endswith(FILE_SUFFIXES):
        return True
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module("azr_jax." + ".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def documented_override_keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for pattern in USER_FACING:
        for path in sorted(ROOT.glob(pattern)):
            for key in SET_KEY.findall(path.read_text(encoding="utf-8")):
                keys.setdefault(key, []).append(str(path.relative_to(ROOT)))
            if path.suffix == ".md":
                for key in BACKTICKED_KEY.findall(path.read_text(encoding="utf-8")):
                    if not is_module_or_file(key):
                        keys.setdefault(key, []).append(str(path.relative_to(ROOT)))
    return keys


def test_package_paths_and_files_are_not_taken_for_keys():
    assert is_module_or_file("rl.update.make_train_step") and is_module_or_file("azr.prompts")
    assert is_module_or_file("model.safetensors") and is_module_or_file("sampling.generate")
    assert not is_module_or_file("rl.whiten_stats") and not is_module_or_file("azr.solver_samples")


def test_the_docs_show_overrides():
    # Guards the scan itself: an empty result would pass the key check below vacuously.
    keys = documented_override_keys()
    assert {"train.seed", "azr.propose", "model.hf_dir"} <= set(keys)
    assert sum(len(files) for files in keys.values()) > 250


def test_documented_overrides_name_config_keys():
    unknown = []
    for key, files in documented_override_keys().items():
        if key in PLACEHOLDERS:
            continue
        where = f"{key} (in {', '.join(sorted(set(files)))})"
        try:
            apply_overrides(Config(), [f"{key}=0"])
        except UserError as e:  # a wrong-typed 0 is fine here: only the key's existence is checked
            if "unknown config key" in str(e):
                unknown.append(f"{where}: {e}")
        # Entries of dict-valued keys are not config keys: a value error comes before any name
        # check there (or none is made, for model.overrides), so their names are checked here.
        section, _, rest = key.partition(".")
        head, _, name = rest.partition(".")
        if name and f"{section}.{head}" in DICT_VALUED and name not in DICT_VALUED[f"{section}.{head}"]:
            unknown.append(f"{where}: {name!r} is not one of {sorted(DICT_VALUED[f'{section}.{head}'])}")
    assert not unknown, "\n".join(unknown)


DICT_VALUED = {
    "mesh.shape": set(Config().mesh.shape),
    "mesh.rules": set(Config().mesh.rules),
    "model.overrides": {f.name for f in dataclasses.fields(ModelConfig)},
}


def test_a_misspelt_entry_of_a_dict_valued_key_would_be_caught(monkeypatch):
    import sys

    module = sys.modules[__name__]
    monkeypatch.setattr(module, "documented_override_keys", lambda: {
        "model.overrides.num_layerz": ["README.md"], "mesh.shape.tensr": ["docs/x.md"], "mesh.rules.vocab": ["y"]})
    with pytest.raises(AssertionError) as failed:
        test_documented_overrides_name_config_keys()
    assert "'num_layerz' is not one of" in str(failed.value) and "'tensr' is not one of" in str(failed.value)
    assert "'vocab'" not in str(failed.value)


def test_a_removed_key_would_be_caught():
    with pytest.raises(UserError, match="unknown config key"):
        apply_overrides(Config(), ["azr.no_such_setting=0"])
