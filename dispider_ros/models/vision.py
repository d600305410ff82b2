"""Vision (and matching text) encoder role: SigLIP or CLIP family through transformers.

Images and texts go through the same dual-encoder checkpoint, so their embeddings share
one space and `match_calibration()` turns a cosine similarity into a match probability:
SigLIP was trained with sigmoid(exp(t) * cos + b), so its (exp(t), b) are used as they
are; CLIP was trained with a softmax, which has no absolute scale, so a documented
stand-in centre is used (see CLIP_MATCH_CENTER).

Preprocessing: with `fast_preprocess` (default) images are resized with OpenCV and
normalised with the checkpoint's own processor settings (size, crop, mean, std), which is
several times faster than the PIL path for camera-sized frames; shrinking uses INTER_AREA
(2x2 halvings, then one final step) because it averages like PIL's antialiased resize.
`fast_preprocess=False` uses the checkpoint's processor unchanged.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from dispider_ros.core import schema
from dispider_ros.models import tiny
from dispider_ros.models.loading import (DTYPES, LoadConfig, check_model_source,
                                         choose_attn_implementation, free_device_memory)

LOG = logging.getLogger(__name__)

FAMILIES = ("siglip", "clip")
# CLIP ViT-B cosine similarities of matching caption/image pairs sit near 0.30 and of
# unrelated pairs near 0.15: sigmoid(100 * (cos - 0.25)) puts 0.5 between them.
CLIP_MATCH_CENTER = 0.25


@dataclass
class VisionEncoderConfig:
    """Args:
        model: Hugging Face id, local folder, or "tiny:siglip".
        device: torch device string ("cpu", "cuda:0", ...).
        dtype: float32 | float16 | bfloat16 | auto.
        batch_size: images per forward pass, >= 1.
        local_files_only: never contact a hub.
        trust_remote_code: run code shipped with the checkpoint.
        attn_implementation: "auto", "sdpa", "eager", "flash_attention_2".
        fast_preprocess: OpenCV resize + normalise instead of the processor's PIL path.
    """

    model: str = "tiny:siglip"
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = schema.default("perception_node", "batch_size")
    local_files_only: bool = True
    trust_remote_code: bool = False
    attn_implementation: str = "auto"
    fast_preprocess: bool = True

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model {self.model!r} must name a Hugging Face id, folder or tiny:<family>")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        if not isinstance(self.batch_size, int) or isinstance(self.batch_size, bool) or \
                not (1 <= self.batch_size <= 4096):
            raise ValueError(f"batch_size {self.batch_size!r} must be an int in [1, 4096]")
        if not isinstance(self.device, str):
            raise TypeError(f"device {self.device!r} must be a string such as 'cpu' or 'cuda:0'")
        self.load_config(self.model)  # validates device (and CUDA presence) early

    def load_config(self, model_path: str) -> LoadConfig:
        return LoadConfig(model=model_path, device=self.device, dtype=self.dtype,
                          local_files_only=self.local_files_only,
                          trust_remote_code=self.trust_remote_code,
                          attn_implementation=self.attn_implementation)


class VisionEncoder:
    """Frame and text embeddings from one SigLIP/CLIP checkpoint.

    Args:
        config: what to load and where; loading happens in the constructor and raises
            FileNotFoundError (missing model) or ValueError (unsupported family).
    """

    def __init__(self, config: VisionEncoderConfig):
        from transformers import AutoConfig, AutoModel, AutoProcessor

        self.config = config
        path = tiny.resolve_model_path(config.model)
        load = config.load_config(path)
        kwargs = load.pretrained_kwargs()
        check_model_source(path, kwargs["local_files_only"])
        family = getattr(AutoConfig.from_pretrained(path, **kwargs), "model_type", "")
        if family not in FAMILIES:
            raise ValueError(f"model {config.model!r} is a {family!r} model; the vision encoder "
                             f"needs one of {FAMILIES}")
        self.processor = AutoProcessor.from_pretrained(path, use_fast=False, **kwargs)
        model = AutoModel.from_pretrained(
            path, dtype=load.torch_dtype,
            attn_implementation=choose_attn_implementation(config.attn_implementation, config.device),
            **kwargs)
        self.family = family
        self.model: Optional[torch.nn.Module] = model.to(config.device).eval()
        self.device = torch.device(config.device)
        self.dtype = load.torch_dtype
        self.dim = int(model.config.projection_dim if family == "clip"
                       else model.config.vision_config.hidden_size)
        self._prep = _FastPreprocess.from_processor(self.processor.image_processor) \
            if config.fast_preprocess else None
        self.last_timing = {"preprocess_ms": 0.0, "forward_ms": 0.0, "frames": 0}
        LOG.info("vision encoder %s (%s, dim %d) on %s %s", config.model, family, self.dim,
                 config.device, str(self.dtype).replace("torch.", ""))

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embed frames.

        Args:
            images: (H, W, 3) uint8 RGB arrays (sizes may differ).
        Returns:
            (N, D) float32, rows L2-normalised.
        """
        model = self._require_model()
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        prep_s = fwd_s = 0.0
        for start in range(0, len(images), self.config.batch_size):
            chunk = images[start:start + self.config.batch_size]
            t0 = time.perf_counter()
            pixels = self._pixels(chunk)  # (B, 3, S, S)
            t1 = time.perf_counter()
            with torch.inference_mode():
                feats = model.get_image_features(pixel_values=pixels)  # (B, D)
                feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            out[start:start + len(chunk)] = feats.cpu().numpy()
            prep_s += t1 - t0
            fwd_s += time.perf_counter() - t1
        self.last_timing = {"preprocess_ms": prep_s * 1e3, "forward_ms": fwd_s * 1e3,
                            "frames": len(images)}
        return out

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts with the same checkpoint's text tower.

        Args:
            texts: strings (truncated to the model's text length).
        Returns:
            (N, D) float32, rows L2-normalised.
        """
        model = self._require_model()
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, got one string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.family == "siglip":
            # SigLIP was trained on texts padded to a fixed length and pools the last position.
            length = int(model.config.text_config.max_position_embeddings)
            enc = self.processor.tokenizer(list(texts), padding="max_length", truncation=True,
                                           max_length=length, return_tensors="pt")
        else:
            enc = self.processor.tokenizer(list(texts), padding=True, truncation=True,
                                           return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.inference_mode():
            feats = model.get_text_features(**enc)  # (N, D)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy()

    def match_calibration(self) -> Tuple[float, float]:
        """(scale, bias) so that sigmoid(scale * cos + bias) is a match probability.

        SigLIP: its own (exp(logit_scale), logit_bias), the sigmoid it was trained with.
        CLIP: its own exp(logit_scale) (100 for released checkpoints) with the bias
        -scale * CLIP_MATCH_CENTER, since its softmax training fixed no absolute bias.
        """
        model = self._require_model()
        scale = float(model.logit_scale.detach().float().exp())
        if self.family == "siglip":
            return scale, float(model.logit_bias.detach().float())
        return scale, -scale * CLIP_MATCH_CENTER

    def close(self) -> None:
        """Drop the model and return device memory; the encoder is unusable afterwards."""
        if self.model is not None:
            self.model = None
            free_device_memory(self.config.device)
            LOG.info("vision encoder %s closed", self.config.model)

    def _require_model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("vision encoder is closed")
        return self.model

    def _pixels(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        for i, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                    or image.shape[2] != 3:
                desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image)
                raise ValueError(f"image {i}: {desc} is not (H, W, 3) uint8 RGB")
        if self._prep is not None:
            batch = torch.from_numpy(np.stack([self._prep(im) for im in images]))
        else:
            batch = self.processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]
        return batch.to(self.device, self.dtype)


@dataclass
class _FastPreprocess:
    """OpenCV equivalent of a SigLIP/CLIP image processor's resize, crop and normalise."""

    resize: Optional[Tuple[int, int]]  # (height, width), exact resize
    shortest_edge: Optional[int]  # or: resize shortest edge, keep aspect
    crop: Optional[Tuple[int, int]]  # (height, width) centre crop
    scale: np.ndarray  # (3,) per-channel multiplier = rescale_factor / std
    offset: np.ndarray  # (3,) per-channel offset = -mean / std

    @classmethod
    def from_processor(cls, proc) -> Optional["_FastPreprocess"]:
        size = dict(getattr(proc, "size", None) or {})
        resize = shortest = crop = None
        if not getattr(proc, "do_resize", True):
            size = {}
        if "height" in size and "width" in size:
            resize = (int(size["height"]), int(size["width"]))
        elif "shortest_edge" in size:
            shortest = int(size["shortest_edge"])
        else:
            LOG.info("processor size %r has no fast path; using the processor", size)
            return None
        if getattr(proc, "do_center_crop", False):
            c = proc.crop_size
            crop = (int(c["height"]), int(c["width"]))
        factor = float(proc.rescale_factor) if getattr(proc, "do_rescale", True) else 1.0
        if getattr(proc, "do_normalize", True):
            mean = np.asarray(proc.image_mean, np.float32)
            std = np.asarray(proc.image_std, np.float32)
        else:
            mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
        return cls(resize, shortest, crop, (factor / std).astype(np.float32),
                   (-mean / std).astype(np.float32))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        if self.resize is not None:
            out_h, out_w = self.resize
        elif h <= w:  # same rounding as transformers' get_resize_output_image_size
            out_h, out_w = self.shortest_edge, int(self.shortest_edge * w / h)
        else:
            out_h, out_w = int(self.shortest_edge * h / w), self.shortest_edge
        # Halve with INTER_AREA while the result stays >= the target: exact 2x2 box means on
        # OpenCV's fast integer path (~25x cheaper than one non-integer INTER_AREA step
        # from 1280x720), then one INTER_AREA step to the final size.
        while h % 2 == 0 and w % 2 == 0 and h // 2 >= out_h and w // 2 >= out_w:
            image = cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
            h, w = h // 2, w // 2
        shrink = out_h < h or out_w < w
        resized = cv2.resize(image, (out_w, out_h),
                             interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
        if self.crop is not None:
            ch, cw = self.crop
            top, left = max(0, (out_h - ch) // 2), max(0, (out_w - cw) // 2)
            resized = resized[top:top + ch, left:left + cw]
        pixels = resized.astype(np.float32) * self.scale + self.offset  # (S, S, 3)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))  # (3, S, S)


__all__: List[str] = ["VisionEncoderConfig", "VisionEncoder", "CLIP_MATCH_CENTER"]
