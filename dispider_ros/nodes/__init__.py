"""Thin rclpy adapters over dispider_ros.core: parameters, QoS, conversion, lifecycle."""
