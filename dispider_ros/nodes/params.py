"""Parameters declared in one place with descriptions and ranges (`ros2 param describe`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter


@dataclass(frozen=True)
class Param:
    """One node parameter.

    `static` parameters (model, device, dtype, topics) may only change while the node is
    unconfigured: they take effect on the next configure. The others are live: they are
    validated by the core's config dataclass and applied at once.
    """

    name: str
    default: Any
    description: str
    low: Optional[float] = None  # inclusive range, enforced by rclpy
    high: Optional[float] = None
    static: bool = False

    def descriptor(self) -> ParameterDescriptor:
        when = "static: change while unconfigured, applies on configure" if self.static \
            else "live: tunable with `ros2 param set`"
        descriptor = ParameterDescriptor(description=f"{self.description} ({when})")
        if self.low is not None:
            if isinstance(self.default, bool):
                pass
            elif isinstance(self.default, int):
                descriptor.integer_range = [IntegerRange(
                    from_value=int(self.low), to_value=int(self.high), step=0)]
            else:
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=float(self.low), to_value=float(self.high), step=0.0)]
        if isinstance(self.default, list) and not self.default:
            descriptor.type = Parameter.Type.STRING_ARRAY.value
        return descriptor


def declare(node, params: Iterable[Param]) -> None:
    for param in params:
        if isinstance(param.default, list) and not param.default:
            # An empty list has no type of its own: declare the type, then set the value.
            node.declare_parameter(param.name, Parameter.Type.STRING_ARRAY, param.descriptor())
            if not node.has_parameter(param.name) or \
                    node.get_parameter_or(param.name).type_ == Parameter.Type.NOT_SET:
                node.set_parameters([Parameter(param.name, Parameter.Type.STRING_ARRAY, [])])
        else:
            node.declare_parameter(param.name, param.default, param.descriptor())


def values(node, params: Iterable[Param]) -> Dict[str, Any]:
    out = {}
    for param in params:
        value = node.get_parameter(param.name).value
        out[param.name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def split_changes(params: List[Param], changes: List[Parameter]) -> Tuple[Dict[str, Any], List[str]]:
    """Return ({name: new value} of known params, [names of static ones among them])."""
    by_name = {p.name: p for p in params}
    updates, static = {}, []
    for change in changes:
        if change.name not in by_name:
            continue
        value = change.value
        updates[change.name] = list(value) if isinstance(value, (list, tuple)) else value
        if by_name[change.name].static:
            static.append(change.name)
    return updates, static


def common_params(model_param: str, model_description: str) -> List[Param]:
    """Parameters every dispider node has."""
    return [
        Param("preset", "tiny", "model preset from config/presets (tiny, qwen2vl_2b, ...): "
              "fills model, device and dtype where those are empty", static=True),
        Param(model_param, "", model_description + "; Hugging Face id, local folder or "
              "tiny:<family>; empty = from the preset", static=True),
        Param("device", "", "torch device: cpu, cuda:0, cuda:1 ...; empty = from the preset",
              static=True),
        Param("dtype", "", "float32 | float16 | bfloat16 | auto; empty = from the preset",
              static=True),
        Param("local_files_only", True, "never contact a model hub", static=True),
        Param("trust_remote_code", False, "run code shipped with a checkpoint (off: a "
              "checkpoint cannot execute code in this process)", static=True),
        Param("torch_threads", 0, "torch intra-op threads of this process; 0 = torch's "
              "default (all cores). Three nodes on a small CPU: 1 each", 0, 256, static=True),
        Param("autostart", False, "configure and activate on start-up without a lifecycle "
              "manager", static=True),
        Param("diagnostics_period_sec", 1.0, "period of /diagnostics messages", 0.1, 60.0),
    ]
