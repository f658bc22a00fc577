"""ModelConfig: parameter counts, FLOPs, HF config round trips, presets, HF tensor mapping."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from hf_reference import hf_model, small_config  # noqa: E402

from azr_jax.errors import UserError  # noqa: E402
from azr_jax.models import PRESETS, ModelConfig, get_preset, register_preset  # noqa: E402
from azr_jax.models.decoder import init_params, param_axes, param_shapes  # noqa: E402
from azr_jax.models.hf_mapping import hf_from_params, hf_tensor_specs, params_from_hf  # noqa: E402


def _hf_param_count(cfg: ModelConfig) -> int:
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf_config())
    with torch.device("meta"):  # shapes only: presets up to 14B cost no memory
        model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_num_params_equals_transformers(name):
    cfg = get_preset(name)
    assert cfg.num_params() == _hf_param_count(cfg)


def test_known_parameter_counts():
    assert get_preset("qwen2.5-0.5b").num_params() == 494_032_768
    assert get_preset("qwen2.5-7b").num_params() == 7_615_616_512
    assert get_preset("llama-3.1-8b").num_params() == 8_030_261_248


@pytest.mark.parametrize("arch,tie", [("qwen2", True), ("qwen2", False), ("llama", False), ("qwen3", True)])
def test_small_num_params_and_tree_match_transformers(arch, tie):
    cfg = small_config(arch, tie_word_embeddings=tie)
    model = hf_model(cfg)
    assert cfg.num_params() == sum(p.numel() for p in model.parameters())
    params = init_params(cfg, jax.random.key(0))
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
    shapes = jax.tree.map(lambda x: x.shape, params)
    assert shapes == jax.tree.map(tuple, param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    axes = param_axes(cfg)
    assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, tuple)) == jax.tree.structure(params)
    # Every HF tensor is covered exactly once by the mapping.
    hf_names = {k for k in model.state_dict() if not (tie and k == "lm_head.weight")}
    assert {s.hf_name for s in hf_tensor_specs(cfg)} == hf_names


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
def test_hf_mapping_round_trip(arch):
    cfg = small_config(arch)
    params = jax.tree.map(np.asarray, init_params(cfg, jax.random.key(1)))
    tensors = hf_from_params(cfg, params)
    back = params_from_hf(cfg, tensors.__getitem__, np.float32)
    jax.tree.map(np.testing.assert_array_equal, back, params)
    half = params_from_hf(cfg, tensors.__getitem__, np.float16)  # cast to the dtype asked for
    assert {x.dtype for x in jax.tree.leaves(half)} == {np.dtype(np.float16)}
    bad = dict(tensors, **{"model.norm.weight": np.ones(3, np.float32)})
    with pytest.raises(UserError, match="model.norm.weight"):
        params_from_hf(cfg, bad.__getitem__)


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "qwen2.5-7b", "llama-3.1-8b", "qwen3-4b-base"])
def test_to_hf_config_round_trips_through_transformers(name, tmp_path):
    cfg = get_preset(name)
    hf_dict = cfg.to_hf_config(dtype="bfloat16")
    (tmp_path / "config.json").write_text(json.dumps(hf_dict))
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(loaded).__name__ == {"qwen2": "Qwen2Config", "llama": "LlamaConfig",
                                     "qwen3": "Qwen3Config"}[cfg.architecture]
    assert loaded.architectures == hf_dict["architectures"]
    # Through transformers' own serialisation (5.x writes rope_parameters) and back.
    assert ModelConfig.from_hf_config(loaded.to_dict()) == cfg
    assert ModelConfig.from_hf_config(hf_dict) == cfg


def test_from_hf_config_rejects_unsupported():
    good = get_preset("qwen2.5-0.5b").to_hf_config()
    with pytest.raises(UserError, match="model_type"):
        ModelConfig.from_hf_config(dict(good, model_type="mistral"))
    with pytest.raises(UserError, match="architectures"):
        ModelConfig.from_hf_config(dict(good, architectures=["Qwen2ForSequenceClassification"]))
    with pytest.raises(UserError, match="yarn"):
        ModelConfig.from_hf_config(dict(good, rope_scaling={"type": "yarn", "factor": 4.0}))
    with pytest.raises(UserError, match="sliding"):
        ModelConfig.from_hf_config(dict(good, use_sliding_window=True))
    with pytest.raises(UserError, match="hidden_size"):
        ModelConfig.from_hf_config({k: v for k, v in good.items() if k != "hidden_size"})
    with pytest.raises(UserError, match="dynamic"):
        small_config("llama", rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    with pytest.raises(UserError, match="attention_bias"):
        small_config("llama", attention_bias=True)
    # MLP biases and a llama/qwen3 attention_bias (which adds an o_proj bias) have no parameters here
    llama = get_preset("llama-3.1-8b").to_hf_config()
    with pytest.raises(UserError, match="mlp_bias=true is not supported"):
        ModelConfig.from_hf_config(dict(llama, mlp_bias=True))
    with pytest.raises(UserError, match="attention_bias=true is not supported for llama"):
        ModelConfig.from_hf_config(dict(llama, attention_bias=True))
    with pytest.raises(UserError, match="unsupported hidden_act 'gelu'"):  # the MLP is SwiGLU
        ModelConfig.from_hf_config(dict(llama, hidden_act="gelu"))


def test_rope_parameters_without_their_own_theta_keep_the_scaling():
    """transformers 5's rope_parameters may leave rope_theta at the top level; the block's type
    and factors still count (llama3 is kept, yarn refused), as transformers reads them."""
    good = {k: v for k, v in get_preset("llama-3.1-8b").to_hf_config().items() if k != "rope_scaling"}
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    cfg = ModelConfig.from_hf_config(dict(good, rope_theta=500000.0, rope_parameters=llama3))
    assert cfg.rope_scaling == llama3 and cfg.rope_theta == 500000.0
    theirs = transformers.AutoConfig.for_model(**dict(good, rope_theta=500000.0, rope_parameters=llama3))
    assert dict(theirs.rope_parameters) == dict(llama3, rope_theta=500000.0)
    with pytest.raises(UserError, match="yarn"):
        ModelConfig.from_hf_config(dict(good, rope_parameters={"rope_type": "yarn", "factor": 4.0}))
    # no theta anywhere: transformers' default
    assert ModelConfig.from_hf_config(
        {k: v for k, v in good.items() if k != "rope_theta"} | {"rope_parameters": {"rope_type": "default"}}
    ).rope_theta == 10000.0


def test_a_rope_scaling_block_beside_different_rope_parameters_is_refused():
    """transformers 5 applies rope_scaling over rope_parameters (e.g. a YaRN or llama3 block
    pasted into a config that 5.x saved); reading only rope_parameters would load plain RoPE."""
    good = {k: v for k, v in get_preset("llama-3.1-8b").to_hf_config().items() if k != "rope_scaling"}
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    plain = {"rope_type": "default", "rope_theta": 500000.0}
    with pytest.raises(UserError, match="rope_parameters .* different rope_scaling"):
        ModelConfig.from_hf_config(dict(good, rope_parameters=plain, rope_scaling=llama3))
    with pytest.raises(UserError, match="yarn"):
        ModelConfig.from_hf_config(dict(good, rope_parameters=plain, rope_scaling={"type": "yarn", "factor": 4.0}))
    # the same RoPE written both ways (the "type" spelling of 4.x included) loads
    both = ModelConfig.from_hf_config(dict(good, rope_parameters=dict(llama3, rope_theta=500000.0),
                                           rope_scaling=dict({k: v for k, v in llama3.items() if k != "rope_type"},
                                                             type="llama3")))
    assert both.rope_scaling == llama3 and both.rope_theta == 500000.0
    assert ModelConfig.from_hf_config(dict(good, rope_parameters=plain, rope_scaling=None)).rope_scaling is None


LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}


def rope_free_llama_config() -> dict:
    """A small Llama's HF config without any RoPE field: each case adds its own."""
    return {k: v for k, v in small_config("llama").to_hf_config().items() if k not in ("rope_theta", "rope_scaling")}


