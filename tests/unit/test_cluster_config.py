"""cluster.yaml passes the checks ``ray up`` makes before it touches a machine."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private import commands
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


def _load() -> tuple[dict, str]:
    text = CLUSTER_YAML.read_text()
    return yaml.safe_load(text), text


def _cloud_variant(config: dict, text: str) -> dict:
    """The commented AWS variant, swapped in for the on-premises provider, auth and size."""
    block = text.split("# cloud-variant-begin\n")[1].split("# cloud-variant-end")[0]
    cloud = yaml.safe_load("\n".join(line[2:] for line in block.splitlines()))
    rest = {k: v for k, v in config.items() if k not in ("provider", "auth", "max_workers")}
    return {**rest, **cloud}


def test_on_premises_config_is_what_ray_up_accepts():
    config, _ = _load()
    # The same resolution `ray up --no-config-cache` performs: defaults, Ray's schema, the provider's bootstrap.
    resolved = commands._bootstrap_config(copy.deepcopy(config), no_config_cache=True)
    assert resolved["provider"]["type"] == "local"
    assert resolved["head_node_type"] in resolved["available_node_types"]
    # raylane is installed on every node, and the services are given as settings.
    setup = " ".join(config["setup_commands"])
    assert "pip install -q -e ~/raylane" in setup
    assert "RAYLANE_KAFKA_BOOTSTRAP=" in setup and "RAYLANE_OPENSEARCH_URL=" in setup
    # Secrets reach every node as files copied from the launching machine, never as text in the file.
    assert config["file_mounts"] == {
        "~/raylane": ".",
        "~/.raylane/secrets": "~/.raylane/secrets",
        "~/.ray/auth_token": "~/.ray/auth_token",
        "~/.cache/raylane/cluster.key": "~/.cache/raylane/cluster.key",
    }
    assert "PASSWORD=" not in setup.upper() and "TOKEN=" not in setup.upper()
    assert all("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"][1:])


def test_commented_cloud_variant_passes_rays_schema():
    config, text = _load()
    resolved = prepare_config(_cloud_variant(config, text))
    validate_config(resolved)
    assert set(resolved["available_node_types"]) == {"head", "worker"}


def test_schema_check_rejects_a_broken_config():
    config, _ = _load()
    broken = copy.deepcopy(config)
    broken["provider"]["head_ip"] = ["not", "a", "host"]
    with pytest.raises(jsonschema.ValidationError):
        commands._bootstrap_config(broken, no_config_cache=True)
