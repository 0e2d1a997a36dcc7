"""An actor's death is described from Ray's error: a memory kill as such, with what to change."""

from __future__ import annotations

from ray.exceptions import RayActorError

from grpo_dist.cluster import death_cause
from grpo_dist.config import apply_overrides, parse_config
from grpo_dist.learner.group import memory_advice

# the exit detail Ray's memory monitor writes for an actor it killed (Ray 2.x raylet)
MEMORY_KILL = """The actor died unexpectedly before finishing this task.
\tclass_name: LearnerWorker
\tpid: 4242
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: \
Task was killed due to the node running low on memory.
Memory on the node (IP: 10.0.0.2) where the task was running was 22.31GB / 23.47GB (0.950707), which exceeds \
the memory usage threshold of 0.95. Ray killed this worker because it was the most recently scheduled task."""

SIGKILL = (
    "The actor died unexpectedly before finishing this task.\n"
    "\tclass_name: LearnerWorker\n"
    "The actor is dead because its worker process has died. Worker exit type: UNEXPECTED_SYSTEM_EXIT Worker exit "
    "detail: Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: "
    "(1) the process was killed by the OOM killer due to high memory usage, (2) ray stop --force was called."
)


def test_a_memory_kill_is_named_as_one() -> None:
    cause = death_cause(RayActorError(error_msg=MEMORY_KILL))
    assert cause.startswith("killed for memory (")
    assert "running low on memory" in cause


def test_another_death_keeps_rays_exit_detail() -> None:
    cause = death_cause(RayActorError(error_msg=SIGKILL))
    assert not cause.startswith("killed for memory")
    assert "UNEXPECTED_SYSTEM_EXIT" in cause
    assert "OOM" not in cause  # Ray's list of possible causes is not a diagnosis


def test_memory_advice_names_the_setting_in_use() -> None:
    budget = parse_config(apply_overrides({}, ["learner.max_tokens_per_micro_batch=4096"]))
    assert "lower learner.max_tokens_per_micro_batch (now 4096)" in memory_advice(budget)
    count = parse_config(apply_overrides({}, ["learner.micro_batch_size=16", "learner.gradient_checkpointing=true"]))
    advice = memory_advice(count)
    assert "lower learner.micro_batch_size (now 16)" in advice and "gradient_checkpointing" not in advice
