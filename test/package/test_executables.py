"""Every installed executable starts and exits cleanly on SIGINT (Ctrl-C)."""
import pytest


from graph_tools import Client, Graph, unique_namespace
from ros_tools import require_ros

NODE_EXECUTABLES = {"perception_node": ["perception_node"], "decision_node": ["decision_node"],
                    "reaction_node": ["reaction_node"],
                    "dispider_graph": ["perception_node", "decision_node", "reaction_node"]}


@pytest.mark.parametrize("executable", sorted(NODE_EXECUTABLES))
def test_node_executable_starts_and_stops_on_sigint(executable, tmp_path):
    require_ros()
    namespace = unique_namespace("exe")
    graph = Graph(tmp_path, namespace)
    graph.start(executable, {"autostart": True}, executable=executable)
    client = Client(namespace)
    try:
        for node in NODE_EXECUTABLES[executable]:
            client.wait_state(node, "active")
    finally:
        client.close()
        codes = graph.stop()
    assert codes == {executable: 0}, graph.log(executable)[-3000:]
