"""Run the benchmark suite: `python -m bench --quick` (~5 min: the intake and graph sections start real node processes) or `python -m bench` (~10 min).

Prints a table (each figure beside its baseline, target met/missed), writes
{quick,full}.json and the figures (p4_bounded_cost.png, p3_steady.png; `_quick` suffix for the
quick run) to build/bench-results/ -- or, with --record (make bench-quick RECORD=1), to the
committed reference results in bench/results/. With --only, an existing results file keeps
its other sections (each section's `section_runs` entry says when it was measured). See
bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from bench.common import REPO, results_dir


def _env() -> None:
    os.environ.setdefault("DISPIDER_CACHE", str(REPO / "build" / "bench-cache"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _clean(value):
    """JSON-safe: NaN/inf -> None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _keep_other_sections(results: dict, previous: dict) -> None:
    """A run of some sections (--only) into an existing results file keeps the file's other
    sections as they were measured; `section_runs` says when and under what load each was."""
    earlier = previous.get("section_runs") or {
        name: {"at": "earlier full run", "load_average_start": previous.get("machine", {}).get("load_average_start")}
        for name in previous.get("sections", {})}
    for name, value in previous.get("sections", {}).items():
        if name not in results["sections"]:
            results["sections"][name] = value
            results["section_runs"][name] = earlier.get(name, {})
            results["section_seconds"][name] = previous.get("section_seconds", {}).get(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short windows, few repeats (~5 min)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default: build/bench-results/, or bench/results/ with --record)")
    parser.add_argument("--record", action="store_true",
                        help="write the committed reference results in bench/results/ (make bench-quick RECORD=1)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SEC",
                        help="first wait up to SEC seconds for a 1-minute load average < 0.5")
    parser.add_argument("--only", default="", help="comma list of sections: graph (= p1: P1/P2 through the three node "
                        "processes),p3,p4,p5,p6,intake,split (split needs root),smolvlm (SmolVLM2-256M shapes on CPU),"
                        "semantic,retrieval,narration")
    args = parser.parse_args(argv)
    _env()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import transformers

    transformers.logging.set_verbosity_error()
    from bench import bounded, models, overhead, replay_speed, report, steady
    from bench.common import distinct_frames, load_average, machine, set_threads, wait_quiet

    mode = "quick" if args.quick else "full"
    folder = results_dir(args.record)
    out_path = args.out or folder / f"{mode}.json"
    suffix = "_quick" if args.quick else ""
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    want = (lambda s: not only or s in only)
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet)
    started = time.perf_counter()
    set_threads(1)
    threads = {"torch.set_num_threads": 1, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
               "perception loop": 1, "reaction worker": 1, "P4 arm processes": 1,
               "note": "2 cores: perception and reaction each get one; 2 intra-op threads per "
                       "worker would oversubscribe the cores"}
    info = machine(threads)
    print(f"bench ({mode}) on {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
          f"transformers {info['transformers']}, load average {info['load_average_start']}", flush=True)
    paths = {name: models.model_path(name) for name in ("siglip", "qwen2_vl")}
    # Loaded as the nodes load theirs (compose, shipped settings); only the weights are the bench's.
    encoder = models.load_encoder()
    vlm = models.load_vlm(kv_reuse=True, max_new_tokens=1, min_new_tokens=1)
    print(f"models ready in {time.perf_counter() - started:.1f} s ({paths['qwen2_vl']})", flush=True)
    frames = distinct_frames(260)
    results: dict = {"mode": mode, "machine": info, "scale": models.describe(), "sections": {}}
    section_sec = {}

    def section(name, fn):
        t0 = time.perf_counter()
        print(f"[{name}]", flush=True)
        value = fn()
        section_sec[name] = round(time.perf_counter() - t0, 1)
        results["sections"][name] = value
        return value

    if want("p5"):
        section("p5_overhead", lambda: overhead.run(encoder, vlm, frames, args.quick))  # noqa: F821 (del below)
    if want("p3"):
        section("p3_steady", lambda: steady.run(args.quick))
    del frames
    if want("p4"):
        section("p4_bounded", lambda: bounded.run(args.quick))
    if want("p6"):
        section("p6_replay", lambda: replay_speed.run(args.quick, bench_models=paths))
    if want("intake"):
        from bench import intake

        section("intake", lambda: intake.run(args.quick))
    if want("graph") or want("p1"):
        from bench import graph_latency

        section("p1_p2_graph", lambda: graph_latency.run(args.quick))
    if want("split"):
        from bench import split_link

        section("split_link", lambda: split_link.run(args.quick))
    if want("smolvlm"):  # the CPU-robot backend at real size (quick: 32 frames, ~1-2 min)
        from bench import smolvlm_cpu

        section("smolvlm_cpu", lambda: smolvlm_cpu.run(args.quick))
    if want("semantic"):  # meaning: trained tiny models checked against the photographs shown
        from bench import semantic_answers, semantic_match

        section("semantic_match", lambda: semantic_match.run(args.quick))  # zero-shot triggers
        section("semantic_answers", lambda: semantic_answers.run(args.quick))  # now-answers
    if want("retrieval"):  # an old needle found again (trained tiny models); TTFT with its clips
        from bench import retrieval

        section("retrieval", lambda: retrieval.run(args.quick))
    if want("narration"):  # a boundary question misses no scene change (trained tiny models)
        from bench import narration

        section("narration", lambda: narration.run(args.quick))

    results["section_seconds"] = section_sec
    results["section_runs"] = {name: {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                      "load_average_start": info["load_average_start"]}
                               for name in results["sections"]}
    if only and out_path.is_file():
        _keep_other_sections(results, json.loads(out_path.read_text()))
    report.summarize(results)
    if "p4_bounded" in results["sections"]:
        report.plot_bounded(results["sections"]["p4_bounded"], folder / f"p4_bounded_cost{suffix}.png")
    if "p3_steady" in results["sections"]:
        report.plot_steady(results["sections"]["p3_steady"], folder / f"p3_steady{suffix}.png")
    results["run_seconds"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_end"] = [round(x, 2) for x in load_average()]
    ordered = {k: results[k] for k in sorted(results, key=lambda k: (not k.startswith("p"), k))}
    out_path.write_text(json.dumps(_clean(ordered), indent=1) + "\n")
    print()
    print(report.table(results))
    print(f"\n{mode} run: {results['run_seconds']:.1f} s (sections {section_sec}); load average "
          f"{info['load_average_start']} -> {results['machine']['load_average_end']}; wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
