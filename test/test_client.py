"""dispider_ros.client without a server, and its example run end to end against the demo graph
(the action itself is tested over DDS in test/nodes/test_ask_action.py)."""
import os
import subprocess
import sys
import time

import pytest

from ros_tools import require_ros


def test_no_server_times_out_and_cancels_instead_of_waiting_forever():
    require_ros()
    from dispider_ros.client import AskClient, AskError, AskTimeout
    from dispider_ros.core.asks import Outcome
    from dispider_ros.core.types import ErrorCode

    with AskClient(namespace=f"/nobody_{os.getpid()}") as client:
        assert client.action_name == f"/nobody_{os.getpid()}/ask"
        assert not client.wait_for_server(timeout=0.5)
        started = time.monotonic()
        with pytest.raises(AskTimeout) as timed_out:
            client.ask("What is on the table?", timeout=1.0)
        assert isinstance(timed_out.value, AskError) and isinstance(timed_out.value, TimeoutError)
        assert timed_out.value.error_code == ErrorCode.ANSWER_TIMEOUT
        assert timed_out.value.outcome == Outcome.ABORTED
        assert time.monotonic() - started < 15.0  # 1 s, then at most the cancel's own wait
        with pytest.raises(AskTimeout):
            next(client.stream("Describe the scene", timeout=0.5))
        handle = client.ask_async("Anything?")
        assert handle.accepted is None and not handle.done()
        with pytest.raises(AskTimeout):
            handle.result(timeout=0.2)


def test_the_example_runs_against_the_demo_graph(tmp_path):
    """`python -m dispider_ros.examples.ask_example` starts the three node executables and a
    camera, asks, streams, waits for a proactive answer and cancels twice."""
    require_ros()
    env = {**os.environ, "ROS_DOMAIN_ID": str(10 + (os.getpid() + 7) % 90)}  # its own graph
    out = subprocess.run([sys.executable, "-m", "dispider_ros.examples.ask_example", "--timeout", "240"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=480)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert any(line.startswith("[ask] ") for line in lines), out.stdout
    assert any("ANSWERED, query /ask_example_" in line for line in lines), out.stdout
    assert any(line.startswith("[stream] ") and len(line) > len("[stream] ") for line in lines)
    assert "  ended: MAX_RESPONSES with 2 answer(s)" in lines, out.stdout
    assert sum(line.startswith("  trigger ") for line in lines) == 2
    assert any(line.startswith("[cancel streaming] ") for line in lines), out.stdout
    assert "[cancel waiting] canceled: CANCELED, CANCELED, 0 answer(s)" in lines, out.stdout
