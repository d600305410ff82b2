"""Keyframes of every clip at full resolution, for question-relevant retrieval.

The prompt memory pools old frames (round-decayed compression) and finally drops them, so an
event ten minutes back is a token or nothing. `KeyframeStore` keeps, independently of it, a
few keyframes of every clip (perception's segmentation) as the reaction model encoded them
(`FrameTokens` at level 0, visual tokens and any side features). When the decision retrieves
a clip, its keyframes go into the prompt as they were seen.

- Keyframes of a clip: at most `per_clip`, spread over the clip whatever its length: frames at
  offsets that are multiples of a stride are kept, and the stride doubles (dropping every
  other kept frame) whenever one more would not fit. A 2-frame clip keeps both; a 100-frame
  clip with per_clip 2 keeps its 1st and 65th.
- Bounded: beyond `ram_bytes` the oldest closed clips move to `folder` as one safetensors
  file each; beyond `disk_bytes` the oldest files are deleted (disk_bytes 0 = no disk: the
  oldest clips are dropped from RAM instead). A clip read back from disk is identical to
  the one stored (tensors bit for bit, metadata as JSON).
- Thread-safe (one lock): frames arrive on the perception side while the worker reads.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from dispider_ros.core.memory import FrameTokens

LOG = logging.getLogger(__name__)
_META = ("camera_id", "stamp", "frame_index", "frame_id", "encode_ms", "arrival")


@dataclass
class _Clip:
    kept: List[Tuple[int, FrameTokens]] = field(default_factory=list)  # (offset, frame)
    seen: int = 0  # frames of the clip so far
    stride: int = 1
    path: Optional[Path] = None  # on disk (kept is then empty)
    nbytes: int = 0


def frame_bytes(frame: FrameTokens) -> int:
    tensors = (frame.tokens, *frame.extra)
    return sum(t.numel() * t.element_size() for t in tensors) + len(frame.media or b"")


class KeyframeStore:
    """Args:
        per_clip: keyframes kept per clip, >= 1.
        ram_bytes: RAM the kept keyframes may use, >= 0.
        disk_bytes: disk they may use beyond it, >= 0 (0 = none).
        folder: where spilled clips go; None = a temporary folder removed by close().
    """

    def __init__(self, per_clip: int, ram_bytes: int, disk_bytes: int, folder: Optional[str] = None):
        for name, value, low in (("per_clip", per_clip, 1), ("ram_bytes", ram_bytes, 0),
                                 ("disk_bytes", disk_bytes, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} {value!r} must be an int >= {low}")
        self.per_clip, self.ram_bytes, self.disk_bytes = per_clip, ram_bytes, disk_bytes
        self._folder = Path(folder) if folder else None
        self._own_folder = False
        self._lock = threading.Lock()
        self._clips: "OrderedDict[Tuple[str, int], _Clip]" = OrderedDict()
        self._open: Dict[str, int] = {}
        self._ram = self._disk = 0
        self._files = 0
        self.counts = {"clips_spilled": 0, "clips_evicted": 0, "clips_read_back": 0}

    def add(self, frame: FrameTokens, clip_index: int) -> None:
        """Offer a frame as encoded (level 0) of clip `clip_index` (< 0 = unknown: ignored)."""
        if clip_index < 0:
            return
        key = (frame.camera_id, int(clip_index))
        with self._lock:
            clip = self._clips.get(key)
            if clip is None:
                clip = self._clips[key] = _Clip()
            self._open[frame.camera_id] = key[1]
            offset, clip.seen = clip.seen, clip.seen + 1
            if clip.path is not None or offset % clip.stride:
                return
            clip.kept.append((offset, frame))
            while len(clip.kept) > self.per_clip:
                clip.stride *= 2
                clip.kept = [(o, f) for o, f in clip.kept if o % clip.stride == 0]
            self._ram -= clip.nbytes
            clip.nbytes = sum(frame_bytes(f) for _, f in clip.kept)
            self._ram += clip.nbytes
            self._bound()

    def get(self, camera_id: str, clip_index: int) -> List[FrameTokens]:
        """The clip's keyframes in time order ([] = never stored or evicted)."""
        with self._lock:
            clip = self._clips.get((camera_id, int(clip_index)))
            if clip is None:
                return []
            if clip.path is None:
                return [f for _, f in clip.kept]
            self.counts["clips_read_back"] += 1
            return _read(clip.path)

    def clear(self, camera_id: str) -> None:
        """Forget a camera's clips (its timeline restarted)."""
        with self._lock:
            for key in [k for k in self._clips if k[0] == camera_id]:
                self._forget(self._clips.pop(key))
            self._open.pop(camera_id, None)

    def close(self) -> None:
        """Delete the spilled files (the whole folder when the store made it)."""
        with self._lock:
            for clip in self._clips.values():
                self._forget(clip)
            self._clips.clear()
            if self._own_folder and self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)

    def stats(self) -> dict:
        with self._lock:
            on_disk = sum(c.path is not None for c in self._clips.values())
            return {"clips_stored": len(self._clips), "clips_on_disk": on_disk,
                    "keyframe_ram_bytes": self._ram, "keyframe_disk_bytes": self._disk, **self.counts}

    # ---- bounds (lock held) -------------------------------------------------------------------
    def _bound(self) -> None:
        while self._ram > self.ram_bytes:
            victim = next(((k, c) for k, c in self._clips.items()
                           if c.path is None and c.kept and self._open.get(k[0]) != k[1]), None)
            if victim is None:  # only open clips left: they stay until they close
                return
            key, clip = victim
            if self.disk_bytes > 0 and clip.nbytes <= self.disk_bytes:
                self._spill(key, clip)
            else:
                self._forget(self._clips.pop(key))
                self.counts["clips_evicted"] += 1
        while self._disk > self.disk_bytes:
            key = next(k for k, c in self._clips.items() if c.path is not None)
            self._forget(self._clips.pop(key))
            self.counts["clips_evicted"] += 1

    def _spill(self, key: Tuple[str, int], clip: _Clip) -> None:
        folder = self._folder_path()
        self._files += 1
        path = folder / f"clip-{self._files:08d}.safetensors"
        _write(path, [f for _, f in clip.kept])
        self._ram -= clip.nbytes
        self._disk += clip.nbytes
        clip.kept, clip.path = [], path
        self.counts["clips_spilled"] += 1

    def _forget(self, clip: _Clip) -> None:
        if clip.path is not None:
            clip.path.unlink(missing_ok=True)
            self._disk -= clip.nbytes
        else:
            self._ram -= clip.nbytes
        clip.kept, clip.path, clip.nbytes = [], None, 0

    def _folder_path(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="dispider-keyframes-"))
            self._own_folder = True
        self._folder.mkdir(parents=True, exist_ok=True)
        return self._folder