@pytest.mark.parametrize("extra", [
    {"rope_scaling": {"rope_type": "default", "rope_theta": 500.0}},  # a block's own theta, no top-level one
    {"rope_theta": 5e5, "original_max_position_embeddings": 16,  # the block leaves it to the top level
     "rope_scaling": {k: v for k, v in LLAMA3_ROPE.items() if k != "original_max_position_embeddings"}},
    {"rope_parameters": dict(LLAMA3_ROPE, rope_theta=5e5), "rope_scaling": {}},  # an empty block is no block
    {"rope_theta": 5e5, "rope_scaling": LLAMA3_ROPE},  # Llama 3.1's own layout
])
def test_rope_frequencies_follow_transformers_wherever_the_config_puts_them(extra):
    """The inverse frequencies transformers computes from the config, whichever of its places
    (top level, rope_scaling, rope_parameters) holds theta and the llama3 fields."""
    from azr_jax.models.rope import inverse_frequencies

    raw = dict(rope_free_llama_config(), **extra)
    theirs = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**json.loads(json.dumps(raw))))
    ours = inverse_frequencies(ModelConfig.from_hf_config(json.loads(json.dumps(raw))))
    np.testing.assert_allclose(ours, theirs.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)


@pytest.mark.parametrize("extra, message", [
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6},
      "rope_scaling": {"rope_type": "default", "rope_theta": 100.0}}, "different RoPE thetas"),
    ({"rope_parameters": dict(LLAMA3_ROPE, rope_theta=5e5), "rope_scaling": dict(LLAMA3_ROPE, rope_theta=1e4)},
     "different RoPE thetas"),
    ({"rope_theta": 5e5, "rope_scaling": LLAMA3_ROPE, "original_max_position_embeddings": 16},
     "original_max_position_embeddings=16 at the top level and 64"),
    ({"rope_parameters": [1, 2]}, "rope_parameters must be a mapping"),
])
def test_rope_fields_that_disagree_across_places_are_refused(extra, message):
    """Blocks that differed only in theta passed the rope_scaling/rope_parameters check, and the
    theta was taken from rope_parameters while transformers 5 applies rope_scaling's: logits off
    by 2.5 on a random model (`repro model`), with no word."""
    raw = dict(rope_free_llama_config(), **extra)
    with pytest.raises(UserError, match=message):
        ModelConfig.from_hf_config(raw)


