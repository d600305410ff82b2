"""Drive real node processes over DDS from a test: start, lifecycle, parameters, topics."""
from __future__ import annotations

import os
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional

from ros_tools import start_process, stop_process, wait_for

NODES = ("perception_node", "decision_node", "reaction_node")


class Client:
    """A test-side rclpy node spinning on its own thread, with helpers for the graph."""

    def __init__(self, namespace: str):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.namespace = namespace
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"test_client_{uuid.uuid4().hex[:6]}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: Dict[str, list] = defaultdict(list)
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def close(self):
        import rclpy

        from dispider_ros.spinning import stop_spinning

        if stop_spinning(self.executor, self._thread):
            self.node.destroy_node()
            rclpy.try_shutdown(context=self.context)

    def topic(self, name: str) -> str:
        return f"{self.namespace}/{name}"

    def listen(self, msg_type, name: str, qos=None):
        from dispider_ros.nodes.base import RELIABLE

        def store(msg):
            with self.lock:
                self.received[name].append(msg)
        self.node.create_subscription(msg_type, self.topic(name) if not name.startswith("/")
                                      else name, store, qos or RELIABLE)

    def messages(self, name: str) -> list:
        with self.lock:
            return list(self.received[name])

    def publisher(self, msg_type, name: str, qos=None, wait_subscribers: int = 1, timeout=60.0):
        from dispider_ros.nodes.base import RELIABLE

        publisher = self.node.create_publisher(msg_type, self.topic(name), qos or RELIABLE)
        wait_for(lambda: publisher.get_subscription_count() >= wait_subscribers, timeout,
                 f"{wait_subscribers} subscriber(s) on {self.topic(name)}")
        return publisher

    def call(self, srv_type, service: str, request, timeout: float = 30.0):
        client = self.node.create_client(srv_type, self.topic(service))
        wait_for(lambda: client.wait_for_service(timeout_sec=0.1), timeout, f"service {service}")
        future = client.call_async(request)
        wait_for(future.done, timeout, f"reply from {service}")
        self.node.destroy_client(client)
        return future.result()

    def state(self, node_name: str) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"{node_name}/get_state", GetState.Request()).current_state.label

    def wait_state(self, node_name: str, label: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(node_name) == label:
                return
            time.sleep(0.2)
        raise AssertionError(f"{node_name} did not reach {label!r} in {timeout} s")

    def transition(self, node_name: str, transition_id: int) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(id=transition_id))
        return self.call(ChangeState, f"{node_name}/change_state", request, timeout=120).success

    def set_params(self, node_name: str, values: Dict) -> List:
        """Like `ros2 param set`: returns the SetParametersResult list."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(parameters=[
            Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        return self.call(SetParameters, f"{node_name}/set_parameters", request).results

    def get_params(self, node_name: str, names: List[str]) -> List:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        reply = self.call(GetParameters, f"{node_name}/get_parameters",
                          GetParameters.Request(names=names))
        return [parameter_value_to_python(v) for v in reply.values]


class Graph:
    """Node processes started from the installed executables, stopped with SIGINT."""

    def __init__(self, log_dir: Path, namespace: str):
        self.log_dir = log_dir
        self.namespace = namespace
        self.processes: Dict[str, object] = {}

    def start(self, name: str, params: Optional[Dict] = None, executable: Optional[str] = None):
        from dispider_ros.paths import executable as find

        args = [str(find(executable or name)), "--ros-args", "-r", f"__ns:={self.namespace}"]
        for key, value in (params or {}).items():
            args += ["-p", f"{key}:={_yaml(value)}"]
        self.processes[name] = start_process(args, self.log_dir / f"{name}.log")
        return self.processes[name]

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def stop(self) -> Dict[str, int]:
        return {name: stop_process(process) for name, process in self.processes.items()}


def _yaml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(f"'{v}'" for v in value) + "]"
    return str(value)


def unique_namespace(prefix: str) -> str:
    return f"/{prefix}_{os.getpid()}_{uuid.uuid4().hex[:4]}"
