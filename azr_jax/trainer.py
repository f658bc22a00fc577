"""The self-play loop (AZR_SPEC §1.5): orchestration only; the maths lives in the packages it calls.

One step, for each task type t in `azr.task_types` (reference order: abduction, deduction,
induction), with buffers as of the end of the previous step (`azr.solver_task_lag`):

    propose/t: K references (or one program) ─► prompts ─► sample ─► validate in the sandbox
    solve/t:   tasks from the buffers ─────────► prompts ─► sample ─► score in the sandbox
    valid proposals ─► N solver prompts each ─► sample at `azr.learnability_temperature` ─► score
                     ─► proposer rewards (learnability); valid tasks grow the buffers
    six (role, task) batches ─► TRR++ advantages (one group per pair) ─► one update

Host work (sandbox execution and scoring) runs on a worker thread that drives the sandbox's
process pool, while the main thread keeps the device busy with the next generation; results are
collected in a fixed order, so overlap never changes what is computed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from azr_jax import distributed
from azr_jax.checkpoint import Checkpoints, abstract_like
from azr_jax.data import PipelineState, build_prompt_batch, stream_seed
from azr_jax.errors import UserError
from azr_jax.jsonl import write_text_atomically
from azr_jax.metrics import MetricsWriter, has_records_after, run_output
from azr_jax.stopping import StopFlag
from azr_jax.train_setup import (
    Policy, SELFPLAY_ROLES, check_inputs, check_workdir, load_policy, task_sampler, warn_ineffective_settings,
    warn_rollouts_past_context,
)

log = logging.getLogger("azr_jax.trainer")

# Signature of the generation function (the real one is `azr_jax.sampling.generate`); tests may
# pass a scripted one to `train(generate_fn=...)` to force, e.g., valid proposals.
GenerateFn = Callable[..., Any]


@dataclasses.dataclass
class RoleBatch:
    """One (role, task) generation of a step and, once scored, its rewards."""

    role: str
    task: str
    prompt_ids: list[list[int]]
    jobs: list[dict]
    completions: Any = None  # sampling.Completions
    texts: list[str] = dataclasses.field(default_factory=list)
    scored: list[dict] = dataclasses.field(default_factory=list)
    rewards: list[float] = dataclasses.field(default_factory=list)
    solve_rates: list[float | None] = dataclasses.field(default_factory=list)
    n_samples: int = 1  # completions per prompt (rows i*n .. i*n+n-1 belong to prompt i)
    # propose batches with `azr.train_learnability_rollouts`: the solver rollouts on their valid tasks
    learn_batch: "RoleBatch | None" = None


class SelfPlay:
    """The loop's state between steps and the functions that advance it."""

    def __init__(self, cfg, policy: Policy, sandbox, buffers, *, generate_fn: GenerateFn):
        from azr_jax.azr.prompts import Prompts
        from azr_jax.rl.bucketed import make_bucketed_train_step
        from azr_jax.rl.update import make_train_step
        from azr_jax.sampling import SamplingSettings

        self.cfg = cfg
        self.policy = policy
        self.sandbox = sandbox
        self.buffers = buffers
        self.generate_fn = generate_fn
        self.prompts = Prompts.from_config(cfg.azr)
        self.host_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="azr-host")
        stop_ids = policy.stop_ids
        self.rollout_settings = SamplingSettings.from_section(cfg.sampling, eos_ids=stop_ids)
        self.learnability_settings = dataclasses.replace(
            self.rollout_settings, temperature=cfg.azr.learnability_temperature)
        step_kwargs = dict(total_steps=cfg.train.steps, mesh=policy.mesh, rules=policy.rules,
                           compute_dtype=policy.compute_dtype, remat=cfg.model.remat,
                           temperature=cfg.sampling.temperature)
        if cfg.rl.pack_by_length:
            s = cfg.sampling
            buckets = sorted(set(s.length_buckets) | {s.max_prompt_len + s.max_response_len})
            self.train_step = make_bucketed_train_step(policy.config, cfg.rl, cfg.optim, length_buckets=buckets,
                                                       put_rows=policy.put_batch, **step_kwargs)
        else:
            self.train_step = make_train_step(policy.config, cfg.rl, cfg.optim, **step_kwargs)
        # rl.kl_coef > 0: the starting policy, frozen. The loaded weights themselves: the update
        # donates only the train state, which holds its own copy.
        self.ref_params = policy.params if cfg.rl.kl_coef > 0 else None
        self.base_key = jax.random.key(cfg.train.seed)
        self.timers: dict[str, float] = {}
        self.generated_tokens = 0  # this step's sampled tokens, learnability rollouts included
        self.learnability_sandbox_errors = 0

    @property
    def length_buckets(self) -> list[int]:
        return rollout_length_buckets(self.cfg.sampling)

    # ------------------------------------------------------------------ device side

    def _generate(self, params, prompt_ids, key, settings, n_samples=1):
        t0 = time.perf_counter()
        completions = self.generate_fn(
            params, self.policy.config, prompt_ids, key, settings, n_samples=n_samples, mesh=self.policy.mesh,
            rules=self.policy.rules, compute_dtype=self.policy.compute_dtype, pad_id=self.policy.pad_id,
            length_buckets=self.length_buckets, max_rows=self.cfg.sampling.max_rows,
            prefill_chunk=self.cfg.sampling.prefill_chunk)
        self._add_time("generate_s", time.perf_counter() - t0)
        self.generated_tokens += int(np.asarray(completions.lengths).sum())  # learnability rollouts too
        return completions

    def _add_time(self, name: str, seconds: float) -> None:
        self.timers[name] = self.timers.get(name, 0.0) + seconds

    def _collect(self, future, n_items: int):
        """Wait for a host job, then share results across processes (collectives stay on this thread).

        A job that failed on one process fails on all of them together: the others would wait
        in the gather for a share that never comes."""
        t0 = time.perf_counter()
        if jax.process_count() == 1:
            mine, seconds = future.result()
        else:
            try:
                mine, seconds = future.result()
                error = None
            except Exception as e:  # noqa: BLE001 - any failure is shared, then raised
                mine, seconds, error = [], 0.0, e
        self._add_time("host_idle_s", time.perf_counter() - t0)
        self._add_time("execute_s", seconds)
        if jax.process_count() == 1:
            return mine
        return distributed.gather_shares(mine, error, n_items)

    def _submit(self, records: list[dict], cfg=None):
        """Score this process's share of `records` on the host thread (sandbox process pool)."""
        from azr_jax.azr.scoring import score_records

        share = distributed.local_share(records)
        cfg = cfg or self.cfg

        def job():
            t0 = time.perf_counter()
            out = score_records(share, cfg, self.sandbox) if share else []
            return out, time.perf_counter() - t0

        return self.host_pool.submit(job)

    # ------------------------------------------------------------------ seeding phase

    def seed_buffers(self, params, *, triplets: bool, induction: bool) -> dict:
        """The seeding phase (AZR_SPEC §1.3): propose-only rounds, no update, before step 1.

        `triplets`: abduction and deduction proposals (references drawn from the seed so far)
        until `azr.seed_size` distinct triplets, each added to both buffers; `induction`: induction
        proposals over the seed programs until the induction buffer holds `azr.seed_size` tasks.
        Programs are cleaned first (`azr.clean_programs`, as the reference's seeding scripts do).
        Returns what happened per phase: rounds, proposals, valid, added, seconds.
        """
        target = self.cfg.azr.seed_size
        scoring_cfg = dataclasses.replace(self.cfg, azr=dataclasses.replace(self.cfg.azr, clean_programs=True))
        key = jax.random.fold_in(self.base_key, 0)  # steps fold in 1, 2, ...: no collision
        report = {}
        phases = []
        if triplets:
            phases.append(("triplets", ("abduction", "deduction"), "deduction"))
        if induction:
            phases.append(("induction", ("induction",), "induction"))
        for phase, (name, tasks, counted) in enumerate(phases):
            phase_key = jax.random.fold_in(key, phase)  # the phases must not share sampling noise
            t0 = time.perf_counter()
            stats = {"rounds": 0, "proposals": 0, "valid": 0, "added": 0}
            while len(self.buffers[counted]) < target and stats["rounds"] < self.cfg.azr.seed_max_rounds:
                r = stats["rounds"]
                for k, task in enumerate(tasks):
                    rb = self.build_batch("propose", task, 0, f"seed/{name}/{r}/{task}")
                    rb.completions = self._generate(params, rb.prompt_ids, jax.random.fold_in(phase_key, 2 * r + k),
                                                    self.rollout_settings)
                    rb.texts = self.policy.decode_all(rb.completions)
                    scored = self._collect(self._submit(self._records(rb, 0), scoring_cfg), len(rb.jobs))
                    stats["proposals"] += len(scored)
                    for s in scored:
                        if not s["valid"]:
                            continue
                        stats["valid"] += 1
                        if len(self.buffers[counted]) >= target:
                            continue
                        entry = _task_record(s["problem"])
                        added = [self.buffers[t].add(entry, 0) for t in
                                 (("deduction", "abduction") if name == "triplets" else ("induction",))]
                        stats["added"] += int(added[0])
                stats["rounds"] += 1
                log.info("seeding %s: round %d, %d/%d seed tasks (%d valid of %d proposals so far)", name,
                         stats["rounds"], len(self.buffers[counted]), target, stats["valid"], stats["proposals"])
            stats["seconds"] = time.perf_counter() - t0
            stats["size"] = len(self.buffers[counted])
            if stats["size"] < target:
                log.warning("seeding %s stopped after azr.seed_max_rounds=%d rounds with %d of %d seed tasks; "
                            "self-play starts from these", name, stats["rounds"], stats["size"], target)
            report[name] = stats
        return report

    # ------------------------------------------------------------------ one step

    def build_batch(self, role: str, task: str, step: int, stream: str) -> RoleBatch:
        """Prompts of one (role, task) batch from the buffers (Grain pipeline)."""
        seed = stream_seed(self.cfg.train.seed, step, stream)
        pick = task_sampler(self.buffers, role, task, self.cfg.azr, step, seed)
        render = (lambda job: self.prompts.propose(task, job.get("references"), job.get("program"))) \
            if role == "propose" else (lambda job: self.prompts.solve(task, job["problem"]))
        batch = build_prompt_batch(
            pick, render, self.policy.tokenizer.encode, batch_size=self.cfg.azr.batch_size,
            max_prompt_len=self.cfg.sampling.max_prompt_len, seed=seed,
            pad_id=self.policy.pad_id, length_buckets=self.length_buckets,
            what=f"{role}/{task} prompts")
        return RoleBatch(role, task, batch.prompt_ids, batch.jobs)

    def _records(self, rb: RoleBatch, step: int) -> list[dict]:
        out = []
        n = rb.n_samples
        for row, text in enumerate(rb.texts):
            i, job = row // n, rb.jobs[row // n]
            suffix = f"/{row % n}" if n > 1 else ""
            rec = {"id": f"{step}/{rb.role}/{rb.task}/{i}{suffix}", "role": rb.role, "task": rb.task, "response": text}
            if rb.role == "solve":
                rec["problem"] = _task_record(job["problem"])
            elif rb.task == "induction":
                rec["problem"] = {"program": job["program"]["program"], "imports": job["program"].get("imports", [])}
            out.append(rec)
        return out

    def step(self, state, step: int) -> tuple[Any, dict, list[dict]]:
        """Run one self-play step; returns the new train state, the metrics record and the rollouts."""
        cfg = self.cfg
        self.timers = {}
        self.generated_tokens = 0
        self.learnability_sandbox_errors = 0
        t_step = time.perf_counter()
        step_key = jax.random.fold_in(self.base_key, step)
        params = state.params
        tasks = list(cfg.azr.task_types)

        # Phase 1: the six generations, in reference order; host scoring overlaps the next one.
        batches: dict[tuple[str, str], RoleBatch] = {}
        pending: dict[tuple[str, str], Any] = {}
        for k, (role, task) in enumerate(SELFPLAY_ROLES(tasks)):
            if role == "propose" and not cfg.azr.propose:
                continue
            if role == "solve" and not cfg.azr.solver_task_lag:
                self._finish_proposals(batches, pending, step, step_key, params, task)
            rb = self.build_batch(role, task, step, f"{role}/{task}")
            rb.n_samples = cfg.azr.solver_samples if role == "solve" else 1
            rb.completions = self._generate(params, rb.prompt_ids, jax.random.fold_in(step_key, k),
                                            self.rollout_settings, n_samples=rb.n_samples)
            rb.texts = self.policy.decode_all(rb.completions)
            batches[(role, task)] = rb
            pending[(role, task)] = self._submit(self._records(rb, step))

        # Phase 2: solver scores, then learnability rollouts for every valid proposal.
        for task in tasks:
            rb = batches[("solve", task)]
            rb.scored = self._collect(pending.pop(("solve", task)), len(rb.texts))
            rb.rewards = [trained_reward(s) for s in rb.scored]
        for task in tasks:
            self._finish_proposals(batches, pending, step, step_key, params, task)

        # Phase 3: one update on the six batches (solver batches only in the solver-only ablation).
        ordered = [batches[rt] for rt in SELFPLAY_ROLES(tasks) if rt in batches]
        trained = [rb for rb in ordered if cfg.azr.train_propose or rb.role == "solve"]
        trained += [rb.learn_batch for rb in ordered if rb.learn_batch is not None]
        update_metrics = self._update(state, trained)
        state = update_metrics.pop("_state")

        record = self._step_record(step, ordered, update_metrics, time.perf_counter() - t_step)
        return state, record, self._rollouts(ordered, step)

    def _rollouts(self, ordered: list[RoleBatch], step: int) -> list[dict]:
        """Audit records: the score-schema input (proposals with their solver responses, so
        `azr-jax score` reproduces the reward) plus the verdict and the reward trained on."""
        out = []
        for rb in ordered:
            for row, (rec, scored, reward) in enumerate(zip(self._records(rb, step), rb.scored, rb.rewards)):
                references = rb.jobs[row // rb.n_samples].get("references")
                if rb.role == "propose" and references is not None:  # what the proposer was shown
                    rec["references"] = [_task_record(r) for r in references]
                if scored.get("solver_responses") is not None:
                    rec["solver_responses"] = scored["solver_responses"]
                rec["scored"] = {k: scored.get(k) for k in ("format_ok", "valid", "reason", "problem", "accuracy")}
                for extra in ("diversity_bonus", "solver_prompt_too_long"):
                    if extra in scored:
                        rec["scored"][extra] = scored[extra]
                # A row the update masks (its reward depended on an unchecked result) has none.
                rec["scored"]["reward"] = None if _reward_unknown(scored) else reward
                out.append(rec)
        return out

    def _finish_proposals(self, batches, pending, step, step_key, params, task) -> None:
        """Validate proposals of `task`, run the learnability rollouts, set proposer rewards and
        add valid tasks to the buffers (once per step and task)."""
        from azr_jax.azr.rewards import judged_solve_rate, proposer_reward

        rb = batches.get(("propose", task))
        if rb is None or rb.scored:
            return
        cfg = self.cfg
        validated = self._collect(pending.pop(("propose", task)), len(rb.jobs))
        valid_idx = [i for i, s in enumerate(validated) if s["valid"]]
        rates: list[float | None] = [None] * len(validated)
        records = {i: _task_record(validated[i]["problem"]) for i in valid_idx}
        encoded = {i: self.policy.tokenizer.encode(self.prompts.solve(task, records[i])) for i in valid_idx}
        # A valid task whose solver prompt is over sampling.max_prompt_len gets solve rate 0 (so
        # the boundary reward), as in the reference, and no rollouts; unlike the reference it stays
        # out of the buffer, where no solver batch could use it (docs/deviations.md).
        too_long = {i for i in valid_idx if len(encoded[i]) > cfg.sampling.max_prompt_len}
        for i in too_long:
            rates[i] = 0.0
            validated[i] = dict(validated[i], accuracy=0.0, solver_prompt_too_long=True)
        valid_idx = [i for i in valid_idx if i not in too_long]
        if valid_idx:
            problems = [records[i] for i in valid_idx]
            prompt_ids = [encoded[i] for i in valid_idx]
            n = cfg.azr.n_solver_samples
            key = jax.random.fold_in(jax.random.fold_in(step_key, 1000), cfg.azr.task_types.index(task))
            comp = self._generate(params, prompt_ids, key, self.learnability_settings, n_samples=n)
            texts = self.policy.decode_all(comp)
            solve_records = [{"id": f"{step}/learn/{task}/{i}/{j}", "role": "solve", "task": task,
                              "response": texts[k * n + j], "problem": problems[k]}
                             for k, i in enumerate(valid_idx) for j in range(n)]
            scored = self._collect(self._submit(solve_records), len(solve_records))
            self.learnability_sandbox_errors += sum(s.get("reason") == "sandbox_error" for s in scored)
            for k, i in enumerate(valid_idx):
                rates[i] = judged_solve_rate(scored[k * n:(k + 1) * n])
                validated[i] = dict(validated[i], accuracy=rates[i],
                                    solver_responses=texts[k * n:(k + 1) * n])
                if rates[i] is None and validated[i]["format_ok"]:  # no rollout judged: reward unknown
                    validated[i]["reason"] = "sandbox_error"
            if cfg.azr.train_learnability_rollouts:
                # Deviation (off by default): these solver samples join the solve/<task> group
                # (under grpo/rloo each proposal's samples are a group of their own: update_group_ids).
                rb.learn_batch = RoleBatch("solve", task, prompt_ids, [{"problem": p} for p in problems],
                                           completions=comp, texts=texts, scored=scored,
                                           rewards=[trained_reward(s) for s in scored], n_samples=n)
        rewards = [proposer_reward(s["valid"], s["format_ok"], rates[i], cfg.azr.boundary_reward)
                   for i, s in enumerate(validated)]
        if cfg.azr.answer_diversity_coef > 0 and valid_idx:
            self._add_diversity_bonus(task, validated, rewards, rates, valid_idx)
        rb.scored = validated
        rb.solve_rates = rates
        rb.rewards = [trained_reward(dict(s, reward=rewards[i])) for i, s in enumerate(validated)]
        for i in valid_idx:
            self.buffers[task].add(records[i], step)

    def _add_diversity_bonus(self, task, validated, rewards, rates, valid_idx) -> None:
        """Add the answer-diversity bonus to the positive rewards of the valid proposals (in place); the
        verdicts record it as `answer_diversity` / `diversity_bonus`, so an audit can subtract it."""
        from azr_jax.azr.rewards import answer_diversity, answer_key, diversity_bonus, task_answer

        azr = self.cfg.azr
        key = lambda problem: answer_key(task_answer(task, problem), azr.answer_diversity_level,  # noqa: E731
                                         arguments=task == "abduction")
        history = [key(e) for e in self.buffers[task].entries]
        answers = [key(validated[i]["problem"]) for i in valid_idx]
        for i, div in zip(valid_idx, answer_diversity(answers, history)):
            bonus = diversity_bonus(div, azr.answer_diversity_coef, azr.answer_diversity_max)
            validated[i] = dict(validated[i], answer_diversity=div, diversity_bonus=bonus)
            # As the reference's intrinsic terms: only on top of a positive learnability reward,
            # 0 < solve rate < 1 (not for boundary, badly formatted or unjudged proposals, even
            # where a positive `azr.boundary_reward` makes a boundary reward positive).
            learnable = rates[i] is not None and 0 < rates[i] < 1
            if learnable and rewards[i] is not None and rewards[i] > 0:
                rewards[i] += bonus
            else:
                validated[i]["diversity_bonus"] = 0.0

    def _update(self, state, ordered: list[RoleBatch]) -> dict:
        from azr_jax.data.pipeline import concat_rows, pad_rows
        from azr_jax.rl.advantages import update_group_ids
        from azr_jax.sampling import rollout_batch

        pad_id, micro, rl_cfg = self.policy.pad_id, self.cfg.rl.micro_batch_size, self.cfg.rl
        # The per-micro-batch token mean weighs blocks of `micro` rows, and each block must hold
        # one (role, task): empty rows fill each part's last block (a part's row count varies when
        # the learnability rollouts are trained on).
        block = micro if rl_cfg.loss_agg == "token-mean-per-micro-batch" else 1
        parts, rewards, unjudged, layout = [], [], [], []
        for rb in ordered:
            part = rollout_batch(rb.prompt_ids, rb.completions, rb.n_samples, pad_id=pad_id,
                                 length_buckets=self.length_buckets)
            rows = part["tokens"].shape[0]
            padded = rows + -rows % block
            parts.append(pad_rows(part, padded, pad_id=pad_id))
            rewards += list(rb.rewards) + [0.0] * (padded - rows)
            unjudged += list(sandbox_error_rows([rb])) + [False] * (padded - rows)
            layout.append((rb.role, rb.task, rows, rb.n_samples, padded))
        groups = update_group_ids(layout, rl_cfg.estimator)
        batch = concat_rows(parts, pad_id=pad_id)
        if not rl_cfg.pack_by_length:  # the padded layout splits the batch into whole micro-batches
            rows = batch["tokens"].shape[0]
            batch = pad_rows(batch, rows + -rows % micro, pad_id=pad_id)
            rewards += [0.0] * (batch["tokens"].shape[0] - rows)
            groups += [groups[-1]] * (batch["tokens"].shape[0] - rows)
        # Rows the sandbox failed to judge carry no loss and no weight in their group's statistics.
        batch["loss_mask"][np.flatnonzero(unjudged)] = 0
        rewards = np.asarray(rewards, np.float32)
        groups = np.asarray(groups, np.int32)
        # Counted on the host batch: on several processes the placed arrays are not fully addressable.
        row_lengths = batch["mask"].sum(axis=1)
        t0 = time.perf_counter()
        if self.cfg.rl.pack_by_length:
            # Host arrays in, host arrays out: the bucketed step packs and places them itself.
            batch["advantages"] = np.asarray(self.policy.advantages_fn(rewards, batch["loss_mask"], groups))
        else:
            batch = {k: self.policy.put_batch(v) for k, v in batch.items()}
            batch["advantages"] = self.policy.advantages_fn(
                self.policy.put_replicated(rewards), batch["loss_mask"], self.policy.put_replicated(groups))
            if self.ref_params is not None:
                batch["ref_logprobs"] = self._reference_logprobs(self.ref_params, batch)
        if self.ref_params is not None and self.cfg.rl.pack_by_length:
            new_state, metrics = self.train_step(state, batch, ref_params=self.ref_params)
        else:
            new_state, metrics = self.train_step(state, batch)
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        self._add_time("update_s", time.perf_counter() - t0)
        metrics["_state"] = new_state
        metrics["_row_lengths"] = row_lengths
        return metrics

    @functools.cached_property
    def _reference_logprobs(self):
        from azr_jax.rl.update import make_reference_logprobs

        return make_reference_logprobs(self.policy.config, self.cfg.rl, mesh=self.policy.mesh, rules=self.policy.rules,
                                       compute_dtype=self.policy.compute_dtype, temperature=self.cfg.sampling.temperature)

    def _step_record(self, step, ordered, upd, step_time) -> dict:
        rec: dict[str, Any] = {"step": step, **rollout_metrics(ordered, self.learnability_sandbox_errors)}
        if rec["sandbox_errors"]:
            log.warning("step %d: %d response(s) not judged because the sandbox broke (reason sandbox_error), "
                        "not because of the program; they are left out of the update; see the sandbox warnings "
                        "above", step, rec["sandbox_errors"])
        for task, size in self.buffers.sizes().items():
            rec[f"buffer/{task}"] = int(size)
        for k, v in upd.items():
            if not k.startswith("_"):
                rec[f"update/{k}"] = v
        if upd.get("skipped"):
            log.warning("step %d: the gradient was not finite (grad_norm %s); the update was skipped and the "
                        "parameters and optimizer state are unchanged", step, upd.get("grad_norm"))
        rec.update(self.timers)
        rec["step_time_s"] = step_time
        gen_s = self.timers.get("generate_s", 0.0)
        rec["generate_tokens_per_s"] = self.generated_tokens / gen_s if gen_s > 0 else None
        update_s = self.timers.get("update_s", 0.0)
        flops = update_flops(self.policy.config, upd["_row_lengths"], with_reference=self.ref_params is not None)
        rec["update_flops_per_s"] = flops / update_s if update_s > 0 else None
        if self.policy.peak_flops and update_s > 0:
            # Derived from wall time, hence the `_per_s` suffix: determinism checks skip it.
            rec["update_mfu_per_s"] = flops / update_s / self.policy.peak_flops
        return rec

    def close(self, cancel: bool = False) -> None:
        """`cancel` (a stop that does not wait): queued host jobs are dropped and the running
        one is not waited for; it ends once the sandbox, closed next, refuses its work."""
        self.host_pool.shutdown(wait=not cancel, cancel_futures=cancel)


def rollout_metrics(batches, learnability_sandbox_errors: int = 0) -> dict:
    """A step's metrics of its (role, task) batches (docs/training.md, "Metrics"): per batch the
    mean judged reward, valid and format rates, response length, mean accuracy of the rows that
    have one, and for proposers the answer diversity and the learnability (1 - r for a solve
    rate 0 < r < 1, else 0); then the mean over every judged reward of the step, and the rows
    (learnability rollouts included) the sandbox did not judge."""
    rec: dict[str, Any] = {}
    for rb in batches:
        name = f"{rb.role}/{rb.task}"
        judged = _judged_rewards(rb)
        rec[f"{name}/reward"] = float(np.mean(judged)) if judged else None
        rec[f"{name}/valid_rate"] = float(np.mean([bool(s["valid"]) for s in rb.scored]))
        rec[f"{name}/format_rate"] = float(np.mean([bool(s["format_ok"]) for s in rb.scored]))
        rec[f"{name}/response_len"] = float(np.asarray(rb.completions.lengths).mean())
        accs = [s["accuracy"] for s in rb.scored if s.get("accuracy") is not None]
        rec[f"{name}/accuracy"] = float(np.mean(accs)) if accs else None
        if rb.role == "propose":
            divs = [s["answer_diversity"] for s in rb.scored if "answer_diversity" in s]
            if divs:
                rec[f"{name}/answer_diversity"] = float(np.mean(divs))
            rates = [r for r in rb.solve_rates if r is not None]
            rec[f"{name}/learnability"] = (float(np.mean([1.0 - r if 0 < r < 1 else 0.0 for r in rates]))
                                           if rates else None)
    judged = [r for rb in batches for r in _judged_rewards(rb)]
    rec["reward/mean"] = float(np.mean(judged)) if judged else None  # pooled over rows, not a mean of means
    rec["sandbox_errors"] = sandbox_error_count(batches) + learnability_sandbox_errors
    return rec


def update_flops(config, row_lengths, *, with_reference: bool) -> int:
    """The model FLOPs of one update: forward + backward over each row's real tokens, attention
    over the row's own length (not the padded width, which charged every token of a short row
    the longest row's attention), plus, with a KL reference (rl.kl_coef > 0), the reference
    policy's forward pass over them (a third as much)."""
    flops = sum(config.flops_per_token(int(n)) * int(n) for n in row_lengths)
    return flops + flops // 3 if with_reference else flops


def sandbox_error_count(batches) -> int:
    """Records of this step that failed because the sandbox itself broke (never the program's fault)."""
    return sum(s.get("reason") == "sandbox_error" for rb in batches for s in rb.scored)


def rollout_length_buckets(sampling) -> list[int]:
    """The prompt/response buckets of the rollouts: `sampling.length_buckets` plus
    `max_prompt_len`, the longest prompt a batch holds. Without it the presets' 6144-token
    prompts padded to the next configured bucket, 8192: a third more KV cache and prefill."""
    return sorted(set(sampling.length_buckets) | {sampling.max_prompt_len})


def trained_reward(verdict: dict) -> float:
    """The reward a scored row enters the update with. A verdict without one (`reward: None`: the
    sandbox never judged it) gets 0.0, a placeholder: `sandbox_error_rows` masks such rows out."""
    if verdict["reward"] is not None:
        return float(verdict["reward"])
    if verdict.get("reason") != "sandbox_error":
        raise ValueError(f"a scored row without a reward that the update would not mask: {verdict}")
    return 0.0


def _judged_rewards(rb) -> list[float]:
    """The rewards of `rb` without the placeholders of rows the sandbox did not judge (metrics)."""
    return [r for r, s in zip(rb.rewards, rb.scored) if not _reward_unknown(s)]


def _reward_unknown(verdict: dict) -> bool:
    """An unchecked response (`reason: sandbox_error`) whose reward depended on the check; one
    whose format fails keeps its -1 (the scorer sets it), and is trained on."""
    return verdict.get("reason") == "sandbox_error" and verdict.get("reward") is None


def sandbox_error_rows(batches) -> np.ndarray:
    """bool [rows]: update rows (in `batches` order) whose verdict is `reason: sandbox_error`.

    Their reward says nothing about the response (the sandbox broke, not the program), so the
    update leaves them out instead of training on a -1 or a 0 the policy did not earn."""
    flags = []
    for rb in batches:
        if len(rb.scored) != len(rb.rewards):
            raise ValueError(f"{rb.role}/{rb.task}: {len(rb.scored)} verdicts for {len(rb.rewards)} rewards")
        flags += [_reward_unknown(s) for s in rb.scored]
    return np.asarray(flags, bool)


def _task_record(entry: dict) -> dict:
    """A buffer entry as a task record (DESIGN §3.3): without the buffer's bookkeeping."""
    return {k: v for k, v in entry.items() if k != "step"}


def _host_record(step: int, base_key, buffers, pipeline: PipelineState) -> dict:
    return {"step": step, "rng_key": np.asarray(jax.random.key_data(base_key)).tolist(),
            "buffers": buffers.to_state(), "pipeline": pipeline.to_json()}


# What the seeding phase writes into WORKDIR/seed/: its report, then the two reusable seed files.
SEEDING_FILES = ("seeding.json", "seed_triplets.jsonl", "seed_induction.jsonl")


def _seed(cfg, loop: SelfPlay, params, workdir: Path, primary: bool) -> None:
    """Run the seeding phase for each seed file not given; write the seeds as reusable files.
    Induction tasks are seeded only for a run that trains them; the triplets always (induction
    proposers draw their programs from the deduction and abduction buffers)."""
    triplets = not cfg.azr.seed_file
    induction = not cfg.azr.induction_seed_file and "induction" in cfg.azr.task_types
    if not (triplets or induction):
        return
    log.info("seeding phase: up to %d seed tasks per buffer before step 1 (azr.seed_size)", cfg.azr.seed_size)
    report = loop.seed_buffers(params, triplets=triplets, induction=induction)
    if not primary:
        return
    out = workdir / "seed"
    files = {"triplets": ("deduction", SEEDING_FILES[1]), "induction": ("induction", SEEDING_FILES[2])}
    with run_output(out):
        out.mkdir(parents=True, exist_ok=True)
        for name, stats in report.items():
            task, filename = files[name]
            lines = [json.dumps(_task_record(e), sort_keys=True) for e in loop.buffers[task].entries]
            (out / filename).write_text("".join(line + "\n" for line in lines))
            stats["file"] = filename  # beside seeding.json
        (out / SEEDING_FILES[0]).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    log.info("seeding done: %s (reuse them with azr.seed_file / azr.induction_seed_file)",
             ", ".join(f"{n} {s['size']} in {s['seconds']:.0f}s" for n, s in report.items()))


def _delete_newer_checkpoints(ckpts, step: int, stop: StopFlag) -> list[int]:
    """`ckpts.delete_after(step)`, not cut short by a stop signal (a kill half-way is caught by
    its rollback record instead). A signal that arrives meanwhile stops the run once the
    deletion is done."""
    stepping, after = stop.stepping, stop.after
    stop.stepping = True  # a first signal only sets `requested`
    if not stepping:  # the warning says what the stop waits for
        stop.after = "the newer checkpoints are deleted"
    try:
        dropped = ckpts.delete_after(step)
    finally:
        stop.stepping, stop.after = stepping, after
    if stop.requested and not stepping:
        log.warning("stopping now: a stop signal arrived while the newer checkpoints were deleted")
        raise KeyboardInterrupt
    return dropped


def _drop_outputs_after(workdir: Path, step: int, total_steps: int, seed_inputs: tuple = ()) -> dict:
    """Leave the outputs of a run that has done `step` steps and goes on to `total_steps`: the
    evaluations, audit files and summary of later steps belong to the continuation being
    replaced (at step 0: to a start that failed before its first checkpoint, its seed/ files
    too, except those `seed_inputs`, the seed files this start reads), and the plots would
    mix them in. A finished run given more steps keeps its last evaluation, as that step's, and
    gets back its `eval/*` metrics (returned: an in-run evaluation's keys, {} when there is none)."""
    from azr_jax.eval.summary import read_evaluation
    from azr_jax.metrics import step_files

    stale = [path for folder, suffix in (("eval", ".json"), ("rollouts", ".jsonl"), ("buffers", ".json"))
             for n, path in step_files(workdir / folder, suffix) if n > step]
    final, summary = workdir / "eval" / "final.json", workdir / "summary.json"
    kept: dict = {}
    if final.is_file():
        final_step = _final_evaluation_step(final, summary)
        if final_step == step and step < total_steps:
            result = read_evaluation(final)
            if result is not None:
                kept = _eval_metrics(result)
            final.replace(workdir / "eval" / f"step_{step}.json")
            log.warning("step %d was this run's last: its final evaluation is now eval/step_%d.json", step, step)
        elif final_step is None or final_step > step:
            stale.append(final)
    # Outputs past `step`: the plots drew them in. metrics.jsonl's later records too (a run without
    # evaluations or audit files there): MetricsWriter drops those records, the plots kept them.
    if any(path.exists() for path in stale) or has_records_after(workdir / "metrics.jsonl", step):
        stale += sorted((workdir / "plots").glob("*.png"))
    if summary.is_file() and step < total_steps:  # the run is not complete any more
        stale.append(summary)
    if step == 0:
        stale.append(workdir / "eval" / "base.json")
        # A failed start's seeding phase: a start given seed files, or one seeding only some
        # buffers, kept seed files and a seeding.json its own buffers never came from.
        reads = {Path(p).resolve() for p in seed_inputs if p}
        stale += [path for name in SEEDING_FILES if (path := workdir / "seed" / name).resolve() not in reads]
    stale = [path for path in stale if path.exists()]
    for path in stale:
        path.unlink()
    if stale:
        log.warning("%s at step %d: removed %s", "starting" if step == 0 else "resuming", step,
                    ", ".join(str(p.relative_to(workdir)) for p in stale))
    return kept


def _eval_metrics(result: dict) -> dict:
    """An evaluation's figures as a step record's `eval/*` keys."""
    return {"eval/solve_rate": result["solve_rate"],
            **{f"eval/solve_rate/{t}": v for t, v in result["per_task"].items()}}


def _final_evaluation_step(final: Path, summary: Path) -> int | None:
    """The step eval/final.json evaluated (its own `step`, else the summary's; None: unknown)."""
    for path in (final, summary):
        try:
            value = json.loads(path.read_text()).get("step")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, int):
            return value
    return None


