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
    demo = start_demo(tmp_path, "--params-file", str(tmp_path / "params.yaml"))
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
    demo = start_demo(tmp_path, "--seconds", "60")
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
