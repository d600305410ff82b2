"""Reaction backends by family: config.json's model_type -> the class that serves it.

A backend implements `core.protocols.ReactionVLM` and is built as `cls(config, path)`
(config: ReactionVLMConfig, path: resolved folder or hub id). Plugging in another family
(SmolVLM/Idefics3, LLaVA-OneVision) means one file holding all of that family's
transformers specifics, registered with `register_backend(model_type, cls)`, providing:
1. `encode_frame`: its vision tower + connector/projector for one frame, returning
   `FrameTokens` whose rows are exactly what its forward would place at its image-token
   positions (Idefics3: `model.model.get_image_features` after the pixel-shuffle
   connector, image splitting off so one frame = one tile; LLaVA-OneVision: vision tower
   + `multi_modal_projector`, with the anyres/`image_newline` layout flattened into rows),
   with a grid describing their layout ((1, n) if it has none).
2. `generate`: its chat format and image token (`<image>` with Idefics3's
   `<fake_token_around_image>` wrappers; LLaVA's `<image>`), the same splice into
   `inputs_embeds`, and its positions: these families use plain 1-D positions, so the
   prefix cache can be extended with `cache_position` alone and `generate()` needs no
   `rope_deltas`. Pooled frames change n, which both families accept because the splice
   happens after their projector.
3. `count_tokens`, `hidden_size`, `frame_overhead_tokens`, `release_memory`, `close`.
The KV-prefix bookkeeping in `qwen2_vl.Qwen2VLBackend` (`_assemble`, `_prefill`) is
family-neutral apart from `_positions`; a subclass may override `_render`, `_positions`
and `_vision_forward` instead of starting from scratch.
"""
from __future__ import annotations

from typing import Dict, Optional, Type

from dispider_ros.core.protocols import ReactionVLM
from dispider_ros.models import tiny
from dispider_ros.models.loading import check_model_source
from dispider_ros.models.qwen2_vl import Qwen2VLBackend
from dispider_ros.models.remote import RemoteConfig, is_remote, load_remote_vlm
from dispider_ros.models.qwen3_vl import Qwen3VLBackend
from dispider_ros.models.smolvlm import SmolVLMBackend
from dispider_ros.models.vlm_config import ReactionVLMConfig

# What a backend class must provide: the Protocol's public members.
REQUIRED_MEMBERS = tuple(sorted(name for name in vars(ReactionVLM) if not name.startswith("_")))

BACKENDS: Dict[str, Type] = {
    "qwen2_vl": Qwen2VLBackend,
    "qwen2_5_vl": Qwen2VLBackend,
    # Qwen3-VL: DeepStack features ride in FrameTokens.extra
    "qwen3_vl": Qwen3VLBackend,
    "qwen3_vl_moe": Qwen3VLBackend,
    # SmolVLM2 (and Idefics3, its v1): the CPU-robot family (models/smolvlm.py)
    "smolvlm": SmolVLMBackend,
    "idefics3": SmolVLMBackend,
}


def register_backend(model_type: str, backend: Type) -> None:
    """Serve checkpoints whose config.model_type is model_type with backend(config, path)."""
    if not isinstance(backend, type):
        raise TypeError(f"backend {backend!r} must be a class built as backend(config, path)")
    missing = [name for name in REQUIRED_MEMBERS if not hasattr(backend, name)]
    if missing:
        raise TypeError(f"backend {backend.__name__} lacks {missing} of core.protocols.ReactionVLM")
    BACKENDS[model_type] = backend


def load_reaction_vlm(config: ReactionVLMConfig, remote: Optional[RemoteConfig] = None) -> ReactionVLM:
    """Load config.model with the backend of its family (config.json's model_type), or a
    model on a server ("openai:<served model name>", models.remote).

    Args:
        config: model, device, dtype and generation settings.
        remote: the server settings of an "openai:" model (None = the schema's defaults).
    Raises:
        FileNotFoundError: the model folder or cache entry is missing.
        ValueError: no backend serves the model's family.
    """
    from transformers import AutoConfig

    if is_remote(config.model):
        return load_remote_vlm(config, remote, load_reaction_vlm)
    path = tiny.resolve_model_path(config.model)
    load = config.load_config(path)
    kwargs = load.pretrained_kwargs()
    check_model_source(path, kwargs["local_files_only"])
    model_type = AutoConfig.from_pretrained(path, **kwargs).model_type
    if model_type not in BACKENDS:
        raise ValueError(f"model {config.model!r} is a {model_type!r} model; reaction backends exist for "
                         f"{sorted(BACKENDS)} (register_backend() adds one)")
    return BACKENDS[model_type](config, path)


__all__ = ["BACKENDS", "register_backend", "load_reaction_vlm"]
