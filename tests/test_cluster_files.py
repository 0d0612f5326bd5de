"""The files an operator deploys with: Ray cluster launcher YAML, KubeRay RayJob, Dockerfile.

They cannot be deployed here (no cloud, no Kubernetes, no Docker daemon); these checks catch what breaks them
silently: a launcher config Ray would reject, an entrypoint whose overrides distgan would reject, a Dockerfile
that copies paths that do not exist or fails the linter.
"""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from conftest import ROOT
from distgan.config import load_config


def entry_overrides(command: str) -> tuple[str, list[str]]:
    """(config file relative to the repository, key=value overrides) of a `python -m distgan.train` command."""
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "distgan.train"], words
    config = words[words.index("--config") + 1]
    rest = [w for w in words[3:] if w not in ("--config", config)]
    return config.split("/distgan/", 1)[-1], rest


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "aws-gpu-spot.yaml"])
def test_cluster_launcher_yaml_passes_rays_schema(name):
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((ROOT / "cluster" / name).read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("name", ["rayjob.yaml", "rayjob-elastic.yaml"])
def test_rayjob_entrypoint_is_a_valid_distgan_command(name):
    job = yaml.safe_load((ROOT / "cluster" / name).read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    config_file, overrides = entry_overrides(job["spec"]["entrypoint"])
    cfg = load_config(str(ROOT / config_file), overrides)  # raises ConfigError on any bad key or value
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]

    def gpus(count_key: str) -> int:
        return sum(int(g[count_key]) * int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get(
            "nvidia.com/gpu", 0)) for g in workers)

    assert cfg.ray.use_gpu
    if cfg.ray.min_workers is None:
        assert cfg.ray.num_workers == gpus("replicas"), "ray.num_workers must match the GPU worker pods"
    else:  # elastic: the worker range must match the pods' range
        assert (cfg.ray.min_workers, cfg.ray.num_workers) == (gpus("minReplicas"), gpus("maxReplicas"))
        assert job["spec"]["rayClusterSpec"].get("enableInTreeAutoscaling"), "pods must come and go"
        # the shorter wait after a node lost without notice (docs/cluster.md), under the name this Ray reads
        from ray.train.v2._internal.constants import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR

        env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
        assert 0 < float(env[WORKER_GROUP_START_TIMEOUT_S_ENV_VAR]) < 60
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__


def test_dockerfile_copies_existing_paths_and_lints_clean():
    dockerfile = ROOT / "docker" / "Dockerfile"
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail("hadolint missing: install the dev extra (pip install -e '.[dev]')")
    result = subprocess.run([str(hadolint), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of docker/Dockerfile, continuation lines joined, comments dropped."""
    lines, joined = [], ""
    for line in (ROOT / "docker" / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        joined += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(joined.strip())
            joined = ""
    return [tuple(line.split(" ", 1)) for line in lines]


def test_the_image_installs_the_real_package_not_the_dependency_layers_stub(tmp_path):
    """The Dockerfile installs the dependencies from a stub package (an empty distgan/__init__.py), then the real
    code. Its file steps after WORKDIR replayed here, with `pip wheel` for `pip install` (no dependencies, no
    image), and COPY keeping the files' times as docker's does: the wheel must hold the real __init__.py."""
    import shutil
    import zipfile

    wheel = f"{sys.executable} -m pip wheel -q --no-deps --no-build-isolation -w wheels ."
    instructions = dockerfile_instructions()
    workdir = next(i for i, (kind, _) in enumerate(instructions) if kind == "WORKDIR")
    for kind, args in instructions[workdir + 1:]:
        if kind == "COPY":
            *sources, _ = args.split()
            for source in sources:  # into what is there, as docker's COPY does; copy2 keeps the files' times
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, tmp_path / source, dirs_exist_ok=True)
                else:
                    shutil.copy2(ROOT / source, tmp_path / source)
        elif kind == "RUN":
            command = (args.replace("pip install -c constraints.txt '.[cloud]'", wheel).replace("pip install --no-deps .", wheel)
                       .replace("pip uninstall -y distgan", "true").replace("chown -R ray:ray /home/ray", "true"))
            done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stderr[-2000:]
    built = max((tmp_path / "wheels").glob("distgan-*.whl"), key=lambda p: p.stat().st_mtime)
    with zipfile.ZipFile(built) as z:
        assert z.read("distgan/__init__.py") == (ROOT / "distgan" / "__init__.py").read_bytes()


@pytest.mark.parametrize("name", ["aws-gpu.yaml", "aws-gpu-spot.yaml"])
def test_launcher_clusters_need_a_token_and_expose_nothing(name):
    """docs/cluster.md, section 8: every node starts Ray with token authentication and the token file copied from
    the user's home (never the repository); the dashboard on the head's 127.0.0.1; a security group of the user's;
    a head role apart from the workers' (the autoscaler's EC2 rights stay on the head)."""
    text = (ROOT / "cluster" / name).read_text()
    config = yaml.safe_load(text)
    assert "0.0.0.0" not in text.replace("0.0.0.0/0", "")  # (the comment on Ray's own group names 0.0.0.0/0)
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = next(c for c in commands if "ray start" in c)
        assert "export RAY_AUTH_MODE=token" in start.split("ray start")[0], start
    assert "--dashboard-host=127.0.0.1" in next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    nodes = config["available_node_types"]
    head = nodes[config["head_node_type"]]["node_config"]
    workers = [n["node_config"] for key, n in nodes.items() if key != config["head_node_type"]]
    assert all(n["SecurityGroupIds"] == ["SG_ID"] for n in [head, *workers])
    assert all(head["IamInstanceProfile"]["Arn"] != w["IamInstanceProfile"]["Arn"] for w in workers)


@pytest.mark.parametrize("name", ["rayjob.yaml", "rayjob-elastic.yaml"])
def test_kuberay_clusters_need_a_token_and_admit_only_their_own_pods(name):
    job = yaml.safe_load((ROOT / "cluster" / name).read_text())
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token"}
    assert "0.0.0.0" not in (ROOT / "cluster" / name).read_text()
    policy = yaml.safe_load((ROOT / "cluster" / "networkpolicy.yaml").read_text())
    assert (policy["apiVersion"], policy["kind"], policy["spec"]["policyTypes"]) == (
        "networking.k8s.io/v1", "NetworkPolicy", ["Ingress"])
    selected = policy["spec"]["podSelector"]["matchLabels"]
    templates = [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"]),
                 job["spec"]["submitterPodTemplate"]]
    for template in templates:  # every pod of the job is selected, and admitted by the first rule
        assert selected.items() <= template["metadata"]["labels"].items(), template["metadata"]
    rules = policy["spec"]["ingress"]
    assert rules[0] == {"from": [{"podSelector": {"matchLabels": selected}}]}
    assert all("ports" in rule for rule in rules[1:]), "only the cluster's own pods reach every port"