def _write(path: Path, frames: List[FrameTokens]) -> None:
    """One safetensors file per clip: each frame's tokens, side features and media bytes,
    its other fields as JSON metadata."""
    from safetensors.torch import save_file

    tensors, meta = {}, []
    for i, frame in enumerate(frames):
        tensors[f"{i}.tokens"] = frame.tokens.detach().cpu().contiguous()
        for j, rows in enumerate(frame.extra):
            tensors[f"{i}.extra.{j}"] = rows.detach().cpu().contiguous()
        if frame.media is not None:
            tensors[f"{i}.media"] = torch.frombuffer(bytearray(frame.media), dtype=torch.uint8)
        meta.append({"grid": list(frame.grid), "extra": len(frame.extra), "media": frame.media is not None,
                     "device": str(frame.tokens.device),
                     **{name: getattr(frame, name) for name in _META}})
    save_file(tensors, str(path), metadata={"frames": json.dumps(meta)})


def _read(path: Path) -> List[FrameTokens]:
    from safetensors import safe_open

    out = []
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["frames"])
        for i, fields in enumerate(meta):
            device = fields.pop("device")
            tokens = handle.get_tensor(f"{i}.tokens").to(device)
            extra = tuple(handle.get_tensor(f"{i}.extra.{j}").to(device) for j in range(fields.pop("extra")))
            media = bytes(handle.get_tensor(f"{i}.media").numpy()) if fields.pop("media") else None
            out.append(FrameTokens(tokens=tokens, grid=tuple(fields.pop("grid")), extra=extra, media=media,
                                   **fields))
    return out


def as_retrieved(frames: List[FrameTokens], camera_id: str = "") -> List[FrameTokens]:
    """Keyframes as the prompt shows them: in time order, outside memory, each with its time
    label; one also names its camera when that differs from the camera before it, the first
    compared with `camera_id` (the trigger's: the question's own camera goes unnamed, as the
    memory names it; labels are prefilled at every answer, so they are kept short)."""
    out, camera = [], camera_id
    for frame in sorted(frames, key=lambda f: (f.stamp, f.camera_id)):
        out.append(dataclasses.replace(frame, labelled=True, named=frame.camera_id != camera, key=-1, overhead=0))
        camera = frame.camera_id
    return out


__all__ = ["KeyframeStore", "as_retrieved", "frame_bytes"]
