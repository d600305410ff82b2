"""Publish footage as sensor_msgs/Image with source stamps (demo, tests, live replay)."""
from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image

from dispider_ros.nodes.convert import header


def rgb_to_image(rgb: np.ndarray, stamp: float, frame_id: str = "camera") -> Image:
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    height, width = rgb.shape[:2]
    return Image(header=header(stamp, frame_id), height=height, width=width, encoding="rgb8",
                 is_bigendian=0, step=width * 3, data=rgb.tobytes())
