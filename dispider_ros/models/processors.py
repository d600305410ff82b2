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
    """AutoProcessor, or (without torchvision) the same processor class assembled from parts
    (SmolVLM: `smolvlm_image_processor`, as SmolVLMProcessor cannot be imported at all)."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    try:
        return AutoProcessor.from_pretrained(path, use_fast=False, **kwargs)
    except ImportError as error:  # the video processor wants torchvision
        LOG.info("AutoProcessor unavailable (%s); assembling it without a video processor",
                 str(error).strip().splitlines()[0])
    config = AutoConfig.from_pretrained(path, **kwargs)
    model_type = config.model_type
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    if model_type == "smolvlm":  # SmolVLMProcessor's module imports its video processor
        image_processor = AutoImageProcessor.from_pretrained(path, use_fast=False, **kwargs)
        vision = config.vision_config
        seq_len = (vision.image_size // vision.patch_size) ** 2 // config.scale_factor ** 2
        return smolvlm_image_processor(image_processor, tokenizer, seq_len,
                                       getattr(tokenizer, "chat_template", None))
    processor_cls = getattr(transformers, PROCESSOR_MAPPING_NAMES[model_type])
    return processor_cls(image_processor=AutoImageProcessor.from_pretrained(path, use_fast=False, **kwargs),
                         tokenizer=tokenizer, video_processor=no_video_processor(),
                         chat_template=getattr(tokenizer, "chat_template", None))


def smolvlm_image_processor(image_processor, tokenizer, image_seq_len: int, chat_template=None):
    """SmolVLMProcessor's image half, for where torchvision is absent: an `Idefics3Processor`
    (the same `<fake_token_around_image><global-img><image>*n<fake_token_around_image>`
    expansion of each `<image>`, the same row/column expansion of split images) holding
    the checkpoint's own SmolVLMImageProcessor.

    Args:
        image_processor: a SmolVLMImageProcessor.
        tokenizer: the checkpoint's tokenizer (its image tokens are added if missing).
        image_seq_len: visual tokens per tile ((image_size // patch_size)^2 / scale_factor^2).
        chat_template: the checkpoint's chat template.
    """
    from transformers import Idefics3Processor

    class SmolVLMImageTextProcessor(Idefics3Processor):
        image_processor_class = "SmolVLMImageProcessor"

    return SmolVLMImageTextProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                     image_seq_len=image_seq_len, chat_template=chat_template)


def validate_image(image) -> None:
    """Raise ValueError unless image is a non-empty (H, W, 3) uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {desc} is not (H, W, 3) uint8 RGB")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {image.shape} is empty")



__all__ = ["no_video_processor", "load_processor", "smolvlm_image_processor", "validate_image"]
