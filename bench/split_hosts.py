"""Robot and server on one machine: two network namespaces joined by a veth pair.

`Lab` builds the two "hosts" (addresses only inside them, no route to anything else,
multicast off on the link: discovery goes through ROS_STATIC_PEERS, as on a network
without multicast), starts node processes in either one with `ip netns exec`, reads the
link's byte counters, takes the link down and shapes it with tc. Namespaces are removed on
close, at exit, and by the next Lab when a run that made them was killed (their names
carry the pid). Needs root and iproute2; `unavailable()` says why not.

`python -m bench.split_hosts agent ...` is the robot-side helper (`Agent`): a camera
publishing footage, a recorder of the run (dispider_ros.eval.record), and an asker. It runs
in the robot namespace, takes JSON commands on stdin and prints JSON events on stdout;
`AgentHandle` drives it from the test or the bench.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

from dispider_ros.processes import stop_groups

REPO = Path(__file__).resolve().parents[1]
ROBOT, SERVER = "robot", "server"
ADDRESSES = {ROBOT: "10.77.0.1", SERVER: "10.77.0.2"}
NAME = re.compile(r"^dsp(\d+)([a-z])-(robot|server)$")  # dsp<pid><k>-<host>
_OPEN: List["Lab"] = []
_COUNTER = [0]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def unavailable() -> str:
    """Why two namespaces cannot be made here ('' when they can)."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs these tests as root)"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"dsp{os.getpid()}z-robot"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return ""


def netem_unavailable() -> str:
    """Why delay/loss (tc netem) cannot be applied here ('' when it can): tried on the
    loopback of a throwaway namespace."""
    probe = f"dsp{os.getpid()}z-robot"
    if _ip("netns", "add", probe, check=False).returncode != 0:
        return "cannot make a network namespace to try netem in"
    try:
        tried = subprocess.run(["tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem",
                                "delay", "1ms"], capture_output=True, text=True, timeout=20)
    finally:
        _ip("netns", "del", probe, check=False)
    if tried.returncode != 0:
        return f"the kernel has no netem qdisc (tc: {tried.stderr.strip()})"
    return ""


def sweep_stale() -> List[str]:
    """Delete namespaces of earlier runs whose process is gone (a SIGKILLed test)."""
    removed = []
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = NAME.match(name)
        if match and not os.path.exists(f"/proc/{match.group(1)}"):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


def dds_env(host: str) -> Dict[str, str]:
    """What each process of a host needs to find the other host without multicast."""
    from dispider_ros.paths import share_dir

    peer = ADDRESSES[SERVER if host == ROBOT else ROBOT]
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET", "ROS_STATIC_PEERS": peer}
    profile = share_dir() / "config" / "fastdds_split_hosts.xml"
    if profile.is_file():  # shared memory between the processes of one host (the camera)
        env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)
    return env


