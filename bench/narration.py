"""narration_recall / narration_precision: does a boundary question miss a scene change?

"Narrate what happens step by step." is asked over seeded cut streams of the closed world
(dispider_ros.world.cut_stream: real photographs, shots of 2.5-6 s, panned and zoomed, 10 fps)
through the composition root with the shipped settings and the trained tiny models (preset
tiny_trained). Answers run concurrently with the stream, as in the nodes, and the stream is
offered as fast as the CPU allows (several times real time), so narrations overlap later
scene changes more often than with a live camera: the reaction's narration queue (no
pre-emption; waiting narrations merged) is exercised. Scoring (dispider_ros.eval.narration):
recall = cuts at least a clip apart narrated by an answer (its trigger, or one it merged, in
the cut's shot); precision = finals whose trigger lies within one clip (1 s) after a cut.

Baselines, measured in the same run on the same streams: boundary_cooldown_sec 5.0 through
the same graph (the old 5 s cooldown, with the new merging), and the pre-fix rule (a change
inside the 5 s cooldown_sec dropped) replayed on the ours arm's recorded clip boundaries.
"""
from __future__ import annotations

import time

SECONDS = {True: 60.0, False: 120.0}  # quick, full
SEEDS = {True: (0, 1, 2), False: tuple(range(8))}
BEFORE_COOLDOWN_SEC = 5.0  # the shipped cooldown_sec that used to hold narration back
ARMS = (("ours", None), ("cooldown_5s", BEFORE_COOLDOWN_SEC))


def arm(boundary_cooldown_sec, seeds, seconds: float) -> dict:
    from dispider_ros import compose, settings
    from dispider_ros.eval import narration as nar

    node_settings = {node: settings.node_settings(node, overrides={"preset": "tiny_trained"})
                     for node in settings.NODES}
    if boundary_cooldown_sec is not None:
        node_settings["decision_node"]["boundary_cooldown_sec"] = boundary_cooldown_sec
    perception = node_settings["perception_node"]
    min_clip = perception["min_clip_frames"] / perception["sample_fps"]
    finals = nar.Finals()
    started = time.perf_counter()
    composition = compose.build_graph(node_settings, finals, id_prefix="bench-narration")
    loaded = time.perf_counter() - started
    try:
        streams = [nar.run_stream(composition, finals, seed, seconds, start=k * (seconds + 30.0),
                                  min_clip_sec=min_clip, tolerance_sec=min_clip)
                   for k, seed in enumerate(seeds)]
        reaction = composition.graph.reaction.stats()
    finally:
        composition.close()
    figures = nar.pool([s.results[nar.QUESTION] for s in streams])
    figures.update(boundary_cooldown_sec=node_settings["decision_node"]["boundary_cooldown_sec"],
                   preempted=reaction["preempted"], superseded=reaction["superseded"],
                   dropped=reaction["dropped"], load_seconds=round(loaded, 2),
                   seconds=round(time.perf_counter() - started, 2))
    figures["pre_fix_rule"] = nar.pool([s.score_stamps(nar.dropping_cooldown(
        [f.stamp for f in s.features[1:] if f.clip_boundary], BEFORE_COOLDOWN_SEC), min_clip, min_clip)
        for s in streams])
    return figures


def run(quick: bool, log=print) -> dict:
    seeds, seconds = SEEDS[quick], SECONDS[quick]
    out = {"protocol": {"seeds": list(seeds), "stream_seconds": seconds, "source_fps": 10.0,
                        "question": "Narrate what happens step by step.", "preset": "tiny_trained",
                        "answers": "concurrent with the stream (as the nodes), stream offered as fast "
                                   "as the CPU allows", "tolerance_sec": "one clip (min_clip_frames / "
                                   "sample_fps)", "threads": 1}}
    for name, cooldown in ARMS:
        figures = arm(cooldown, seeds, seconds)
        out[name] = figures
        log(f"  {name:11s} boundary_cooldown_sec {figures['boundary_cooldown_sec']:.1f}: recall "
            f"{figures['recall']:.3f} ({figures['narrated_cuts']}/{figures['scored_cuts']} cuts), precision "
            f"{figures['precision']:.3f} ({figures['correct_narrations']}/{figures['narrations']}); "
            f"{figures['merged']} merged, {figures['preempted']} pre-empted, in {figures['seconds']:.1f} s")
    rule = out["ours"]["pre_fix_rule"]
    log(f"  pre-fix rule (changes inside the {BEFORE_COOLDOWN_SEC:.0f} s cooldown dropped): recall "
        f"{rule['recall']:.3f}, precision {rule['precision']:.3f}")
    out["narration_recall"], out["narration_precision"] = out["ours"]["recall"], out["ours"]["precision"]
    return out
