"""Replay a recording through the system and record every query, trigger and response.

Two modes over the same core objects:

* **offline** (`OfflineReplay`): one process, no DDS: the composition root
  (core.graph.StreamingGraph) built by dispider_ros.compose, the same builders the three
  nodes use, from the same YAML parameter file (dispider_ros.settings reads each node's
  ``ros__parameters`` with the ROS wildcard rules over the one parameter schema). The clock is the camera clock of the
  bag: frames are offered with their stamps, queries are added when the camera time
  reaches them, each trigger's answer is generated to completion before the next frame
  (so memory, and with greedy decoding the answer, are deterministic), and nothing waits
  for wall time, so it runs as fast as the models allow. ``emit_stamp`` of an answer is
  the camera time at which it would have come out on this machine in real time: the
  camera time when its trigger was made + the measured seconds from the start of that
  frame's perception to the final token.
* **live** (`run_live`): the real node processes (started with ``use_sim_time:=true`` and
  ``autostart:=true`` in a private namespace) and a separate player process
  (`dispider_ros.nodes.live_replay`) that publishes the bag's images with their original
  stamps and ``/clock`` at real or accelerated rate, publishes the annotation's queries
  at their times, and records triggers and responses. No rclpy in this module: the live
  mode only starts processes.

Times: annotation times are seconds from the recording start t0 = the recording's
``start_stamp`` when the annotation gives one, else the stamp of the first image of the
replayed camera topics (`recording_t0`). A query at time t is asked just before the first
frame with stamp >= t0 + t; queries after the last frame are asked after it.

Camera ids are the bag's topic names in both modes (the live player strips its private
namespace), so an annotation's ``camera`` is a topic name such as ``/camera/image_raw``.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from dispider_ros import settings as settings_mod
from dispider_ros.eval import annotations as ann
from dispider_ros.eval import bagio
from dispider_ros.processes import stop_group
from dispider_ros.eval.record import ANNOTATIONS, COST_KEYS, PREDICTIONS, RunRecorder

LOG = logging.getLogger(__name__)

NODES = settings_mod.NODES


# ------------------------------------------------------------ annotations, time ---------
def select_recording(annotations: ann.AnnotationSet, bag: Union[str, Path],
                     recording_id: Optional[str] = None) -> ann.Recording:
    """The recording of the annotation file that describes `bag`.

    By id when given; else the only recording; else the one whose ``source`` names the
    bag (same resolved path, or same file/folder name).
    """
    recordings = annotations.recordings
    if recording_id is not None:
        for rec in recordings:
            if rec.recording_id == recording_id:
                return rec
        raise ValueError(f"no recording {recording_id!r}; the file has "
                         f"{[r.recording_id for r in recordings]}")
    if len(recordings) == 1:
        return recordings[0]
    bag = Path(bag)
    hits = [r for r in recordings if r.source and Path(r.source).name == bag.name]
    if len(hits) == 1:
        return hits[0]
    raise ValueError(f"cannot tell which recording describes {bag}: the annotation file has "
                     f"{[r.recording_id for r in recordings]}; pass --recording")


def recording_t0(recording: ann.Recording, source: bagio.CameraSource,
                 topics: Optional[Sequence[str]] = None) -> float:
    """Absolute camera stamp of annotation time 0 (see the module docstring)."""
    if recording.start_stamp is not None:
        return float(recording.start_stamp)
    return source.start_stamp(topics)


@dataclass(frozen=True)
class ScheduledQuery:
    """An annotated query with its absolute camera stamp."""

    abs_stamp: float
    query: ann.AnnotatedQuery


def schedule(recording: ann.Recording, t0: float) -> List[ScheduledQuery]:
    return sorted((ScheduledQuery(t0 + q.time, q) for q in recording.queries),
                  key=lambda s: s.abs_stamp)


def prepare_run_dir(out: Union[str, Path], annotations_path: Union[str, Path],
                    bag: Union[str, Path], recording_id: Optional[str] = None,
                    overwrite: bool = False,
                    camera_topics: Sequence[str] = ()) -> Tuple[Path, ann.Recording]:
    """Create the run folder with the selected recording saved as annotations.json.

    Every input is checked first (annotations, the recording, the bag and its camera
    topics, an existing record), so bad input creates nothing."""
    out = Path(out)
    recording = select_recording(ann.load(annotations_path), bag, recording_id)
    with bagio.open_source(bag) as source:
        source.select(camera_topics or None)
    predictions = out / PREDICTIONS
    if predictions.exists() and not overwrite:
        raise FileExistsError(f"{predictions} exists: choose another --out or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    if predictions.exists():
        predictions.unlink()
    ann.save(ann.AnnotationSet([recording]), out / ANNOTATIONS)
    return out, recording


RUN_FILES = (ANNOTATIONS, PREDICTIONS, "live_params.yaml")


@contextlib.contextmanager
def undo_on_failure(out: Union[str, Path], keep: Sequence[str] = ()):
    """When the block fails (an error or Ctrl-C), remove what a run wrote into `out`: the
    run files, anything new except the entries in `keep` (a live run's logs, which the
    error points at), and `out` itself if the block created it and it is left empty."""
    out = Path(out)
    existed = out.is_dir()
    before = {p.name for p in out.iterdir()} if existed else set()
    try:
        yield out
    except BaseException:
        if out.is_dir():
            for path in out.iterdir():
                if path.name in keep or (path.name in before and path.name not in RUN_FILES):
                    continue
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            if not existed and not any(out.iterdir()):
                out.rmdir()
        raise


def camera_progress(label: str, total: float, enabled: bool = True):
    """A tqdm bar of camera seconds replayed, on stderr; move it with `advance`.

    total: the recording's length in camera seconds (0 = unknown: no percentage)."""
    from tqdm import tqdm

    known = total > 0
    return tqdm(total=total if known else None, desc=label, disable=not enabled,
                file=sys.stderr, dynamic_ncols=True, unit="s",
                mininterval=0.5 if sys.stderr.isatty() else 10.0,
                bar_format=("{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s camera "
                            "time [{elapsed}<{remaining}{postfix}]") if known else
                ("{desc}: {n:.1f} s camera time [{elapsed}{postfix}]"))


