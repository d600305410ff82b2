"""All three nodes in one process on one MultiThreadedExecutor (manual composition).

For small machines: one Python interpreter, one copy of torch; perception, decision and
reaction still run on their own threads (camera worker, executor threads, reaction worker).
Parameters use the same YAML (its /**/<node> keys match these node names).
"""
from __future__ import annotations

import rclpy

from dispider_ros.nodes.base import spin
from dispider_ros.nodes.decision_node import DecisionNode
from dispider_ros.nodes.perception_node import PerceptionNode
from dispider_ros.nodes.reaction_node import ReactionNode


def main(args=None) -> None:
    rclpy.init(args=args)
    spin([PerceptionNode(), DecisionNode(), ReactionNode()], num_threads=6)


if __name__ == "__main__":
    main()