@pytest.mark.parametrize("change, message", [
    ({"num_attention_heads": 0, "head_dim": None}, "num_attention_heads"),
    ({"rope_theta": None}, "rope_theta"),
    ({"rope_theta": -1.0}, "rope_theta"),
    ({"vocab_size": 300.7}, "vocab_size"),
    ({"hidden_size": "896"}, "hidden_size"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps"),
])
def test_malformed_hf_values_are_one_user_error(change, message):
    good = get_preset("qwen2.5-0.5b").to_hf_config()
    with pytest.raises(UserError, match=message):
        ModelConfig.from_hf_config(dict(good, **change))


def test_llama_eos_list_round_trips():
    hf = dict(get_preset("llama-3.1-8b").to_hf_config(), eos_token_id=[128001, 128008, 128009])
    cfg = ModelConfig.from_hf_config(hf)
    assert cfg.eos_token_id == 128001 and cfg.stop_token_ids == (128001, 128008, 128009)
    assert cfg.to_hf_config()["eos_token_id"] == [128001, 128008, 128009]


def test_a_config_without_head_dim_takes_transformers_default():
    for name in ("qwen2.5-0.5b", "llama-3.1-8b", "qwen3-4b-base"):
        hf = {k: v for k, v in get_preset(name).to_hf_config().items() if k != "head_dim"}
        theirs = transformers.AutoConfig.for_model(**hf)
        expected = getattr(theirs, "head_dim", None) or theirs.hidden_size // theirs.num_attention_heads
        assert ModelConfig.from_hf_config(hf).head_dim == expected, name
    assert expected == 128  # Qwen3Config's default, not hidden / heads (2560 / 32 = 80)


def test_flops_per_token_formula():
    cfg = get_preset("qwen2.5-0.5b")
    d, f, n, k, h, L, v = 896, 4864, 14, 2, 64, 24, 151936
    matmul = L * (d * n * h + 2 * d * k * h + n * h * d + 3 * d * f) + d * v
    assert cfg.flops_per_token(4096) == 6 * matmul + 12 * L * n * h * 4096
    assert cfg.flops_per_token(2048) < cfg.flops_per_token(4096)


def test_presets_registry_and_hashing():
    cfg = get_preset("qwen3-4b-base")
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
            cfg.intermediate_size, cfg.vocab_size) == (36, 2560, 32, 8, 128, 9728, 151936)
    assert cfg.tie_word_embeddings and cfg.qk_norm and not cfg.attention_bias
    llama = get_preset("llama-3.1-8b")
    assert llama.rope_scaling["rope_type"] == "llama3" and llama.rope_theta == 500000.0
    assert hash(llama) == hash(ModelConfig.from_hf_config(llama.to_hf_config()))
    with pytest.raises(UserError, match="qwen2.5-0.5b"):
        get_preset("qwen2.5-0.5")
    tiny = small_config("qwen2")
    register_preset("test-tiny-model-core", tiny)
    try:
        assert get_preset("test-tiny-model-core") is tiny
        with pytest.raises(ValueError):
            register_preset("test-tiny-model-core", small_config("llama"))
    finally:
        PRESETS.pop("test-tiny-model-core")