def _evaluate(cfg, policy, params, sandbox, workdir: Path, name: str, primary: bool, step: int) -> dict:
    """Solve rate (greedy, or sampled as cfg.eval says) on the `cfg.eval` benchmark
    (azr_jax.eval) after `step` steps, saved as eval/<name>.json."""
    from azr_jax.eval.evaluate import evaluate

    t0 = time.perf_counter()
    how = "greedy" if cfg.eval.temperature <= 0 else f"{cfg.eval.samples} samples at T={cfg.eval.temperature}"
    log.info("evaluating (%s): %s solve rate on the %s benchmark ...", name, how, cfg.eval.benchmark)
    result = {**evaluate(params, policy, cfg, sandbox), "step": step}
    stderr = result.get("solve_rate_stderr")
    log.info("eval %s: solve rate %.3f%s (%s) in %.0fs%s", name, result["solve_rate"],
             f" ± {stderr:.3f} (standard error)" if stderr is not None else "",
             ", ".join(f"{t} {v:.3f}" for t, v in result["per_task"].items()), time.perf_counter() - t0,
             (f", {result['sandbox_errors']} answer(s) unchecked" if result.get("sandbox_errors") else "")
             + (f", {result['cut_off']} cut off at eval.max_response_len" if result.get("cut_off") else ""))
    if primary:
        with run_output(workdir / "eval" / f"{name}.json"):
            (workdir / "eval").mkdir(parents=True, exist_ok=True)
            # Atomic: the summary and the plots read it later, and a kill mid-write left a cut-off
            # file on which the next start's final summary crashed.
            write_text_atomically(workdir / "eval" / f"{name}.json", json.dumps(result, sort_keys=True) + "\n")
    return result


