"""What a reaction model loads and how it generates (any backend family)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from dispider_ros.core import schema
from dispider_ros.models.loading import DTYPES, LoadConfig

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant watching live camera streams. Answer briefly."


@dataclass
class ReactionVLMConfig:
    """Args:
        model: Hugging Face id, local folder, or "tiny:qwen2_vl".
        device: torch device string ("cpu", "cuda:0", ...).
        dtype: float32 | float16 | bfloat16 | auto.
        attn_implementation: "auto", "sdpa", "eager", "flash_attention_2".
        local_files_only: never contact a hub.
        trust_remote_code: run code shipped with the checkpoint.
        max_new_tokens: answer length limit, >= 1.
        min_new_tokens: end-of-answer suppressed before this many tokens, >= 0.
        temperature: 0 = greedy decoding, > 0 = sampling.
        top_p: nucleus sampling mass in (0, 1] (sampling only).
        min_pixels, max_pixels: per-frame pixel range for the image processor's resize
            (None = the checkpoint's own); fewer pixels = fewer visual tokens per frame.
        kv_reuse: keep the prefilled buffer prefix across triggers.
        system_prompt: the system message.
        frame_label: text before a labelled frame that names its camera, formatted with
            camera_id, stamp, frame_index ("" = none); tells the model which camera and when.
        time_label: the same for a labelled frame that does not name its camera.
        retrieval_header: text before the keyframes of retrieved clips (after the memory).
    """

    model: str = "tiny:qwen2_vl"
    device: str = "cpu"
    dtype: str = "auto"
    attn_implementation: str = "auto"
    local_files_only: bool = True
    trust_remote_code: bool = False
    max_new_tokens: int = schema.default("reaction_node", "max_new_tokens")
    min_new_tokens: int = schema.default("reaction_node", "min_new_tokens")
    temperature: float = schema.default("reaction_node", "temperature")
    top_p: float = 1.0
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    kv_reuse: bool = True
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    frame_label: str = "{camera_id} {stamp:.1f}s"
    time_label: str = "{stamp:.1f}s"
    retrieval_header: str = "Earlier clips:\n"

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model {self.model!r} must name a Hugging Face id, folder or tiny:<family>")
        if not isinstance(self.device, str):
            raise TypeError(f"device {self.device!r} must be a string such as 'cpu' or 'cuda:0'")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        for name, low in (("max_new_tokens", 1), ("min_new_tokens", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} {value!r} must be an int >= {low}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} > max_new_tokens {self.max_new_tokens}")
        if not (self.temperature >= 0.0):  # also rejects NaN
            raise ValueError(f"temperature {self.temperature!r} must be >= 0")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p {self.top_p!r} must be in (0, 1]")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 28 * 28):
                raise ValueError(f"{name} {value!r} must be None or an int >= {28 * 28}")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        for name in ("frame_label", "time_label"):
            try:
                getattr(self, name).format(camera_id="cam", stamp=0.0, frame_index=0)
            except (KeyError, IndexError, ValueError, AttributeError) as error:
                raise ValueError(f"{name} {getattr(self, name)!r} is not a valid template: {error}") from None

    def load_config(self, model_path: str) -> LoadConfig:
        return LoadConfig(model=model_path, device=self.device, dtype=self.dtype,
                          local_files_only=self.local_files_only,
                          trust_remote_code=self.trust_remote_code,
                          attn_implementation=self.attn_implementation)


__all__ = ["ReactionVLMConfig", "DEFAULT_SYSTEM_PROMPT"]
