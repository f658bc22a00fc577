"""Advantage estimators for outcome rewards, selected by name (`config.rl.estimator`).

Every estimator has the signature

    estimator(rewards_b, response_mask_bt, group_ids_b, *, num_groups=None, **opts) -> adv_bt

- `rewards_b` float [B]: one scalar reward per sequence (outcome reward on its last token).
- `response_mask_bt` [B, T]: 1 on the tokens the policy generated (the tokens that get a loss).
- `group_ids_b` int [B] in `[0, num_groups)`: which group a sequence is normalised in
  (TRR++: its (role, task) pair, see `trrpp_group_id`; GRPO/RLOO: its prompt).
  `num_groups` must be static under `jit`; it defaults to B, which holds any ids in [0, B).
- Returns float32 [B, T]: the sequence's advantage on each of its response tokens, 0 elsewhere.

With γ = 1 and a reward only on the last token, every response token's return is the sequence
reward, so all estimators here are per-sequence numbers broadcast over the response tokens.
Group statistics use `jax.ops.segment_sum` so one call handles all groups inside `jit` (no
Python loop over groups). Formulas: docs/rl.md.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# The six TRR++ groups, in a fixed order so group ids mean the same thing everywhere.
ROLES = ("propose", "solve")
TASKS = ("abduction", "deduction", "induction")
NUM_TRRPP_GROUPS = len(ROLES) * len(TASKS)

WHITEN_EPS = 1e-8  # verl's masked_whiten: (x - mean) * rsqrt(var + 1e-8)
GRPO_EPS = 1e-6  # verl's GRPO: (r - mean) / (std + 1e-6)


def trrpp_group_id(role: str, task: str) -> int:
    """The TRR++ group id of a (role, task) pair: role-major over `ROLES` x `TASKS`."""
    if role not in ROLES or task not in TASKS:
        raise ValueError(f"unknown (role, task) pair ({role!r}, {task!r})")
    return ROLES.index(role) * len(TASKS) + TASKS.index(task)


# Estimators whose group is, in their usual sense, the completions of one prompt.
PER_PROMPT_ESTIMATORS = ("grpo", "rloo")


def update_group_ids(parts, estimator: str) -> list[int]:
    """Group id of every update row. `parts`: (role, task, rows, n_samples, padded_rows) per
    batch, in update order; rows i*n .. i*n+n-1 of a batch share prompt i, rows from `rows` to
    `padded_rows` are empty fill (no loss tokens, so no weight in any group).

    Every row's group is its (role, task) pair (ids 0-5, `trrpp_group_id`), except that under
    a per-prompt estimator (`grpo`, `rloo`) a prompt sampled more than once is a group of its
    own (ids from `NUM_TRRPP_GROUPS` on): a per-prompt baseline. Ids stay below
    `NUM_TRRPP_GROUPS + total rows`."""
    ids: list[int] = []
    next_id = NUM_TRRPP_GROUPS
    for role, task, rows, n, padded in parts:
        if n > 1 and estimator in PER_PROMPT_ESTIMATORS:
            own = [next_id + r // n for r in range(rows)]
            next_id += -(-rows // n)
            ids += own + [own[-1] if own else trrpp_group_id(role, task)] * (padded - rows)
        else:
            ids += [trrpp_group_id(role, task)] * padded
    return ids


def _segment_sum(x_b: jax.Array, group_ids_b: jax.Array, num_groups: int) -> jax.Array:
    return jax.ops.segment_sum(x_b, group_ids_b, num_segments=num_groups)


def _has_tokens(response_mask_bt: jax.Array) -> jax.Array:
    """float32 [B]: 1 for rows with at least one response (loss) token."""
    return (jnp.sum(jnp.asarray(response_mask_bt, jnp.float32), axis=-1) > 0).astype(jnp.float32)


def _broadcast(adv_b: jax.Array, response_mask_bt: jax.Array) -> jax.Array:
    mask_bt = response_mask_bt.astype(jnp.float32)
    return adv_b[:, None] * mask_bt


def _centered(rewards_b, lengths_b, group_ids_b, num_groups, mean_g):
    """R - mean of the group, exactly 0 in a group whose rewards are all equal: the rounded mean
    of inexact rewards (0.3, a diversity bonus) would otherwise leave ~1e-8, which the whitening's
    rsqrt(var + 1e-8) turns into a spurious ~1e-4 advantage."""
    has_tokens_b = lengths_b > 0
    hi_g = jax.ops.segment_max(jnp.where(has_tokens_b, rewards_b, -jnp.inf), group_ids_b, num_segments=num_groups)
    lo_g = jax.ops.segment_min(jnp.where(has_tokens_b, rewards_b, jnp.inf), group_ids_b, num_segments=num_groups)
    constant_b = (hi_g == lo_g)[group_ids_b]
    return jnp.where(constant_b, 0.0, rewards_b - mean_g[group_ids_b])


def _whiten_token_weighted(rewards_b, lengths_b, group_ids_b, num_groups):
    """Whitening over every response token of the group (verl `masked_whiten`, unbiased var).

    Each sequence contributes its reward once per response token, so the statistics are
    length-weighted: mu = sum L R / sum L, var = [sum L (R - mu)^2 / sum L] * N / (N - 1), N = sum L.
    """
    n_tok_g = _segment_sum(lengths_b, group_ids_b, num_groups)
    safe_n_g = jnp.maximum(n_tok_g, 1.0)
    mean_g = _segment_sum(lengths_b * rewards_b, group_ids_b, num_groups) / safe_n_g
    centered_b = _centered(rewards_b, lengths_b, group_ids_b, num_groups, mean_g)
    var_g = _segment_sum(lengths_b * centered_b**2, group_ids_b, num_groups) / safe_n_g
    # Bessel factor over tokens; a group with a single token has var 0 (and a zero advantage).
    bessel_g = jnp.where(n_tok_g > 1, n_tok_g / jnp.maximum(n_tok_g - 1.0, 1.0), 0.0)
    var_g = var_g * bessel_g
    return centered_b * jax.lax.rsqrt(var_g[group_ids_b] + WHITEN_EPS)


def _whiten_per_sequence(rewards_b, lengths_b, group_ids_b, num_groups):
    """Paper Eq. 8: mean and population std over the group's sequences (each counted once)."""
    has_tokens_b = (lengths_b > 0).astype(jnp.float32)
    n_seq_g = jnp.maximum(_segment_sum(has_tokens_b, group_ids_b, num_groups), 1.0)
    mean_g = _segment_sum(has_tokens_b * rewards_b, group_ids_b, num_groups) / n_seq_g
    centered_b = _centered(rewards_b, lengths_b, group_ids_b, num_groups, mean_g)
    var_g = _segment_sum(has_tokens_b * centered_b**2, group_ids_b, num_groups) / n_seq_g
    return centered_b * jax.lax.rsqrt(var_g[group_ids_b] + WHITEN_EPS)


