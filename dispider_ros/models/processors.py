"""Processor loading without torchvision, and the input check every backend applies."""
from __future__ import annotations

import logging

import numpy as np

LOG = logging.getLogger(__name__)


def no_video_processor():
    """A placeholder video processor for Qwen-style processors where torchvision is absent.

    ProcessorMixin checks its video processor against `transformers.BaseVideoProcessor`,
    which is a dummy class without torchvision; the placeholder derives from both.
    """
    import transformers
    from transformers.video_processing_utils import BaseVideoProcessor

    bases = (BaseVideoProcessor,)
    if transformers.BaseVideoProcessor is not BaseVideoProcessor:
        bases += (transformers.BaseVideoProcessor,)

    class NoVideoProcessor(*bases):
        def __call__(self, *args, **kwargs):
            raise RuntimeError("video input needs torchvision; feed frames as images")

    return NoVideoProcessor()


def load_processor(path: str, **kwargs):
    """AutoProcessor, or (without torchvision) the same processor class assembled from parts."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    try:
        return AutoProcessor.from_pretrained(path, use_fast=False, **kwargs)
    except ImportError as error:  # the video processor wants torchvision
        LOG.info("AutoProcessor unavailable (%s); assembling it without a video processor",
                 str(error).strip().splitlines()[0])
    model_type = AutoConfig.from_pretrained(path, **kwargs).model_type
    processor_cls = getattr(transformers, PROCESSOR_MAPPING_NAMES[model_type])
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    return processor_cls(image_processor=AutoImageProcessor.from_pretrained(path, use_fast=False, **kwargs),
                         tokenizer=tokenizer, video_processor=no_video_processor(),
                         chat_template=getattr(tokenizer, "chat_template", None))


def validate_image(image) -> None:
    """Raise ValueError unless image is a non-empty (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {desc} is not (H, W, 3) uint8 RGB")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {image.shape} is empty")



__all__ = ["no_video_processor", "load_processor", "validate_image"]
