"""Lifecycle transitions of a real node process, including a configure that fails."""
from lifecycle_msgs.msg import Transition

from graph_tools import Client, Graph, unique_namespace
from ros_tools import require_ros, wait_for


def test_bad_model_fails_configure_then_recovers(tmp_path):
    require_ros()
    namespace = unique_namespace("lifecycle")
    graph = Graph(tmp_path, namespace)
    graph.start("perception_node", {"vision_model": "/nonexistent/siglip", "autostart": False})
    client = Client(namespace)
    try:
        client.wait_state("perception_node", "unconfigured")
        # started without autostart, it says so once, and how to go on
        wait_for(lambda: "waiting to be configured" in graph.log("perception_node"), 10,
                 "the line saying the node waits to be configured")
        (line,) = [x for x in graph.log("perception_node").splitlines() if "waiting to be" in x]
        assert f"ros2 lifecycle set {namespace}/perception_node configure" in line
        assert "-p autostart:=true" in line
        assert not client.transition("perception_node", Transition.TRANSITION_CONFIGURE)
        assert graph.alive("perception_node")
        assert client.state("perception_node") == "unconfigured"
        wait_for(lambda: "/nonexistent/siglip" in graph.log("perception_node")
                 and "configure failed" in graph.log("perception_node"), 10,
                 "the logged reason naming the missing model")
        # Static parameters may change while unconfigured; the next configure uses them.
        (result,) = client.set_params("perception_node", {"vision_model": "tiny:siglip"})
        assert result.successful, result.reason
        assert client.transition("perception_node", Transition.TRANSITION_CONFIGURE)
        assert client.state("perception_node") == "inactive"
        (result,) = client.set_params("perception_node", {"vision_model": "x"})
        assert not result.successful  # read-only while configured
        assert client.transition("perception_node", Transition.TRANSITION_ACTIVATE)
        assert client.state("perception_node") == "active"
        assert client.transition("perception_node", Transition.TRANSITION_DEACTIVATE)
        assert client.transition("perception_node", Transition.TRANSITION_CLEANUP)
        assert client.state("perception_node") == "unconfigured"
        wait_for(lambda: "models released" in graph.log("perception_node"), 10, "cleanup log")
        assert client.transition("perception_node",
                                 Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert client.state("perception_node") == "finalized"
    finally:
        client.close()
        codes = graph.stop()
    assert codes == {"perception_node": 0}, graph.log("perception_node")[-2000:]
