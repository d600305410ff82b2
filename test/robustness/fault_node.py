"""Test-only entry point: the installed reaction_node with a fault hook on its model's decoder.

This is the documented test-only path for model failures (README, "Failure behaviour"):

    .venv/bin/python test/robustness/fault_node.py --ros-args -p autostart:=true ...

runs exactly what `ros2 run dispider_ros reaction_node` runs (the installed package, the
real tiny or real checkpoint, the real ReactionEngine and generate()), plus one forward
pre-hook on the language model, registered whenever the Qwen2-VL backend loads:
  - a question containing FAULT raises RuntimeError inside the decoder's forward after
    FAULT_AFTER_TOKENS decode steps (tokens already streamed stay streamed);
  - a question containing SLOW sleeps SLOW_TOKEN_SEC per decode step, so a test can kill
    the node in the middle of an answer.
Any other question is answered untouched. Nothing in the package knows about this file.
"""
import os
import sys
import threading
import time

from dispider_ros.models import qwen2_vl
from dispider_ros.nodes import reaction_node

FAULT, SLOW = "FAULT", "SLOW"
FAULT_AFTER_TOKENS = int(os.environ.get("DISPIDER_TEST_FAULT_AFTER_TOKENS", "3"))
SLOW_TOKEN_SEC = float(os.environ.get("DISPIDER_TEST_SLOW_TOKEN_SEC", "0.25"))
_armed = threading.local()  # generate() and the decoder's forward run on the same thread
_init = qwen2_vl.Qwen2VLBackend.__init__
_generate = qwen2_vl.Qwen2VLBackend.generate


def _hook(module, args, kwargs):
    mode = getattr(_armed, "mode", None)
    embeds = kwargs.get("inputs_embeds")
    if mode is None or embeds is None or embeds.shape[1] != 1:  # only decode steps
        return
    _armed.steps += 1
    if mode == SLOW:
        time.sleep(SLOW_TOKEN_SEC)
    elif _armed.steps >= FAULT_AFTER_TOKENS:
        raise RuntimeError(f"injected decoder fault after {_armed.steps} tokens")


def _patched_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.model.model.language_model.register_forward_pre_hook(_hook, with_kwargs=True)


def _patched_generate(self, parts, on_text=None, stop=None):
    _armed.mode = FAULT if FAULT in parts.question else SLOW if SLOW in parts.question else None
    _armed.steps = 0
    try:
        return _generate(self, parts, on_text, stop)
    finally:
        _armed.mode = None


qwen2_vl.Qwen2VLBackend.__init__ = _patched_init
qwen2_vl.Qwen2VLBackend.generate = _patched_generate

if __name__ == "__main__":
    print(f"fault_node: FAULT after {FAULT_AFTER_TOKENS} tokens, SLOW {SLOW_TOKEN_SEC} s/token",
          file=sys.stderr, flush=True)
    reaction_node.main()
