"""``build_run``: the one place a run's parts are made, in the order their dependencies need.

```
 (checked inputs: model, tokenizer, prompts, reward functions; see grpo_dist.preflight)
    ▼
 Ray ── started or joined; what the roles ask is checked against what the cluster has
    ▼
 placement groups ── engines, learner ranks (one shared group when colocated)
    ▼
 EnginePool, RewardPool, LearnerGroup ── started together: engines load while the ranks rendezvous
    ▼
 WeightSync ── the sync group, and a behavioural probe: do engines and learner compute the same model?
    ▼
 MetricsLogger
```

``RunParts.shutdown`` stops them in reverse; a failure half-way through the build stops what was built
before it re-raises, so no actor outlives a failed start.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grpo_dist import cluster
from grpo_dist.config import Config
from grpo_dist.config.sections import LoraConfig
from grpo_dist.placement import check_resources, place_roles, reward_cpus, role_specs, total_cpus
from grpo_dist.preflight import RunInputs
from grpo_dist.run_state import RunState

if TYPE_CHECKING:
    from grpo_dist.learner.group import LearnerGroup
    from grpo_dist.metrics import MetricsLogger
    from grpo_dist.reward.pool import RewardPool
    from grpo_dist.rollout.pool import EnginePool
    from grpo_dist.sync.manager import WeightSync

logger = logging.getLogger("grpo_dist")


@dataclass
class RunParts:
    """The inputs and actors of a run; the actor fields stay None for what a run does not start
    (evaluation starts no learner, sync or metrics)."""

    cfg: Config
    device: str
    inputs: RunInputs
    engines: EnginePool | None = None
    rewards: RewardPool | None = None
    learners: LearnerGroup | None = None
    weight_sync: WeightSync | None = None
    metrics: MetricsLogger | None = None
    owns_ray: bool = False

    @property
    def max_model_len(self) -> int:
        return self.cfg.data.max_prompt_length + self.cfg.data.max_response_length

    def shutdown(self) -> None:
        """Stop every part that was started (reward workers, engines, learner ranks, then the sinks and a
        Ray this run started); idempotent."""
        for part in (self.rewards, self.engines, self.learners):
            if part is not None:
                part.shutdown()
        self.rewards = self.engines = self.learners = self.weight_sync = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.owns_ray:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            self.owns_ray = False


def build_run(
    cfg: Config,
    run_dir: Path,
    inputs: RunInputs,
    *,
    device: str,
    training: bool,
    state: RunState,
    resume_from: Path | None = None,
) -> RunParts:
    """Start Ray and the actors of ``cfg`` on checked ``inputs`` (``training=False``: engines and reward
    workers only). A run resumed from the checkpoint ``resume_from`` (whose ``state`` was loaded) starts
    its engines on the checkpoint's export at its weights version and its learner from its shards."""
    parts = RunParts(cfg, device, inputs)
    figures = inputs.train_stats.metrics()
    logger.info("training data: %s", ", ".join(f"{k.partition('/')[2]} {v:g}" for k, v in figures.items()))
    if inputs.eval_prompts:
        logger.info("held-out evaluation: %d prompts from %s", len(inputs.eval_prompts), ", ".join(inputs.eval_files))
    else:
        logger.info("held-out evaluation: none (data.train_files is set and data.eval_files is empty)")
    try:
        _start_actors(parts, run_dir, training=training, state=state, resume_from=resume_from)
    except BaseException:
        parts.shutdown()
        raise
    return parts


