"""Ray start-up, the device, cores for CPU engines, and waiting on actors with a deadline.

``wait_all`` is the one way the driver waits on several actors: every wait has a deadline, and an actor
that died is reported first, by role and name, with the cause Ray gave. Placement groups and the checks of
what a cluster can hold are ``grpo_dist.placement``'s.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from grpo_dist.config import Config
from grpo_dist.faults import ActorDiedError, ActorId, ActorTimeoutError

logger = logging.getLogger(__name__)


def resolve_device(cfg: Config) -> str:
    if cfg.cluster.device != "auto":
        return cfg.cluster.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def init_ray(cfg: Config, total_cpus: float) -> bool:
    """Start a private local Ray (``cluster.address: local``) or join an existing cluster; returns whether
    this call started it (and so should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}}
    if cfg.cluster.address == "local":
        # Actors of different phases take turns on the cores, so a local Ray offers at least as many
        # logical CPUs as the roles ask for, whatever the machine has.
        num_cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, math.ceil(total_cpus))
        ray.init(
            address="local",
            dashboard_host="127.0.0.1",  # never exposed beyond this machine by default
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env=env,
            log_to_driver=True,
            logging_level=logging.WARNING,
        )
    else:
        # Joining a cluster: the job's own runtime environment (a submitted job's working_dir) stays as it is;
        # replacing it would let Ray garbage-collect the driver's working directory.
        ray.init(address=cfg.cluster.address, logging_level=logging.WARNING)
    return True


def cpu_ids_for(index: int, count: float) -> list[int]:
    """Cores for the ``index``-th CPU engine on this machine, round-robin over the allowed cores."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    n = max(1, int(count))
    return [allowed[(index * n + k) % len(allowed)] for k in range(n)]


# what Ray's memory monitor writes when it kills a worker; NOT "OOM killer", which Ray lists among the possible
# causes of every unexplained death (a kernel OOM kill cannot be told apart from other SIGKILLs here)
_MEMORY_DEATH_MARKERS = ("running low on memory", "memory usage threshold")


def death_cause(error: BaseException) -> str:
    """One line on why an actor died, from Ray's error: a memory kill said as such (Ray puts it in the
    actor's exit detail; the surviving ranks only see a collective's broken connection)."""
    text = str(error)
    for line in text.splitlines():
        if any(m in line.lower() for m in _MEMORY_DEATH_MARKERS):
            return f"killed for memory ({line.strip()})"
    for line in text.splitlines():
        if "exit detail" in line.lower() or "exit type" in line.lower():
            return line.strip().split(" Some common causes include")[0]
    return "its process exited"


def wait_all(refs: list[Any], *, timeout_s: float, what: str, actors: Sequence[ActorId]) -> list[Any]:
    """``ray.get`` with a deadline that names whichever actors (``actors[i]`` answers ``refs[i]``) did not
    answer in time, or died.

    An actor's death is reported as soon as it is known, with its cause, before the errors it provokes in the
    others (a collective's peer closing its connection) and without waiting out the deadline for actors
    that now wait forever on the dead one."""
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            break
        for ref in done:
            try:
                ray.get(ref, timeout=1.0)
            except ray.exceptions.RayActorError:
                pending = []  # someone died: the rest may never answer
            except Exception:
                pass
    results, dead, causes, failures = [], [], [], []
    unfinished = set(ray.wait(refs, num_returns=len(refs), timeout=0)[1])
    for actor, ref in zip(actors, refs, strict=True):
        if ref in unfinished:
            continue
        try:
            results.append(ray.get(ref, timeout=1.0))
        except ray.exceptions.RayActorError as exc:
            dead.append(actor)
            causes.append(death_cause(exc))
        except Exception as exc:
            failures.append(exc)
    if dead:
        for ref in unfinished:
            ray.cancel(ref, force=False)
        described = "; ".join(f"{n} died: {c}" for n, c in zip(dead, causes))
        memory = [a.name for a, c in zip(dead, causes) if c.startswith("killed for memory")]
        raise ActorDiedError(f"{what}: {described}", actors=dead, killed_for_memory=memory)
    if failures:
        raise failures[0]
    if unfinished:
        late = [actors[i] for i, r in enumerate(refs) if r in unfinished]
        for r in unfinished:
            ray.cancel(r, force=False)
        raise ActorTimeoutError(
            f"{what}: no answer within {timeout_s:g} s from {', '.join(a.name for a in late)}", actors=late
        )
    return results
