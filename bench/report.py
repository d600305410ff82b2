"""The results table (targets met/missed) and the figures."""
from __future__ import annotations

import math
from pathlib import Path
from typing import List

# key -> (label, target text, test, unit)
TARGETS = {
    "p1_ratio": ("P1 sampled-frame rate while decoding / idle", ">= 0.90", lambda v: v >= 0.90, "x"),
    "p2_p95_over_period": ("P2 trigger latency p95 after evidence / period", "<= 1.0", lambda v: v <= 1.0, "x"),
    "p3_ratio_64": ("P3 TTFT re-encode / on-arrival+KV @64", ">= 3", lambda v: v >= 3.0, "x"),
    "p3_ratio_256": ("P3 TTFT re-encode / on-arrival+KV @256", ">= 5", lambda v: v >= 5.0, "x"),
    "p3_ratio_64_no_kv": ("P3 TTFT re-encode / on-arrival no KV @64", ">= 3", lambda v: v >= 3.0, "x"),
    "p3_ratio_256_no_kv": ("P3 TTFT re-encode / on-arrival no KV @256", ">= 5", lambda v: v >= 5.0, "x"),
    "p4_latency_growth": ("P4 trigger latency growth 100 -> 10k frames", "<= 10 %", lambda v: v <= 0.10, "%"),
    "p4_rss_growth": ("P4 RSS growth 100 -> 10k frames", "<= 10 %", lambda v: v <= 0.10, "%"),
    "p5_convert_ms": ("P5 rgb8 640x480 message -> model tensor", "<= 2 ms", lambda v: v <= 2.0, "ms"),
    "p5_convert_ms_bgr8": ("P5 bgr8 640x480 message -> model tensor", "<= 2 ms", lambda v: v <= 2.0, "ms"),
    "p5_overhead": ("P5 pipeline time over encoder forward", "<= 10 %", lambda v: v <= 0.10, "%"),
    "p6_speed_factor": ("P6 offline replay speed (tiny models)", ">= 5x", lambda v: v >= 5.0, "x"),
    "intake_sampled_ratio_min": ("Intake features / sample_fps, worst of 4 streams (DDS profile)",
                                 ">= 0.95", lambda v: v >= 0.95, "x"),
    "split_vs_raw_camera_ratio": ("Split hosts: raw camera bytes/s / link bytes/s (JPEG frames)",
                                  ">= 20", lambda v: v >= 20.0, "x"),
}


