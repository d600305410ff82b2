"""Shared loading rules: device, dtype, attention implementation, local-only loading."""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

LOG = logging.getLogger(__name__)

DTYPES = {
    "auto": None,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass
class LoadConfig:
    """Where and how a model is loaded.

    Args:
        model: Hugging Face id or local folder.
        device: torch device string, e.g. "cpu", "cuda:0".
        dtype: one of DTYPES; "auto" = bfloat16 on CUDA, float32 on CPU.
        local_files_only: never contact a hub (also forced by HF_HUB_OFFLINE=1).
        trust_remote_code: run code shipped with a checkpoint; off unless asked for.
        attn_implementation: "auto" (flash-attn when installed on CUDA, else sdpa), or a
            transformers name such as "sdpa", "eager", "flash_attention_2".
    """

    model: str = ""
    device: str = "cpu"
    dtype: str = "auto"
    local_files_only: bool = True
    trust_remote_code: bool = False
    attn_implementation: str = "auto"

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must name a Hugging Face id or a local folder, got empty")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"device {self.device!r} is not a torch device: {error}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} requested but CUDA is not available")

    @property
    def torch_dtype(self) -> torch.dtype:
        chosen = DTYPES[self.dtype]
        if chosen is not None:
            return chosen
        return torch.bfloat16 if torch.device(self.device).type == "cuda" else torch.float32

    def pretrained_kwargs(self) -> dict:
        """Keyword arguments shared by every from_pretrained call."""
        if self.trust_remote_code:
            LOG.warning("trust_remote_code is ON for %s: code shipped with the checkpoint "
                        "will run in this process", self.model)
        return {
            "local_files_only": self.local_files_only or os.environ.get("HF_HUB_OFFLINE") == "1",
            "trust_remote_code": self.trust_remote_code,
        }


def check_model_source(model: str, local_files_only: bool) -> None:
    """Raise FileNotFoundError early with a readable message for a missing model."""
    path = Path(model).expanduser()
    looks_local = model.startswith(("/", ".", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise FileNotFoundError(f"model folder {model!r} does not exist")
    if looks_local and not (path / "config.json").is_file():
        raise FileNotFoundError(f"model folder {model!r} has no config.json")
    if not looks_local and local_files_only:
        from huggingface_hub import try_to_load_from_cache

        if try_to_load_from_cache(model, "config.json") is None:
            raise FileNotFoundError(
                f"model {model!r} is not a local folder and not in the Hugging Face cache, "
                "and local_files_only is set (no hub access)")


def choose_attn_implementation(requested: str, device: str) -> str:
    """flash_attention_2 when asked for or when "auto" on CUDA with flash-attn installed."""
    if requested != "auto":
        return requested
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda and importlib.util.find_spec("flash_attn") is not None:
        LOG.info("attention: flash_attention_2 (flash-attn installed)")
        return "flash_attention_2"
    reason = "flash-attn not installed" if on_cuda else "not on CUDA"
    LOG.info("attention: sdpa (%s)", reason)
    return "sdpa"


def free_device_memory(device: str) -> None:
    """Return cached CUDA blocks to the driver after a model is dropped."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
