"""Settings -> core objects with their models loaded: the one place the stages are built.

Each node builds its stage here from its settings (core/schema.py names them), and the
offline replay, the benchmarks and the single-process graph build the whole
StreamingGraph here from the same settings, so every user runs the same composition.
ROS-free; models are loaded through dispider_ros.models and injected into core.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from dispider_ros.core.decision import DecisionConfig, DecisionCore
from dispider_ros.core.graph import StreamingGraph
from dispider_ros.core.memory import MemoryConfig
from dispider_ros.core.perception import PerceptionConfig, PerceptionPipeline
from dispider_ros.core.reaction import ReactionConfig, ReactionEngine
from dispider_ros.core.sampler import SamplerConfig
from dispider_ros.core.segmenter import SegmenterConfig
from dispider_ros.core.types import ResponseEvent
from dispider_ros.settings import resolve_models

LOG = logging.getLogger(__name__)

Settings = Dict[str, Any]
DECISION_FIELDS = ("trigger_threshold", "hysteresis", "cooldown_sec", "smoothing",
                   "max_query_chars", "max_queries_per_sec", "max_active_queries",
                   "boundary_cooldown_sec", "retrieval_k", "retrieval_min_score", "retrieval_max_clips",
                   "revise_answers", "revise_window_sec")


# -- settings -> config objects (no models loaded) -----------------------------------------
def sampler_config(settings: Settings) -> SamplerConfig:
    return SamplerConfig(sample_fps=settings["sample_fps"])


def segmenter_config(settings: Settings) -> SegmenterConfig:
    return SegmenterConfig(similarity_threshold=settings["clip_similarity_threshold"],
                           min_clip_frames=settings["min_clip_frames"],
                           max_clip_frames=settings["max_clip_frames"])


def perception_config(settings: Settings) -> PerceptionConfig:
    return PerceptionConfig(sampler=sampler_config(settings), segmenter=segmenter_config(settings))


def decision_config(settings: Settings, id_prefix: str = "") -> DecisionConfig:
    return DecisionConfig(**{key: settings[key] for key in DECISION_FIELDS}, id_prefix=id_prefix)


def memory_config(settings: Settings) -> MemoryConfig:
    return MemoryConfig(max_tokens=settings["max_tokens"],
                        protected_frames=settings["protected_frames"],
                        target_ratio=settings["compress_to"], policy=settings["memory_policy"])


def reaction_config(settings: Settings) -> ReactionConfig:
    return ReactionConfig(memory=memory_config(settings), max_queue=settings["max_queue"],
                          preempt_same_query=settings["preempt_same_query"],
                          prompt_cameras=settings["prompt_cameras"],
                          evidence_timeout_sec=settings["evidence_timeout_sec"],
                          label_every_sec=settings["frame_label_every_sec"],
                          keyframes_per_clip=settings["keyframes_per_clip"],
                          keyframe_ram_mb=settings["keyframe_ram_mb"],
                          keyframe_disk_mb=settings["keyframe_disk_mb"],
                          keyframe_dir=settings["keyframe_dir"])


def vision_encoder_config(settings: Settings, resolved: Dict[str, Any]):
    from dispider_ros.models.vision import VisionEncoderConfig

    return VisionEncoderConfig(model=resolved["model"], device=resolved["device"],
                               dtype=resolved["dtype"],
                               batch_size=settings.get("batch_size", VisionEncoderConfig.batch_size),
                               local_files_only=settings["local_files_only"],
                               trust_remote_code=settings["trust_remote_code"])


def reaction_vlm_config(settings: Settings, resolved: Dict[str, Any]):
    from dispider_ros.models.vlm_config import ReactionVLMConfig

    return ReactionVLMConfig(model=resolved["model"], device=resolved["device"],
                             dtype=resolved["dtype"], local_files_only=settings["local_files_only"],
                             trust_remote_code=settings["trust_remote_code"],
                             max_new_tokens=settings["max_new_tokens"],
                             min_new_tokens=settings["min_new_tokens"],
                             temperature=settings["temperature"],
                             max_pixels=resolved.get("max_frame_pixels") or None)


# -- stages with their models --------------------------------------------------------------
def load_vision_encoder(settings: Settings, node: str):
    """The SigLIP/CLIP encoder a node's settings name (resolved through its preset)."""
    from dispider_ros.models.vision import VisionEncoder

    return VisionEncoder(vision_encoder_config(settings, resolve_models(node, settings)))