def advance(bar, done: float, note: str = "", final: bool = False) -> None:
    """Move `bar` to `done` camera seconds (clamped to its total) with a short note;
    `final`: the recording is over: `done` is its length (100 %), and the bar closes."""
    if note:
        bar.set_postfix_str(note, refresh=False)
    if final and bar.total:
        bar.total = max(done, bar.n)
    target = min(done, bar.total) if bar.total else done
    if target > bar.n:
        bar.update(target - bar.n)
    if final:
        bar.close()


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------- offline ----------
@dataclass
class ReplayOptions:
    """Args:
        preset: model preset for every node (like ``-p preset:=...``).
        params_file: the nodes' parameter YAML (default config/dispider.yaml).
        overrides: {node: {param: value}} applied after the file.
        camera_topics: topics to replay (default: every image topic).
        chunks: record streamed chunks too.
        progress: print progress lines on stderr.
        response_timeout_sec: longest wait for one answer.
        torch_threads: intra-op threads of the offline process (1: polite on small shared
            machines; the reaction worker uses the node's own setting).
    """

    preset: str = "tiny"
    params_file: Optional[Path] = None
    overrides: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    camera_topics: Sequence[str] = ()
    chunks: bool = False
    progress: bool = True
    response_timeout_sec: float = 300.0
    torch_threads: int = 1

    def settings(self, node: str) -> Dict[str, Any]:
        return settings_mod.node_settings(node, self.params_file,
                                          {"preset": self.preset, **self.overrides.get(node, {})})


