"""Question-relevant clip retrieval: does it find an old needle, and what does it add to TTFT?

retrieval_recall_at_k -- old-needle recordings (dispider_ros.eval.needle: a photograph shown
once for 4 s after 6 s of other shots, then minutes of other shots, then "Tell me about the
<word> you saw.") through the composition root at the shipped settings with the trained tiny
models (preset tiny_trained): the share of recordings whose needle clip is among the clips
the trigger retrieved (retrieval_k, the shipped 3), over seeded recordings. Beside it, on the
same recordings: recall@1, the needle's keyframes the prompt got at full resolution, and the
baseline without retrieval (retrieval_k 0): how often the prompt's memory still held a needle
frame at full resolution (round-decayed compression pools old frames; a FIFO window of the
same budget drops them), and how often each answer named the needle.

retrieval_ttft_overhead -- time to first token in steady state with retrieval against
without, in one run: the reaction as it ships (compose.reaction_config of the shipped
settings, the bench-scale Qwen2-VL, 640x480 footage at 2 fps, a clip every 10 frames),
a trigger every 4 sampled frames, alternately a question with the default k retrieved clips
(keyframes_per_clip each, from the keyframe store) and the same question without; ratio of
the p50 TTFTs over the second half (p95 beside it). Time as in P3 (bench/steady.py): each
frame opens one sampling period, the worker's idle prefill gets what is left of it.
"""
from __future__ import annotations

import time

from bench import models
from bench.common import distinct_frames, percentile
from dispider_ros.core import schema
from dispider_ros.core.types import Frame, RetrievedClip, TriggerEvent

CAMERA = "/camera/color/image_raw"
QUESTION = "What did the table look like before?"
EVERY = 4
CLIP_FRAMES = 10
ANSWER_TOKENS = 8


def recall(quick: bool, log=print) -> dict:
    from dispider_ros.eval.needle import needle_recording, recall_at_k, run_needle
    from dispider_ros.settings import node_settings

    seeds, seconds = (20, 180.0) if quick else (40, 300.0)
    k = schema.default("decision_node", "retrieval_k")
    arms = {}
    for name, decision in (("ours", {}), ("no_retrieval", {"retrieval_k": 0})):
        settings = {node: node_settings(node, overrides={
            "preset": "tiny_trained", **(decision if node == "decision_node" else {}),
            **({"max_new_tokens": 12} if node == "reaction_node" else {})})
            for node in ("perception_node", "decision_node", "reaction_node")}
        t0 = time.perf_counter()
        results = [run_needle(needle_recording(seed, seconds), settings) for seed in range(seeds)]
        arms[name] = {
            "recall_at_k": recall_at_k(results), "recall_at_1": recall_at_k(results, 1),
            "needle_keyframes_full_resolution": sum(r.needle_keyframes > 0 for r in results) / seeds,
            "memory_holds_needle_full_resolution": sum(r.memory_needle_full > 0 for r in results) / seeds,
            "answer_names_needle": sum(r.names_needle for r in results) / seeds,
            "seconds": round(time.perf_counter() - t0, 1),
            "per_recording": [{"seed": r.seed, "needle": r.needle, "hit_rank": r.hit_rank,
                               "scores": [round(c["score"], 3) for c in r.retrieved], "answer": r.answer}
                              for r in results]}
        a = arms[name]
        log(f"  {name:12s}: recall@{k} {a['recall_at_k']:.2f}, @1 {a['recall_at_1']:.2f}, needle keyframes "
            f"{a['needle_keyframes_full_resolution']:.2f}, memory holds it {a['memory_holds_needle_full_resolution']:.2f}, "
            f"answers name it {a['answer_names_needle']:.2f} ({a['seconds']} s)")
    return {"protocol": {"recordings": seeds, "seconds": seconds, "retrieval_k": k, "preset": "tiny_trained",
                         "needle": "one 4 s shot after 6 s, never shown again",
                         "question": "Tell me about the <word> you saw."},
            "arms": arms, "retrieval_recall_at_k": arms["ours"]["recall_at_k"]}