def perception_stage(settings: Settings, encoder) -> PerceptionPipeline:
    return PerceptionPipeline(encoder, perception_config(settings))


def decision_stage(settings: Settings, text_encoder, id_prefix: str = "") -> DecisionCore:
    """DecisionCore scoring with text_encoder's text tower (+ the activation head if set)."""
    head = None
    if settings["activation_checkpoint"]:
        from dispider_ros.models.activation import ActivationHead

        device = resolve_models("decision_node", settings)["device"]
        head = ActivationHead.from_pretrained(settings["activation_checkpoint"], device=device)
    return DecisionCore(decision_config(settings, id_prefix), text_encoder=text_encoder.encode_texts,
                        match_calibration=text_encoder.match_calibration(), activation_head=head)


def remote_config(settings: Settings):
    """The server settings of a vlm_model "openai:<served model name>" (models.remote)."""
    from dispider_ros.models.remote import RemoteConfig

    return RemoteConfig(**{name[len("remote_"):]: settings[name] for name in settings
                           if name.startswith("remote_")})


def load_reaction_vlm(settings: Settings):
    from dispider_ros.models.registry import load_reaction_vlm as load

    return load(reaction_vlm_config(settings, resolve_models("reaction_node", settings)),
                remote=remote_config(settings))


def reaction_stage(settings: Settings, on_response: Callable[[ResponseEvent], None],
                   vlm) -> ReactionEngine:
    return ReactionEngine(reaction_config(settings), on_response, vlm=vlm)


# -- the whole graph in one process --------------------------------------------------------
@dataclass
class Composition:
    """A StreamingGraph and the models it loaded (closed together)."""

    graph: StreamingGraph
    models: List[Any] = field(default_factory=list)

    def close(self) -> None:
        self.graph.close()
        for model in self.models:
            model.close()


def build_graph(settings: Dict[str, Settings], on_response: Callable[[ResponseEvent], None],
                answer_timeout_sec: Optional[float] = None, on_feature=None, on_trigger=None,
                id_prefix: str = "") -> Composition:
    """Load every model the three nodes' settings name and wire the StreamingGraph.

    Args:
        settings: {node name: settings} (settings.node_settings of each node).
        on_response: receives every ResponseEvent (chunks and finals).
        answer_timeout_sec, on_feature, on_trigger: see StreamingGraph.
        id_prefix: trigger id prefix ("" = random per graph).
    """
    models: List[Any] = []
    try:
        encoder = load_vision_encoder(settings["perception_node"], "perception_node")
        models.append(encoder)
        same = resolve_models("perception_node", settings["perception_node"]) == \
            resolve_models("decision_node", settings["decision_node"])
        text_encoder = encoder  # the decision node loads its own copy of the same checkpoint
        if not same:
            text_encoder = load_vision_encoder(settings["decision_node"], "decision_node")
            models.append(text_encoder)
        vlm = load_reaction_vlm(settings["reaction_node"])
        models.append(vlm)
        graph = StreamingGraph(
            perception_stage(settings["perception_node"], encoder),
            decision_stage(settings["decision_node"], text_encoder, id_prefix),
            reaction_stage(settings["reaction_node"], on_response, vlm),
            on_feature=on_feature, on_trigger=on_trigger, answer_timeout_sec=answer_timeout_sec)
    except Exception:
        for model in models:
            model.close()
        raise
    return Composition(graph, models)
