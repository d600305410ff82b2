"""Runnable examples (`python -m dispider_ros.examples.<name>`)."""
