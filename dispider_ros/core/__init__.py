"""The streaming core: sampling, clip segmentation, memory, decision and reaction.

Plain Python, numpy and torch; no rclpy and no message types, so the nodes, the offline
evaluator and the benchmarks share it.
"""
