"""Models that cannot be loaded, and trust_remote_code.

Core: each broken model source raises with a message that names it. Nodes (real processes
over DDS): configure returns FAILURE, the reason is logged, the node stays alive and
unconfigured with fault.configure_failed on /diagnostics, and it configures once the
parameter is fixed; trust_remote_code is off by default and logged loudly when turned on.
"""
import json
import shutil

import pytest

from dispider_ros.models import tiny
from dispider_ros.models.vision import VisionEncoder, VisionEncoderConfig
from dispider_ros.models.registry import load_reaction_vlm
from dispider_ros.models.vlm_config import ReactionVLMConfig
from graph_tools import Client, Graph, unique_namespace
from ros_tools import require_ros, wait_for


def broken_folders(root):
    """name -> (folder, text the error must contain)."""
    qwen = tiny.resolve_model_path("tiny:qwen2_vl")
    folders = {"missing": (root / "missing", "does not exist"),
               "no_config": (root / "no_config", "has no config.json"),
               "bad_json": (root / "bad_json", "not a valid JSON file"),
               "unknown_family": (root / "unknown_family", "no_such_family"),
               "no_weights": (root / "no_weights", "")}
    folders["no_config"][0].mkdir()
    folders["bad_json"][0].mkdir()
    (folders["bad_json"][0] / "config.json").write_text("{ \"model_type\": \"qwen2_vl\", ")
    folders["unknown_family"][0].mkdir()
    (folders["unknown_family"][0] / "config.json").write_text(json.dumps({"model_type": "no_such_family"}))
    shutil.copytree(qwen, folders["no_weights"][0], ignore=shutil.ignore_patterns("*.safetensors"))
    return folders


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    return broken_folders(tmp_path_factory.mktemp("broken-models"))


@pytest.mark.parametrize("name", ["missing", "no_config", "bad_json", "unknown_family", "no_weights"])
def test_a_broken_model_source_raises_naming_it(broken, name):
    folder, words = broken[name]
    for load in (lambda: load_reaction_vlm(ReactionVLMConfig(model=str(folder))),
                 lambda: VisionEncoder(VisionEncoderConfig(model=str(folder)))):
        with pytest.raises(Exception) as error:
            load()
        assert words in str(error.value), str(error.value)


def test_trust_remote_code_is_off_unless_asked_for():
    from dispider_ros.models.loading import LoadConfig
    from dispider_ros.core import schema

    assert LoadConfig(model="x").pretrained_kwargs()["trust_remote_code"] is False
    assert ReactionVLMConfig().trust_remote_code is False
    assert VisionEncoderConfig(model="x").trust_remote_code is False
    for node in schema.NODES:
        param = schema.param(node, "trust_remote_code")
        assert param.default is False and not param.live


def test_nodes_with_unloadable_models_stay_up_unconfigured_and_say_why(broken, tmp_path):
    require_ros()
    from diagnostic_msgs.msg import DiagnosticArray
    from lifecycle_msgs.msg import Transition

    common = {"autostart": True, "preset": "tiny", "diagnostics_period_sec": 0.5}
    cases = {  # namespace -> (node, parameters, text the logged reason must contain)
        "missing": ("reaction_node", {"vlm_model": str(broken["missing"][0])}, "does not exist"),
        "bad_json": ("reaction_node", {"vlm_model": str(broken["bad_json"][0])}, "not a valid JSON file"),
        "trusted": ("perception_node", {"trust_remote_code": True}, None),
    }
    base = unique_namespace("load")
    graphs = {case: Graph(tmp_path, f"{base}_{case}") for case in cases}
    for case, (node, params, _) in cases.items():
        graphs[case].log_dir = tmp_path / case
        graphs[case].log_dir.mkdir()
        graphs[case].start(node, {**common, **params})
    client = Client("")
    client.listen(DiagnosticArray, "/diagnostics")
    name = {case: f"{graphs[case].namespace.strip('/')}/{node}" for case, (node, _, _) in cases.items()}
    try:
        for case, (node, _, reason) in cases.items():
            if reason is None:
                continue
            wait_for(lambda: "configure failed" in graphs[case].log(node), 90, f"{case}: configure to fail")
            log = graphs[case].log(node)
            assert reason in log and str(broken[case][0]) in log, log[-2000:]
            assert graphs[case].alive(node)
            assert client.state(name[case]) == "unconfigured"

            def values():
                for array in reversed(client.messages("/diagnostics")):
                    for status in array.status:
                        if status.name.endswith(name[case]):
                            return {kv.key: kv.value for kv in status.values}
                return {}
            wait_for(lambda: values().get("fault.configure_failed") == "1", 10,
                     f"{case}: fault.configure_failed on /diagnostics")
            assert values()["lifecycle_state"] == "unconfigured"
        # Fixed parameter, configured again: the node recovers without a restart.
        (result,) = client.set_params(name["missing"], {"vlm_model": "tiny:qwen2_vl"})
        assert result.successful, result.reason
        assert client.transition(name["missing"], Transition.TRANSITION_CONFIGURE)
        assert client.state(name["missing"]) == "inactive"
        # trust_remote_code turned on: it loads, and says so loudly.
        client.wait_state(name["trusted"], "active", timeout=90)
        log = graphs["trusted"].log("perception_node")
        assert "trust_remote_code is ON" in log, log[-2000:]
        assert "[WARN]" in log.split("trust_remote_code is ON")[0].rsplit("\n", 1)[-1]
    finally:
        client.close()
        codes = {case: graph.stop() for case, graph in graphs.items()}
    assert all(code == 0 for result in codes.values() for code in result.values()), codes
