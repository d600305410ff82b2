"""A node's settings outside ROS: schema defaults, then a ROS 2 parameter file, then overrides.

The offline replay and the benchmarks read config/dispider.yaml the way `ros2 launch`
hands it to the nodes (node-name wildcards, file order), against the one parameter schema
(core/schema.py), so they run with exactly the values the nodes would. ROS-free.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, Optional, Union

import yaml

from dispider_ros.core import schema
from dispider_ros.models.presets import config_file, load_preset

NODES = schema.NODES
# Parameters rclpy adds to every node; a parameter file may set them.
ROS_BUILTIN = ("use_sim_time", "start_type_description_service")


def _flatten(params: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def pattern_matches(pattern: str, fqn: str) -> bool:
    """ROS 2 node-name wildcards: ``*`` = one name token, ``/**`` = any namespaces."""
    if not pattern.startswith("/"):
        pattern = "/" + pattern
    regex = ""
    for part in pattern.strip("/").split("/"):
        if part == "**":
            regex += r"(/[^/]+)*"
        else:
            regex += "/" + re.escape(part).replace(r"\*", "[^/]*")
    return re.fullmatch(regex, fqn) is not None


def file_blocks(params_file: Union[str, Path]) -> Dict[str, Dict[str, Any]]:
    """{node pattern: flat {name: value}} of a ROS 2 parameter file (ValueError if malformed)."""
    data = yaml.safe_load(Path(params_file).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{params_file}: not a ROS 2 parameter file (a mapping of node names)")
    blocks = {}
    for pattern, block in data.items():
        if not isinstance(block, dict) or "ros__parameters" not in block:
            raise ValueError(f"{params_file}: entry {pattern!r} has no ros__parameters")
        blocks[str(pattern)] = _flatten(block["ros__parameters"] or {})
    return blocks


def node_settings(node: str, params_file: Optional[Union[str, Path]] = None,
                  overrides: Optional[Dict[str, Any]] = None, namespace: str = "") -> Dict[str, Any]:
    """The parameter values a node runs with: schema defaults, then every matching
    ``ros__parameters`` block of the file in file order, then `overrides` (like ``-p``).
    Every value is checked against the schema; a name the node does not have is an error.

    Args:
        node: one of NODES.
        params_file: ROS 2 parameter YAML (default: the package's config/dispider.yaml).
        overrides: {name: value} applied last.
        namespace: the node's namespace for wildcard matching ("" = root).
    """
    settings = schema.defaults(node)
    params_file = config_file("dispider.yaml") if params_file is None else params_file
    fqn = f"{namespace.rstrip('/')}/{node}"
    sources = [(str(params_file), values) for pattern, values in file_blocks(params_file).items()
               if pattern_matches(pattern, fqn)]
    sources.append(("overrides", dict(overrides or {})))
    for source, values in sources:
        for name, value in values.items():
            if name in ROS_BUILTIN or name.startswith("qos_overrides."):
                continue
            if name not in settings:
                raise ValueError(f"{source}: {node} has no parameter {name!r}")
            settings[name] = schema.check(node, name, value)
    return settings


def resolve_models(node: str, settings: Dict[str, Any]) -> Dict[str, Any]:
    """{model, device, dtype} (+ max_frame_pixels for the reaction): the node's own values,
    empty ones filled from its preset."""
    preset = load_preset(settings["preset"])
    model_param = schema.MODEL_PARAM[node]
    key = "vision_model" if model_param == "vision_model" else "vlm_model"
    resolved = {"model": settings[model_param] or preset.get(key, ""),
                "device": settings["device"] or preset.get("device", "cpu"),
                "dtype": settings["dtype"] or preset.get("dtype", "auto")}
    if node == "reaction_node":  # the VLM's per-frame pixel budget is sized per preset
        resolved["max_frame_pixels"] = settings["max_frame_pixels"] or int(preset.get("max_frame_pixels", 0))
    if not resolved["model"]:
        raise ValueError(f"{node}: {model_param} is empty and preset {settings['preset']!r} "
                         "names none")
    return resolved
