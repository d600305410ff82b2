"""Offline evaluation: annotations, benchmark scorers (OVO-Bench, StreamingBench, ET-Bench)
and our proactive timing metrics. Pure Python + numpy; no ROS imports."""
