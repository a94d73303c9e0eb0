"""cluster/aws.yaml and cluster/kuberay.yaml, checked offline with Ray's own config code.

aws.yaml goes through what ``ray up`` runs before it talks to AWS: ``prepare_config`` (``fillout_defaults``
merged with the AWS defaults, setup commands merged, worker bounds filled in) then ``validate_config``
(Ray's JSON schema plus the node-type checks). kuberay.yaml's RayCluster is translated by the function the
KubeRay autoscaler uses (``_derive_autoscaling_config_from_ray_cr``) and validated the same way.
"""
from __future__ import annotations

import copy
import re

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import fillout_defaults, prepare_config, validate_config

from conftest import REPO

AWS = REPO / "cluster" / "aws.yaml"
KUBERAY = REPO / "cluster" / "kuberay.yaml"
KEY_PATTERNS = re.compile(r"AWS_ACCESS_KEY_ID|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|aws_secret|AKIA[0-9A-Z]{16}|"
                          r"secretKeyRef|kind:\s*Secret", re.IGNORECASE)


@pytest.fixture
def aws() -> dict:
    return yaml.safe_load(AWS.read_text())


def validated(config: dict) -> dict:
    """What ``ray up`` checks before it contacts the cloud; returns the filled-in config."""
    full = prepare_config(copy.deepcopy(config))
    validate_config(full)
    return full


def test_ray_accepts_the_aws_config(aws):
    full = validated(aws)
    validate_config(fillout_defaults(copy.deepcopy(aws)))
    types = full["available_node_types"]
    assert full["provider"]["type"] == "aws" and full["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0} and "--num-cpus=0" in " ".join(full["head_start_ray_commands"])
    workers = {k: v for k, v in types.items() if k != "head"}
    assert {"cpu_worker", "gpu_labeler", "gpu_trainer"} <= set(workers)
    for name, t in workers.items():          # autoscaling: none when idle, a bound when busy
        assert t["min_workers"] == 0 and t["max_workers"] >= 1, name
    assert full["max_workers"] >= sum(t["max_workers"] for t in workers.values())
    assert types["cpu_worker"]["resources"].get("GPU", 0) == 0
    assert types["gpu_labeler"]["resources"]["GPU"] >= 1 and types["gpu_trainer"]["resources"]["GPU"] >= 1
    assert 0 < full["idle_timeout_minutes"] <= 30


def test_aws_nodes_get_s3_from_an_instance_profile_and_the_repo_environment(aws):
    full = validated(aws)
    for name, t in full["available_node_types"].items():
        assert set(t["node_config"]["IamInstanceProfile"]) & {"Name", "Arn"}, name
    assert not KEY_PATTERNS.search(AWS.read_text())
    assert "ssh_private_key" not in full["auth"]
    # every node builds the same environment from the repo's own install files
    assert set(full["file_mounts"].values()) >= {"./requirements.txt", "./scripts/setup.sh"}
    for cmds in (full["head_setup_commands"], full["worker_setup_commands"]):
        assert any("scripts/setup.sh" in c for c in cmds)
    for cmds in (full["head_start_ray_commands"], full["worker_start_ray_commands"]):
        assert any(".venv/bin" in c and "ray start" in c for c in cmds)


def test_ray_rejects_a_wrong_type(aws):
    aws["max_workers"] = "lots"
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'integer'"):
        validated(aws)
    aws["max_workers"] = 26
    aws["available_node_types"]["gpu_labeler"]["resources"]["GPU"] = 0.5   # resources are whole units
    with pytest.raises(jsonschema.ValidationError):
        validated(aws)


def test_ray_rejects_an_unknown_key(aws):
    bad = copy.deepcopy(aws)
    bad["idle_timeout_minute"] = 5
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        validated(bad)
    aws["available_node_types"]["cpu_worker"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validated(aws)


def test_ray_rejects_a_head_type_that_is_not_defined(aws):
    aws["head_node_type"] = "ray.head.default"
    with pytest.raises(ValueError, match="head_node_type"):
        validated(aws)


def kuberay_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(KUBERAY.read_text()) if d]


def test_kuberay_raycluster_autoscales_with_cpu_and_gpu_groups():
    docs = kuberay_docs()
    assert {d["kind"] for d in docs} <= {"RayCluster", "ServiceAccount"}   # no Secret
    (cr,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert cr["apiVersion"] == "ray.io/v1"
    spec = cr["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["rayVersion"] == "2.60.0"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"cpu", "gpu-labeler", "gpu-trainer"} <= set(groups)
    for name, g in groups.items():
        assert g["minReplicas"] == 0 <= g["replicas"] <= g["maxReplicas"], name
        assert isinstance(g["rayStartParams"], dict), name
        assert all(isinstance(v, str) for v in g["rayStartParams"].values()), name   # KubeRay wants strings
        for c in g["template"]["spec"]["containers"]:
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), name
    for name in ("gpu-labeler", "gpu-trainer"):
        for c in groups[name]["template"]["spec"]["containers"]:
            assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1, name
    for c in groups["cpu"]["template"]["spec"]["containers"]:
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
    # S3 through the pods' service account (Pod Identity / IRSA), never keys
    service_accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    for g in [spec["headGroupSpec"], *groups.values()]:
        assert g["template"]["spec"]["serviceAccountName"] in service_accounts
    assert not KEY_PATTERNS.search(KUBERAY.read_text())


def test_ray_accepts_the_autoscaling_config_kuberay_derives_from_it():
    (cr,) = [d for d in kuberay_docs() if d["kind"] == "RayCluster"]
    cr["metadata"]["namespace"] = "default"
    config = _derive_autoscaling_config_from_ray_cr(cr)
    validate_config(config)
    types = config["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert types["cpu"]["resources"]["CPU"] == 16 and "GPU" not in types["cpu"]["resources"]
    assert types["gpu-labeler"]["resources"]["GPU"] == 1 and types["gpu-trainer"]["resources"]["GPU"] == 4
    assert all(t["min_workers"] == 0 for k, t in types.items() if k != "headgroup")
