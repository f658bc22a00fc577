"""The TRR++ clipped-surrogate objective and its gradients equal the same objective in torch.

A small random Qwen2 model is built with transformers (no download). The torch side writes the
objective from scratch (log-softmax, ratio, clip, dual clip, entropy, k3 KL, token-mean); the
azr-jax side is `make_grad_fn` (the train step's gradient, with micro-batch accumulation). JAX
gradients are mapped to HF tensor names with `hf_from_params`. float32, T = 16: rtol 1e-4,
atol 1e-6.
"""

import numpy as np
import pytest
import torch
import transformers

import jax
import jax.numpy as jnp

from azr_jax.config import RLSection
from azr_jax.models.config import ModelConfig
from azr_jax.models.hf_mapping import hf_from_params, params_from_hf
from azr_jax.rl import advantages
from azr_jax.rl.logprobs import token_logprobs_and_entropy
from azr_jax.rl.update import make_grad_fn

T = 16
PROMPT_LENS = [3, 5, 2, 6, 4, 3, 5, 2]
RESPONSE_LENS = [7, 4, 9, 5, 1, 10, 6, 8]
ROLES_TASKS = [("propose", "deduction"), ("solve", "deduction")] * 4
REWARDS = [0.5, 1.0, -0.5, 0.0, -1.0, 1.0, 0.25, 0.0]


def _model_and_params(tie: bool):
    cfg = ModelConfig(
        architecture="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0, tie_word_embeddings=tie,
    )
    torch.manual_seed(0)
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf_config())
    hf_cfg._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg, dtype=torch.float32).train(False)
    with torch.no_grad():  # larger, non-trivial weights (biases and norms too) so a wrong mapping shows
        for name, p in model.named_parameters():
            if p.ndim >= 2 or "bias" in name:
                p.normal_(0.0, 0.1)
            else:
                p.uniform_(0.5, 1.5)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return cfg, model, params_from_hf(cfg, state.__getitem__, np.float32)


def _batch(cfg, model, seed=0):
    """Left-padded prompt + right-padded response rows, as the trainer builds them."""
    rng = np.random.default_rng(seed)
    b = len(PROMPT_LENS)
    tokens = rng.integers(3, cfg.vocab_size, size=(b, T)).astype(np.int32)
    mask = np.zeros((b, T), np.int32)
    loss_mask = np.zeros((b, T), np.float32)
    for i, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS)):
        start = T - max(PROMPT_LENS) - max(RESPONSE_LENS) + (max(PROMPT_LENS) - p) + 1
        start = max(start, 0)
        mask[i, start : start + p + r] = 1
        loss_mask[i, start + p : start + p + r] = 1
    tokens = np.where(mask == 1, tokens, 0).astype(np.int32)
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None).astype(np.int32)
    group_ids = np.array([advantages.trrpp_group_id(r, t) for r, t in ROLES_TASKS])
    adv = np.asarray(advantages.trr_plus_plus(np.array(REWARDS), loss_mask, group_ids, num_groups=6))
    batch = dict(tokens=tokens, positions=positions, mask=mask, loss_mask=loss_mask, advantages=adv)
    with torch.no_grad():  # current logprobs (torch is cheaper here than compiling a forward)
        logits = model(
            input_ids=torch.from_numpy(tokens).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=torch.from_numpy(positions).long(),
        ).logits
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, torch.from_numpy(tokens).long()[:, 1:, None])[..., 0]
    logp = np.pad(logp.numpy(), ((0, 0), (1, 0)))
    # Old/ref logprobs off-policy so that every branch (clip high/low, dual clip) is exercised.
    batch["old_logprobs"] = (logp + rng.normal(0.0, 0.5, size=(b, T))).astype(np.float32)
    batch["ref_logprobs"] = (logp + rng.normal(0.0, 0.3, size=(b, T))).astype(np.float32)
    return batch


