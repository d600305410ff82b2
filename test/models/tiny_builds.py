"""A check the trained tiny builders share: building again gives the cached weights bit for bit."""
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from dispider_ros.models import tiny


def assert_rebuild_matches_cache(spec: str, build: Callable[[Path], None], folder: Path) -> Path:
    """Build spec's model again into folder with build; assert every weight equals the cached
    model's; return the cached model's folder."""
    cached = Path(tiny.resolve_model_path(spec))
    build(folder)
    first, again = load_file(cached / "model.safetensors"), load_file(folder / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    return cached
