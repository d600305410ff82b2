"""Sampled frames between perception and reaction: Frame <-> dispider_ros/SampledImage.

Raw frames travel as rgb8 (the RGB array perception already decoded, no second
conversion); JPEG frames (sampled_image_format: jpeg) cut the bytes on links between
hosts about 10-20x at a small cost in fidelity.
"""
from __future__ import annotations

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from dispider_ros.core.types import Frame
from dispider_ros.imaging import ConversionConfig, compressed_to_rgb8, to_rgb8
from dispider_ros.msg import SampledImage
from dispider_ros.nodes.convert import header, to_sec


def frame_to_msg(frame: Frame, image_format: str = "raw", jpeg_quality: int = 85,
                 clip_index: int = -1) -> SampledImage:
    """Frame ((H, W, 3) uint8 RGB) -> SampledImage, raw rgb8 or JPEG (clip_index: perception's
    clip of the frame, -1 = unknown)."""
    hdr = header(frame.stamp, frame.frame_id)
    msg = SampledImage(header=hdr, camera_id=frame.camera_id, frame_index=int(frame.index),
                       clip_index=int(clip_index), format=image_format)
    rgb = np.ascontiguousarray(frame.image)
    if image_format == SampledImage.FORMAT_JPEG:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                                [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
        if not ok:
            raise ValueError(f"JPEG encoding of {frame.camera_id} #{frame.index} failed")
        msg.compressed = CompressedImage(header=hdr, format="rgb8; jpeg compressed bgr8",
                                         data=data.tobytes())
    elif image_format == SampledImage.FORMAT_RAW:
        height, width = rgb.shape[:2]
        msg.image = Image(header=hdr, height=height, width=width, encoding="rgb8",
                          is_bigendian=0, step=width * 3, data=rgb.tobytes())
    else:
        raise ValueError(f"sampled image format {image_format!r} is not raw or jpeg")
    return msg


def frame_from_msg(msg: SampledImage, config: ConversionConfig) -> Frame:
    """SampledImage -> Frame (raises imaging.ImageError on a malformed image)."""
    if msg.format == SampledImage.FORMAT_JPEG:
        rgb = compressed_to_rgb8(msg.compressed, config)
    else:
        rgb = to_rgb8(msg.image, config)
    return Frame(camera_id=msg.camera_id, stamp=to_sec(msg.header.stamp),
                 index=int(msg.frame_index), image=rgb, frame_id=msg.header.frame_id)
