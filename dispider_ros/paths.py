"""Where the installed package lives: the ament index, else this interpreter's prefix.

A route-B venv works without sourcing a setup file: when AMENT_PREFIX_PATH is unset or
does not list the venv, the venv's own prefix is used if it holds the package's marker.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

PACKAGE = "dispider_ros"


def package_prefix() -> Optional[Path]:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix

        try:
            return Path(get_package_prefix(PACKAGE))
        except (PackageNotFoundError, OSError):  # OSError: AMENT_PREFIX_PATH unset
            pass
    except ImportError:
        pass
    marker = Path(sys.prefix) / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE
    return Path(sys.prefix) if marker.is_file() else None


def share_dir() -> Optional[Path]:
    prefix = package_prefix()
    return prefix / "share" / PACKAGE if prefix else None


def executable(name: str) -> Path:
    """An installed executable of the package (what `ros2 run dispider_ros <name>` runs)."""
    prefix = package_prefix()
    if prefix is None:
        raise FileNotFoundError(f"{PACKAGE} is not installed (no ament index entry and no "
                                f"marker under {sys.prefix}): run `make setup` or colcon build")
    return prefix / "lib" / PACKAGE / name
