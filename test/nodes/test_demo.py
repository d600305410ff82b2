"""The demo as a user runs it: a node that cannot configure stops it at once with the node's
own error; Ctrl-C stops it cleanly; its lines are in print order with the evidence time."""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import yaml

from conftest import REPO
from dispider_ros.models.presets import config_file
from ros_tools import require_ros


def start_demo(tmp_path, *args):
    return subprocess.Popen([sys.executable, "-m", "dispider_ros.nodes.demo",
                             "--logs", str(tmp_path / "logs"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def test_a_node_that_fails_to_configure_stops_the_demo_at_once(tmp_path):
    require_ros()
    params = yaml.safe_load(config_file("dispider.yaml").read_text())
    params["/**/perception_node"]["ros__parameters"]["vision_model"] = str(tmp_path / "no_model")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    began = time.monotonic()
    demo = start_demo(tmp_path, "--params-file", str(tmp_path / "params.yaml"), "--preset", "tiny")
    try:
        out, err = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    took = time.monotonic() - began
    assert demo.returncode == 1, (out, err)
    assert took < 60, f"took {took:.0f} s: the demo should not wait out its 180 s start-up timeout"
    assert re.search(r"demo stopped: .*perception_node configure failed: .*no_model", err), err
    assert "Traceback" not in err and "summary:" not in out
    print(f"failed start-up reported after {took:.1f} s")


def test_ctrl_c_stops_the_demo_cleanly(tmp_path):
    require_ros()
    demo = start_demo(tmp_path, "--seconds", "60", "--preset", "tiny")  # plumbing: random models
    lines, errors = [], []
    readers = [threading.Thread(target=lambda: lines.extend(demo.stdout), daemon=True),
               threading.Thread(target=lambda: errors.extend(demo.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 150
        while not any("RESPONSE" in line and "q-now" in line for line in lines):
            assert demo.poll() is None and time.monotonic() < deadline, "".join(lines + errors)
            time.sleep(0.2)
        os.killpg(demo.pid, signal.SIGINT)  # what Ctrl-C in `make demo` does
        demo.wait(60)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    for reader in readers:
        reader.join(5)
    out, err = "".join(lines), "".join(errors)
    assert demo.returncode == 130, (out, err)
    assert "demo stopped: interrupted (Ctrl-C)" in err and "summary:" in out
    assert "Traceback" not in err and "ExternalShutdownException" not in err, err
    # the bracket is when a line was printed; the evidence time is named beside it
    assert "evidence t = camera time of the frame" in out
    asked = float(re.search(r"\[\s*([\d.]+)s\] QUERY q-now", out).group(1))
    trigger = re.search(r"\[\s*([\d.]+)s\] TRIGGER \S+ for q-now .*\(evidence ([\d.]+)s\)", out)
    assert trigger, out
    assert float(trigger.group(1)) >= asked - 0.05 and float(trigger.group(2)) <= asked


def test_the_demo_answers_about_what_the_camera_shows(tmp_path):
    """`make demo` as shipped (the trained tiny preset): the present-tense answer names the
    photograph in view, and "Tell me when the rocket appears." fires when the rocket shot
    begins, not before."""
    require_ros()
    from dispider_ros.models import presets, tiny
    from dispider_ros.nodes.demo import shots

    preset = presets.load_preset("tiny_trained")
    for spec in (preset["vision_model"], preset["vlm_model"]):
        tiny.resolve_model_path(spec)  # built here, once, not inside a node's start-up timeout
    demo = start_demo(tmp_path, "--seconds", "16")
    try:
        out, err = demo.communicate(timeout=300)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
    assert demo.returncode == 0, (out, err)
    first = shots()[0]
    answer = re.search(r"RESPONSE \S+ to q-now via \S+: '([^']*)'", out)
    assert answer and first.scene.caption in answer.group(1), out
    rocket = next(s for s in shots() if s.scene.word == "rocket")
    fired = [float(m) for m in re.findall(r"TRIGGER \S+ for q-rocket .*\(evidence ([\d.]+)s\)", out)]
    assert fired, out
    period = 0.5  # sample_fps 2
    assert rocket.start - 0.05 <= fired[0] <= rocket.start + 2 * period, (fired, out)
    assert f"rocket: in view from {rocket.start:.2f}s; its trigger fired" in out
    print(f"q-now answered {answer.group(1)!r}; rocket from {rocket.start:.2f}s, fired at {fired[0]:.2f}s")