def trr_plus_plus(
    rewards_b,
    response_mask_bt,
    group_ids_b,
    *,
    num_groups: int | None = None,
    whiten_stats: str = "token",
) -> jax.Array:
    """Task-Relative REINFORCE++: REINFORCE++ whitening applied separately to each group.

    `whiten_stats="token"` reproduces the reference (statistics over tokens, Bessel-corrected);
    `"sequence"` is the paper's Eq. 8 reading (per-sequence mean and population std).
    """
    rewards_b = jnp.asarray(rewards_b, jnp.float32)
    group_ids_b = jnp.asarray(group_ids_b, jnp.int32)
    num_groups = rewards_b.shape[0] if num_groups is None else num_groups
    lengths_b = jnp.sum(response_mask_bt.astype(jnp.float32), axis=-1)
    if whiten_stats == "token":
        adv_b = _whiten_token_weighted(rewards_b, lengths_b, group_ids_b, num_groups)
    elif whiten_stats == "sequence":
        adv_b = _whiten_per_sequence(rewards_b, lengths_b, group_ids_b, num_groups)
    else:
        raise ValueError(f"whiten_stats must be 'token' or 'sequence', got {whiten_stats!r}")
    return _broadcast(adv_b, response_mask_bt)


def reinforce_plus_plus(
    rewards_b, response_mask_bt, group_ids_b=None, *, num_groups=None, whiten_stats: str = "token"
) -> jax.Array:
    """REINFORCE++ (verl): one whitening over the whole batch; group ids are ignored."""
    del group_ids_b, num_groups
    rewards_b = jnp.asarray(rewards_b, jnp.float32)
    one_group_b = jnp.zeros(rewards_b.shape, jnp.int32)
    return trr_plus_plus(rewards_b, response_mask_bt, one_group_b, num_groups=1, whiten_stats=whiten_stats)