def _torch_objective(model, batch, rl):
    out = model(
        input_ids=torch.from_numpy(batch["tokens"]).long(),
        attention_mask=torch.from_numpy(batch["mask"]).long(),
        position_ids=torch.from_numpy(batch["positions"]).long(),
    )
    logits = out.logits.float()[:, :-1]
    log_probs = torch.log_softmax(logits, dim=-1)
    tokens = torch.from_numpy(batch["tokens"]).long()
    logp = log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    mask, adv, old, ref = (
        torch.tensor(batch[k])[:, 1:] for k in ("loss_mask", "advantages", "old_logprobs", "ref_logprobs")
    )
    ratio = torch.exp(torch.clamp(logp - old, -20, 20))
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1 - rl.clip_eps_low, 1 + rl.clip_eps_high)
    pg = torch.maximum(pg1, pg2)
    pg = torch.where(adv < 0, torch.minimum(pg, -adv * rl.dual_clip), pg)
    d = ref - logp
    k3 = torch.clamp(torch.exp(d) - d - 1, -10, 10)
    n = mask.sum()
    token_mean = lambda x: (x * mask).sum() / n
    loss = token_mean(pg) - rl.entropy_coef * token_mean(entropy) + rl.kl_coef * token_mean(k3)
    clipped = ((pg2 > pg1) & (mask > 0)).sum().item()
    dual = ((torch.maximum(pg1, pg2) > -adv * rl.dual_clip) & (adv < 0) & (mask > 0)).sum().item()
    return loss, clipped, dual


@pytest.fixture(scope="module")
def setup():
    # Tied embeddings: the embedding's gradient sums the lookup and the output-head paths.
    cfg, model, params = _model_and_params(tie=True)
    return cfg, model, params, _batch(cfg, model)


def test_token_logprobs_and_entropy_match_torch(setup):
    cfg, model, params, batch = setup
    with torch.no_grad():
        logits = model(
            input_ids=torch.from_numpy(batch["tokens"]).long(),
            attention_mask=torch.from_numpy(batch["mask"]).long(),
            position_ids=torch.from_numpy(batch["positions"]).long(),
        ).logits[:, :-1] / 0.7
    log_probs = torch.log_softmax(logits, -1)
    want_lp = log_probs.gather(-1, torch.from_numpy(batch["tokens"]).long()[:, 1:, None])[..., 0].numpy()
    want_ent = -(log_probs.exp() * log_probs).sum(-1).numpy()
    fn = jax.jit(lambda p, b: token_logprobs_and_entropy(p, b, cfg, jnp.float32, temperature=0.7))
    got_lp, got_ent = fn(params, {k: batch[k] for k in ("tokens", "positions", "mask")})
    real = batch["mask"][:, 1:] == 1  # left-padding positions have no defined logprob
    np.testing.assert_array_equal(np.asarray(got_lp)[:, 0], 0.0)
    np.testing.assert_allclose(np.asarray(got_lp)[:, 1:][real], want_lp[real], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got_ent)[:, 1:][real], want_ent[real], rtol=1e-5, atol=1e-5)


def test_loss_and_grads_match_torch(setup):
    cfg, model, params, batch = setup
    rl = RLSection(entropy_coef=0.01, kl_coef=0.05, kl_type="k3", micro_batch_size=4, old_logprobs="batch")

    loss_t, clipped, dual = _torch_objective(model, batch, rl)
    assert clipped > 0 and dual > 0, "the batch must exercise the clip and the dual clip"
    model.zero_grad()
    loss_t.backward()
    grads_t = {name: p.grad.numpy() for name, p in model.named_parameters()}

    grads_fn = jax.jit(make_grad_fn(cfg, rl, compute_dtype=jnp.float32))
    grads, metrics = grads_fn(params, {k: jnp.asarray(v) for k, v in batch.items()})
    np.testing.assert_allclose(float(metrics["loss"]), loss_t.item(), rtol=1e-5, atol=1e-6)
    assert float(metrics["clip_frac"]) * float(metrics["tokens"]) == pytest.approx(clipped)
    assert float(metrics["dual_clip_frac"]) * float(metrics["tokens"]) == pytest.approx(dual)

    grads_hf = hf_from_params(cfg, jax.tree.map(np.asarray, grads))
    assert set(grads_hf) == set(grads_t)
    for name, g_t in grads_t.items():
        assert np.abs(g_t).max() > 0, name
        np.testing.assert_allclose(grads_hf[name], g_t, rtol=1e-4, atol=1e-6, err_msg=name)
