"""A real OpenAI-compatible VLM server for the remote backend's tests: `transformers serve`
(transformers' own FastAPI/uvicorn server) over a tiny LLaVA built here.

Why LLaVA and not our tiny Qwen2-VL: `transformers serve` loads every model with
`AutoProcessor.from_pretrained`, and Qwen2-VL's processor includes a video processor that
needs torchvision, which cannot be installed beside the CPU torch on our machines (the
server answers 500 "AutoVideoProcessor requires the Torchvision library"). LLaVA's
processor is an image processor and a tokenizer only, so the real server loads it as it
would a real checkpoint. Its chat completions take `image_url` parts (data URIs included)
for models in transformers' image-text-to-text mapping (LlavaForConditionalGeneration).

The tiny LLaVA: CLIP vision tower (hidden 32, 2 layers, 56x56 input, patch 14 -> 16 visual
tokens per image), Qwen2 text model (hidden 64, 2 layers), the byte-level BPE of our tiny
Qwen2-VL plus an `<image>` token, and a Qwen-style chat template that puts `<image>` where
a message has an image part. Random weights: answers are noise; the plumbing is real.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional

import torch

IMAGE_SIZE = 56
PATCH = 14
HIDDEN = 64
# Qwen-style template; images become <image> (the processor expands it to 16 tokens).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<image>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_llava(folder: Path) -> Path:
    """Save a tiny LLaVA (model, tokenizer, processor with its chat template) into folder."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, Qwen2Config)

    from dispider_ros.models.tiny_qwen2_vl import build_tokenizer

    folder = Path(folder)
    if (folder / "config.json").is_file():
        return folder
    tokenizer = build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]},
                                 replace_additional_special_tokens=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       max_position_embeddings=32768, eos_token_id=eos, pad_token_id=pad,
                       bos_token_id=pad, initializer_range=0.3)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH,
                              projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         image_seq_length=(IMAGE_SIZE // PATCH) ** 2, pad_token_id=pad)
    torch.manual_seed(1234)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.save_pretrained(folder, safe_serialization=True)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                               vision_feature_select_strategy="default", image_token="<image>",
                               num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServedVLM:
    """`transformers serve` on a localhost port, as a subprocess (start() / stop()).

    The request's `model` field names what the server loads: the tiny LLaVA's folder.
    """

    def __init__(self, model_dir: Path, port: Optional[int] = None, log_path: Optional[Path] = None):
        self.model_dir = str(model_dir)
        self.port = port or free_port()
        self.log_path = log_path
        self.process: Optional[subprocess.Popen] = None
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0, wait: bool = True) -> "ServedVLM":
        """Launch the server; wait (at most timeout) until /health answers, unless told not to."""
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        cli = Path(sys.executable).with_name("transformers")
        cmd = [str(cli), "serve", "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu",
               "--dtype", "float32", "--log_level", "warning"]
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        return self.wait_ready(timeout) if wait else self

    def wait_ready(self, timeout: float = 120.0) -> "ServedVLM":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.process.returncode} "
                                   f"(log: {self.log_path})")
            if self.healthy():
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"transformers serve did not answer /health within {timeout} s")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1.0) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self._log = None