def _start_actors(parts: RunParts, run_dir: Path, *, training: bool, state: RunState, resume_from: Path | None) -> None:
    from grpo_dist.learner.group import LearnerGroup
    from grpo_dist.learner.lora import ADAPTER_DIR
    from grpo_dist.reward.pool import RewardPool
    from grpo_dist.rollout.pool import EnginePool, serves_adapters

    cfg, device = parts.cfg, parts.device
    if resume_from is not None and training:
        check_same_trainable(cfg, resume_from)
    specs = role_specs(cfg, device, with_learner=training)
    parts.owns_ray = cluster.init_ray(cfg, total_cpus(specs, reward_cpus(cfg)))
    check_resources(specs, reward_cpus(cfg))
    # engines start in their own processes while the learner ranks rendezvous
    placements = place_roles(specs, timeout_s=cfg.cluster.placement_timeout_s)
    model_path, adapter = parts.inputs.model_path, None
    if resume_from is not None and serves_adapters(cfg):  # the base, and the checkpoint's adapter on it
        adapter = str(resume_from / "hf" / ADAPTER_DIR)
    elif resume_from is not None:
        model_path = str(resume_from / "hf")
    parts.engines = EnginePool(
        cfg,
        placement=placements["rollout"],
        model_path=model_path,
        device=device,
        max_model_len=parts.max_model_len,
        initial_version=state.weights_version,
        initial_adapter=adapter,
    )
    parts.rewards = RewardPool(
        cfg.reward,
        max_response_length=cfg.data.max_response_length,
        num_cpus_per_worker=cfg.cluster.num_cpus_per_reward_worker,
        extra_sys_path=[os.getcwd(), *sys.path],
    )
    if training:
        # the learner starts from the original model (also the KL reference) and then loads its state
        parts.learners = LearnerGroup(
            cfg, placement=placements["learner"], model_path=parts.inputs.model_path, device=device
        )
        if resume_from is not None:
            parts.learners.load_checkpoint(
                str(resume_from / "learner"),
                version=state.weights_version,
                consecutive_nonfinite=state.consecutive_nonfinite,
            )
    parts.engines.wait_ready()
    if training:
        parts.weight_sync = _connect_sync(parts, state.weights_version)
        from grpo_dist.metrics import MetricsLogger

        parts.metrics = MetricsLogger(
            cfg, run_dir, total_steps=cfg.trainer.total_steps, initial_step=state.trained_step
        )


LORA_SHAPE_FIELDS = ("rank", "alpha", "use_rslora", "target_modules")
"""What a checkpoint's trainable state depends on: resuming under other values would load tensors of other
shapes (DeepSpeed fails deep inside) or, for ``alpha`` and ``use_rslora``, silently train another policy."""


def check_same_trainable(cfg: Config, checkpoint: Path) -> None:
    """Refuse to resume from a checkpoint whose trainable parameters are not the ones ``cfg`` trains: LoRA on
    vs off, or another rank, alpha or set of target modules (the checkpoint keeps the config it was written
    under)."""
    import json

    from grpo_dist.run_state import CONTROLLER_STATE

    saved = json.loads((checkpoint / CONTROLLER_STATE).read_text()).get("config", {})
    before = saved.get("model", {}).get("lora", {"rank": 0})
    now = cfg.model.lora.model_dump(mode="json")
    if before.get("rank", 0) == 0 and now["rank"] == 0:
        return
    # (a field a checkpoint predates had its default then)
    saved_lora = {k: before.get(k, LoraConfig.model_fields[k].default) for k in LORA_SHAPE_FIELDS}
    changed = [f"model.lora.{k} {saved_lora[k]!r} -> {now[k]!r}" for k in LORA_SHAPE_FIELDS if saved_lora[k] != now[k]]
    if changed:
        raise ValueError(
            f"cannot resume from {checkpoint}: it was trained with other trainable parameters ({', '.join(changed)}); "
            "resume with the checkpoint's model.lora settings, or start a new run"
        )


def _connect_sync(parts: RunParts, version: int) -> Any:
    """The weight sync between the learner and the engines, checked by behaviour before any update."""
    from grpo_dist.sync.manager import WeightSync
    from grpo_dist.sync.probe import make_probe

    cfg = parts.cfg
    assert parts.learners is not None and parts.engines is not None
    probe = make_probe(
        [p.token_ids for p in parts.inputs.train_prompts[: 4 * cfg.sync.probe_num_sequences]],
        num_sequences=cfg.sync.probe_num_sequences,
        length=min(cfg.sync.probe_length, parts.max_model_len - 1),  # the engine scores it as a prompt + 1 token
    )
    sync = WeightSync(cfg, parts.learners, parts.engines, device=parts.device, probe=probe, dtype=parts.engines.dtype)
    if sync.probe is not None:
        # do the engines and the learner compute the same model at all?
        worst = sync.check_behaviour(version)
        logger.info("engines agree with the learner on the probe: %s", worst.describe())
    return sync
