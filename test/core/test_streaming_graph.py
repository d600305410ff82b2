"""The composition root with the shipped settings and tiny models: sampling before decoding,
evidence always in memory, every trigger answered."""
import threading

import numpy as np
import pytest
import torch

from dispider_ros import compose, settings
from dispider_ros.core.types import QuerySpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node_settings():
    torch.set_num_threads(1)
    out = {node: settings.node_settings(node) for node in settings.NODES}
    out["reaction_node"].update(max_new_tokens=1, max_tokens=256)  # 1,000 answers: keep each short
    return out


class Finals:
    def __init__(self):
        self.events, self.lock = [], threading.Lock()

    def __call__(self, event):
        if event.final:
            with self.lock:
                self.events.append(event)


def test_a_thousand_triggers_find_their_evidence_frame_in_memory(node_settings):
    finals = Finals()
    composition = compose.build_graph(node_settings, finals, answer_timeout_sec=60.0)
    graph = composition.graph
    rng = np.random.default_rng(0)
    triggers = []
    try:
        for i in range(1000):  # a 2 fps source: every frame is sampled
            stamp = 100.0 + 0.5 * i
            triggers += graph.offer("/cam", stamp, rng.integers(0, 255, (48, 64, 3), np.uint8))
            triggers += graph.ask(QuerySpec(query_id=f"q{i}", text="What is in front of the camera now?",
                                            mode="now"), stamp)
        assert graph.wait_idle(60.0)
        stats = graph.reaction.stats()
    finally:
        composition.close()
    # Random frames start a new clip nearly every frame, so (revision on by default) most
    # answers are revised by the next frame's cut: those revisions need their evidence too.
    questions = [t for t in triggers if not t.revises_trigger_id]
    revisions = [t for t in triggers if t.revises_trigger_id]
    assert len(questions) == 1000 and len(finals.events) == len(triggers) and len(revisions) > 500
    assert all(e.extras["evidence_in_memory"] for e in finals.events)
    assert stats["evidence_waits"] == 0 and stats["evidence_missing"] == 0
    by_trigger = {t.trigger_id: t for t in triggers}
    assert all(by_trigger[e.trigger_id].frame_index == int(e.query_id[1:]) for e in finals.events
               if not by_trigger[e.trigger_id].revises_trigger_id)
    window = node_settings["decision_node"]["revise_window_sec"]
    for revision in revisions:  # a later frame of the same camera, inside the window
        revised = by_trigger[revision.revises_trigger_id]
        assert revised.query_id == revision.query_id and revised.frame_index < revision.frame_index
        assert revised.stamp < revision.stamp < revised.stamp + window


def test_frames_that_are_not_due_are_never_decoded(node_settings):
    composition = compose.build_graph(node_settings, Finals())
    graph = composition.graph
    decoded = []
    try:
        for i in range(40):  # 20 fps source, sample_fps 2: one in ten is due
            stamp = 10.0 + 0.05 * i
            index = graph.take("/cam", stamp)
            if index is not None:
                decoded.append(index)
                graph.process([graph.frame("/cam", stamp, index, np.zeros((48, 64, 3), np.uint8))])
        assert decoded == [0, 1, 2, 3]
        assert graph.reaction.stats()["frames_ingested"] == 4
    finally:
        composition.close()
