"""Revision with meaning, through the composition root: a `now` question asked just before a
scene cut is answered about the old scene, and the cut (a clip boundary inside
revise_window_sec) answers it again; the revision names the new scene.

The graph is compose.build_graph with the shipped settings (the schema's defaults; revision
on, 2 s window) and the semantic models of bench.semantic_answers: the tiny SigLIP segments
clips, the trained tiny VLM names the scene of the newest frame of its prompt. A seeded
world.cut_stream is offered at the sampling rate; a question is asked on the last frame of
each shot (half a second before the cut) and, as a control, on a frame in the middle of a
long shot (no cut within the window). Answers are given before the stream goes on
(answer_timeout_sec), so the run is deterministic.
"""
import threading

import pytest

from bench import semantic_answers as sem

pytestmark = [pytest.mark.slow, pytest.mark.revision]

CAM = "/camera/color/image_raw"
SEED = 5
FRAMES = 240  # 120 s of camera time at 2 fps: about 28 cuts


@pytest.fixture(scope="module")
def cut_run():
    import torch

    from dispider_ros import compose, world
    from dispider_ros.core.types import QuerySpec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = sem.settings()
    window = settings["decision_node"]["revise_window_sec"]
    finals, lock = {}, threading.Lock()

    def on_response(event):
        if event.final:
            with lock:
                finals[event.trigger_id] = event

    seconds, step = FRAMES / sem.FPS, 1 / sem.FPS
    shots, feed = world.cut_stream(SEED, seconds, fps=sem.FPS, size=sem.FRAME_SIZE)
    shot_at = lambda stamp: next((s for s in shots if s.start <= stamp < s.end), None)  # noqa: E731
    calm_shots = set()
    comp = compose.build_graph(settings, on_response, answer_timeout_sec=120.0, id_prefix="rev")
    asked, revisions = {}, {}
    try:
        for n in range(FRAMES):
            t, image, _ = next(feed)
            for trigger in comp.graph.offer(CAM, t, image):
                if trigger.revises_trigger_id:
                    revisions[trigger.revises_trigger_id] = trigger
            shot = shot_at(t)
            kind = ""
            if t + step < seconds and shot_at(t + step) is not shot:  # the shot's last frame
                kind = "cut"
            elif shot_at(t - 1.0) is shot is shot_at(t + window + step) and shot not in calm_shots:
                kind = "calm"  # 1 s into a shot that lasts past the window: no cut to revise
                calm_shots.add(shot)
            if kind:
                (trigger,) = comp.graph.ask(QuerySpec(f"{kind}-{n}", world.NOW_QUESTION, mode="now",
                                                      stamp=t), t)
                asked[trigger.trigger_id] = (kind, trigger)
        assert comp.graph.wait_idle(120.0)
    finally:
        comp.close()
        torch.set_num_threads(threads)
    return asked, revisions, finals, shot_at, window


def test_a_cut_just_after_a_now_answer_revises_it_and_the_revision_names_the_new_scene(cut_run):
    from dispider_ros import world

    asked, revisions, finals, shot_at, window = cut_run
    cut = [t for kind, t in asked.values() if kind == "cut"]
    revised = [t for t in cut if t.trigger_id in revisions]
    right_before = [world.names_scene(finals[t.trigger_id].text, shot_at(t.stamp).scene) for t in cut]
    right_after = []
    for original in revised:
        revision = revisions[original.trigger_id]
        final = finals[revision.trigger_id]
        assert revision.revision_reason == "clip_boundary" and revision.query_id == original.query_id
        assert original.stamp < revision.stamp < original.stamp + window
        assert final.revises_response_id == finals[original.trigger_id].response_id
        assert final.extras["revision_reason"] == "clip_boundary" and final.error_code == 0
        assert shot_at(revision.stamp) != shot_at(original.stamp)  # the evidence is the new shot
        right_after.append(world.names_scene(final.text, shot_at(revision.stamp).scene))
    revised_rate = len(revised) / len(cut)
    right_rate = sum(right_after) / max(len(right_after), 1)
    print(f"\nrevision: {len(revised)} of {len(cut)} questions asked 0.5 s before a cut revised "
          f"({revised_rate:.3f}); revisions naming the new scene {sum(right_after)}/{len(right_after)} "
          f"({right_rate:.3f}); first answers naming the old scene {sum(right_before)}/{len(cut)}")
    assert len(cut) >= 20 and revised_rate >= 0.8
    assert right_rate >= 0.8, [(shot_at(revisions[t.trigger_id].stamp).scene.name,
                                finals[revisions[t.trigger_id].trigger_id].text) for t in revised]


def test_a_question_in_the_middle_of_a_shot_is_not_revised(cut_run):
    asked, revisions, _, _, _ = cut_run
    calm = [t for kind, t in asked.values() if kind == "calm"]
    spurious = [t for t in calm if t.trigger_id in revisions]
    print(f"\nrevision: {len(spurious)} of {len(calm)} questions asked mid-shot revised")
    assert len(calm) >= 5 and len(spurious) <= 0.2 * len(calm)
