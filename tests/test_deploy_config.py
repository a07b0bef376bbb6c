"""Deployment files vs Ray's own schemas and vs the code: serve_config.yaml, serve_config.local.yaml,
cluster.yaml, deploy/kuberay-rayservice.yaml (its serveConfigV2) and the Dockerfile.

Ray's Serve schemas accept unknown keys silently (a `max_replica` typo is dropped and the default
used), so every mapping is also checked against the fields the schema class declares. No Ray
instance is started: validation, the app builder and the launcher checks all run offline.
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from pydantic import BaseModel
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv
from ray.serve import Application
from ray.serve.config import AutoscalingConfig, AutoscalingPolicy
from ray.serve.schema import (
    DeploymentSchema,
    HTTPOptionsSchema,
    LoggingConfig,
    RayActorOptionsSchema,
    ServeApplicationSchema,
    ServeDeploySchema,
)

from deployments.app import DEPLOYMENTS, build_app
from deployments.autoscaling import backlog_policy
from deployments.reconstruct import LiveKnobs
from deployments.settings import AppArgs

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = REPO_ROOT / "serve_config.yaml"
LOCAL_SERVE_CONFIG = REPO_ROOT / "serve_config.local.yaml"
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"
RAYSERVICE_YAML = REPO_ROOT / "deploy" / "kuberay-rayservice.yaml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
CPU_STAGES = ("Ingress", "Matting", "Publish")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def load_serve_config(kind: str) -> dict[str, Any]:
    """production / local / kuberay (the RayService's inline serveConfigV2); a fresh copy each call."""
    if kind == "kuberay":
        config = yaml.safe_load(load_yaml(RAYSERVICE_YAML)["spec"]["serveConfigV2"])
    else:
        config = load_yaml(SERVE_CONFIG if kind == "production" else LOCAL_SERVE_CONFIG)
    if not isinstance(config, dict):
        raise TypeError(f"the {kind} serve config is not a mapping")
    return config


def the_app(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config's one application (shop3d)."""
    apps: list[dict[str, Any]] = config["applications"]
    (app,) = apps
    return app


def deployment(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [d for d in the_app(config)["deployments"] if d["name"] == name]
    if len(matches) != 1:
        raise LookupError(f"expected one deployment {name!r}, found {len(matches)}")
    return matches[0]


# --- keys Ray would ignore -------------------------------------------------------------------

def declared_keys(schema: type[BaseModel]) -> set[str]:
    """A pydantic model's field names and their aliases (what Ray actually reads)."""
    return {key for name, field in schema.model_fields.items() for key in (name, field.alias) if key}


def keys_outside(mapping: Any, known: Collection[str], path: str) -> list[str]:
    if not isinstance(mapping, Mapping):
        return []  # a wrong type is the schema validation's to report
    return [f"{path}.{key}" if path else str(key) for key in mapping if key not in known]


def unknown_keys(config: Mapping[str, Any]) -> list[str]:
    """Dotted paths of every key in a serve config that no Ray schema level declares."""
    problems = keys_outside(config, declared_keys(ServeDeploySchema), "")
    problems += keys_outside(config.get("http_options"), declared_keys(HTTPOptionsSchema), "http_options")
    problems += keys_outside(config.get("logging_config"), declared_keys(LoggingConfig), "logging_config")
    for index, app in enumerate(config.get("applications") or []):
        path = f"applications[{index}]"
        problems += keys_outside(app, declared_keys(ServeApplicationSchema), path)
        problems += keys_outside(app.get("runtime_env"), RuntimeEnv.known_fields, f"{path}.runtime_env")
        for entry in app.get("deployments") or []:
            problems += deployment_unknown_keys(entry, f"{path}.deployments[{entry.get('name')}]")
    return problems


def deployment_unknown_keys(entry: Mapping[str, Any], path: str) -> list[str]:
    problems = keys_outside(entry, declared_keys(DeploymentSchema), path)
    actor = entry.get("ray_actor_options") or {}
    problems += keys_outside(actor, declared_keys(RayActorOptionsSchema), f"{path}.ray_actor_options")
    autoscaling = entry.get("autoscaling_config") or {}
    problems += keys_outside(autoscaling, declared_keys(AutoscalingConfig), f"{path}.autoscaling_config")
    problems += keys_outside(autoscaling.get("policy"), declared_keys(AutoscalingPolicy),
                             f"{path}.autoscaling_config.policy")
    return problems


@pytest.mark.parametrize("kind", ["production", "local", "kuberay"])
def test_serve_config_passes_rays_schema_with_no_ignored_keys(kind: str) -> None:
    config = load_serve_config(kind)
    ServeDeploySchema.model_validate(config)
    assert unknown_keys(config) == []


def rename_key(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


TYPOS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "max_replica": (lambda c: rename_key(deployment(c, "Reconstruct")["autoscaling_config"], "max_replicas",
                                         "max_replica"),
                    "applications[0].deployments[Reconstruct].autoscaling_config.max_replica"),
    "num_gpu": (lambda c: rename_key(deployment(c, "Reconstruct")["ray_actor_options"], "num_gpus", "num_gpu"),
                "applications[0].deployments[Reconstruct].ray_actor_options.num_gpu"),
    "max_ongoing_request": (lambda c: rename_key(deployment(c, "Matting"), "max_ongoing_requests",
                                                 "max_ongoing_request"),
                            "applications[0].deployments[Matting].max_ongoing_request"),
    "policy_fn": (lambda c: rename_key(deployment(c, "Reconstruct")["autoscaling_config"]["policy"],
                                       "policy_function", "policy_fn"),
                  "applications[0].deployments[Reconstruct].autoscaling_config.policy.policy_fn"),
    "env_var": (lambda c: rename_key(the_app(c)["runtime_env"], "env_vars", "env_var"),
                "applications[0].runtime_env.env_var"),
    "proxy_locaton": (lambda c: rename_key(c, "proxy_location", "proxy_locaton"), "proxy_locaton"),
}


@pytest.mark.parametrize("typo", sorted(TYPOS))
def test_a_typo_ray_accepts_is_caught(typo: str) -> None:
    """The trap this checker exists for: Ray validates the typo'd config, and we do not."""
    config = load_serve_config("production")
    mutate, expected_path = TYPOS[typo]
    mutate(config)
    ServeDeploySchema.model_validate(config)  # Ray 2.60 drops the unknown key without a word
    assert unknown_keys(config) == [expected_path]


# --- the configs vs the code -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["production", "local", "kuberay"])
def test_deployment_names_are_the_graphs(kind: str) -> None:
    names = [d["name"] for d in the_app(load_serve_config(kind))["deployments"]]
    assert sorted(names) == sorted(DEPLOYMENTS)
    assert the_app(load_serve_config(kind))["import_path"] == "deployments.app:build"


def import_path(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def deployment_options(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in the_app(config)["deployments"]}


@pytest.mark.parametrize("kind", ["production", "local"])
def test_graph_builds_from_the_configs_args_and_options(kind: str, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    """`args` pass AppArgs (extra keys forbidden) and the builder's Settings check; Serve's own
    Deployment.options accepts every deployment's options (it rejects unknown actor options)."""
    monkeypatch.chdir(tmp_path)  # Settings would also read a developer's .env from the cwd
    # What every production node's environment provides (cluster.yaml / the RayService):
    monkeypatch.setenv("SUPABASE_URL", "https://project.supabase.invalid")
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", "stand-in-for-the-node-environment")
    config = load_serve_config(kind)
    args = AppArgs.model_validate(the_app(config)["args"])
    assert isinstance(build_app(args, deployment_options(config)), Application)


def test_builder_rejects_an_unknown_actor_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The check above could fail: a num_gpu typo in the options is refused by Serve's options()."""
    monkeypatch.chdir(tmp_path)
    options = deployment_options(load_serve_config("local"))
    rename_key(options["Reconstruct"]["ray_actor_options"], "num_gpus", "num_gpu")
    with pytest.raises(ValueError, match="num_gpu"):
        build_app(AppArgs.model_validate(the_app(load_serve_config("local"))["args"]), options)


def test_serve_calls_the_builder_with_validated_args(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """What `serve deploy` does with import_path + args: Ray's own builder call and AppArgs conversion."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary as call_builder

    monkeypatch.chdir(tmp_path)
    app = the_app(load_serve_config("local"))
    builder = import_path(app["import_path"])
    assert isinstance(call_builder(builder, app["args"]), Application)
    with pytest.raises(ValueError, match="queue_nam"):  # pydantic's ValidationError: extra keys forbidden
        call_builder(builder, {**app["args"], "queue_nam": "celery"})


@pytest.mark.parametrize("kind", ["production", "local"])
def test_user_config_passes_reconstructs_live_knobs(kind: str) -> None:
    """The replica would refuse (and log) a bad user_config at run time; catch it before deploying."""
    reconstruct = deployment(load_serve_config(kind), "Reconstruct")
    user_config = reconstruct["user_config"]
    knobs = LiveKnobs(**user_config)
    assert set(user_config) == set(LiveKnobs.model_fields)
    # with fewer ongoing requests than the batch size, @serve.batch only ever forms batches of one
    assert reconstruct["max_ongoing_requests"] >= knobs.max_batch_size


@pytest.mark.parametrize("bad", [{"extraction": "bogus"}, {"chunk_size": -1}, {"max_batch_size": 0},
                                 {"batch_wait_timeout_s": -0.1}, {"max_batch": 4}])
def test_bad_live_knobs_are_refused_before_deploying(bad: dict[str, Any]) -> None:
    options = {"Reconstruct": {"user_config": {"max_batch_size": 2, **bad}}}
    with pytest.raises(ValueError):
        build_app(AppArgs(), options)


@pytest.mark.parametrize("kind", ["production", "local", "kuberay"])
def test_reconstruct_scales_with_the_backlog_policy(kind: str) -> None:
    autoscaling = deployment(load_serve_config(kind), "Reconstruct")["autoscaling_config"]
    assert import_path(autoscaling["policy"]["policy_function"]) is backlog_policy
    assert 1 <= autoscaling["min_replicas"] <= autoscaling["max_replicas"]
    for name in CPU_STAGES[1:]:
        assert "policy" not in deployment(load_serve_config(kind), name)["autoscaling_config"]
    assert deployment(load_serve_config(kind), "Ingress")["num_replicas"] == 1  # polls; never autoscaled


@pytest.mark.parametrize("kind", ["production", "local"])
def test_max_inflight_lets_every_tier_reach_its_target(kind: str) -> None:
    """max_inflight >= sum over autoscaled stages of max_replicas x target_ongoing_requests."""
    config = load_serve_config(kind)
    wanted = 0
    for name in ("Matting", "Reconstruct", "Publish"):
        autoscaling = deployment(config, name)["autoscaling_config"]
        wanted += autoscaling["max_replicas"] * autoscaling["target_ongoing_requests"]
    assert the_app(config)["args"]["max_inflight"] >= wanted


def test_production_shares_gpus_and_pins_pools() -> None:
    config = load_serve_config("production")
    actor = deployment(config, "Reconstruct")["ray_actor_options"]
    assert 0 < actor["num_gpus"] < 1
    assert 0 < actor["num_cpus"] <= 2  # explicit and small: the default would be one per GPU slice
    assert actor["label_selector"] == {"pool": "gpu"}
    for name in CPU_STAGES:
        options = deployment(config, name)["ray_actor_options"]
        assert options.get("num_gpus", 0) == 0
        # The Ingress stays on the head; the CPU stages go to the autoscaled CPU workers, never the head.
        role = "head" if name == "Ingress" else "worker"
        assert options["label_selector"] == {"pool": "cpu", "role": role}
    ingress = deployment(config, "Ingress")
    assert ingress["ray_actor_options"]["num_cpus"] == 0.1
    assert (ingress["graceful_shutdown_timeout_s"], ingress["health_check_period_s"]) == (60, 5)
    assert the_app(config)["route_prefix"] == "/"
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_local_config_runs_without_gpus_or_pools() -> None:
    config = load_serve_config("local")
    assert deployment(config, "Reconstruct")["ray_actor_options"]["num_gpus"] == 0
    for entry in the_app(config)["deployments"]:
        assert entry["ray_actor_options"].get("num_gpus", 0) == 0
        assert "label_selector" not in entry["ray_actor_options"]
    production = load_serve_config("production")
    for name in ("Matting", "Reconstruct", "Publish"):
        assert (deployment(config, name)["autoscaling_config"]["max_replicas"]
                <= deployment(production, name)["autoscaling_config"]["max_replicas"])


def test_runtime_env_points_at_the_images_baked_caches() -> None:
    env = the_app(load_serve_config("production"))["runtime_env"]["env_vars"]
    assert set(env) == {"OMP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_HOME", "U2NET_HOME"}
    assert all(isinstance(value, str) for value in env.values())  # Ray requires string env values
    baked = dockerfile_env()
    assert env["HF_HOME"] == baked["HF_HOME"] and env["U2NET_HOME"] == baked["U2NET_HOME"]
    assert env["HF_HUB_OFFLINE"] == baked["HF_HUB_OFFLINE"] == "1"


# --- cluster launcher and KubeRay ------------------------------------------------------------

def test_cluster_yaml_passes_the_launchers_own_validation() -> None:
    validate_config(prepare_config(load_yaml(CLUSTER_YAML)))


def test_launcher_validation_rejects_a_typo() -> None:
    """Unlike Serve's schema, the launcher's JSON schema forbids extra keys: the check above can fail."""
    config = load_yaml(CLUSTER_YAML)
    rename_key(config["available_node_types"]["worker.gpu"], "max_workers", "max_workerz")
    with pytest.raises(Exception, match="max_workerz"):  # jsonschema.ValidationError (no type stubs)
        validate_config(prepare_config(config))


def test_cluster_has_a_cpu_head_and_scalable_cpu_and_gpu_pools() -> None:
    config = load_yaml(CLUSTER_YAML)
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["labels"] == {"pool": "cpu", "role": "head"} and head["resources"].get("GPU", 0) == 0
    (cpu,) = [t for t in node_types.values() if t.get("labels") == {"pool": "cpu", "role": "worker"}]
    (gpu,) = [t for t in node_types.values() if t.get("labels") == {"pool": "gpu", "role": "worker"}]
    assert gpu["resources"]["GPU"] >= 1 and 0 <= gpu["min_workers"] <= gpu["max_workers"]
    assert cpu["resources"].get("GPU", 0) == 0 and 1 <= cpu["min_workers"] < cpu["max_workers"]   # scales out
    assert config["max_workers"] == cpu["max_workers"] + gpu["max_workers"]
    assert config["docker"]["image"] == rayservice_image()
    for command in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "--metrics-export-port=" in command
    assert "--dashboard-host=0.0.0.0" in config["head_start_ray_commands"][-1]


@dataclass(frozen=True)
class NodeGroup:
    """One kind of node: its Ray labels, CPUs and GPUs per node, and how many there can be."""

    name: str
    labels: dict[str, str]
    cpus: float
    gpus: float
    most: int


def cluster_pools() -> list[NodeGroup]:
    """cluster.yaml's node types."""
    config = load_yaml(CLUSTER_YAML)
    groups = []
    for name, node_type in config["available_node_types"].items():
        most = 1 if name == config["head_node_type"] else node_type["max_workers"]
        resources = node_type["resources"]
        groups.append(NodeGroup(name, node_type["labels"], resources["CPU"], resources.get("GPU", 0), most))
    return groups


def rayservice_pools() -> list[NodeGroup]:
    """The RayService's head and worker groups."""
    cluster = load_yaml(RAYSERVICE_YAML)["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    groups = [NodeGroup("head", head["labels"], float(head["rayStartParams"]["num-cpus"]), 0.0, 1)]
    for group in cluster["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        groups.append(NodeGroup(group["groupName"], group["labels"], float(group["rayStartParams"]["num-cpus"]),
                                float(limits.get("nvidia.com/gpu", 0)), group["maxReplicas"]))
    return groups


def most_replicas(entry: Mapping[str, Any]) -> int:
    return int(entry.get("num_replicas") or entry["autoscaling_config"]["max_replicas"])


@pytest.mark.parametrize("pools", [cluster_pools, rayservice_pools], ids=["cluster.yaml", "rayservice"])
def test_every_deployment_fits_its_pool_at_full_scale(pools: Callable[[], list[NodeGroup]]) -> None:
    """Each label_selector matches exactly one node group (so placement is decided by the config, not by
    chance), and that group holds the stage at max_replicas."""
    groups = pools()
    cpu_demand = {group.name: 0.0 for group in groups}
    for entry in the_app(load_serve_config("production"))["deployments"]:
        actor = entry["ray_actor_options"]
        selector = actor["label_selector"]
        matching = [g for g in groups if selector.items() <= g.labels.items()]
        assert len(matching) == 1, f"{entry['name']}'s selector {selector} matches {[g.name for g in matching]}"
        (group,) = matching
        cpu_demand[group.name] += most_replicas(entry) * actor["num_cpus"]
        if actor.get("num_gpus"):
            per_node = min(group.gpus / actor["num_gpus"], group.cpus / actor["num_cpus"])
            assert per_node * group.most >= most_replicas(entry), f"{entry['name']}: max_replicas cannot be placed"
    for group in groups:
        assert cpu_demand[group.name] <= group.cpus * group.most, f"{group.name} is short of CPUs at full scale"


def rayservice_image() -> str:
    cluster = load_yaml(RAYSERVICE_YAML)["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    (image,) = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    return str(image)


def test_rayservice_runs_the_same_application_on_a_gpu_autoscaled_cluster() -> None:
    service = load_yaml(RAYSERVICE_YAML)
    assert (service["apiVersion"], service["kind"]) == ("ray.io/v1", "RayService")
    assert load_serve_config("kuberay") == load_serve_config("production")
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__ and cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["labels"] == {"pool": "cpu", "role": "head"}
    cpu, gpu = cluster["workerGroupSpecs"]
    assert (gpu["minReplicas"], gpu["maxReplicas"], gpu["labels"]) == (0, 4, {"pool": "gpu", "role": "worker"})
    assert cpu["labels"] == {"pool": "cpu", "role": "worker"} and 1 <= cpu["minReplicas"] < cpu["maxReplicas"]
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


# --- secrets ---------------------------------------------------------------------------------

SECRET_NAME = re.compile(r"secret|password|passwd|service_role|api_?key|private_?key|token|credential", re.I)
# a JWT (Supabase keys), a Standard Webhooks secret, a PEM key, or a URL with a password in it
SECRET_VALUE = re.compile(r"eyJ[\w-]{10,}\.|whsec_|sk_live_|-----BEGIN|://[^/\s:@]*:[^/\s@]+@")
# NAME=value / NAME: value with a secret-looking NAME and a literal value (not a mapping or a $VAR)
SECRET_ASSIGNMENT = re.compile(r"\b\w*(secret|password|passwd|service_role|api_?key|token)\w*\s*[:=]\s*"
                               r"['\"]?(?![{$\s'\"])\S{6,}", re.I)


def secrets_in_structure(node: Any, path: str = "") -> Iterator[str]:
    """Secret-named keys holding literals, K8s env entries not from a secretKeyRef, credential-like values."""
    if isinstance(node, Mapping):
        is_env_entry = "name" in node and bool({"value", "valueFrom"} & node.keys())
        from_secret = "value" not in node and "secretKeyRef" in (node.get("valueFrom") or {})
        if is_env_entry and SECRET_NAME.search(str(node["name"])) and not from_secret:
            yield f"{path}: env {node['name']} must come from valueFrom.secretKeyRef"
        for key, value in node.items():
            if SECRET_NAME.search(str(key)) and not isinstance(value, (Mapping, list)):
                yield f"{path}.{key}: a secret-looking key with a literal value"
            yield from secrets_in_structure(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from secrets_in_structure(item, f"{path}[{index}]")
    elif isinstance(node, str) and SECRET_VALUE.search(node):
        yield f"{path}: a credential-looking value"


def secrets_in_text(text: str, source: str) -> Iterator[str]:
    """Line checks, comments included: assignments of literals to secret names, credential-like strings."""
    for number, line in enumerate(text.splitlines(), start=1):
        if SECRET_ASSIGNMENT.search(line) or SECRET_VALUE.search(line):
            yield f"{source}:{number}: looks like a secret"


def secrets_in_dockerfile(text: str) -> Iterator[str]:
    """Build args and ENV persist in the image history: no secret-named ones, with or without a value."""
    yield from secrets_in_text(text, "Dockerfile")
    for instruction, arguments in dockerfile_instructions(text):
        if instruction in ("ARG", "ENV") and SECRET_NAME.search(arguments.split("=")[0]):
            yield f"Dockerfile: {instruction} {arguments.split('=')[0]} would bake a secret into the image"


def deploy_yaml_files() -> list[Path]:
    return sorted({*REPO_ROOT.glob("*.y*ml"), *REPO_ROOT.glob("deploy/**/*.y*ml")})


def test_no_secrets_in_any_deployment_file() -> None:
    files = deploy_yaml_files()
    assert {SERVE_CONFIG, LOCAL_SERVE_CONFIG, CLUSTER_YAML, RAYSERVICE_YAML} <= set(files)
    findings: list[str] = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        findings += secrets_in_text(text, path.name)
        findings += secrets_in_structure(yaml.safe_load(text), path.name)
    findings += secrets_in_structure(load_serve_config("kuberay"), "serveConfigV2")
    findings += secrets_in_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert findings == []


def test_secret_checks_catch_leaks() -> None:
    config = load_serve_config("production")
    the_app(config)["runtime_env"]["env_vars"]["WEBHOOK_SECRET"] = "whsec_c2VjcmV0"
    the_app(config)["args"]["redis_url"] = "redis://:hunter2hunter2@redis:6379/0"
    found = list(secrets_in_structure(config))
    assert any("env_vars.WEBHOOK_SECRET" in f for f in found) and any("redis_url" in f for f in found)
    service = load_yaml(RAYSERVICE_YAML)
    container = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["env"] = [*copy.deepcopy(container["env"]), {"name": "SUPABASE_SERVICE_ROLE_KEY", "value": "x"}]
    assert any("must come from valueFrom.secretKeyRef" in f for f in secrets_in_structure(service))
    assert list(secrets_in_text("SUPABASE_SERVICE_ROLE_KEY: abcdef123456", "t")) == ["t:1: looks like a secret"]
    leaky = DOCKERFILE.read_text(encoding="utf-8") + "\nARG WEBHOOK_SECRET\n"
    assert any("ARG WEBHOOK_SECRET" in f for f in secrets_in_dockerfile(leaky))


# --- Dockerfile ------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, backslash continuations joined."""
    instructions: list[tuple[str, str]] = []
    pending: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending.append(line.removesuffix("\\").strip())
        if not line.endswith("\\"):
            word, _, rest = " ".join(pending).partition(" ")
            instructions.append((word.upper(), rest.strip()))
            pending = []
    return instructions


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")):
        if instruction == "ENV":
            for pair in arguments.split():
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def first_index(instructions: list[tuple[str, str]], kind: str, *needles: str) -> int:
    for index, (instruction, arguments) in enumerate(instructions):
        if instruction == kind and all(needle in arguments for needle in needles):
            return index
    raise LookupError(f"no {kind} containing {needles}")


def test_dockerfile_builds_on_the_pinned_ray_image() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    args = dict(a.split("=", 1) for kind, a in instructions if kind == "ARG" and "=" in a)
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], instructions[first_index(instructions, "FROM")][1])
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu"


def test_dockerfile_installs_cuda_torch_before_the_project() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    torch = first_index(instructions, "RUN", "pip install", "torch==", "download.pytorch.org/whl/")
    project = first_index(instructions, "RUN", 'pip install --no-cache-dir ".[gpu]" ')   # with Warp
    assert torch < project


def test_dockerfile_bakes_the_models_then_goes_offline() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    caches = first_index(instructions, "ENV", "HF_HOME=", "U2NET_HOME=")
    triposr = first_index(instructions, "RUN", "load_pretrained('stabilityai/TripoSR')")
    matting = first_index(instructions, "RUN", "import rembg", "BackgroundRemover('u2net')")
    offline = first_index(instructions, "ENV", "HF_HUB_OFFLINE=1")
    assert caches < triposr < offline and caches < matting < offline


def test_dockerignore_keeps_env_files_and_the_venv_out() -> None:
    lines = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"  # an allow-list: nothing enters the build context unless named
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "pipeline", "deployments"}


def test_dockerfile_installs_node_and_the_validator_the_tests_run() -> None:
    """Without node and gltf-validator every production QA report would say `unavailable`."""
    instructions = dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8"))
    args = dict(a.split("=", 1) for kind, a in instructions if kind == "ARG" and "=" in a)
    pinned = json.loads((REPO_ROOT / "package.json").read_text())["dependencies"]["gltf-validator"]
    assert args["GLTF_VALIDATOR_VERSION"] == pinned
    node = first_index(instructions, "RUN", "apt-get install", "nodejs", "npm")
    validator = first_index(instructions, "RUN", "npm install -g", "gltf-validator@${GLTF_VALIDATOR_VERSION}")
    checked = first_index(instructions, "RUN", "cd / && python", "validate_glb")   # outside any checkout
    assert node < validator < checked
