"""ROS parameters declared from the one schema (core/schema.py), with descriptors and ranges."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.parameter import Parameter

from dispider_ros.core.schema import Param


def descriptor(param: Param) -> ParameterDescriptor:
    """`ros2 param describe` text and the range rclpy enforces."""
    when = "live: tunable with `ros2 param set`" if param.live else \
        "static: change while unconfigured, applies on configure"
    text = param.description
    if param.choices:
        text += f"; one of {', '.join(repr(c) for c in param.choices)}"
    out = ParameterDescriptor(description=f"{text} ({when})")
    if param.low is not None and not isinstance(param.default, bool):
        if isinstance(param.default, int):
            out.integer_range = [IntegerRange(from_value=int(param.low), to_value=int(param.high),
                                              step=0)]
        else:
            out.floating_point_range = [FloatingPointRange(
                from_value=float(param.low), to_value=float(param.high), step=0.0)]
    if isinstance(param.default, list):
        out.type = Parameter.Type.STRING_ARRAY.value
    return out


def declare(node, params: Iterable[Param]) -> None:
    for param in params:
        if isinstance(param.default, list) and not param.default:
            # An empty list has no type of its own: declare the type, then set the value.
            node.declare_parameter(param.name, Parameter.Type.STRING_ARRAY, descriptor(param))
            if node.get_parameter_or(param.name).type_ == Parameter.Type.NOT_SET:
                node.set_parameters([Parameter(param.name, Parameter.Type.STRING_ARRAY, [])])
        else:
            node.declare_parameter(param.name, param.default, descriptor(param))


def values(node, params: Iterable[Param]) -> Dict[str, Any]:
    out = {}
    for param in params:
        value = node.get_parameter(param.name).value
        out[param.name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def split_changes(params: List[Param], changes: List[Parameter]) -> Tuple[Dict[str, Any], List[str]]:
    """Return ({name: new value} of known params, [names of static ones among them]).

    Raises ValueError naming the value when the schema refuses it (choices, list items).
    """
    by_name = {p.name: p for p in params}
    updates, static = {}, []
    for change in changes:
        if change.name not in by_name:
            continue
        value = change.value
        value = list(value) if isinstance(value, (list, tuple)) else value
        updates[change.name] = by_name[change.name].check(value)
        if not by_name[change.name].live:
            static.append(change.name)
    return updates, static