def train(cfg, workdir: str | Path, *, resume_step: int | None = None, progress: bool = True,
          generate_fn: GenerateFn | None = None, stop: StopFlag | None = None) -> dict:
    """Run (or resume) self-play training in `workdir`; returns {"status", "step", ...}.
    `stop`: a start-up `StopFlag` the caller installed before importing JAX (`azr-jax train`)."""
    from azr_jax.rl.update import check_micro_batch_split
    from azr_jax.sharding import make_mesh

    distributed.initialize_from_env()
    # Said before anything is written or loaded (the update step checks it again when it is built).
    check_micro_batch_split(cfg.rl.micro_batch_size, make_mesh(cfg.mesh.shape), cfg.mesh.rules)
    # Installed before the start-up, which can take minutes: on a multi-host run JAX's own
    # handler would otherwise swallow a SIGTERM that arrives then, and the run would go on.
    stop = stop or StopFlag(stepping=False)
    stop.install()  # again when the caller's: multi-host start-up may have replaced the handlers
    try:
        stop.check_startup()
        return _train(cfg, workdir, stop, resume_step=resume_step, progress=progress, generate_fn=generate_fn)
    finally:
        stop.restore()


def _start_state(cfg, policy, ckpts, stop: StopFlag, resume_step, seeded):
    """(train state, buffers, last step done): a fresh start (with the `seeded` buffers
    `check_inputs` read), or the checkpoint to resume from."""
    from azr_jax.azr.buffers import TaskBuffers

    # The listing is compared too: with --resume-step the step itself is the same everywhere, but a
    # process that lists other checkpoints would fail (or delete) alone while the others wait.
    restore_from, _ = distributed.agree(
        [resume_step if resume_step is not None else ckpts.latest_step(), ckpts.all_steps()],
        "the checkpoint step to resume from (null: a fresh start) and the checkpoints listed",
        "every process must see the same --workdir (shared storage, listed alike)")
    if resume_step is None and ckpts.pending_rollback() is not None:  # latest_step() returned it
        log.warning("an earlier --resume-step %d was interrupted while it deleted the newer checkpoints; "
                    "resuming from step %d and finishing the deletion", restore_from, restore_from)
    if restore_from is None:  # seed files are read on a fresh start only: a resume has its buffers
        return policy.init_state(cfg), seeded if seeded is not None else TaskBuffers.seeded(cfg.azr), 0
    # Restored straight into an abstract target: no throwaway state of the same size.
    target = abstract_like(policy.checkpoint_tree(policy.init_state(cfg, abstract=True)))
    restored, host = ckpts.restore(restore_from, target)
    state = policy.state_from_tree(restored)
    expected = np.asarray(jax.random.key_data(jax.random.key(cfg.train.seed))).tolist()
    if host.get("rng_key") != expected:
        raise UserError(f"checkpoint {restore_from} was written with another train.seed; use a new --workdir")
    buffers = TaskBuffers.from_state(host["buffers"])
    start = PipelineState.from_json(host["pipeline"]).next_step - 1
    log.info("resumed from checkpoint step %d", start)
    dropped = _delete_newer_checkpoints(ckpts, restore_from, stop)
    if dropped:
        log.warning("--resume-step %d: deleted the newer checkpoints %s of the abandoned continuation",
                    restore_from, dropped)
    return state, buffers, start