class OfflineReplay:
    """The composition root (core.graph.StreamingGraph, built by dispider_ros.compose from
    the nodes' settings) driven by the camera clock of a recording.

    Args:
        options: settings (same YAML as the nodes).
    """

    def __init__(self, options: ReplayOptions):
        import torch

        from dispider_ros import compose

        self.options = options
        self.settings = {node: options.settings(node) for node in NODES}
        started = time.perf_counter()
        torch.set_num_threads(options.torch_threads)
        # One answer at a time: memory, and with greedy decoding the text, are deterministic.
        self.composition = compose.build_graph(
            self.settings, self._on_response, answer_timeout_sec=options.response_timeout_sec,
            on_trigger=self._on_trigger)
        self.graph = self.composition.graph
        self.load_sec = time.perf_counter() - started
        self.recorder: Optional[RunRecorder] = None
        self._clock: Tuple[float, float] = (0.0, 0.0)  # (camera clock, perf start) of the step
        self._pending: Dict[str, Tuple[float, float]] = {}  # trigger id -> (camera clock, perf start)
        self._lock = threading.Lock()
        self.errors: Dict[str, int] = {}

    # -- events --------------------------------------------------------------------------
    def _on_response(self, event) -> None:
        with self._lock:
            clock, began = self._pending.get(event.trigger_id, (event.stamp, time.perf_counter()))
        emit = clock + (time.perf_counter() - began) if event.final else None
        self.recorder.response(
            event.response_id, event.trigger_id, event.query_id, event.stamp, event.camera_id,
            event.text, event.final, sequence=event.sequence,
            ttft_sec=event.ttft_sec if event.final else None, emit_abs_stamp=emit,
            token_count=event.token_count, error_code=int(event.error_code), error=event.error,
            revises_response_id=event.revises_response_id,
            **({"stop_reason": event.extras.get("stop_reason", ""),
                "retrieved_clips": event.extras.get("retrieved_clips", ()),
                **{k: event.extras[k] for k in COST_KEYS if k in event.extras},
                **{k: event.extras[k] for k in ("revision_reason", "merged_trigger_ids") if k in event.extras}}
               if event.final else {}))

    def _on_trigger(self, trigger) -> None:
        clock, began = self._clock
        self.recorder.trigger(trigger.trigger_id, trigger.query_id, trigger.stamp,
                              trigger.camera_id, trigger.policy, trigger.score,
                              trigger.frame_index, trigger.clip_index, trigger.clip_start,
                              clock_abs=clock, retrieved_clips=trigger.retrieved,
                              **({"revises_trigger_id": trigger.revises_trigger_id,
                                  "revision_reason": trigger.revision_reason}
                                 if trigger.revises_trigger_id else {}))
        with self._lock:
            self._pending[trigger.trigger_id] = (clock, began)

    def _ask(self, item: ScheduledQuery) -> None:
        from dispider_ros.core.types import ErrorCode, QuerySpec

        q = item.query
        self.recorder.query(q.query_id, item.abs_stamp, q.text, q.mode, q.camera)
        self._clock = (item.abs_stamp, time.perf_counter())
        try:
            spec = QuerySpec(query_id=q.query_id, text=q.text, mode=q.mode,
                             cameras=(q.camera,) if q.camera else (), stamp=item.abs_stamp)
            self.graph.ask(spec, item.abs_stamp)
        except (ValueError, TypeError) as error:
            # decision_node answers a rejected query with an error Response: record the same.
            self.recorder.response("", "", q.query_id, item.abs_stamp, q.camera, "", True,
                                   error_code=ErrorCode.QUERY_REJECTED,
                                   error=f"query rejected: {error}")
            return

    def _count(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    # -- the loop ------------------------------------------------------------------------
    def run(self, source: bagio.CameraSource, recording: ann.Recording,
            recorder: RunRecorder, topics: Optional[Sequence[str]] = None,
            t0: Optional[float] = None, duration: float = 0.0) -> Dict[str, Any]:
        """Replay `source` and record to `recorder` (whose t0 must be the recording's).

        Args:
            duration: expected camera seconds, for progress lines only.

        Returns:
            System figures (also written as the "end" run record).
        """
        from dispider_ros.core.sampler import RejectedFrame
        from dispider_ros.imaging import ConversionConfig, ImageError

        self.recorder = recorder
        cameras = [t.topic for t in source.select(topics or self.options.camera_topics or None)]
        t0 = recording_t0(recording, source, cameras) if t0 is None else t0
        queue = schedule(recording, t0)
        conversion = ConversionConfig(max_pixels=int(self.settings["perception_node"]["max_image_pixels"]))
        progress = camera_progress("offline", float(duration or recording.duration or 0.0),
                                   self.options.progress)
        first = last = None
        frames = 0
        wall0 = time.perf_counter()
        for frame in source.frames(cameras):
            while queue and queue[0].abs_stamp <= frame.stamp:
                self._ask(queue.pop(0))
            first = frame.stamp if first is None else first
            last = frame.stamp if last is None else max(last, frame.stamp)
            frames += 1
            self._clock = (frame.stamp, time.perf_counter())
            try:  # sampled on the stamp first, like the nodes: a frame not due is never decoded
                index = self.graph.take(frame.topic, frame.stamp)
                if index is not None:
                    rgb = frame.rgb(conversion)
                    self.graph.process([self.graph.frame(frame.topic, frame.stamp, index, rgb,
                                                         frame.frame_id)])
            except ImageError as error:
                self._count(f"image_{error.kind}")
            except RejectedFrame as error:
                self._count(f"frame_{error.reason}")
            advance(progress, frame.stamp - t0, f"triggers {recorder.counts['trigger']} "
                    f"responses {recorder.counts['response']}")
        for item in queue:  # asked after the recording ended: the latest frame answers
            self._ask(item)
        self.graph.wait_idle(self.options.response_timeout_sec)
        wall = time.perf_counter() - wall0
        if first is None:
            raise bagio.NoImagesError(f"{source.path}: the camera topics {cameras} hold no messages")
        camera_sec = last - first
        advance(progress, last - t0, "done", final=True)
        return self._figures(cameras, frames, camera_sec, wall)

    def _figures(self, cameras, frames: int, camera_sec: float, wall: float) -> Dict[str, Any]:
        stats = self.graph.perception.stats()
        sampled = {cam: int(stats.get(f"{cam}/sampled", 0)) for cam in cameras}
        figures = {
            "mode": "offline", "frames": frames, "camera_seconds": camera_sec,
            "wall_seconds": wall, "speed_factor": camera_sec / wall if wall > 0 else None,
            "model_load_seconds": self.load_sec,
            "sampled_frames": sampled,
            "sampled_fps": {cam: n / camera_sec if camera_sec > 0 else None
                            for cam, n in sampled.items()},
            "not_sampled_frames": {cam: int(stats.get(f"{cam}/dropped", 0)) for cam in cameras},
            "dropped_frames": 0,  # no transport, no latest-frame mailbox: nothing is lost
            "rejected_frames": self.errors,
            "perception_ms_per_frame": stats.get("process_ms_per_frame"),
            "encode_ms_per_frame": stats.get("encode_ms_per_frame"),
            "decision": self.graph.decision.stats(),
            "reaction": {k: v for k, v in self.graph.reaction.stats().items()
                         if not isinstance(v, bool)},
            "peak_rss_mb": peak_rss_mb(),
        }
        return figures

    def close(self) -> None:
        self.composition.close()


def run_offline(bag: Union[str, Path], annotations_path: Union[str, Path], out: Union[str, Path],
                options: Optional[ReplayOptions] = None, recording_id: Optional[str] = None,
                overwrite: bool = False) -> Dict[str, Any]:
    """Offline replay of `bag` into the run folder `out`; returns the system figures."""
    options = options or ReplayOptions()
    out, recording = prepare_run_dir(out, annotations_path, bag, recording_id, overwrite,
                                     options.camera_topics)
    with bagio.open_source(bag) as source:
        cameras = [t.topic for t in source.select(options.camera_topics or None)]
        t0 = recording_t0(recording, source, cameras)
        replay = OfflineReplay(options)
        with RunRecorder(out / PREDICTIONS, t0=t0, chunks=options.chunks) as recorder:
            recorder.run("start", mode="offline", bag=str(bag), storage=source.storage,
                         recording_id=recording.recording_id, t0=t0, cameras=cameras,
                         preset=options.preset, settings=replay.settings)
            try:
                figures = replay.run(source, recording, recorder, cameras, t0,
                                     recording.duration or source.duration_hint())
            finally:
                replay.close()
            recorder.run("end", system=figures)
    factor = figures["speed_factor"]
    print(f"offline replay: {figures['camera_seconds']:.2f} s of camera time in "
          f"{figures['wall_seconds']:.2f} s wall = {factor:.1f}x real time "
          f"(models loaded in {figures['model_load_seconds']:.1f} s); record: {out / PREDICTIONS}",
          file=sys.stderr, flush=True)
    return figures


# ---------------------------------------------------------------------- live ----------
def _executable(name: str, module: str) -> List[str]:
    """The installed executable, else `python -m module` (same interpreter)."""
    from dispider_ros.paths import executable

    try:
        path = executable(name)
        if path.is_file():
            return [str(path)]
    except FileNotFoundError:
        pass
    return [sys.executable, "-m", module]


def live_params_file(options: ReplayOptions, namespace: str, topics: Sequence[bagio.TopicInfo],
                     out: Path) -> Path:
    """The live graph's parameter file: the user's file, then one entry per node under its
    exact name (appended last, so it wins over every wildcard entry, in rcl's file-order
    merge) with the preset, `use_sim_time`, `autostart`, `options.overrides`, and for the
    camera nodes the player's topics with their QoS switched to reliable (the sensor QoS is
    overridable for exactly this), so no frame is lost on the wire during a replay."""
    from dispider_ros.models.presets import config_file

    source = options.params_file or config_file("dispider.yaml")
    data = yaml.safe_load(Path(source).read_text()) or {}
    raw = [namespace + t.topic for t in topics if t.kind == "raw"]
    compressed = [namespace + t.topic for t in topics if t.kind == "compressed"]
    for node in NODES:
        params: Dict[str, Any] = {"preset": options.preset, "use_sim_time": True, "autostart": True}
        if node == "perception_node":
            params.update(image_topics=raw or [""], compressed_topics=compressed or [""],
                          qos_overrides={topic: {"subscription": {"reliability": "reliable", "depth": 5}}
                                         for topic in raw + compressed})
        params.update(options.overrides.get(node, {}))
        data[f"{namespace}/{node}"] = {"ros__parameters": params}
    path = out / "live_params.yaml"
    path.write_text(yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False))
    return path


