"""match_f1: does the zero-shot trigger fire for a reason?

Seeded cut streams of the closed world (dispider_ros.world: panned, zoomed photographs with
hard cuts) go through the composition root with the shipped settings (config/dispider.yaml:
sample_fps, trigger_threshold, hysteresis, cooldown, smoothing, the tiny VLM answering every
trigger); the only override is the vision model of perception and decision. Before each
stream every scene's "Tell me when the <word> appears." is asked. Precision = triggers whose
evidence frame shows the named scene / triggers; recall = first appearances fired on within
one sampled period of their first sampled frame, never before (dispider_ros.eval.semantic).

Ours: tiny:siglip_trained (trained on the world here). Fair baseline: the untrained random
tiny:siglip of the `tiny` preset, same protocol, same streams.
"""
from __future__ import annotations

import time

ARMS = (("ours", "tiny:siglip_trained"), ("baseline", "tiny:siglip"))
SECONDS = 30.0


def arm(model: str, seeds, seconds: float = SECONDS) -> dict:
    from dispider_ros import compose, settings
    from dispider_ros.eval import semantic

    node_settings = {node: settings.node_settings(node) for node in settings.NODES}
    for node in ("perception_node", "decision_node"):
        node_settings[node]["vision_model"] = model
    started = time.perf_counter()
    composition = compose.build_graph(node_settings, lambda event: None)
    loaded = time.perf_counter() - started
    try:
        figures = semantic.evaluate(composition, seeds, seconds,
                                    1.0 / node_settings["perception_node"]["sample_fps"])
    finally:
        composition.close()
    figures.update(model=model, load_seconds=round(loaded, 2),
                   seconds=round(time.perf_counter() - started, 2))
    return figures


def run(quick: bool, log=print) -> dict:
    seeds = list(range(6 if quick else 24))
    out = {"protocol": {"streams": len(seeds), "stream_seconds": SECONDS, "source_fps": 10.0,
                        "questions_per_stream": 16, "settings": "shipped (config/dispider.yaml); "
                        "override: vision_model only", "threads": 1}}
    for name, model in ARMS:
        figures = arm(model, seeds)
        out[name] = figures
        log(f"  {name} {model}: F1 {figures['f1']:.3f} (precision {figures['precision']:.3f}, "
            f"recall {figures['recall']:.3f}; {figures['triggers']} triggers, "
            f"{figures['appearances']} first appearances) in {figures['seconds']:.1f} s "
            f"(model ready in {figures['load_seconds']:.1f} s)")
    return out
