"""An old needle named from the retrieved clips' keyframes, end to end through the composition root.

eval/needle.py's recordings: a photograph shown once early, minutes of other shots, then
"Tell me about the {word} you saw." The decision retrieves stored clips for the question and
the reaction puts their keyframes after the memory; the trained tiny VLM
(`tiny:qwen2_vl_trained`) answers with the caption of the scene the retrieved keyframes show.
Three arms of the same recordings: the shipped retrieval_k (the needle is named), retrieval_k
0 (no block: the newest frame is named, never the needle by construction), and the retrieved
keyframes' visual tokens swapped for another scene's views (needle.KeyframeSwap: that scene
is named, so the answer follows the frames, not the question's word).
"""
import pytest

from dispider_ros import world
from dispider_ros.eval import needle

pytestmark = [pytest.mark.retrieval, pytest.mark.slow]

# Recordings whose needle clip the shipped decision retrieves (retrieval's recall is the
# decision's figure, not the VLM's: 7 of seeds 0-15, 0 2 3 5 10 11 14).
SEEDS = (0, 2, 3, 5, 10, 11)
# Over seeds 0-15 the needle was named in 5 of the 7 recordings with a retrieved needle clip
# (71 %; variants of the build: 5-7 of 7), never with retrieval_k 0 (0/16), and the swapped
# scene in 10 of the 12 with a block (83 %). The bars sit at those rates over the seeds here
# (4 of 6 = 67 %, 3 of 4 = 75 %): a rebuild (any change to the prompt code retrains the model)
# moves single answers (the brick wall's needle named "gravel", its look-alike, in some).
NAMED_BAR = 4  # of SEEDS
SWAP_SEEDS = SEEDS[:4]
SWAP_BAR = 3  # of SWAP_SEEDS


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread, as the nodes run on small machines (see test_answer_semantics)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _settings(**decision):
    from dispider_ros.settings import node_settings

    tiny = {"preset": "tiny_trained"}
    return {"perception_node": node_settings("perception_node", overrides=tiny),
            "decision_node": node_settings("decision_node", overrides={**tiny, **decision}),
            "reaction_node": node_settings("reaction_node", overrides={**tiny, "max_new_tokens": 12})}


def _swap_scene(recording):
    """A scene that is neither the needle nor the newest frame's."""
    last = (int(recording.seconds * needle.FPS) - 1) / needle.FPS
    newest = next(s.scene for s in recording.shots if s.start <= last < s.end)
    others = [s for s in world.PHOTO_SCENES if s not in (recording.needle, newest)]
    return others[recording.seed % len(others)]


@pytest.fixture(scope="module")
def shipped():
    return [needle.run_needle(needle.needle_recording(seed), _settings()) for seed in SEEDS]


def test_shipped_retrieval_names_the_needle(shipped):
    named = [r.seed for r in shipped if r.names_needle]
    print(f"needle named {len(named)}/{len(SEEDS)} with the shipped retrieval_k: {[r.answer for r in shipped]}")
    assert all(r.hit_rank > 0 for r in shipped)  # the seeds whose needle clip is retrieved
    assert len(named) >= NAMED_BAR, [(r.needle, r.answer) for r in shipped]


def test_without_retrieval_the_needle_is_rarely_named():
    results = [needle.run_needle(needle.needle_recording(seed), _settings(retrieval_k=0)) for seed in SEEDS[:3]]
    print(f"needle named {sum(r.names_needle for r in results)}/{len(results)} with retrieval_k 0: "
          f"{[r.answer for r in results]}")
    assert all(not r.keyframes for r in results)
    assert sum(r.names_needle for r in results) <= 1, [(r.needle, r.answer) for r in results]


def test_swapped_keyframes_are_what_the_answer_names():
    results = []
    for seed in SWAP_SEEDS:
        recording = needle.needle_recording(seed)
        scene = _swap_scene(recording)
        result = needle.run_needle(recording, _settings(),
                                   wrap_vlm=lambda vlm, s=scene, n=seed: needle.KeyframeSwap(vlm, s, n))
        results.append((scene, result))
    assert all(r.keyframes for _, r in results)
    named = sum(world.names_scene(r.answer, scene) for scene, r in results)
    print(f"swapped scene named {named}/{len(results)}: {[(s.name, r.answer) for s, r in results]}")
    assert named >= SWAP_BAR, [(scene.name, r.needle, r.answer) for scene, r in results]
    assert not any(r.names_needle for _, r in results)  # the question's word does not decide