class _NoAliasDumper(yaml.SafeDumper):
    """rcl's parameter-file parser rejects YAML aliases (&id001 / *id001)."""

    def ignore_aliases(self, data):
        return True


def _vm_hwm_mb(pid: int) -> Optional[float]:
    """Peak resident memory (VmHWM) of a running process, MiB; None when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_live(bag: Union[str, Path], annotations_path: Union[str, Path], out: Union[str, Path],
             options: Optional[ReplayOptions] = None, rate: float = 1.0,
             recording_id: Optional[str] = None, overwrite: bool = False, sync: bool = False,
             startup_timeout: float = 180.0, drain_timeout: float = 120.0) -> Dict[str, Any]:
    """Live replay: node processes over DDS + the player process; returns system figures.

    Args:
        rate: playback speed (1 = real time).
        sync: the player pauses after each frame perception will sample until its feature
            is out (see live_replay): a loaded machine then samples the frames the offline
            replay samples, at the cost of real-time pacing while it waits.

    Raises:
        RuntimeError: a node or the player failed (with the tail of its log).
    """
    options = options or ReplayOptions()
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate {rate!r} must be a finite number > 0")
    out, recording = prepare_run_dir(out, annotations_path, bag, recording_id, overwrite,
                                     options.camera_topics)
    with bagio.open_source(bag) as source:
        topics = source.select(options.camera_topics or None)
    namespace = f"/dispider_eval_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    params = live_params_file(options, namespace, topics, out)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    perception = settings_mod.node_settings("perception_node", params,
                                            {"preset": options.preset}, namespace)
    nodes: Dict[str, subprocess.Popen] = {}
    player: Optional[subprocess.Popen] = None
    wall0 = time.monotonic()
    try:
        for name in NODES:
            with open(logs / f"{name}.log", "wb") as log:
                nodes[name] = subprocess.Popen(
                    _executable(name, f"dispider_ros.nodes.{name}") + [
                        "--ros-args", "-r", f"__ns:={namespace}", "--params-file", str(params),
                        "-p", f"preset:={options.preset}", "-p", "use_sim_time:=true",
                        "-p", "autostart:=true"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        player_cmd = _executable("live_replay", "dispider_ros.nodes.live_replay") + [
            "--bag", str(bag), "--annotations", str(out / ANNOTATIONS),
            "--out", str(out / PREDICTIONS), "--namespace", namespace, "--rate", str(rate),
            "--sample-fps", str(perception["sample_fps"]), "--startup-timeout", str(startup_timeout),
            "--drain-timeout", str(drain_timeout), "--preset", options.preset]
        for topic in topics:
            player_cmd += ["--camera-topic", topic.topic]
        if options.chunks:
            player_cmd.append("--chunks")
        if sync:
            player_cmd.append("--sync")
        if not options.progress:
            player_cmd.append("--quiet")
        player = subprocess.Popen(player_cmd, start_new_session=True)
        while player.poll() is None:
            for name, process in nodes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode} during the live "
                                       f"replay; its log ({logs / (name + '.log')}) ends:\n"
                                       f"{_tail(logs / (name + '.log'))}")
            try:
                player.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
        if player.returncode != 0:
            raise RuntimeError(f"the live player exited with {player.returncode} (see above); "
                               f"node logs are in {logs}")
        # VmHWM is each process's own high-water mark: read it before the nodes exit.
        peaks = {name: _vm_hwm_mb(process.pid) for name, process in nodes.items()}
    finally:
        if player is not None:
            stop_group(player)
        for process in nodes.values():
            stop_group(process)
    known = [v for v in peaks.values() if v is not None]
    figures = {"node_peak_rss_mb": peaks, "peak_rss_mb": max(known) if known else None,
               "live_total_wall_seconds": time.monotonic() - wall0, "namespace": namespace}
    with RunRecorder(out / PREDICTIONS) as recorder:
        recorder.run("end", system=figures)
    return figures