class Lab:
    """Two network namespaces, `robot` and `server`, joined by one veth pair."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        letter = "abcdefghijklmnopqrstuvwxy"[_COUNTER[0] % 25]
        _COUNTER[0] += 1
        tag = f"dsp{os.getpid()}{letter}"
        self.netns = {ROBOT: f"{tag}-robot", SERVER: f"{tag}-server"}
        self.veth = {ROBOT: f"{tag}r", SERVER: f"{tag}s"}  # <= 15 characters (IFNAMSIZ)
        self.processes: Dict[str, subprocess.Popen] = {}
        self.opened = False

    # -- topology ----------------------------------------------------------------------------
    def open(self) -> "Lab":
        sweep_stale()
        _OPEN.append(self)
        self.opened = True
        try:
            for host in (ROBOT, SERVER):
                _ip("netns", "add", self.netns[host])
            # Both ends are created inside their namespaces: nothing is left in the root one.
            _ip("link", "add", self.veth[ROBOT], "netns", self.netns[ROBOT], "type", "veth",
                "peer", "name", self.veth[SERVER], "netns", self.netns[SERVER])
            for host in (ROBOT, SERVER):
                ns, dev = self.netns[host], self.veth[host]
                _ip("-n", ns, "addr", "add", f"{ADDRESSES[host]}/24", "dev", dev)
                _ip("-n", ns, "link", "set", dev, "multicast", "off")
                _ip("-n", ns, "link", "set", dev, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except Exception:
            self.close()
            raise
        return self

    def close(self) -> Dict[str, Optional[int]]:
        """Stop every process (Ctrl-C, then SIGKILL), delete both namespaces; idempotent.
        Returns each process's exit code."""
        stop_groups(self.processes.values(), timeout=10)
        codes = {name: process.poll() for name, process in self.processes.items()}
        if self.opened:
            for ns in self.netns.values():
                _ip("netns", "del", ns, check=False)
            self.opened = False
        if self in _OPEN:
            _OPEN.remove(self)
        return codes

    def __enter__(self) -> "Lab":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def exists(self) -> List[str]:
        listed = _ip("netns", "list", check=False).stdout
        return [ns for ns in self.netns.values() if re.search(rf"^{ns}\b", listed, re.M)]

    # -- processes ---------------------------------------------------------------------------
    def start(self, host: str, name: str, argv: List[str], env: Optional[Dict] = None,
              stdin=None, stdout=None) -> subprocess.Popen:
        """argv in the host's namespace, own process group, log under log_dir (unless stdout)."""
        full_env = {**os.environ, **dds_env(host), **(env or {})}
        log = open(self.log_dir / f"{name}.log", "ab")
        process = subprocess.Popen(["ip", "netns", "exec", self.netns[host], *argv],
                                   stdin=stdin, stdout=stdout or log,
                                   stderr=log, env=full_env, cwd=REPO, start_new_session=True)
        log.close()
        self.processes[name] = process
        return process

    def start_node(self, host: str, node: str, namespace: str, params: Dict) -> subprocess.Popen:
        from dispider_ros.paths import executable

        argv = [str(executable(node)), "--ros-args", "-r", f"__ns:={namespace}"]
        for key, value in params.items():
            argv += ["-p", f"{key}:={_yaml(value)}"]
        return self.start(host, node, argv)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    # -- the link ----------------------------------------------------------------------------
    def link_bytes(self) -> Dict[str, int]:
        """The robot end's counters: tx = robot -> server, rx = server -> robot."""
        out = _ip("-n", self.netns[ROBOT], "-s", "-j", "link", "show", "dev", self.veth[ROBOT]).stdout
        stats = json.loads(out)[0]["stats64"]
        return {"tx": int(stats["tx"]["bytes"]), "rx": int(stats["rx"]["bytes"])}

    def set_link(self, up: bool) -> None:
        """Carrier off/on for both ends (a veth pair goes down together)."""
        _ip("-n", self.netns[ROBOT], "link", "set", self.veth[ROBOT], "up" if up else "down")

    def shape(self, rate: str = "10mbit", burst: str = "32kbit", latency: str = "400ms") -> None:
        """A slow link both ways (token bucket on each end's egress)."""
        for host in (ROBOT, SERVER):
            subprocess.run(["tc", "-n", self.netns[host], "qdisc", "replace", "dev",
                            self.veth[host], "root", "tbf", "rate", rate, "burst", burst,
                            "latency", latency], check=True, capture_output=True, timeout=20)

    def netem(self, *args: str) -> None:
        """Delay/loss both ways, e.g. netem("delay", "100ms", "loss", "5%")."""
        for host in (ROBOT, SERVER):
            subprocess.run(["tc", "-n", self.netns[host], "qdisc", "replace", "dev",
                            self.veth[host], "root", "netem", *args], check=True,
                           capture_output=True, timeout=20)

    def unshape(self) -> None:
        for host in (ROBOT, SERVER):
            subprocess.run(["tc", "-n", self.netns[host], "qdisc", "del", "dev", self.veth[host],
                            "root"], capture_output=True, timeout=20)

    def udp_counters(self, host: str) -> Dict[str, int]:
        """The host's UDP counters (/proc/net/snmp): RcvbufErrors = datagrams its sockets lost."""
        out = subprocess.run(["ip", "netns", "exec", self.netns[host], "cat", "/proc/net/snmp"],
                             capture_output=True, text=True, timeout=20).stdout
        rows = [line.split()[1:] for line in out.splitlines() if line.startswith("Udp:")]
        return {key: int(value) for key, value in zip(rows[0], rows[1])} if len(rows) >= 2 else {}

    def qdisc_drops(self) -> int:
        """Packets the robot end's qdisc dropped (tbf overflow)."""
        out = subprocess.run(["tc", "-n", self.netns[ROBOT], "-s", "-j", "qdisc", "show", "dev",
                              self.veth[ROBOT]], capture_output=True, text=True, timeout=20).stdout
        return sum(int(q.get("drops", 0)) for q in json.loads(out or "[]"))