def _close_all(*closers) -> None:
    """Call every closer; then raise the first exception one of them raised, if any."""
    first = None
    for close in closers:
        try:
            close()
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the others ran
            first = first or e
    if first is not None:
        raise first


# What a run writes in (or appends to) in its workdir, beside the files it replaces whole.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "tensorboard", "rollouts", "buffers", "seed", "eval", "plots")


def _train(cfg, workdir, stop: StopFlag, *, resume_step, progress, generate_fn) -> dict:
    from azr_jax.jsonl import check_output_dir

    workdir = check_output_dir(workdir, "--workdir", inside=RUN_OUTPUTS)
    primary = jax.process_index() == 0
    # The inputs before anything is written or the weights are loaded. Each process reads its own
    # copy of them and its own listing of the workdir: where one fails, all stop here with one
    # error (distributed.together), instead of the others waiting at the next collective.
    seeded = distributed.together(lambda: check_inputs(cfg, workdir), "checking the inputs")
    lock = distributed.together(lambda: check_workdir(cfg, workdir, write=primary, resume_step=resume_step),
                                "checking the workdir", undo=lambda held: held is not None and held.release())
    try:  # process 0 holds the workdir's lock until the run ends, whichever way
        return _run(cfg, workdir, stop, seeded, primary, resume_step=resume_step, progress=progress,
                    generate_fn=generate_fn)
    finally:
        if lock is not None:
            lock.release()


