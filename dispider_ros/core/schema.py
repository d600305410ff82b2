"""The one parameter schema: every node parameter's name, default, range, description and
live/static flag, written once.

Everything else derives from it: the nodes declare their ROS parameters from it
(nodes/params.py turns a Param into a ParameterDescriptor), the core and model config
dataclasses take their defaults and ranges from it, `dispider_ros.settings` reads parameter
files against it (offline replay, benchmarks) and config/dispider.yaml may only name keys it
holds (a test checks). Pure data: no ROS, no models.

`live` parameters are tunable with `ros2 param set` while the node runs; static ones
(models, devices, topics, queue sizes) may only change while the node is unconfigured and
take effect at the next configure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

NODES = ("perception_node", "decision_node", "reaction_node")
MODEL_PARAM = {"perception_node": "vision_model", "decision_node": "vision_model",
               "reaction_node": "vlm_model"}


@dataclass(frozen=True)
class Param:
    """One node parameter.

    Args:
        name: the ROS parameter name.
        default: its value when nothing sets it; its Python type is the parameter's type
            (an empty list is a string array).
        description: what it does, with its unit.
        low, high: inclusive range of a number (enforced by rclpy and by `check`).
        live: tunable while the node runs (else static).
        choices: allowed values of a string parameter.
    """

    name: str
    default: Any
    description: str
    low: Optional[float] = None
    high: Optional[float] = None
    live: bool = False
    choices: Tuple[str, ...] = ()

    def check(self, value: Any) -> Any:
        """Return value if it is valid for this parameter, else raise ValueError naming it."""
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if kind is list:
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{self.name} {value!r} must be a list of strings")
            return list(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{self.name} {value!r} must be a {kind.__name__}")
        if kind is float and math.isnan(value):
            raise ValueError(f"{self.name} {value!r} must be a number, not NaN")
        if self.low is not None and not (self.low <= value <= self.high):
            raise ValueError(f"{self.name} {value!r} must be in [{self.low}, {self.high}]")
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name} {value!r} is not one of {list(self.choices)}")
        return value


def _common(node: str, model_description: str) -> Tuple[Param, ...]:
    return (
        Param("preset", "tiny", "model preset from config/presets (tiny, qwen2vl_2b, ...): "
              "fills the model, device and dtype parameters left empty"),
        Param(MODEL_PARAM[node], "", model_description + "; Hugging Face id, local folder or "
              "tiny:<family>; empty = from the preset (reads back as the model in use once "
              "configured)"),
        Param("device", "", "torch device: cpu, cuda:0, cuda:1 ...; empty = from the preset"),
        Param("dtype", "", "torch dtype of the model; empty = from the preset",
              choices=("", "auto", "float32", "float16", "bfloat16")),
        Param("local_files_only", True, "never contact a model hub"),
        Param("trust_remote_code", False, "run code shipped with a checkpoint (off: a "
              "checkpoint cannot execute code in this process)"),
        Param("torch_threads", 0, "torch intra-op threads of this process; 0 = torch's "
              "default (all cores). Three nodes on a small CPU: 1 each", 0, 256),
        Param("autostart", True, "configure and activate on start-up; false = wait for a "
              "lifecycle manager (ros2 lifecycle set ...)"),
        Param("diagnostics_period_sec", 1.0, "period of /diagnostics messages", 0.1, 60.0,
              live=True),
    )


PERCEPTION = _common("perception_node", "SigLIP/CLIP vision encoder") + (
    Param("image_topics", ["image"], "sensor_msgs/Image topics to watch (camera id = "
          "resolved topic name)"),
    Param("compressed_topics", [], "sensor_msgs/CompressedImage topics to watch"),
    Param("camera_reliability", "auto", "camera subscription reliability: auto = reliable "
          "when every publisher offers it, else best effort (as ros2 bag record adapts); "
          "depth 1 either way", choices=("auto", "reliable", "best_effort")),
    Param("max_image_pixels", 4096 * 4096, "larger frames are refused as malformed",
          1, 1 << 28),
    Param("batch_size", 4, "sampled frames encoded per forward pass at most", 1, 256),
    Param("sample_fps", 2.0, "sampled frames per second of camera time, per camera",
          0.01, 1000.0, live=True),
    Param("clip_similarity_threshold", 0.85, "a new clip starts when a frame's cosine "
          "similarity to the running clip falls below this", -1.0, 1.0, live=True),
    Param("min_clip_frames", 2, "frames a clip holds at least before a new one may start",
          1, 100000, live=True),
    Param("max_clip_frames", 0, "force a new clip after this many frames; 0 = no limit",
          0, 1000000, live=True),
    Param("sampled_image_format", "raw", "how sampled frames go to the reaction node on "
          "`sampled_image`: raw rgb8, or jpeg (links between hosts)", choices=("raw", "jpeg")),
    Param("jpeg_quality", 85, "JPEG quality of sampled frames when sampled_image_format is "
          "jpeg", 1, 100, live=True),
)

DECISION = _common("decision_node", "SigLIP/CLIP checkpoint whose text tower scores match "
                   "queries (use perception's)") + (
    Param("activation_checkpoint", "", "folder of a trained activation head (enables mode "
          "'activation'); empty = none"),
    Param("trigger_threshold", 0.5, "score at which match/activation queries fire", 0.01, 1.0,
          live=True),
    Param("hysteresis", 0.1, "a fired query re-arms after its score falls below threshold "
          "minus this", 0.0, 0.99, live=True),
    Param("cooldown_sec", 5.0, "camera seconds after a trigger before the same query may "
          "fire again (match and activation queries; boundary queries use "
          "boundary_cooldown_sec)", 0.0, 3600.0, live=True),
    # -- narration (boundary mode): no scene change lost
    Param("boundary_cooldown_sec", 1.0, "camera seconds between two narrations (boundary "
          "triggers) of one query on one camera; a scene change inside it is not lost: it "
          "fires when the cooldown ends, merged with any other change meanwhile. Default = "
          "the shipped minimum clip length (perception min_clip_frames 2 / sample_fps 2), so "
          "every clip boundary fires on its own frame", 0.0, 3600.0, live=True),
    Param("smoothing", 0.5, "EMA weight of the past score (0 = no smoothing)", 0.0, 0.99,
          live=True),
    Param("max_query_chars", 2000, "longer queries are rejected", 1, 100000, live=True),
    Param("max_queries_per_sec", 5.0, "accepted queries per second, on the node's clock "
          "(sim time when use_sim_time is set); 0 = unlimited", 0.0, 1000.0, live=True),
    Param("max_active_queries", 64, "queries held at once; more are rejected", 1, 100000),
    Param("answer_timeout_sec", 30.0, "`ask` action: a goal aborts with ANSWER_TIMEOUT when an "
          "answer it waits for shows no progress (no chunk or final of any answer from the "
          "reaction node) for this long: the reaction node is down, unreachable or stalled. "
          "Keep it above the slowest first token (queue wait, evidence wait, prefill)",
          0.5, 3600.0, live=True),
    Param("now_wait_sec", 1.0, "a `now` question stamped later than its camera's newest "
          "feature (features still queued, e.g. a replay) waits for the frame current at its "
          "stamp at most this many wall seconds, then is answered from the newest frame (a "
          "stopped camera); zero-stamped questions and `ask` goals never wait", 0.0, 60.0,
          live=True),
    # -- question-relevant clip retrieval (core/clip_index.py)
    Param("retrieval_k", 1, "stored clips retrieved for a question about the past "
          "(query_text.refers_to_past), ranked by the match probability of the question and "
          "each clip's mean embedding; the trigger names them and their keyframes go into the "
          "prompt at full resolution. 0 = no retrieval", 0, 64, live=True),
    Param("retrieval_min_score", 0.5, "a clip is retrieved only when that match probability "
          "reaches this", 0.0, 1.0, live=True),
    Param("retrieval_max_clips", 20000, "clip features kept for retrieval, oldest dropped "
          "first (one embedding each: 3 KB at 768 dimensions)", 1, 10_000_000),
    # -- revision (issue 15): an answer is answered again when its evidence changes
    Param("revise_answers", True, "revise an answer when the evidence changes within "
          "revise_window_sec after its trigger (a clip boundary on its camera; a match or "
          "activation score falling below threshold minus hysteresis): the question is answered "
          "again with the new frames, naming the revised answer (revises_response_id); a "
          "query's own `revise` field overrides it", live=True),
    Param("revise_window_sec", 2.0, "camera seconds after a trigger during which a change of "
          "evidence revises its answer (one revision per answer); an `ask` goal whose query "
          "completed stays open this long (camera or wall clock, whichever passes first) to "
          "report a revision", 0.0, 60.0, live=True),
)

REACTION = _common("reaction_node", "video-LLM answering triggers (Qwen2-VL, Qwen2.5-VL, "
                   "Qwen3-VL, SmolVLM2; openai:<served model> = a VLM on a serving engine)") + (
    Param("max_image_pixels", 4096 * 4096, "larger sampled frames are refused as malformed",
          1, 1 << 28),
    Param("max_queue", 8, "triggers waiting at most; overflow drops the oldest", 1, 1000),
    Param("prompt_cameras", "all", "frames in the prompt: every camera's, or only the "
          "trigger's camera", choices=("all", "trigger")),
    Param("max_tokens", 4096, "memory budget in prompt tokens (visual tokens, each frame's "
          "label and markers, dialogue); round-decayed compression keeps the buffer under it",
          64, 10_000_000, live=True),
    Param("protected_frames", 4, "newest frames per camera never compressed", 0, 10000),
    Param("compress_to", 0.75, "low water mark: once over max_tokens, a compression batch goes "
          "down to this share of it, so the memory (and the model's KV cache of it) is "
          "append-only between batches", 0.1, 1.0),
    Param("memory_policy", "round_decay", "round_decay: pool the oldest rounds first, drop at "
          "the floor (StreamBridge); fifo: a sliding window that drops the oldest frames",
          choices=("round_decay", "fifo")),
    Param("frame_label_every_sec", 2.0, "camera seconds between the time labels put before "
          "frames in the prompt (per camera; 0 = every frame)", 0.0, 3600.0),
    Param("max_frame_pixels", 0, "pixel budget per frame for the VLM's resize (visual tokens "
          "grow with it); 0 = the preset's, else the checkpoint's own", 0, 1 << 26),
    Param("evidence_timeout_sec", 2.0, "longest a trigger waits for its evidence frame "
          "(sampled_image) to reach memory over DDS before it is answered without it",
          0.0, 60.0, live=True),
    Param("max_new_tokens", 48, "answer length limit in tokens", 1, 8192, live=True),
    Param("min_new_tokens", 0, "answers are at least this many tokens (end of answer "
          "suppressed before); at most max_new_tokens", 0, 8192, live=True),
    Param("temperature", 0.0, "sampling temperature; 0 = greedy", 0.0, 5.0, live=True),
    Param("preempt_same_query", True, "a newer trigger for a query stops its stale answer "
          "(the new answer names the one it revises); a boundary (narration) trigger never "
          "stops its query's running narration: it waits, and replaces a waiting one of its "
          "query (merged)"),
    Param("overlay", False, "publish `overlay` (sensor_msgs/Image, rgb8, the frame's header): "
          "each sampled frame with the questions, the last trigger and the streaming answer "
          "drawn on it, for RViz and Foxglove (about 0.5 ms per 640x480 frame)"),
    # -- the VLM on a GPU server: vlm_model "openai:<served model name>" (models/remote.py)
    Param("remote_base_url", "http://localhost:8000/v1", "OpenAI-compatible chat completions "
          "server (vLLM, SGLang, transformers serve) of a vlm_model 'openai:<served model "
          "name>'; https is verified as the openai client does it (certifi, or SSL_CERT_FILE)"),
    Param("remote_api_key_env", "OPENAI_API_KEY", "NAME of the environment variable holding "
          "the server's API key (the key itself is never a parameter); unset = no key"),
    Param("remote_connect_timeout_sec", 3.0, "longest wait to connect to the VLM server",
          0.1, 60.0),
    Param("remote_read_timeout_sec", 30.0, "longest wait for the server's first or next "
          "streamed chunk (prefill of a long history included)", 0.5, 600.0),
    Param("remote_retries", 2, "attempts after the first while the server cannot be reached "
          "or answers 429/5xx, with exponential backoff (0.5 s doubling, at most 4 s)", 0, 20),
    Param("remote_fallback_model", "", "local reaction model (Hugging Face id, folder, "
          "tiny:<family>; the preset's device) answering when the server is unreachable "
          "after its retries; empty = none (the answer fails, naming the URL)"),
    Param("remote_jpeg_quality", 85, "JPEG quality of the frames sent to the server", 1, 100),
    Param("remote_image_ids", True, "send each image's content hash as its `uuid` (vLLM >= "
          "0.10.2 then skips hashing it for its caches); off for servers that reject unknown "
          "fields"),
    # -- keyframes of every clip for retrieval (core/keyframe_store.py)
    Param("keyframes_per_clip", 2, "keyframes kept per clip at full resolution, spread over "
          "the clip (for retrieval)", 1, 64),
    Param("keyframe_ram_mb", 256, "RAM the stored keyframes may use; beyond it the oldest "
          "clips move to keyframe_dir as safetensors", 0, 1 << 20),
    Param("keyframe_disk_mb", 2048, "disk the spilled keyframes may use; beyond it the oldest "
          "clips are deleted (0 = no disk: dropped from RAM)", 0, 1 << 24),
    Param("keyframe_dir", "", "folder of the spilled keyframes; empty = a temporary folder "
          "removed at shutdown"),
)

PARAMS: Dict[str, Tuple[Param, ...]] = {
    "perception_node": PERCEPTION, "decision_node": DECISION, "reaction_node": REACTION}


def params(node: str) -> Tuple[Param, ...]:
    """The parameters of one node; ValueError naming the nodes if unknown."""
    if node not in PARAMS:
        raise ValueError(f"node {node!r} is not one of {list(NODES)}")
    return PARAMS[node]


def param(node: str, name: str) -> Param:
    for candidate in params(node):
        if candidate.name == name:
            return candidate
    raise KeyError(f"{node} has no parameter {name!r}")


def default(node: str, name: str) -> Any:
    """The default of one parameter (a fresh copy for lists)."""
    value = param(node, name).default
    return list(value) if isinstance(value, list) else value


def defaults(node: str) -> Dict[str, Any]:
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default)
            for p in params(node)}


def check(node: str, name: str, value: Any) -> Any:
    """Validate one value against the schema (ValueError naming the bad value)."""
    return param(node, name).check(value)


def markdown_table() -> str:
    """The README's parameter table (`python -m dispider_ros.core.schema`; a test keeps the
    README equal to it)."""
    rows = ["| node | parameter | default | range / values | live | description |",
            "|---|---|---|---|---|---|"]
    common = {p.name for p in PARAMS["perception_node"]} & {p.name for p in PARAMS["decision_node"]} \
        & {p.name for p in PARAMS["reaction_node"]}
    seen = set()
    for node in NODES:
        for p in PARAMS[node]:
            label = "all" if p.name in common else node.replace("_node", "")
            if (label, p.name) in seen:
                continue
            seen.add((label, p.name))
            limits = f"[{p.low:g}, {p.high:g}]" if p.low is not None else \
                ", ".join(f"`{c}`" if c else "`''`" for c in p.choices)
            shown = f"`{p.default!r}`" if not isinstance(p.default, bool) else f"`{str(p.default).lower()}`"
            rows.append(f"| {label} | `{p.name}` | {shown} | {limits} | {'live' if p.live else 'static'} "
                        f"| {p.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
