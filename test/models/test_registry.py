"""Reaction backend registry: a backend must provide every member of core.protocols.ReactionVLM."""
import pytest

from dispider_ros.core.protocols import ReactionVLM
from dispider_ros.models.qwen2_vl import Qwen2VLBackend
from dispider_ros.models.registry import BACKENDS, REQUIRED_MEMBERS, register_backend


def test_required_members_are_the_protocol_and_qwen_provides_them():
    assert set(REQUIRED_MEMBERS) == {"encode_frame", "generate", "count_tokens", "hidden_size",
                                     "frame_overhead_tokens", "prefill", "reset_cache", "release_memory",
                                     "turn_overhead_tokens",
                                     "close"}
    assert ReactionVLM in Qwen2VLBackend.__mro__ and not Qwen2VLBackend.__abstractmethods__
    assert BACKENDS["qwen2_vl"] is Qwen2VLBackend and BACKENDS["qwen2_5_vl"] is Qwen2VLBackend


def test_register_backend_names_what_a_backend_lacks():
    class HalfBackend:
        def encode_frame(self, image):
            return None

    with pytest.raises(TypeError, match="lacks .*'generate'"):
        register_backend("half_vl", HalfBackend)
    with pytest.raises(TypeError, match="must be a class"):
        register_backend("half_vl", HalfBackend())
    assert "half_vl" not in BACKENDS


def test_register_backend_accepts_a_class_that_only_matches_the_protocol():
    members = {name: (lambda self, *args, **kwargs: None) for name in REQUIRED_MEMBERS}
    family = type("FamilyBackend", (), members)  # derives from nothing: structural typing
    try:
        register_backend("family_vl", family)
        assert BACKENDS["family_vl"] is family
    finally:
        BACKENDS.pop("family_vl", None)
