"""Assigned query ids over DDS: two decision nodes in two namespaces never hand out the same id."""
from graph_tools import Client, Graph, unique_namespace
from ros_tools import require_ros, wait_for


def test_id_less_queries_get_ids_unique_across_namespaces(tmp_path):
    require_ros()
    from dispider_ros.msg import Query, Response

    namespaces = [unique_namespace("robot_a"), unique_namespace("robot_b")]
    graphs = [Graph(tmp_path / ns.strip("/"), ns) for ns in namespaces]
    clients = []
    try:
        for graph in graphs:
            graph.log_dir.mkdir()
            graph.start("decision_node", {"autostart": True, "preset": "tiny"})
        for ns in namespaces:
            client = Client(ns)
            clients.append(client)
            client.wait_state("decision_node", "active")
            client.listen(Response, "response")
            queries = client.publisher(Query, "query")
            for _ in range(2):  # an empty question is rejected, under the id assigned to it
                queries.publish(Query(text=""))
        for client in clients:
            wait_for(lambda: len(client.messages("response")) >= 2, 30, "two rejections")
        ids = []
        for ns, client in zip(namespaces, clients):
            replies = client.messages("response")
            assert {m.error_code for m in replies} == {Response.QUERY_REJECTED}
            assert all(m.query_id.startswith(f"{ns}/decision_node-") for m in replies), replies
            ids += [m.query_id for m in replies]
        assert len(set(ids)) == len(ids) == 4, ids
    finally:
        for client in clients:
            client.close()
        codes = [graph.stop() for graph in graphs]
    assert codes == [{"decision_node": 0}] * 2, [graph.log("decision_node")[-2000:] for graph in graphs]