@pytest.mark.parametrize("arch", ["qwen2", "llama", "qwen3"])
def test_fields_left_out_of_an_hf_config_take_the_transformers_defaults(arch):
    """config.json may leave out fields that have defaults; the model read from it must be the
    one transformers builds from the same file (untied head, norm eps, RoPE theta, context length)."""
    omitted = ("tie_word_embeddings", "rms_norm_eps", "rope_theta", "max_position_embeddings")
    sparse = {k: v for k, v in small_config(arch).to_hf_config().items() if k not in omitted}
    ours = ModelConfig.from_hf_config(sparse)
    theirs = transformers.AutoConfig.for_model(**sparse)
    assert ours.tie_word_embeddings == theirs.tie_word_embeddings
    assert ours.rms_norm_eps == theirs.rms_norm_eps
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"]
    assert ours.max_position_embeddings == theirs.max_position_embeddings  # LlamaConfig: 2048


@pytest.mark.parametrize("change, message", [
    (dict(num_kv_heads=3), "must be a multiple of num_kv_heads"),  # GQA groups would not divide
    (dict(head_dim=23), "head_dim must be even"),  # RoPE rotates half-dimension pairs
    (dict(tokenizer_vocab_size=513), r"tokenizer_vocab_size must be in \[1, vocab_size=512\]"),
    (dict(tokenizer_vocab_size=0), r"tokenizer_vocab_size must be in \[1, vocab_size=512\]"),
    (dict(rope_theta=float("inf")), "'rope_theta' must be a positive finite number"),
    (dict(rms_norm_eps=float("inf")), "'rms_norm_eps' must be a positive finite number"),
    (dict(tie_word_embeddings="no"), "'tie_word_embeddings' must be true or false"),
    (dict(max_position_embeddings=0), "'max_position_embeddings' must be a positive int"),
    (dict(max_position_embeddings=True), "'max_position_embeddings' must be a positive int"),
    (dict(qk_norm=True), "qk_norm=True does not match architecture 'qwen2'"),
])
def test_model_config_refuses_shapes_the_decoder_cannot_run(change, message):
    with pytest.raises(UserError, match=message):
        small_config("qwen2", **change)


def test_a_tokenizer_exactly_as_large_as_the_vocabulary_is_accepted():
    """The usual case when the embedding is not padded (tokenizer_vocab_size == vocab_size)."""
    assert small_config("qwen2", tokenizer_vocab_size=512).tokenizer_vocab_size == 512


def test_init_params_follow_the_transformers_initialisation():
    """Random weights are N(0, 0.02) (transformers' initializer_range), norms 1, biases 0."""
    params = init_params(small_config("qwen2"), jax.random.key(0))
    embedding = np.asarray(params["embed"]["embedding_vd"])  # 512 x 64 draws
    assert abs(embedding.std() - 0.02) < 5e-4 and abs(embedding.mean()) < 5e-4
    assert abs(np.asarray(params["layers"]["q_proj_dnh"]).std() - 0.02) < 1e-3
    assert (np.asarray(params["layers"]["attn_norm_d"]) == 1).all() and (np.asarray(params["final_norm_d"]) == 1).all()
    assert (np.asarray(params["layers"]["q_bias_nh"]) == 0).all()
    for arch in ("qwen2", "qwen3"):  # every leaf (norms and biases too) in the dtype asked for
        shapes = jax.eval_shape(lambda: init_params(small_config(arch), jax.random.key(0), jnp.bfloat16))
        assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.bfloat16)}


def test_a_llama_config_without_num_key_value_heads_has_a_kv_head_per_query_head():
    """transformers' LlamaConfig reads a missing num_key_value_heads as num_attention_heads."""
    hf = {k: v for k, v in small_config("llama").to_hf_config().items() if k != "num_key_value_heads"}
    theirs = transformers.AutoConfig.for_model(**hf).num_key_value_heads
    assert ModelConfig.from_hf_config(hf).num_kv_heads == theirs == 4


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_a_qwen_config_without_num_key_value_heads_takes_transformers_default(arch):
    """Qwen2Config and Qwen3Config read a missing num_key_value_heads as 32 (their class default),
    not as num_attention_heads; where 32 does not divide the heads, the error names the field."""
    hf = {k: v for k, v in small_config(arch, num_heads=64, num_kv_heads=8).to_hf_config().items()
          if k != "num_key_value_heads"}
    assert ModelConfig.from_hf_config(hf).num_kv_heads == transformers.AutoConfig.for_model(**hf).num_key_value_heads == 32
    assert ModelConfig.from_hf_config(dict(hf, num_key_value_heads=None)).num_kv_heads == 64  # null: one per head
    with pytest.raises(UserError, match=r"no 'num_key_value_heads'; transformers then takes 32 .* num_attention_heads=4"):
        ModelConfig.from_hf_config(dict(hf, num_attention_heads=4))