def _run(cfg, workdir: Path, stop: StopFlag, seeded, primary: bool, *, resume_step, progress, generate_fn) -> dict:
    """The run in a checked and locked workdir: load, resume or start, seed, step, evaluate."""
    from azr_jax.sandbox import Sandbox
    from azr_jax.sandbox.isolation import readable_by_jobs

    warn_ineffective_settings(cfg)
    # Each process reads the weights and the tokenizer from its own disk too.
    policy = distributed.together(lambda: load_policy(cfg), "loading the model")
    warn_rollouts_past_context(cfg, policy.config)
    stop.check_startup()
    if generate_fn is None:
        from azr_jax.sampling import generate as generate_fn
    ckpts = Checkpoints(workdir / "checkpoints", keep=cfg.train.keep_checkpoints, writer=True)
    metrics = sandbox = loop = None
    try:  # from here on, whatever fails (start-up included) closes what was opened
        state, buffers, start = _start_state(cfg, policy, ckpts, stop, resume_step, seeded)
        stop.check_startup()
        with run_output(workdir):  # a read-only file in the way is one line, as a full disk later
            kept_eval = (_drop_outputs_after(workdir, start, cfg.train.steps,
                                             (cfg.azr.seed_file, cfg.azr.induction_seed_file))
                         if primary else {})
        metrics = MetricsWriter(workdir, total_steps=cfg.train.steps, start_step=start, enabled=primary,
                                progress=progress, progress_every=cfg.train.log_every)
        if kept_eval and cfg.train.eval_every > 0 and start % cfg.train.eval_every == 0:
            # A finished run given more steps: its last step gets the in-run evaluation's metrics
            # an uninterrupted run would have logged there.
            metrics.amend_step(start, kept_eval)
        sandbox = distributed.together(lambda: Sandbox(cfg.sandbox), "starting the sandbox", undo=Sandbox.close)
        if primary and readable_by_jobs(sandbox.plan, workdir):
            log.warning("sandbox isolation '%s' runs jobs as uids that can read %s, whose buffers/, rollouts/ "
                        "and checkpoints hold every task's gold outputs for a job to look up; `chmod o-rwx %s` "
                        "(or isolation bwrap) keeps them out", sandbox.plan.mode, workdir, workdir)
        loop = SelfPlay(cfg, policy, sandbox, buffers, generate_fn=generate_fn)
        # The train state holds its own float32 copy of the weights; the loaded ones stay alive
        # only as the KL reference (rl.kl_coef > 0), which the loop keeps itself.
        policy.params = None
        status, step = "completed", start
        eval_summary: dict = {}
        evaluating = cfg.train.eval_every >= 0  # -1: never evaluate
        if evaluating:
            from azr_jax.eval.benchmarks import load_benchmark

            load_benchmark(cfg.eval)  # a missing or malformed benchmark file is said now, not after seeding
        stop.check_startup()
        stop.stepping = True
        # A signal during the seeding phase or the base evaluation waits for step 1; one during
        # the final evaluation lets it finish, and the run completes.
        stop.after = f"step {start + 1}" if start < cfg.train.steps else "the final evaluation"
        if start == 0 and cfg.azr.seed_size:
            _seed(cfg, loop, state.params, workdir, primary)
        if evaluating and start == 0:
            _evaluate(cfg, policy, state.params, sandbox, workdir, "base", primary, 0)
        # A run stopped at its last step before the final evaluation (SIGTERM there, or killed
        # after the last save), now given more steps: that step is on the eval_every schedule but
        # was left to the final evaluation, which never ran (or eval_every changed on resume).
        # Evaluated now, as an uninterrupted run would have. Process 0 looks at the shared
        # workdir; every process evaluates.
        missed = (primary and evaluating and cfg.train.eval_every > 0 and 0 < start < cfg.train.steps
                  and start % cfg.train.eval_every == 0 and not (workdir / "eval" / f"step_{start}.json").exists())
        if distributed.allgather_json(bool(missed))[0]:
            result = _evaluate(cfg, policy, state.params, sandbox, workdir, f"step_{start}", primary, start)
            metrics.amend_step(start, _eval_metrics(result))
        stopping = False
        for step in range(start + 1, cfg.train.steps + 1):
            stop.after = "this step"
            ckpts.check()  # a failed asynchronous save stops the run now, not at the next save
            distributed.barrier(f"azr-step-{step}")
            state, record, rollouts = loop.step(state, step)
            last = step == cfg.train.steps
            if evaluating and cfg.train.eval_every > 0 and step % cfg.train.eval_every == 0 and not last:
                result = _evaluate(cfg, policy, state.params, sandbox, workdir, f"step_{step}", primary, step)
                record.update(_eval_metrics(result))
            metrics.write_step(record)
            if cfg.train.audit_every and (step % cfg.train.audit_every == 0 or step == 1):
                metrics.write_rollouts(step, rollouts)
                metrics.write_buffers(step, buffers.to_state(keys=False))
            # Read once, and agreed on by every process: a preemption signal reaches the hosts
            # at different times, and one that stopped alone would leave the others waiting
            # for it in the collective save or at the next step's barrier.
            stopping = any(distributed.allgather_json(stop.requested))
            if stopping and not stop.requested:
                log.warning("another process received a stop signal: stopping after this step")
            if step % cfg.train.save_every == 0 or last or stopping:
                pipeline = PipelineState(seed=cfg.train.seed, next_step=step + 1)
                ckpts.save(step, policy.checkpoint_tree(state), _host_record(step, loop.base_key, buffers, pipeline))
            if stopping:  # at the last step too: the next start runs the final evaluation
                status = "stopped"
                break
        if evaluating and status == "completed" and step == cfg.train.steps:
            stop.after = "the final evaluation"
            final = _evaluate(cfg, policy, state.params, sandbox, workdir, "final", primary, step)
            base_path = workdir / "eval" / "base.json"
            from azr_jax.eval.summary import read_evaluation, solve_rate_summary

            base = read_evaluation(base_path) if base_path.exists() else None
            if base is not None:
                eval_summary = solve_rate_summary(base, final)
            elif base_path.exists():
                log.warning("eval/base.json is damaged: summary.json gets no solve-rate comparison; "
                            "eval/final.json has the final evaluation")
            else:
                log.warning("no eval/base.json (the run started without evaluations): summary.json gets no "
                            "solve-rate comparison; eval/final.json has the final evaluation")
    finally:
        # Each closed even when one before it fails (a failed last save must not leave the
        # sandbox's processes running); the first failure is raised after all of them.
        _close_all(lambda: loop is not None and loop.close(cancel=stop.immediate),
                   ckpts.close,  # waits for the last asynchronous save
                   lambda: metrics is not None and metrics.close(),
                   lambda: sandbox is not None and sandbox.close(cancel=stop.immediate))
    # A checksum of the final params, identical on every process (multi-host runs compare it).
    digest = float(jax.jit(lambda p: sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in jax.tree.leaves(p)))(
        state.params))
    log.info("process %d: params digest %.12e", jax.process_index(), digest)
    summary = {"status": status, "step": step, "buffers": buffers.sizes(), "params_digest": digest, **eval_summary}
    if status == "completed":
        metrics.write_json("summary.json", summary)
        if jax.process_index() == 0:
            from azr_jax.plots import plot_metrics

            with run_output(workdir / "plots"):
                plot_metrics(workdir / "metrics.jsonl", workdir / "plots")
            log.info("outputs: %s (metrics.jsonl, summary.json, plots/, checkpoints/)", workdir)
    else:
        log.warning("stopped at step %d; checkpoint saved; run the same command to resume", step)
    return summary