def _fmt(value, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "%":
        return f"{100 * value:+.1f} %"
    if unit == "ms":
        return f"{value:.2f} ms"
    return f"{value:.2f}"


def verdicts(results: dict) -> dict:
    out = {}
    for key, (_, target, test, _) in TARGETS.items():
        value = results.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out[key] = "not measured"
        else:
            out[key] = "met" if test(value) else "MISSED"
    return out


def table(results: dict) -> str:
    """Text table: figure, ours, baseline / other arm, target, verdict."""
    baseline = results.get("baselines", {})
    rows: List[tuple] = [("figure", "ours", "baseline / other arm", "target", "verdict")]
    marks = verdicts(results)
    for key, (label, target, _, unit) in TARGETS.items():
        rows.append((label, _fmt(results.get(key), unit), baseline.get(key, ""), target, marks[key]))
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot_bounded(p4: dict, path: Path) -> None:
    """StreamBridge-style curve: trigger latency, RSS and prompt size versus buffered frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = {"compressed": ("tab:blue", "o", f"round-decayed compression (max_tokens {p4['protocol']['max_tokens']})"),
              "uncompressed": ("tab:red", "s", "no compression")}
    for arm, (color, marker, label) in styles.items():
        if arm not in p4:
            continue
        points = p4[arm]["points"]
        frames = [p["frames"] for p in points]
        lat = [(p["frames"], p["latency_sec"]) for p in points if p["latency_sec"] is not None]
        if lat:
            axes[0].plot([x for x, _ in lat], [y for _, y in lat], marker=marker, color=color, label=label)
        skipped = [p["frames"] for p in points if p["latency_sec"] is None]
        for x in skipped:
            axes[0].axvline(x, color=color, ls=":", alpha=0.5)
        axes[1].plot(frames, [p["rss_mb"] for p in points], marker=marker, color=color, label=label)
        if "rss_untrimmed_mb" in points[0]:
            axes[1].plot(frames, [p["rss_untrimmed_mb"] for p in points], color=color, ls="--", lw=1,
                         alpha=0.6)
        axes[2].plot(frames, [p["prompt_tokens"] for p in points], marker=marker, color=color, label=label)
    axes[2].axhline(32768, color="grey", ls="--", lw=1)
    axes[2].text(110, 34000, "model context (32,768)", color="grey", fontsize=8)
    titles = ("per-trigger latency (s)\n(dotted: prompt over the cap, not generated)",
              "process RSS (MiB) after the trigger\n(solid: after malloc_trim; dashed: untrimmed)",
              "prompt tokens at the trigger")
    for ax, title in zip(axes, titles):
        ax.set_xscale("log")
        ax.set_xlabel("sampled frames streamed")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("P4 bounded cost: bench-scale Qwen2-VL, 2 CPU cores, 1 thread", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ttft(p3: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = list(p3["frames"])
    rows = [p3["frames"][n] for n in sizes]
    x = np.arange(len(sizes))
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (key, label, color) in enumerate((
            ("ttft_ms_reencode", "re-encode at trigger (pixel_values)", "tab:red"),
            ("ttft_ms_no_kv_reuse", "encoded on arrival, no KV reuse", "tab:orange"),
            ("ttft_ms_kv_reuse", "encoded on arrival + KV reuse", "tab:blue"))):
        ax.bar(x + (i - 1) * 0.27, [r[key] for r in rows], 0.27, label=label, color=color)
    ax.set_xticks(x, [f"{n} frames" for n in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("time to first token (ms, log)")
    ax.set_title("P3 TTFT, bench-scale Qwen2-VL, 1 CPU thread", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(results: dict) -> dict:
    """Headline keys, baseline texts and verdicts from results["sections"] (in place)."""
    s = results["sections"]
    baselines = {}
    if "p1_p2_nonblocking" in s:
        p1 = s["p1_p2_nonblocking"]
        results["p1_ratio"] = p1["ours"]["ratio"]
        results["p1_baseline_ratio"] = p1["sequential"]["ratio"]
        results["p2_p95_over_period"] = p1["ours"]["trigger_latency_p95_over_period"]
        results["p2_p50_over_period"] = p1["ours"]["trigger_latency_p50_over_period"]
        results["p2_event_p95_over_period"] = p1["ours"]["event_latency_p95_over_period"]
        results["p2_baseline_event_p95_over_period"] = p1["sequential"]["event_latency_p95_over_period"]
        results["p1_decode_tokens_per_sec"] = p1["ours"]["decode_tokens_per_sec"]
        results["p1_baseline_decode_tokens_per_sec"] = p1["sequential"]["decode_tokens_per_sec"]
        ours = p1["ours"]
        results["p1_decode_tokens_per_sec_busy_same_prompts"] = ours["decode_tokens_per_sec_busy_same_prompts"]
        results["p1_decode_tokens_per_sec_idle_reaction"] = ours["decode_tokens_per_sec_idle_reaction"]
        results["p1_decode_slowdown_beside_perception"] = ours["decode_slowdown_beside_perception"]
        baselines["p1_ratio"] = (
            f"sequential {p1['sequential']['ratio']:.2f}; decode (same prompts) "
            f"{ours['decode_tokens_per_sec_busy_same_prompts']:.0f} tokens/s beside perception vs "
            f"{ours['decode_tokens_per_sec_idle_reaction']:.0f} alone")
        baselines["p2_p95_over_period"] = (
            f"sequential {p1['sequential']['trigger_latency_p95_over_period']:.2f}; scene cut -> trigger "
            f"p95 {p1['ours']['event_latency_p95_over_period']:.2f} vs sequential "
            f"{p1['sequential']['event_latency_p95_over_period']:.2f} periods")
    if "p3_ttft" in s:
        rows = s["p3_ttft"]["frames"]
        for n in ("64", "256"):
            results[f"p3_ratio_{n}"] = rows[n]["ratio_kv_reuse"]
            results[f"p3_ratio_{n}_no_kv"] = rows[n]["ratio_no_kv_reuse"]
            base = f"re-encode {rows[n]['ttft_ms_reencode']:.0f} ms"
            budget = "; budget off (prompt over the shipped max_tokens)" \
                if rows[n].get("over_shipped_budget") else ""
            baselines[f"p3_ratio_{n}"] = f"{base} vs {rows[n]['ttft_ms_kv_reuse']:.0f} ms{budget}"
            baselines[f"p3_ratio_{n}_no_kv"] = f"{base} vs {rows[n]['ttft_ms_no_kv_reuse']:.0f} ms{budget}"
        if "16" in rows:
            results["p3_ratio_16"] = rows["16"]["ratio_kv_reuse"]
    if "p4_bounded" in s:
        p4 = s["p4_bounded"]
        results["p4_latency_growth"] = p4["latency_growth"]
        results["p4_rss_growth"] = p4["rss_growth"]
        results["p4_prompt_growth"] = p4["prompt_growth"]
        results["p4_peak_rss_growth"] = p4["peak_rss_growth"]
        results["p4_untrimmed_rss_growth"] = p4["untrimmed_rss_growth"]
        unc = p4["uncompressed_latency_growth_measured"]
        prompt = (f"prompt {p4['prompt_growth'] + 1:.1f}x vs no compression "
                  f"{p4['uncompressed_prompt_growth'] + 1:.0f}x")
        baselines["p4_latency_growth"] = prompt + (
            f"; no compression latency {100 * unc['growth']:+.0f} % by {unc['to_frames']} frames, "
            "then over the cap" if unc else "; no compression latency: not run (quick) / over the cap") + \
            ("; KV reuse off" if not p4["protocol"].get("kv_reuse", True) else "")
        if p4["uncompressed_rss_growth"] is not None:
            baselines["p4_rss_growth"] = (
                f"no compression: {100 * p4['uncompressed_rss_growth']:+.0f} %; untrimmed "
                f"{100 * p4['untrimmed_rss_growth']:+.1f} %, peak {100 * p4['peak_rss_growth']:+.1f} %")
    if "p5_overhead" in s:
        conv = s["p5_overhead"]["conversion"]
        results["p5_convert_ms"] = conv["rgb8"]["to_model_tensor_ms_p50"]
        results["p5_overhead"] = s["p5_overhead"]["pipeline"]["overhead"]
        results["p5_convert_ms_bgr8"] = conv["bgr8"]["to_model_tensor_ms_p50"]
        results["p5_convert_ms_jpeg"] = conv["jpeg"]["to_model_tensor_ms_p50"]
        ros = conv.get("rgb8 sensor_msgs.msg.Image")
        baselines["p5_convert_ms"] = (f"sensor_msgs.msg.Image rgb8 {ros['to_model_tensor_ms_p50']:.2f} ms; "
                                      if ros else "") + f"jpeg {conv['jpeg']['to_model_tensor_ms_p50']:.2f} ms"
        baselines["p5_convert_ms_bgr8"] = f"to RGB view {conv['bgr8']['to_rgb_ms_p50']:.3f} ms"
        pipe = s["p5_overhead"]["pipeline"]
        baselines["p5_overhead"] = f"{pipe['pipeline_ms_p50']:.1f} vs {pipe['forward_ms_p50']:.1f} ms"
    if "p6_replay" in s:
        results["p6_speed_factor"] = s["p6_replay"]["tiny"]["speed_factor"]
        extra = s["p6_replay"].get("bench_scale")
        baselines["p6_speed_factor"] = "real time = 1.0" + (
            f"; bench-scale models {extra['speed_factor']:.1f}x" if extra else "")
    if "intake" in s:
        intake = s["intake"]
        fields = ("stream", "publisher", "published_per_sec", "received_per_sec",
                  "features_per_sec", "sampled_ratio", "node_cpu_percent")
        results["intake_sampled_ratio_min"] = intake["ours"]["sampled_ratio_min"]
        results["intake_cases"] = [{k: c[k] for k in fields} for c in intake["ours"]["cases"]]
        if "defaults" in intake:
            results["intake_sampled_ratio_min_defaults"] = intake["defaults"]["sampled_ratio_min"]
            results["intake_cases_defaults"] = [{k: c[k] for k in fields}
                                                for c in intake["defaults"]["cases"]]
            baselines["intake_sampled_ratio_min"] = (
                f"plain DDS defaults {intake['defaults']['sampled_ratio_min']:.2f}; received/s "
                + ", ".join(f"{c['received_per_sec']}/{c['published_per_sec']:g}"
                            for c in intake["ours"]["cases"]))
    if "split_link" in s:  # robot and server hosts (bench/split_link.py); skipped without root
        split = s["split_link"]
        if "skipped" in split:
            results["split_link_skipped"] = split["skipped"]
        else:
            results["split_link_bytes_per_sec"] = split["split_link_bytes_per_sec"]
            results["split_vs_raw_camera_ratio"] = split["split_vs_raw_camera_ratio"]
            baselines["split_vs_raw_camera_ratio"] = (
                f"raw sampled frames {split['raw']['raw_camera_over_link']:.1f}x "
                f"({split['raw']['link_bytes_per_sec'] / 1e6:.2f} MB/s); JPEG "
                f"{split['jpeg']['link_bytes_per_sec'] / 1e3:.0f} kB/s")
    results["baselines"] = baselines
    results["verdicts"] = verdicts(results)
    return results
