"""All three nodes in one process on one MultiThreadedExecutor (manual composition).

For small machines: one Python interpreter, one copy of torch; perception, decision and
reaction still run on their own threads (camera worker, executor threads, reaction worker).
Parameters use the same YAML (its /**/<node> keys match these node names).
"""
from __future__ import annotations

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

from dispider_ros.nodes.decision_node import DecisionNode
from dispider_ros.nodes.perception_node import PerceptionNode
from dispider_ros.nodes.reaction_node import ReactionNode


def main(args=None) -> None:
    rclpy.init(args=args)
    nodes = [PerceptionNode(), DecisionNode(), ReactionNode()]
    executor = MultiThreadedExecutor(num_threads=6)
    for node in nodes:
        executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for node in nodes:
            node.release()
        executor.shutdown(timeout_sec=1.0)
        for node in nodes:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
