"""One parameter schema: YAML, declared ROS parameters, core defaults and the offline
replay's settings all come from dispider_ros/core/schema.py and agree by construction."""
from pathlib import Path

import pytest
import yaml

from dispider_ros import compose, settings
from dispider_ros.core import schema
from dispider_ros.core.decision import DecisionConfig
from dispider_ros.core.memory import MemoryConfig
from dispider_ros.core.reaction import ReactionConfig
from dispider_ros.core.sampler import SamplerConfig
from dispider_ros.core.segmenter import SegmenterConfig
from dispider_ros.eval.replay import ReplayOptions
from ros_tools import require_ros

REPO = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO / "config" / "dispider.yaml"


def test_every_key_of_the_shipped_yaml_is_in_the_schema():
    data = yaml.safe_load(PARAMS_FILE.read_text())
    for pattern, block in data.items():
        nodes = [n for n in schema.NODES if settings.pattern_matches(pattern, f"/{n}")]
        assert nodes, f"{pattern} matches no node"
        for name, value in block["ros__parameters"].items():
            for node in nodes:
                assert schema.check(node, name, value) == value, (pattern, name)


def test_a_key_outside_the_schema_or_a_bad_value_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("/**/reaction_node:\n  ros__parameters:\n    sample_fps: 2.0\n")
    with pytest.raises(ValueError, match="reaction_node has no parameter 'sample_fps'"):
        settings.node_settings("reaction_node", bad)
    bad.write_text("/**/perception_node:\n  ros__parameters:\n    sample_fps: 0.0\n")
    with pytest.raises(ValueError, match="sample_fps 0.0 must be in"):
        settings.node_settings("perception_node", bad)
    bad.write_text("/**/perception_node:\n  ros__parameters:\n    sampled_image_format: png\n")
    with pytest.raises(ValueError, match="sampled_image_format 'png' is not one of"):
        settings.node_settings("perception_node", bad)


def test_core_and_model_defaults_are_the_schemas():
    from dispider_ros.models.vision import VisionEncoderConfig
    from dispider_ros.models.vlm_config import ReactionVLMConfig

    assert SamplerConfig().sample_fps == schema.default("perception_node", "sample_fps")
    segmenter = SegmenterConfig()
    assert (segmenter.similarity_threshold, segmenter.min_clip_frames, segmenter.max_clip_frames) == \
        tuple(schema.default("perception_node", n) for n in
              ("clip_similarity_threshold", "min_clip_frames", "max_clip_frames"))
    decision = DecisionConfig()
    for name in compose.DECISION_FIELDS:
        assert getattr(decision, name) == schema.default("decision_node", name), name
    memory, reaction = MemoryConfig(), ReactionConfig()
    assert (memory.max_tokens, memory.protected_frames) == (
        schema.default("reaction_node", "max_tokens"), schema.default("reaction_node", "protected_frames"))
    for name in ("max_queue", "preempt_same_query", "prompt_cameras", "evidence_timeout_sec"):
        assert getattr(reaction, name) == schema.default("reaction_node", name), name
    assert VisionEncoderConfig().batch_size == schema.default("perception_node", "batch_size")
    vlm = ReactionVLMConfig()
    assert (vlm.max_new_tokens, vlm.temperature) == (
        schema.default("reaction_node", "max_new_tokens"), schema.default("reaction_node", "temperature"))


def test_the_builders_turn_settings_into_the_configs_the_settings_say():
    perception = settings.node_settings("perception_node", PARAMS_FILE, {"sample_fps": 4.0})
    assert compose.perception_config(perception).sampler.sample_fps == 4.0
    reaction = settings.node_settings("reaction_node", PARAMS_FILE, {"max_tokens": 1234})
    assert compose.reaction_config(reaction).memory.max_tokens == 1234
    decision = settings.node_settings("decision_node", PARAMS_FILE, {"smoothing": 0.2},
                                      namespace="/robot")
    assert compose.decision_config(decision).smoothing == 0.2


def test_schema_ranges_are_checked_like_rclpy_would():
    sample_fps = schema.param("perception_node", "sample_fps")
    assert sample_fps.check(5) == 5.0  # an int for a double is promoted, as YAML writes it
    for bad in (0.0, 5000.0, float("nan"), "2"):
        with pytest.raises(ValueError, match="sample_fps"):
            sample_fps.check(bad)
    with pytest.raises(ValueError, match="image_topics"):
        schema.check("perception_node", "image_topics", ["a", 3])


@pytest.mark.ros
def test_declared_ros_parameters_and_the_offline_replay_read_the_same_values():
    """Each node, given the shipped YAML, declares exactly the schema's parameters (with
    its ranges and descriptions) and ends with the values the offline replay computes."""
    require_ros()
    import rclpy
    from rclpy.context import Context

    from dispider_ros.nodes.decision_node import DecisionNode
    from dispider_ros.nodes.params import values
    from dispider_ros.nodes.perception_node import PerceptionNode
    from dispider_ros.nodes.reaction_node import ReactionNode

    options = ReplayOptions(params_file=PARAMS_FILE, preset="tiny")
    for node_class in (PerceptionNode, DecisionNode, ReactionNode):
        context = Context()
        rclpy.init(args=["--ros-args", "--params-file", str(PARAMS_FILE), "-p", "autostart:=false"],
                   context=context)
        try:
            node = node_class(context=context)
            name = node_class.NODE
            declared = values(node, schema.params(name))
            expected = options.settings(name)
            expected["autostart"] = False  # the -p above
            assert declared == expected, name
            for param in schema.params(name):
                descriptor = node.describe_parameter(param.name)
                assert descriptor.description.startswith(param.description), param.name
                ranges = list(descriptor.floating_point_range) + list(descriptor.integer_range)
                if param.low is not None and not isinstance(param.default, bool):
                    assert (ranges[0].from_value, ranges[0].to_value) == (param.low, param.high)
                else:
                    assert not ranges, param.name
            node.destroy_node()
        finally:
            rclpy.shutdown(context=context)


def test_the_readme_parameter_table_is_the_schemas():
    readme = (REPO / "README.md").read_text()
    begin, end = "<!-- schema:begin -->\n", "\n<!-- schema:end -->"
    assert begin in readme and end in readme
    table = readme[readme.index(begin) + len(begin):readme.index(end)]
    assert table == schema.markdown_table(), "regenerate it: python -m dispider_ros.core.schema"
