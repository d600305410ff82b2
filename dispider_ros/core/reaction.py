"""Reaction scheduling: frames into memory on arrival, triggers answered by a worker thread.

`ReactionEngine` owns the memory buffer and uses a reaction VLM it is given (any
`core.protocols.ReactionVLM`; the caller loads it, and closes it after the engine):
- `ingest(frame)` encodes a frame's visual tokens on the caller's thread (the perception
  side) and stores them; it shares no lock with generation beyond the memory's short one,
  so frames keep flowing while an answer decodes (MOSS-Video-Preview: perception is never
  blocked by generation; Dispider: reaction runs asynchronously).
- `submit(trigger)` queues a reaction and returns its response id at once.
- One worker thread (its own) builds the prompt from the memory snapshot and the query text,
  generates, and emits ResponseEvents through `on_response`: chunks (final=False,
  sequence 0..n-1, tokens so far, ttft) and one final (final=True, full text, sequence n,
  ttft, token count, error_code and error). A successful answer is then added to memory
  as a question/answer turn pair at the trigger's stamp, closing a StreamBridge round.

Scheduling policy:
- Triggers for different queries are answered first in, first out. The queue is bounded
  (`max_queue`); on overflow the oldest waiting trigger is dropped with a counted warning.
- A newer trigger for the SAME query while that query's answer is still generating stops
  the stale generation (a StoppingCriteria checks its stop event after every token) and is
  answered next, ahead of the queue: the user wants the fresher answer now. Its final
  ResponseEvent's revises_response_id names the stopped response; the stopped response
  still ends with a final event (partial text, ErrorCode.PREEMPTED) and is not added to
  memory. A newer trigger for a query that is only waiting in the queue takes the waiting
  one's place (it inherits what that one would have revised).
- Narration is the exception: a newer boundary trigger (policy "boundary", not a revision)
  of the same query narrates a different scene, so it never stops the query's running
  narration: it waits in the queue. One that finds an older boundary trigger of its query
  still waiting replaces it (so a narration's queue share stays one): the replaced one
  ends with TRIGGER_SUPERSEDED, and the newer one's final lists in
  extras["merged_trigger_ids"] every trigger it stands for, oldest first, so no scene
  change is lost without a trace and flooding stays bounded.
- A revision (a trigger with `revises_trigger_id`: the decision saw the evidence of an
  earlier answer change, MOSS-Video-Preview style) is an ordinary trigger of its query, so
  an answer it revises that is still generating is pre-empted as above (PREEMPTED final)
  and one still waiting is superseded; one already answered stays as it was. All of the
  revision's events carry revises_response_id = response_id(revises_trigger_id), and its
  final's extras hold `revision_reason` (clip_boundary | score_drop).
- Every trigger gets exactly one final ResponseEvent: dropped and superseded triggers get
  one with an error code (TRIGGER_DROPPED, TRIGGER_SUPERSEDED), so a run record stays
  complete; close() ends the running and waiting ones with SHUTDOWN.
- `cancel(query_id)` (a query canceled by its asker) stops that query's running answer
  within one decode step (the same stop event as pre-emption) and ends its waiting
  triggers; each gets its one final with CANCELED (the running one with its partial text,
  not added to memory).
- An exception in generation gives a final ResponseEvent with GENERATION_FAILED (or
  OUT_OF_MEMORY) and the text produced until then; the worker carries on with the next
  trigger.
- `on_response` is called from the worker thread, and from `submit()`/`close()` callers for
  triggers that never started. It must not block for long.

ttft_sec in ResponseEvents is measured from `submit()` to the first streamed token (queue
wait included: what the asker experiences); extras hold the parts (queue wait, the model's
own ttft, tokens/s).

What an answer cost: every final's extras hold the COST_KEYS (`answer_cost`), and `stats()`
holds the last answered trigger's as last_<key> (the reaction node's /diagnostics):
- prompt_tokens: tokens in the prompt the model was given (frames, dialogue, question);
- reused_tokens: of those, the ones whose KV cache was reused from an earlier prompt;
- prefill_tokens: the ones prefilled for this answer (prompt_tokens - reused_tokens);
- frames_in_prompt: frames in the prompt (every camera in it, retrieved keyframes included);
- history_span_sec: camera seconds from the oldest frame of the trigger's camera in the
  prompt to the trigger's evidence stamp: how far back the answer could see. Only the
  trigger's camera counts, with prompt_cameras "trigger" and "all" alike (cameras have their
  own clocks). NaN when the prompt holds no frame of that camera.
Retrieval: a trigger that names retrieved clips (TriggerEvent.retrieved, ranked by the
decision) gets those clips' keyframes from the keyframe store, at full resolution and in time
order, after the memory and before the question (PromptParts.retrieved), so the memory's
cached prefix stays valid. Every final lists its trigger's clips as `retrieved_clips` in its
extras (camera, clip index, start, end, score, keyframes put in the prompt: 0 when the store
no longer holds the clip or the answer never started).
A final that never reached the model (dropped, superseded, canceled, closed) cost nothing:
zero tokens and frames, span NaN; one whose generation raised keeps its frames and span, and
zero tokens (the model reported none).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional

import torch

from dispider_ros.core import schema
from dispider_ros.core.keyframe_store import KeyframeStore, as_retrieved
from dispider_ros.core.memory import FrameTokens, MemoryBuffer, MemoryConfig
from dispider_ros.core.prefix_keeper import PrefixKeeper
from dispider_ros.core.protocols import PromptParts, ReactionVLM
from dispider_ros.core.types import COST_KEYS, ErrorCode, Frame, ResponseEvent, TriggerEvent

LOG = logging.getLogger(__name__)

PROMPT_CAMERAS = ("all", "trigger")
NAME_EVERY_SEC = 30.0  # camera seconds between labels that name the camera (one camera)
ResponseCallback = Callable[[ResponseEvent], None]


CANCELED_KEPT = 1024  # canceled queries remembered for triggers that arrive after their cancel

@dataclass
class ReactionConfig:
    """Args:
        memory: the memory buffer's budget and compression.
        max_queue: triggers waiting at most, >= 1; overflow drops the oldest.
        preempt_same_query: a newer trigger for a query stops its stale answer.
        remember_dialogue: add each answered question and answer to memory.
        prompt_cameras: "all" = frames of every camera in the prompt; "trigger" = only the
            trigger's camera (dialogue is always included).
        evidence_timeout_sec: longest a trigger waits for its evidence frame (the sampled
            frame it names) to reach memory, >= 0. In process the frame is stored before the
            decision sees its feature, so nothing ever waits; over DDS the frame and the
            trigger travel on two topics and may arrive in either order.
        max_backward_jump_sec: a frame this much older than its camera's newest one is a
            clock jump (bag loop, sim-time reset): that camera's memory is cleared.
        label_every_sec: camera seconds between the frames that carry a time label in the
            prompt, per camera, >= 0 (0 = every frame).
        warm_step_tokens: tokens one idle-time prefill step computes at most, >= 1: the
            longest a trigger arriving mid-step waits for it.
        settle_sec: idle prefill starts once no frame arrived for this long, >= 0 (a live
            camera leaves gaps of a sampling period; a replay's burst is prefilled at once).
        worker_threads: torch intra-op threads of the worker, >= 1 (1 on small CPUs, so
            generation leaves a core to perception).
        poll_sec: the worker's queue read timeout, so close() is noticed, > 0.
        keyframes_per_clip, keyframe_ram_mb, keyframe_disk_mb, keyframe_dir: the keyframe
            store of retrieval (core/keyframe_store.py; the parameter schema says what each is).
    """

    memory: MemoryConfig = field(default_factory=MemoryConfig)
    max_queue: int = schema.default("reaction_node", "max_queue")
    preempt_same_query: bool = schema.default("reaction_node", "preempt_same_query")
    remember_dialogue: bool = True
    prompt_cameras: str = schema.default("reaction_node", "prompt_cameras")
    evidence_timeout_sec: float = schema.default("reaction_node", "evidence_timeout_sec")
    max_backward_jump_sec: float = 1.0
    label_every_sec: float = schema.default("reaction_node", "frame_label_every_sec")
    warm_step_tokens: int = 64
    settle_sec: float = 0.02
    worker_threads: int = 1
    poll_sec: float = 0.1
    keyframes_per_clip: int = schema.default("reaction_node", "keyframes_per_clip")
    keyframe_ram_mb: int = schema.default("reaction_node", "keyframe_ram_mb")
    keyframe_disk_mb: int = schema.default("reaction_node", "keyframe_disk_mb")
    keyframe_dir: str = schema.default("reaction_node", "keyframe_dir")

    def __post_init__(self):
        if not isinstance(self.memory, MemoryConfig):
            raise TypeError(f"memory {self.memory!r} must be a MemoryConfig")
        for name in ("max_queue", "worker_threads", "warm_step_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} {value!r} must be an int >= 1")
        if self.prompt_cameras not in PROMPT_CAMERAS:
            raise ValueError(f"prompt_cameras {self.prompt_cameras!r} is not one of {PROMPT_CAMERAS}")
        for name in ("max_queue", "prompt_cameras", "evidence_timeout_sec"):
            setattr(self, name, schema.check("reaction_node", name, getattr(self, name)))
        self.label_every_sec = schema.check("reaction_node", "frame_label_every_sec", self.label_every_sec)
        for name in ("keyframes_per_clip", "keyframe_ram_mb", "keyframe_disk_mb", "keyframe_dir"):
            setattr(self, name, schema.check("reaction_node", name, getattr(self, name)))
        if not (0.0 <= self.max_backward_jump_sec < math.inf):
            raise ValueError(f"max_backward_jump_sec {self.max_backward_jump_sec!r} must be a "
                             "finite number >= 0")
        if not (0.0 <= self.settle_sec < math.inf):
            raise ValueError(f"settle_sec {self.settle_sec!r} must be a finite number >= 0")
        if not (self.poll_sec > 0.0):
            raise ValueError(f"poll_sec {self.poll_sec!r} must be > 0")


@dataclass
class _Job:
    trigger: TriggerEvent
    response_id: str
    submitted: float  # perf_counter at submit()
    revises: str = ""
    stop: threading.Event = field(default_factory=threading.Event)
    preempted_by: str = ""  # the newer trigger's id (may be ""; `preempted` says whether)
    preempted: bool = False
    canceled: bool = False  # its query was canceled: stop, final CANCELED
    merged: List[str] = field(default_factory=list)  # narration: waiting triggers it replaced


def response_id(trigger_id: str) -> str:
    """The id of the answer to a trigger (its chunks and its final share it)."""
    return f"resp-{trigger_id}"


def answer_cost(items: list, camera_id: str, evidence_stamp: float, result=None) -> dict:
    """The COST_KEYS of an answer from its prompt items (see the module docstring).

    Args:
        items: the memory snapshot the prompt was built from ([] = it never started).
        camera_id, evidence_stamp: the trigger's camera and evidence stamp (camera time).
        result: the model's GenerationResult; None = no token counts (zeros).
    """
    stamps = [it.stamp for it in items if isinstance(it, FrameTokens) and it.camera_id == camera_id]
    prompt = int(result.prompt_tokens) if result is not None else 0
    reused = int(result.reused_tokens) if result is not None else 0
    prefill = int(result.prefill_tokens) if result is not None else 0
    return {"prompt_tokens": prompt, "reused_tokens": reused, "prefill_tokens": prefill,
            "frames_in_prompt": sum(isinstance(it, FrameTokens) for it in items),
            "history_span_sec": float(evidence_stamp) - min(stamps) if stamps else math.nan}


class ReactionEngine:
    """Memory + reaction VLM + worker thread (see the module docstring for the policy).

    Args:
        config: engine and memory settings.
        on_response: receives every ResponseEvent (chunks and finals).
        vlm: the loaded reaction model (models.registry.load_reaction_vlm); its generation
            settings are its own. The engine never closes it: close it after the engine.
    """

    def __init__(self, config: ReactionConfig, on_response: ResponseCallback, vlm: ReactionVLM):
        self.config = config
        self.on_response = on_response
        self.vlm = vlm
        # Each frame is counted as the model renders it (markers, and its label if it has one),
        # so the budget bounds the whole prompt.
        self.memory = MemoryBuffer(config.memory, frame_cost=vlm.frame_overhead_tokens)
        budget = config.memory.max_tokens
        self.keeper = PrefixKeeper(self.memory, vlm, config.warm_step_tokens,
                                   slack_tokens=max(config.warm_step_tokens, budget // 10))
        self.keyframes = KeyframeStore(config.keyframes_per_clip, config.keyframe_ram_mb << 20,
                                       config.keyframe_disk_mb << 20, config.keyframe_dir or None)
        self._last_arrival = -math.inf  # monotonic time of the newest ingested frame
        self._labelled_at: Dict[str, float] = {}  # camera -> stamp of its last labelled frame
        self._named_at: Dict[str, float] = {}  # camera -> stamp of its last label naming it
        self._last_labelled_camera = ""
        self._cond = threading.Condition()
        self._queue: Deque[_Job] = deque()
        self._current: Optional[_Job] = None
        # query id -> camera time up to which its triggers are canceled: a cancel can arrive
        # before a trigger fired just ahead of it (two topics, no order between them)
        self._canceled: "OrderedDict[str, float]" = OrderedDict()
        self._closing = False
        self._stats_lock = threading.Lock()
        self.counts = {"frames_ingested": 0, "submitted": 0, "answered": 0, "errors": 0,
                       "preempted": 0, "superseded": 0, "dropped": 0, "memory_clears": 0,
                       "evidence_waits": 0, "evidence_missing": 0, "canceled": 0}
        self._last = {"ttft_sec": math.nan, "tokens_per_sec": math.nan, "encode_ms": math.nan,
                      **answer_cost([], "", 0.0)}
        self._worker = threading.Thread(target=self._run, name="reaction-worker", daemon=True)
        self._worker.start()

    # ---- perception side -----------------------------------------------------------------
    def ingest(self, frame: Frame, clip_index: int = -1) -> FrameTokens:
        """Encode a sampled frame's visual tokens now and store them in memory (and, when it
        is one of its clip's keyframes, in the keyframe store of retrieval).

        Args:
            frame: the sampled camera frame ((H, W, 3) uint8 RGB image).
            clip_index: perception's clip of the frame (FrameFeature.clip_index); -1 = unknown
                (the frame is then no keyframe).
        Returns:
            The stored FrameTokens.
        Raises:
            ValueError: the image is not (H, W, 3) uint8.
        """
        if not isinstance(frame, Frame):
            raise TypeError(f"ingest needs a Frame, got {type(frame).__name__}")
        newest = self.memory.latest_stamp(frame.camera_id)
        if frame.stamp < newest - self.config.max_backward_jump_sec:
            LOG.warning("camera %r: time jumped back %.3f -> %.3f s (bag loop or sim-time reset): "
                        "its memory is cleared", frame.camera_id, newest, frame.stamp)
            self.memory.clear(frame.camera_id)
            self.keyframes.clear(frame.camera_id)
            self.keeper.invalidate()
            with self._stats_lock:
                self.counts["memory_clears"] += 1
                self._labelled_at.pop(frame.camera_id, None)
                self._named_at.pop(frame.camera_id, None)
        tokens = self.vlm.encode_frame(frame.image, camera_id=frame.camera_id, stamp=frame.stamp,
                                       frame_index=frame.index, frame_id=frame.frame_id)
        stored = self.memory.add_frame(dataclasses.replace(tokens, **self._label(frame)))
        self.keyframes.add(tokens, clip_index)
        with self._cond:
            self._last_arrival = time.monotonic()
            self._cond.notify_all()  # the worker prefills it when idle
        with self._stats_lock:
            self.counts["frames_ingested"] += 1
            self._last["encode_ms"] = tokens.encode_ms
        return stored

    def _label(self, frame: Frame) -> dict:
        """How this frame is labelled: a time label every label_every_sec per camera, naming
        the camera when the labelled camera changes and every NAME_EVERY_SEC."""
        with self._stats_lock:
            last = self._labelled_at.get(frame.camera_id)
            due = last is None or not (0.0 <= frame.stamp - last < self.config.label_every_sec)
            named = False
            if due:
                self._labelled_at[frame.camera_id] = frame.stamp
                named_at = self._named_at.get(frame.camera_id)
                named = frame.camera_id != self._last_labelled_camera or named_at is None \
                    or not (0.0 <= frame.stamp - named_at < NAME_EVERY_SEC)
                self._last_labelled_camera = frame.camera_id
                if named:
                    self._named_at[frame.camera_id] = frame.stamp
            return {"labelled": due, "named": named}

    # ---- decision side -------------------------------------------------------------------
    def submit(self, trigger: TriggerEvent) -> str:
        """Queue a reaction to trigger.

        Args:
            trigger: the decision to respond, with its query text and evidence.
        Returns:
            The response id its ResponseEvents will carry.
        """
        if not isinstance(trigger, TriggerEvent):
            raise TypeError(f"submit needs a TriggerEvent, got {type(trigger).__name__}")
        job = _Job(trigger, response_id(trigger.trigger_id), time.perf_counter())
        # a narration trigger narrates its own scene: it never pre-empts its query's answer
        narration = trigger.policy == "boundary" and not trigger.revises_trigger_id
        orphans: List[tuple] = []  # (job, code, error) finished without running, emitted unlocked
        with self._cond:
            if self._closing:
                raise RuntimeError("reaction engine is closed")
            self.counts["submitted"] += 1
            current = self._current
            same = lambda other: other.trigger.query_id == trigger.query_id  # noqa: E731
            waiting = next((i for i, j in enumerate(self._queue) if same(j)), None) \
                if self.config.preempt_same_query else None
            cutoff = self._canceled.get(trigger.query_id)  # None: never canceled here
            if cutoff is not None and trigger.stamp <= cutoff:  # fired before its cancel, came after
                self.counts["canceled"] += 1
                orphans.append((job, ErrorCode.CANCELED, f"query {trigger.query_id} canceled"))
            elif self.config.preempt_same_query and current is not None and same(current) \
                    and not current.stop.is_set() and not narration:
                current.preempted_by, current.preempted = trigger.trigger_id, True
                current.stop.set()
                job.revises = current.response_id
                self.counts["preempted"] += 1
                if waiting is not None:  # an even older revision that never started
                    orphans.append((self._queue[waiting], ErrorCode.TRIGGER_SUPERSEDED,
                                    f"superseded by trigger {trigger.trigger_id}"))
                    del self._queue[waiting]
                    self.counts["superseded"] += 1
                self._queue.appendleft(job)
                if len(self._queue) > self.config.max_queue:  # the revision goes first: drop the next
                    orphans.append(self._drop_waiting(1))
            elif waiting is not None:
                stale = self._queue[waiting]
                job.revises = stale.revises
                if narration:  # stands for the waiting narration's scene changes too
                    job.merged = stale.merged + [stale.trigger.trigger_id]
                self._queue[waiting] = job
                self.counts["superseded"] += 1
                orphans.append((stale, ErrorCode.TRIGGER_SUPERSEDED,
                                f"superseded by trigger {trigger.trigger_id}"))
            else:
                self._queue.append(job)
                if len(self._queue) > self.config.max_queue:
                    orphans.append(self._drop_waiting(0))
            if trigger.revises_trigger_id:  # a revision names the answer it revises, always
                job.revises = response_id(trigger.revises_trigger_id)
            self._cond.notify_all()
        for stale, code, error in orphans:
            self._emit_final(stale, "", error, code=code, extras={"stop_reason": "not_started"})
        return job.response_id

    def _drop_waiting(self, index: int) -> tuple:
        """Remove the waiting job at index on overflow (lock held); returns it, its code and error."""
        dropped = self._queue[index]
        del self._queue[index]
        self.counts["dropped"] += 1
        LOG.warning("reaction queue full (%d): dropped trigger %s of query %s (%d dropped)",
                    self.config.max_queue, dropped.trigger.trigger_id, dropped.trigger.query_id,
                    self.counts["dropped"])
        return dropped, ErrorCode.TRIGGER_DROPPED, "dropped: reaction queue full"

    def cancel(self, query_id: str, up_to_stamp: Optional[float] = None) -> int:
        """End every trigger of a canceled query: the running answer stops within one decode
        step, waiting ones never start; each gets one final with ErrorCode.CANCELED.

        Args:
            query_id: the canceled query.
            up_to_stamp: camera time of the cancel (the decision's newest frame then): a
                trigger of this query with evidence up to it that arrives later (it was fired
                before the cancel but came after it) ends at once as CANCELED too.
        Returns:
            How many triggers it ended (0 when none of that query was queued or running).
        """
        with self._cond:
            if up_to_stamp is not None:
                self._canceled[query_id] = max(up_to_stamp, self._canceled.pop(query_id, -math.inf))
                while len(self._canceled) > CANCELED_KEPT:
                    self._canceled.popitem(last=False)
            waiting = [job for job in self._queue if job.trigger.query_id == query_id]
            for job in waiting:
                self._queue.remove(job)
            current = self._current
            running = current is not None and current.trigger.query_id == query_id \
                and not current.stop.is_set()
            if running:
                current.canceled = True
                current.stop.set()
            self.counts["canceled"] += len(waiting) + running
            self._cond.notify_all()
        for job in waiting:
            self._emit_final(job, "", f"query {query_id} canceled", code=ErrorCode.CANCELED,
                             extras={"stop_reason": "not_started"})
        if waiting or running:
            LOG.info("query %s canceled: %d waiting trigger(s) ended%s", query_id, len(waiting),
                     ", its running answer stopped" if running else "")
        return len(waiting) + running

    # ---- lifecycle and diagnostics -------------------------------------------------------
    def wait_idle(self, timeout: float) -> bool:
        """Block until no trigger is queued or running, or timeout (seconds); True if idle."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._current is None, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the running answer, answer waiting triggers with an error, join the worker."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            waiting = list(self._queue)
            self._queue.clear()
            if self._current is not None:
                self._current.stop.set()
            self._cond.notify_all()
        for job in waiting:
            self._emit_final(job, "", "reaction engine closed", code=ErrorCode.SHUTDOWN,
                             extras={"stop_reason": "not_started"})
        if threading.current_thread() is not self._worker:  # close() from on_response cannot join
            self._worker.join(timeout)
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            LOG.warning("reaction worker did not finish within %.1f s", timeout)
        self.keyframes.close()

    def stats(self) -> dict:
        """Counters, last timings and the last answer's cost (last_<COST_KEYS>) for diagnostics."""
        with self._cond:
            depth, busy = len(self._queue), self._current is not None
        with self._stats_lock:
            out = dict(self.counts, **{f"last_{k}": v for k, v in self._last.items()})
        memory = self.memory.stats()
        out.update(queue_depth=depth, busy=busy, memory_tokens=memory["tokens"],
                   max_tokens=memory["max_tokens"], memory_frames=memory["frames"],
                   memory_span_sec=memory["history_span_sec"],
                   memory_compressions=memory["compressions"], **self.keeper.stats(),
                   **self.keyframes.stats())
        # A backend's own counters (remote: requests, retries, server_down, fallbacks), so a
        # robot + server deployment sees its link's health on /diagnostics.
        backend_stats = getattr(self.vlm, "stats", None)
        if callable(backend_stats):
            out.update({f"vlm_{key}": value for key, value in backend_stats().items()})
        return out

    # ---- worker --------------------------------------------------------------------------
    def _run(self) -> None:
        torch.set_num_threads(self.config.worker_threads)
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    # Idle prefill once the stream pauses (no arrival for settle_sec): a burst
                    # of frames (a replay) is prefilled in one step, not one step a frame.
                    settled = time.monotonic() - self._last_arrival - self.config.settle_sec
                    if settled >= 0 and self.keeper.pending():
                        break
                    self._cond.wait(min(self.config.poll_sec, -settled) if settled < 0 else self.config.poll_sec)
                if self._closing:
                    self._current = None
                    self._cond.notify_all()
                    return
                job = self._queue.popleft() if self._queue else None
                self._current = job
            if job is None:  # idle: one bounded step of keeping the KV cache current
                self.keeper.step()
                continue
            try:
                self._react(job)
            except Exception:  # a bug in emitting must not kill the worker
                LOG.exception("reaction to trigger %s failed outside generation", job.trigger.trigger_id)
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()

    def _react(self, job: _Job) -> None:
        trigger = job.trigger
        started = time.perf_counter()
        evidence = self._await_evidence(trigger, job.stop)
        if job.stop.is_set():  # revised, canceled or closed before it started
            if job.preempted:
                code, error, reason = (ErrorCode.TRIGGER_SUPERSEDED,
                                       f"superseded by trigger {job.preempted_by}", "preempted")
            elif job.canceled:
                code, error, reason = ErrorCode.CANCELED, f"query {trigger.query_id} canceled", "canceled"
            else:
                code, error, reason = ErrorCode.SHUTDOWN, "reaction engine closed", "closed"
            self._emit_final(job, "", error, code=code,
                             extras={"stop_reason": reason, "preempted_by": job.preempted_by})
            return
        cameras = [trigger.camera_id] if self.config.prompt_cameras == "trigger" else None
        plan = self.keeper.plan(cameras)
        items = plan.items
        retrieved, clips = self._retrieved(trigger)
        sequence = tokens = 0
        first_chunk: List[float] = []
        produced: List[str] = []  # the text so far, for an answer that fails midway

        def on_text(text: str, tokens_so_far: int) -> None:
            nonlocal sequence, tokens
            if not first_chunk:
                first_chunk.append(time.perf_counter())
            produced.append(text)
            tokens = tokens_so_far
            self._emit(self._event(job, text, final=False, sequence=sequence, token_count=tokens,
                                   ttft_sec=first_chunk[0] - job.submitted))
            sequence += 1

        failed = out_of_memory = False
        try:
            result = self.vlm.generate(PromptParts(items, trigger.query_text, cache_slot=plan.slot,
                                                   retrieved=retrieved),
                                       on_text=on_text, stop=job.stop)
            self.keeper.answered(plan)
        except Exception as error:  # noqa: BLE001 -- any model failure becomes an error response
            LOG.warning("generation for trigger %s failed: %s: %s", trigger.trigger_id,
                        type(error).__name__, error)
            with self._stats_lock:
                self.counts["errors"] += 1
            out_of_memory = isinstance(error, torch.cuda.OutOfMemoryError)
            self._emit_final(job, "".join(produced), f"{type(error).__name__}: {error}", sequence=sequence,
                             ttft=(first_chunk[0] - job.submitted) if first_chunk else math.nan,
                             token_count=tokens, extras={"stop_reason": "error",
                                                         "queue_wait_sec": started - job.submitted,
                                                         **answer_cost(list(items) + retrieved, trigger.camera_id,
                                                                       trigger.stamp),
                                                         "retrieved_clips": clips},
                             code=ErrorCode.OUT_OF_MEMORY if out_of_memory else ErrorCode.GENERATION_FAILED)
            failed = True
        if out_of_memory:  # outside the except block, so the failed step's tensors are gone
            self.vlm.release_memory()
            LOG.warning("out of memory while answering trigger %s: cached memory released; "
                        "lower max_tokens or max_new_tokens if it recurs", trigger.trigger_id)
        if failed:
            return
        stop_reason = "preempted" if job.preempted else \
            "canceled" if job.canceled and result.stop_reason == "stopped" else result.stop_reason
        ttft = (first_chunk[0] - job.submitted) if first_chunk else \
            (started - job.submitted + result.ttft_sec)
        cost = answer_cost(list(items) + retrieved, trigger.camera_id, trigger.stamp, result)
        extras = {"stop_reason": stop_reason, "queue_wait_sec": started - job.submitted,
                  "retrieved_clips": clips,
                  "model_ttft_sec": result.ttft_sec, **cost,
                  "tokens_per_sec": result.tokens_per_sec, "duration_sec": result.duration_sec,
                  "evidence_in_memory": evidence, **result.extras}
        if job.preempted:
            extras["preempted_by"] = job.preempted_by
        with self._stats_lock:
            self.counts["answered"] += 1
            self._last.update(ttft_sec=ttft, tokens_per_sec=result.tokens_per_sec, **cost)
        if self.config.remember_dialogue and not job.preempted and not job.canceled \
                and not self._closing:
            self._remember(trigger, result.text)
        code, error = ErrorCode.OK, ""
        if job.preempted:  # a partial answer: the next final revises it
            code, error = ErrorCode.PREEMPTED, f"preempted by trigger {job.preempted_by}"
        elif job.canceled and result.stop_reason == "stopped":
            code, error = ErrorCode.CANCELED, f"query {trigger.query_id} canceled while answering"
        elif result.stop_reason == "stopped":  # only close() stops an answer besides preemption
            code, error = ErrorCode.SHUTDOWN, "reaction engine closed while answering"
        self._emit_final(job, result.text, error, sequence=sequence, ttft=ttft,
                         token_count=result.token_count, extras=extras, code=code)

    def _retrieved(self, trigger: TriggerEvent) -> tuple:
        """(keyframes of the trigger's retrieved clips in time order, labelled; the clips as
        run-record dicts, each with the keyframes it gave: 0 = no longer stored)."""
        frames: List[FrameTokens] = []
        clips = []
        for clip in trigger.retrieved:
            kept = self.keyframes.get(clip.camera_id, clip.clip_index)
            frames += kept
            clips.append(dict(dataclasses.asdict(clip), keyframes=len(kept)))
        return as_retrieved(frames, trigger.camera_id), clips

    def _await_evidence(self, trigger: TriggerEvent, stop: threading.Event) -> bool:
        """True when the trigger's evidence frame is in memory (waiting only if it is not yet)."""
        if self.memory.has_frame(trigger.camera_id, trigger.frame_index):
            return True
        with self._stats_lock:
            self.counts["evidence_waits"] += 1
        if self.memory.wait_for_frame(trigger.camera_id, trigger.frame_index,
                                      self.config.evidence_timeout_sec) and not stop.is_set():
            return True
        with self._stats_lock:
            self.counts["evidence_missing"] += 1
        LOG.warning("trigger %s: evidence frame %s #%d not in memory after %.2f s; answering "
                    "from the frames there are", trigger.trigger_id, trigger.camera_id,
                    trigger.frame_index, self.config.evidence_timeout_sec)
        return False

    def _remember(self, trigger: TriggerEvent, answer: str) -> None:
        for role, text in (("user", trigger.query_text), ("assistant", answer)):
            self.memory.add_turn(role, text, trigger.stamp, camera_id=trigger.camera_id,
                                 query_id=trigger.query_id,
                                 n_tokens=self.vlm.count_tokens(text) + self.vlm.turn_overhead_tokens())

    # ---- events --------------------------------------------------------------------------
    def _event(self, job: _Job, text: str, final: bool, sequence: int, **kwargs) -> ResponseEvent:
        t = job.trigger
        return ResponseEvent(response_id=job.response_id, trigger_id=t.trigger_id, query_id=t.query_id,
                             camera_id=t.camera_id, stamp=t.stamp, text=text, final=final,
                             sequence=sequence, revises_response_id=job.revises, frame_id=t.frame_id,
                             **kwargs)

    def _emit_final(self, job: _Job, text: str, error: str, sequence: int = 0, ttft: float = math.nan,
                    token_count: int = 0, extras: Optional[dict] = None,
                    code: ErrorCode = ErrorCode.OK) -> None:
        # Every final says what it cost (one that never reached the model cost nothing) and
        # which clips its trigger retrieved.
        clips = [dict(dataclasses.asdict(c), keyframes=0) for c in job.trigger.retrieved]
        extras = {**answer_cost([], job.trigger.camera_id, job.trigger.stamp),
                  "retrieved_clips": clips, **(extras or {})}
        if job.merged:
            extras["merged_trigger_ids"] = list(job.merged)
        if job.trigger.revision_reason:
            extras["revision_reason"] = job.trigger.revision_reason
        self._emit(self._event(job, text, final=True, sequence=sequence, ttft_sec=ttft,
                               token_count=token_count, error_code=code, error=error,
                               extras=extras))

    def _emit(self, event: ResponseEvent) -> None:
        try:
            self.on_response(event)
        except Exception:  # noqa: BLE001 -- a consumer bug must not stop the worker
            LOG.exception("on_response raised for %s (final=%s)", event.response_id, event.final)


__all__ = ["ReactionConfig", "ReactionEngine", "PROMPT_CAMERAS", "COST_KEYS", "answer_cost",
           "response_id"]