def grpo(
    rewards_b,
    response_mask_bt,
    group_ids_b,
    *,
    num_groups: int | None = None,
    normalize_by_std: bool = True,
) -> jax.Array:
    """GRPO: A = (R - mean_g) / (std_g + 1e-6) over the sequences sharing a prompt.

    std is the unbiased (n - 1) sample std, as torch.std in verl. A group of one sequence has no
    baseline: verl uses mean 0 and std 1 there (A = R), and so do we.
    """
    rewards_b = jnp.asarray(rewards_b, jnp.float32)
    group_ids_b = jnp.asarray(group_ids_b, jnp.int32)
    num_groups = rewards_b.shape[0] if num_groups is None else num_groups
    # Rows without loss tokens (unjudged, padding) take no part in the statistics.
    counted_b = _has_tokens(response_mask_bt)
    n_g = _segment_sum(counted_b, group_ids_b, num_groups)
    mean_g = _segment_sum(counted_b * rewards_b, group_ids_b, num_groups) / jnp.maximum(n_g, 1.0)
    singleton_b = n_g[group_ids_b] <= 1
    centered_b = jnp.where(singleton_b, rewards_b, _centered(rewards_b, counted_b, group_ids_b, num_groups, mean_g))
    sq_dev_b = jnp.where(singleton_b, 0.0, counted_b * centered_b**2)
    var_g = _segment_sum(sq_dev_b, group_ids_b, num_groups) / jnp.maximum(n_g - 1.0, 1.0)
    std_b = jnp.where(singleton_b, 1.0, jnp.sqrt(var_g[group_ids_b]))
    adv_b = centered_b / (std_b + GRPO_EPS) if normalize_by_std else centered_b
    return _broadcast(adv_b, response_mask_bt)


def rloo(rewards_b, response_mask_bt, group_ids_b, *, num_groups: int | None = None) -> jax.Array:
    """RLOO: A_i = R_i - mean of the other sequences of i's group = n/(n-1) (R_i - mean_g).

    A group of one sequence has no leave-one-out baseline; as in verl its advantage is R.
    """
    rewards_b = jnp.asarray(rewards_b, jnp.float32)
    group_ids_b = jnp.asarray(group_ids_b, jnp.int32)
    num_groups = rewards_b.shape[0] if num_groups is None else num_groups
    counted_b = _has_tokens(response_mask_bt)  # rows without loss tokens take no part
    n_g = _segment_sum(counted_b, group_ids_b, num_groups)
    mean_g = _segment_sum(counted_b * rewards_b, group_ids_b, num_groups) / jnp.maximum(n_g, 1.0)
    n_b = n_g[group_ids_b]
    centered_b = _centered(rewards_b, counted_b, group_ids_b, num_groups, mean_g)
    adv_b = jnp.where(n_b > 1, n_b / jnp.maximum(n_b - 1.0, 1.0) * centered_b, rewards_b)
    return _broadcast(adv_b, response_mask_bt)


REGISTRY: dict[str, Callable[..., jax.Array]] = {
    "trr++": trr_plus_plus,
    "reinforce++": reinforce_plus_plus,
    "grpo": grpo,
    "rloo": rloo,
}


_USES_WHITEN_STATS = ("trr++", "reinforce++")


def compute_advantages(
    rl_cfg, rewards_b, response_mask_bt, group_ids_b, *, num_groups: int | None = None
) -> jax.Array:
    """Run the estimator named by `rl_cfg.estimator` (a `config.RLSection`) with its options."""
    name = rl_cfg.estimator
    if name not in REGISTRY:
        raise ValueError(f"unknown advantage estimator {name!r}; choose one of {sorted(REGISTRY)}")
    opts = {"whiten_stats": rl_cfg.whiten_stats} if name in _USES_WHITEN_STATS else {}
    return REGISTRY[name](rewards_b, response_mask_bt, group_ids_b, num_groups=num_groups, **opts)
