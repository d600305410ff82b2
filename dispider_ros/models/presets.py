"""Named model presets (config/presets/<name>.yaml): which checkpoints, device and dtype."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import yaml

from dispider_ros.paths import share_dir

_REPO_CONFIG = Path(__file__).resolve().parents[2] / "config"
KEYS = {"description", "vision_model", "vlm_model", "device", "dtype", "max_frame_pixels"}


def config_dirs() -> List[Path]:
    """Installed share/dispider_ros/config first, then the source tree's config/."""
    dirs = []
    share = share_dir()
    if share is not None:
        dirs.append(share / "config")
    dirs.append(_REPO_CONFIG)
    return [d for d in dirs if d.is_dir()]


def config_file(name: str) -> Path:
    """Path of a file under the package's config folder."""
    for folder in config_dirs():
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"config file {name!r} not found in {[str(d) for d in config_dirs()]}")


def available() -> List[str]:
    names = set()
    for folder in config_dirs():
        names.update(p.stem for p in (folder / "presets").glob("*.yaml"))
    return sorted(names)


def load_preset(name: str) -> Dict:
    """Return the preset's settings; ValueError naming the known presets if unknown."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"preset name {name!r} is not a plain name; known: {available()}")
    try:
        path = config_file(f"presets/{name}.yaml")
    except FileNotFoundError:
        raise ValueError(f"unknown preset {name!r}; known: {available()}") from None
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - KEYS
    if unknown:
        raise ValueError(f"preset {name!r} ({path}) has unknown keys {sorted(unknown)}")
    return data
