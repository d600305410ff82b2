"""Tiny random-weight models of the real families, built locally for tests, CI and demos.

A model spec "tiny:<family>" resolves to a folder under the cache (DISPIDER_CACHE, else
~/.cache/dispider_ros/tiny); the folder is built once with save_pretrained and then
loaded through the very same from_pretrained path a real checkpoint uses.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

LOG = logging.getLogger(__name__)

PREFIX = "tiny:"
# family -> module with build(folder: Path) -> None (or build_<family>(folder), where one
# module serves several families), and optionally cache_key() -> str (what it trained on)
BUILDERS = {
    "siglip": "dispider_ros.models.tiny_siglip",
    "qwen2_vl": "dispider_ros.models.tiny_qwen2_vl",
    # Qwen3-VL dense and MoE: one module, whose build_qwen3_vl_moe builds the MoE
    "qwen3_vl": "dispider_ros.models.tiny_qwen3_vl",
    "qwen3_vl_moe": "dispider_ros.models.tiny_qwen3_vl",
    "smolvlm": "dispider_ros.models.tiny_smolvlm",
    # trained on dispider_ros.world (knows its scenes and questions; see its docstring)
    "siglip_trained": "dispider_ros.models.tiny_siglip_trained",
    # trained on dispider_ros.world: names the photograph in the newest frame
    "qwen2_vl_trained": "dispider_ros.models.tiny_qwen2_vl_trained",
}


def cache_root() -> Path:
    root = os.environ.get("DISPIDER_CACHE") or Path.home() / ".cache" / "dispider_ros"
    return Path(root) / "tiny"


def is_tiny(spec: str) -> bool:
    return spec.startswith(PREFIX)


def resolve_model_path(spec: str) -> str:
    """Return a loadable path for spec; builds tiny models on first use."""
    if not is_tiny(spec):
        return spec
    family = spec[len(PREFIX):]
    if family not in BUILDERS:
        raise ValueError(f"unknown tiny model {spec!r}; known: {sorted(PREFIX + f for f in BUILDERS)}")
    module = importlib.import_module(BUILDERS[family])
    # The folder name carries a hash of the builder's source: a changed builder never
    # reuses a stale cached model.
    key = Path(module.__file__).read_bytes()
    if hasattr(module, "cache_key"):  # a builder trained on data adds what it read (str)
        key += module.cache_key().encode()
    digest = hashlib.sha256(key).hexdigest()[:10]
    folder = cache_root() / f"{family}-{digest}"
    build = getattr(module, f"build_{family}", module.build)
    return build_once(folder, build, f"tiny {family}")


def build_once(folder: Path, build: Callable[[Path], None], what: str) -> str:
    """Build a model folder once (build(staging) then an atomic rename); return its path."""
    if (folder / "config.json").is_file():
        return str(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    # One builder at a time per folder: a trained model takes a minute, and three nodes
    # starting together must not train it three times over on the same cores.
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (folder / "config.json").is_file():  # built while this process waited
            return str(folder)
        # Build into a temporary sibling and rename, so readers never see half a model.
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            LOG.info("building %s model into %s", what, folder)
            build(staging)
            try:
                staging.rename(folder)
            except OSError:  # another process won the race (a cache without working locks)
                if not (folder / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(folder)


def save_random_model(config, folder: Path, seed: int):
    """A seeded random-weight image-text-to-text model of `config` (its generation config
    given the text model's special ids), saved to folder; returns the model."""
    import torch
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(config.text_config, name, None)
        if value is not None:
            setattr(model.generation_config, name, value)
    model.save_pretrained(folder, safe_serialization=True)
    return model