def test_llama3_rope_numbers_are_normalised_so_equal_configs_hash_alike():
    """A llama3 block written with ints for the factors and a float for the original length is
    the preset's config: equal and with the same hash (the config is a jit static argument)."""
    llama = get_preset("llama-3.1-8b")
    loose = {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4,
             "original_max_position_embeddings": 8192.0}
    cfg = ModelConfig.from_hf_config(dict(llama.to_hf_config(), rope_scaling=loose))
    assert cfg == llama and hash(cfg) == hash(llama)


# The numerics and ids of each preset as its published config.json gives them (the other tests
# compare a preset with transformers built from the preset itself, so they cannot see these).
PRESET_NUMERICS = {
    # name: (max_position_embeddings, rope_theta, rms_norm_eps, bos, eos, pad)
    "qwen2.5-0.5b": (32768, 1e6, 1e-6, 151643, 151643, 151643),
    "qwen2.5-1.5b": (131072, 1e6, 1e-6, 151643, 151643, 151643),
    "qwen2.5-3b": (32768, 1e6, 1e-6, 151643, 151643, 151643),
    "qwen2.5-7b": (131072, 1e6, 1e-6, 151643, 151643, 151643),
    "qwen2.5-14b": (131072, 1e6, 1e-5, 151643, 151643, 151643),
    "qwen2.5-coder-3b": (32768, 1e6, 1e-6, 151643, 151643, 151643),
    "qwen2.5-coder-7b": (32768, 1e6, 1e-6, 151643, 151643, 151643),
    "qwen2.5-coder-14b": (32768, 1e6, 1e-5, 151643, 151643, 151643),
    "llama-3.1-8b": (131072, 5e5, 1e-5, 128000, 128001, None),
    "qwen3-4b-base": (32768, 1e6, 1e-6, 151643, 151643, 151643),
}


@pytest.mark.parametrize("name", sorted(PRESET_NUMERICS))
def test_preset_numerics_and_ids(name):
    cfg = get_preset(name)
    assert (cfg.max_position_embeddings, cfg.rope_theta, cfg.rms_norm_eps, cfg.bos_token_id, cfg.eos_token_id,
            cfg.pad_token_id) == PRESET_NUMERICS[name]
    expected_scaling = ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192} if name == "llama-3.1-8b" else None)
    assert cfg.rope_scaling == expected_scaling


def test_stop_ids_are_the_eos_then_the_other_extra_ids_as_plain_ints():
    """stop_token_ids lists the eos once, then the extra ids; extra ids given as a list of numpy
    ints make the same (equal, equally hashed) config as a tuple of ints."""
    cfg = small_config("llama", eos_token_id=2, extra_eos_token_ids=[np.int64(2), np.int64(5)])
    assert cfg.stop_token_ids == (2, 5)
    same = small_config("llama", eos_token_id=2, extra_eos_token_ids=(2, 5))
    assert cfg == same and hash(cfg) == hash(same)


def test_replace_names_unknown_fields_in_a_user_error():
    """A misspelt model override is one UserError naming the field, not a TypeError."""
    with pytest.raises(UserError, match=r"unknown ModelConfig field\(s\) \['rope_thetta'\]"):
        small_config("qwen2").replace(rope_thetta=1.0)


def test_register_preset_accepts_the_same_config_again_and_replaces_only_when_told():
    """Registering an equal config again is fine (a module imported twice), a different one
    needs overwrite=True, and only a ModelConfig is accepted."""
    register_preset("test-tiny-again", small_config("qwen2"))
    try:
        register_preset("test-tiny-again", small_config("qwen2"))
        other = small_config("llama")
        register_preset("test-tiny-again", other, overwrite=True)
        assert get_preset("test-tiny-again") is other
        with pytest.raises(TypeError, match="register_preset expects a ModelConfig, got dict"):
            register_preset("test-tiny-again", {"architecture": "qwen2"})
    finally:
        PRESETS.pop("test-tiny-again")
