"""What crosses the link when the robot and the server are two hosts (README: "Robot and server").

    sudo .venv/bin/python -m bench.split_link [--quick]     this section alone (needs root)

Two network namespaces joined by a veth pair (bench/split_hosts.py): the robot runs a
camera (real photographs, 640x480 rgb8 at 30 fps), perception_node and decision_node; the
server runs reaction_node. Per sampled-frame format (raw rgb8, JPEG) a fresh graph, and over
the window the veth's byte counters (both directions), the sampled frames perception made
and the ones the reaction stored, and the server's UDP receive-buffer losses (datagrams
dropped before Fast DDS read them: resent by the reliable protocol, so they cost bytes).
`split_vs_raw_camera_ratio` = the raw camera stream's bytes/s / the link's bytes/s with JPEG
sampled frames. Without root (or `ip netns`) the section records why it did not run.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

from bench import split_hosts
from bench.split_hosts import SERVER, AgentHandle, Lab, rates, snapshot, start_graph

WIDTH, HEIGHT, FPS, SAMPLE_FPS = 640, 480, 30.0, 2.0
RAW_CAMERA_BYTES_PER_SEC = WIDTH * HEIGHT * 3 * FPS


def measure(image_format: str, seconds: float, warmup: float, log_dir: Path) -> Dict:
    """One graph with sampled_image_format = image_format; the link's figures over the window."""
    with Lab(log_dir / image_format) as lab:
        namespace = f"/bench_split_{os.getpid()}_{image_format}"
        start_graph(lab, namespace, image_format, SAMPLE_FPS)
        agent = AgentHandle(lab, namespace, log_dir / f"{image_format}.jsonl", WIDTH, HEIGHT, FPS)
        agent.wait_active(180)
        agent.wait(lambda: len(agent.get("feature")) >= 2, 60, "features on the robot")
        time.sleep(warmup)
        udp_before, before = lab.udp_counters(SERVER), snapshot(lab, agent)
        camera_before = agent.get("camera")[-1]
        time.sleep(seconds)
        agent.wait(lambda: agent.diag("reaction_node")[-1]["t"] > before["t"] + seconds, 10,
                   "reaction diagnostics after the window")
        after, udp_after = snapshot(lab, agent), lab.udp_counters(SERVER)
        camera_after = agent.get("camera")[-1]
        agent.send(quit=True)
        agent.process.wait(10)
    flow = rates(before, after)
    link = flow["tx"] + flow["rx"]
    return {
        "link_bytes_per_sec": round(link), "robot_to_server_bytes_per_sec": round(flow["tx"]),
        "server_to_robot_bytes_per_sec": round(flow["rx"]),
        "camera_fps": round((camera_after["published"] - camera_before["published"])
                            / (camera_after["t"] - camera_before["t"]), 2),
        "camera_received_fps": round(flow["camera_received"], 2),
        "sampled_fps": round(flow["sampled"], 2),
        "server_frames_per_sec": round(flow["ingested"], 2),
        "link_bytes_per_server_frame": round(flow["tx"] / flow["ingested"]) if flow["ingested"] else None,
        "server_udp_rcvbuf_errors_per_sec": round(
            (udp_after.get("RcvbufErrors", 0) - udp_before.get("RcvbufErrors", 0)) / seconds, 1),
        "raw_camera_over_link": round(RAW_CAMERA_BYTES_PER_SEC / link, 1) if link else None,
    }


def run(quick: bool, log_dir: Optional[Path] = None) -> Dict:
    reason = split_hosts.unavailable()
    if reason:
        return {"skipped": reason}
    seconds, warmup = (5.0, 2.0) if quick else (15.0, 3.0)
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="bench_split_"))
    out = {"protocol": {
        "camera": f"{WIDTH}x{HEIGHT} rgb8 at {FPS:g} fps on the robot (real photographs)",
        "raw_camera_bytes_per_sec": RAW_CAMERA_BYTES_PER_SEC, "sample_fps": SAMPLE_FPS,
        "robot": "camera, perception_node, decision_node", "server": "reaction_node",
        "link": "veth pair between two network namespaces; byte counters of the robot end, "
                "both directions", "dds": "config/fastdds_split_hosts.xml, ROS_STATIC_PEERS, "
                "multicast off", "window_sec": seconds, "warmup_sec": warmup,
        "logs": str(log_dir)}}
    for image_format in ("raw", "jpeg"):
        out[image_format] = measure(image_format, seconds, warmup, log_dir)
    out["split_link_bytes_per_sec"] = out["jpeg"]["link_bytes_per_sec"]
    out["split_vs_raw_camera_ratio"] = out["jpeg"]["raw_camera_over_link"]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.split_link", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