def ttft(quick: bool, log=print, k: int = -1) -> dict:
    """k -1 = the shipped retrieval_k."""
    frames = 600 if quick else 2000
    images = distinct_frames(240)
    k = schema.default("decision_node", "retrieval_k") if k < 0 else k
    shipped = models.ShippedReaction(ANSWER_TOKENS)
    config, period, vlm, engine = shipped.config, shipped.period, shipped.vlm, shipped.engine
    finals, done = shipped.finals, shipped.done
    arms = {"with": [], "without": []}
    prompt = {"with": [], "without": []}
    try:
        for i in range(frames):
            began = time.perf_counter()
            engine.ingest(Frame(CAMERA, i * period, i, images[i % len(images)]), clip_index=i // CLIP_FRAMES)
            if (i + 1) % EVERY == 0:
                n = (i + 1) // EVERY
                arm = "with" if n % 2 else "without"
                clip = i // CLIP_FRAMES
                # k closed clips spread over the history (which ones does not change the cost)
                picks = sorted({clip * j // (k + 1) for j in range(1, k + 1)} - {clip}) if clip else []
                retrieved = tuple(RetrievedClip(CAMERA, c, c * CLIP_FRAMES * period,
                                                (c + 1) * CLIP_FRAMES * period, 0.9) for c in picks)
                done.clear()
                engine.submit(TriggerEvent(f"t{n}", f"q{n}", QUESTION, CAMERA, "now", 1.0, i * period, i, clip,
                                           clip * CLIP_FRAMES * period, i * period,
                                           retrieved=retrieved if arm == "with" else ()))
                if not done.wait(120):
                    raise TimeoutError(f"trigger {n} not answered in 120 s")
                event = finals[f"t{n}"]
                if event.error_code:
                    raise RuntimeError(f"trigger {n}: {event.error_code.name} {event.error}")
                if i >= frames // 2:
                    arms[arm].append(event.ttft_sec)
                    prompt[arm].append(event.extras["prefill_tokens"])
            while engine.keeper.pending() and time.perf_counter() - began < period:
                time.sleep(0.002)
    finally:
        engine.close()
        vlm.close()
    p = lambda arm, q: percentile(arms[arm], q)  # noqa: E731
    out = {"protocol": {"frames": frames, "trigger_every_frames": EVERY, "clip_frames": CLIP_FRAMES,
                        "retrieval_k": k, "keyframes_per_clip": config.keyframes_per_clip,
                        "budget": config.memory.max_tokens, "answer_tokens": ANSWER_TOKENS,
                        "arms": "alternate triggers of one run: with the k clips' keyframes, without"},
           "ttft_ms": {arm: {"p50": round(1e3 * p(arm, 50), 1), "p95": round(1e3 * p(arm, 95), 1),
                             "n": len(arms[arm])} for arm in arms},
           "prefill_tokens_p50": {arm: percentile(prompt[arm], 50) for arm in arms},
           "retrieval_ttft_overhead": round(p("with", 50) / p("without", 50), 3),
           "retrieval_ttft_overhead_p95": round(p("with", 95) / p("without", 95), 3)}
    log(f"  TTFT p50 {out['ttft_ms']['with']['p50']} ms with {k} clips vs {out['ttft_ms']['without']['p50']} ms "
        f"without: x{out['retrieval_ttft_overhead']} (p95 x{out['retrieval_ttft_overhead_p95']}); prefill p50 "
        f"{out['prefill_tokens_p50']['with']} vs {out['prefill_tokens_p50']['without']} tokens")
    return out


def run(quick: bool, log=print) -> dict:
    from bench.common import set_threads

    set_threads(1)
    return {"recall": recall(quick, log), "ttft": ttft(quick, log)}