@atexit.register
def _close_all() -> None:
    for lab in list(_OPEN):
        lab.close()


def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(f"'{v}'" for v in value) + "]"
    return str(value)


# ---- the graph split over the two hosts --------------------------------------------------------
COMMON = {"autostart": True, "preset": "tiny", "torch_threads": 1, "diagnostics_period_sec": 0.25}


def start_graph(lab: Lab, namespace: str, sampled_image_format: str, sample_fps: float = 2.0,
                reaction: Optional[Dict] = None) -> None:
    """Perception and decision on the robot, the reaction on the server."""
    lab.start_node(ROBOT, "perception_node", namespace, {
        **COMMON, "sample_fps": sample_fps, "sampled_image_format": sampled_image_format})
    lab.start_node(ROBOT, "decision_node", namespace, {**COMMON, "cooldown_sec": 1.0})
    lab.start_node(SERVER, "reaction_node", namespace, {
        **COMMON, "max_new_tokens": 8, **(reaction or {})})


class AgentHandle:
    """The robot-side helper process: send commands, collect its events by kind."""

    def __init__(self, lab: Lab, namespace: str, record: Path, width: int, height: int,
                 fps: float):
        argv = [sys.executable, "-m", "bench.split_hosts", "agent", "--namespace", namespace,
                "--record", str(record), "--width", str(width), "--height", str(height),
                "--fps", str(fps)]
        self.lab, self.namespace, self.record = lab, namespace, Path(record)
        self.process = lab.start(ROBOT, "agent", argv, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
        self.events: Dict[str, List[dict]] = defaultdict(list)
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events[event.get("ev", "?")].append(event)

    def get(self, kind: str) -> List[dict]:
        with self.lock:
            return list(self.events[kind])

    def send(self, **command) -> None:
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()

    def ask(self, text: str) -> str:
        query_id = f"q{uuid.uuid4().hex[:8]}"
        self.send(ask=text, query_id=query_id)
        return query_id

    def diag(self, node: str) -> List[dict]:
        """Every /diagnostics status of one node of the graph, in arrival order."""
        return [e for e in self.get("diag") if e["node"] == node]

    def answers(self, query_id: str) -> List[dict]:
        return [e for e in self.get("response") if e["query_id"] == query_id]

    def wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"the robot agent exited ({self.process.returncode}) while "
                                     f"waiting for {what}: {self.lab.log('agent')[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)

    def wait_active(self, timeout: float) -> None:
        """Every node of the graph reports `active` on /diagnostics (the reaction across the link)."""
        nodes = ("perception_node", "decision_node", "reaction_node")
        try:
            self.wait(lambda: all(any(e["values"].get("lifecycle_state") == "active"
                                      for e in self.diag(n)) for n in nodes), timeout,
                      "every node active")
        except AssertionError as error:
            logs = {n: self.lab.log(n)[-1500:] for n in nodes}
            raise AssertionError(f"{error}; logs: {logs}") from None


# ---- measurements ------------------------------------------------------------------------------
# The node whose status each counter comes from: a rate is taken over that node's own status
# stamps, since statuses come at 1 Hz and the wall window between two snapshots is off by up
# to a second per end (a fifth of a 5 s window).
COUNTER_NODE = {"camera_received": "perception", "sampled": "perception",
                "ingested": "reaction", "missed": "reaction", "evidence_missing": "reaction"}


def snapshot(lab: Lab, agent: AgentHandle) -> Dict[str, float]:
    """Counters now: the link's bytes, the robot's intake (perception), the server's memory
    intake (reaction, as last reported across the link), features seen on the robot."""
    perception = agent.diag("perception_node")[-1]["values"]
    reaction = agent.diag("reaction_node")[-1]["values"]
    return {"t": time.time(), **lab.link_bytes(),
            "perception_t": float(perception["node_time_sec"]),
            "reaction_t": float(reaction["node_time_sec"]),
            "camera_received": float(perception["frames_received"]),
            "sampled": float(perception["frames_processed"]),
            "features": float(len(agent.get("feature"))),
            "ingested": float(reaction["frames_ingested"]),
            "missed": float(reaction.get("frames_missed", 0)),
            "evidence_missing": float(reaction["evidence_missing"])}


def rates(before: Dict[str, float], after: Dict[str, float]) -> Dict[str, float]:
    """Per second between two snapshots (tx/rx: link bytes/s); a node's counters per second
    of that node's clock between its two statuses."""
    def seconds(key):
        node = COUNTER_NODE.get(key)
        clock = f"{node}_t" if node else "t"
        return max(after[clock] - before[clock], 1e-9)
    return {key: (after[key] - before[key]) / seconds(key) for key in before
            if key != "t" and not key.endswith("_t")}


def reaction_timeline(agent: AgentHandle) -> List[tuple]:
    """(node time, values) of every reaction status the robot got, in node-time order:
    statuses made during an outage arrive after it, stamped when they were made."""
    return sorted((float(e["values"]["node_time_sec"]), e["values"])
                  for e in agent.diag("reaction_node"))


def recovery(agent: AgentHandle, t_up: float) -> Dict[str, float]:
    """How sampled frames came back after the link did (t_up: wall time of the heal)."""
    timeline = reaction_timeline(agent)
    base = int([v for t, v in timeline if t <= t_up][-1]["frames_ingested"])
    after = [(t, v) for t, v in timeline if t > t_up]
    resumed = next(t for t, v in after if int(v["frames_ingested"]) > base)
    return {"frames_resumed_after_sec": resumed - t_up,
            "frames_in_first_sec": max(int(v["frames_ingested"]) for t, v in after
                                       if t <= resumed + 1.0) - base,
            "max_reaction_backlog": max(int(v["frames_backlog"]) for _, v in after),
            "backlog_dropped": int(after[-1][1]["frames_backlog_dropped"]),
            "frames_missed": int(after[-1][1].get("frames_missed", 0))}


# ---- the robot-side agent (a child process in the robot namespace) ----------------------------
class Agent:
    """Camera + run recorder + asker on the robot; JSON events out, JSON commands in."""

    def __init__(self, node, namespace: str, record: Path):
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from dispider_ros.eval.record import RunRecorder
        from dispider_ros.msg import FrameFeature, Query, Response, Trigger
        from dispider_ros.nodes.recorder_node import OutputRecorder

        self.node, self.namespace = node, namespace
        self.out_lock = threading.Lock()
        deep = QoSProfile(depth=500, reliability=ReliabilityPolicy.RELIABLE)
        self.camera = node.create_publisher(
            Image, f"{namespace}/image", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.queries = node.create_publisher(Query, f"{namespace}/query", deep)
        self.recorder = RunRecorder(record)
        self.recorder.run("start", mode="split_hosts", namespace=namespace)
        self.outputs = OutputRecorder(node, self.recorder, namespace=namespace)
        node.create_subscription(FrameFeature, f"{namespace}/features", self._on_feature, deep)
        node.create_subscription(Trigger, f"{namespace}/trigger", self._on_trigger, deep)
        node.create_subscription(Response, f"{namespace}/response", self._on_response, deep)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, deep)

    def emit(self, ev: str, **fields) -> None:
        with self.out_lock:
            sys.stdout.write(json.dumps({"ev": ev, "t": time.time(), **fields}) + "\n")
            sys.stdout.flush()

    def _on_feature(self, msg) -> None:
        self.emit("feature", index=int(msg.frame_index),
                  stamp=msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)

    def _on_trigger(self, msg) -> None:
        self.emit("trigger", trigger_id=msg.trigger_id, query_id=msg.query_id)

    def _on_response(self, msg) -> None:
        self.emit("response", query_id=msg.query_id, trigger_id=msg.trigger_id, text=msg.text,
                  error_code=int(msg.error_code), error=msg.error)

    def _on_diag(self, msg) -> None:
        for status in msg.status:
            name = status.name.rsplit(": ", 1)[-1]
            if name.startswith(self.namespace + "/"):
                self.emit("diag", node=name[len(self.namespace) + 1:],
                          values={kv.key: kv.value for kv in status.values})

    def ask(self, text: str, query_id: str) -> None:
        from dispider_ros.msg import Query

        self.queries.publish(Query(query_id=query_id, text=text, mode=Query.MODE_NOW))
        self.emit("asked", query_id=query_id)

    def play(self, width: int, height: int, fps: float, stop: threading.Event) -> None:
        """Real photographs (pans and cuts, dispider_ros.footage) at fps on an absolute
        schedule, stamped with the wall clock; a `camera` event every second."""
        from dispider_ros.footage import photo_frames
        from dispider_ros.nodes.camera_player import rgb_to_image

        while self.camera.get_subscription_count() < 1 and not stop.is_set():
            time.sleep(0.05)
        frames = [rgb for _, rgb in photo_frames(fps=min(fps, 5.0), size=(width, height))]
        self.emit("camera_ready", frames=len(frames), width=width, height=height, fps=fps)
        period, t0 = 1.0 / fps, time.monotonic()
        published = late = 0
        last_report = t0
        while not stop.is_set():
            target = t0 + published * period
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -period:
                late += 1
            # A pan at `fps` replays the 5 fps shots' frames: timing, not motion, is measured.
            rgb = frames[int(published * min(fps, 5.0) / fps) % len(frames)]
            self.camera.publish(rgb_to_image(rgb, time.time(), "camera"))
            published += 1
            if time.monotonic() - last_report >= 1.0:
                last_report = time.monotonic()
                self.emit("camera", published=published, late=late)

    def close(self) -> None:
        self.recorder.run("end", system={"recorded": dict(self.recorder.counts)})
        self.recorder.close()


def agent_main(args) -> None:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from dispider_ros.spinning import stop_spinning

    rclpy.init()
    node = rclpy.create_node(f"split_agent_{os.getpid()}")
    agent = Agent(node, args.namespace, Path(args.record))
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    stop = threading.Event()
    threads = [threading.Thread(target=executor.spin, daemon=True),
               threading.Thread(target=agent.play, args=(args.width, args.height, args.fps, stop),
                                daemon=True)]
    for thread in threads:
        thread.start()
    try:
        for line in sys.stdin:  # commands until EOF, {"quit": true} or Ctrl-C
            command = json.loads(line)
            if command.get("quit"):
                break
            if "ask" in command:
                agent.ask(command["ask"], command["query_id"])
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        threads[1].join(5)
        agent.close()
        if stop_spinning(executor, threads[0]):  # a spin thread inside rcl at exit aborts the process
            node.destroy_node()
            rclpy.try_shutdown()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.split_hosts")
    sub = parser.add_subparsers(dest="command", required=True)
    agent = sub.add_parser("agent", help="the robot-side helper (started by AgentHandle)")
    agent.add_argument("--namespace", required=True)
    agent.add_argument("--record", required=True)
    agent.add_argument("--width", type=int, default=640)
    agent.add_argument("--height", type=int, default=480)
    agent.add_argument("--fps", type=float, default=30.0)
    args = parser.parse_args(argv)
    agent_main(args)


if __name__ == "__main__":
    main()
