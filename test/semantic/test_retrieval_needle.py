"""An old needle found again: a photograph shown once, minutes of other shots, then a question
naming it. Through the composition root at the shipped settings with the trained tiny models
(dispider_ros.eval.needle): the decision retrieves the needle's clip, and its keyframes reach
the reaction model's prompt at full resolution -- with retrieval_k >= 1, and not with 0."""
import pytest

from dispider_ros.core import schema
from dispider_ros.eval.needle import needle_recording, recall_at_k, run_needle

pytestmark = [pytest.mark.retrieval, pytest.mark.slow]
SEEDS = range(8)
SECONDS = 120.0


def settings(**decision):
    from dispider_ros.settings import node_settings

    return {node: node_settings(node, overrides={
        "preset": "tiny_trained", "torch_threads": 1, **(decision if node == "decision_node" else {}),
        **({"max_new_tokens": 12} if node == "reaction_node" else {})})
        for node in ("perception_node", "decision_node", "reaction_node")}


def test_the_needle_clip_is_retrieved_and_its_keyframes_reach_the_prompt_at_full_resolution():
    k = schema.default("decision_node", "retrieval_k")
    assert k >= 1
    results = [run_needle(needle_recording(seed, SECONDS), settings()) for seed in SEEDS]
    summary = [(r.seed, r.needle, r.hit_rank, [round(c["score"], 2) for c in r.retrieved]) for r in results]
    assert recall_at_k(results) >= 0.9, summary  # the shipped k (20 recordings of 180 s: 0.95 at k 1)
    for r in results:
        assert r.error_code == 0, (r.seed, r.answer)
        assert len(r.retrieved) <= k
        if r.hit_rank:  # the clip's keyframes, as encoded, in the prompt
            clip = r.retrieved[r.hit_rank - 1]
            assert clip["keyframes"] >= 1 and r.needle_keyframes >= 1, r
            assert all(level == 0 for _, level in r.keyframes), r.keyframes


def test_without_retrieval_no_clip_and_no_keyframe_reaches_the_prompt():
    for seed in SEEDS[:2]:
        result = run_needle(needle_recording(seed, SECONDS), settings(retrieval_k=0))
        assert result.retrieved == [] and result.keyframes == [] and result.needle_keyframes == 0
        assert result.error_code == 0
