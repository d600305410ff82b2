"""Reaction backend for a VLM on a serving engine (vLLM, SGLang, transformers serve):
OpenAI chat completions with streaming, through the `openai` client library.

Selected by vlm_model "openai:<served model name>" (registry.load_reaction_vlm), with the
reaction node's remote_* parameters (`RemoteConfig`).

Frames. `encode_frame` JPEG-encodes each frame once, on arrival, at the preset's pixel
budget (max_frame_pixels; DEFAULT_MAX_PIXELS when none), resized on the grid of the
Qwen2-VL family: one visual token per 28x28 pixels (14-px patches merged 2x2), the same
resize rule as its processor (`budget_grid`). A server running that family spends exactly
rows * cols visual tokens on the image, so the returned FrameTokens carry a zero-width
(rows * cols, 0) tensor with grid (rows, cols) and the JPEG bytes (`media`): the memory
budget counts what the server will spend. Other families spend differently; the count is
then an estimate.

Messages. One request per trigger (the API is stateless: each request carries the whole
history): the system prompt; one user message per frame ([time label if labelled,
image_url data URI]); one user / assistant message per dialogue turn; the question as the
last user message. One message per frame keeps the list append-only: as long as the
memory only grew, request N's messages are a prefix of request N+1's (the question and
answer of request N are remembered as turns, so they reappear verbatim), and the server's
prefix cache (vLLM automatic prefix caching, SGLang RadixAttention) reuses the KV of every
earlier frame; it hashes images into its blocks, so reuse stops at the first change.
Exceptions: a prompt that held frames newer than its trigger's evidence (the answer turns
are placed at the evidence stamp, before them), and `prompt_cameras: trigger`.

Compression. The memory's round-decayed compression runs in batches (compress_to): a
pooled frame keeps its JPEG and gets a smaller grid, and is sent re-encoded from the
original at grid * 28 pixels (`_image_part`, cached); frames at the floor are dropped.
Between two batches the message list only grows, so the prefix breaks only right after a
batch, at its first changed frame.

Image ids. With image_ids on, every image part carries "uuid": a hash of its JPEG bytes
(vLLM >= 0.10.2 reads it as the item's multi_modal_uuid and skips hashing the image for
its caches). A content hash cannot collide across sessions or restarts, and a re-encoded
(pooled) frame gets a new id.

Token counts. Servers that report usage in the stream (stream_options include_usage:
vLLM, SGLang, OpenAI) give prompt_tokens, completion tokens and, where they report
prompt_tokens_details.cached_tokens, the reused ones; extras["token_counts"] = "server".
Otherwise (transformers serve) they are estimated without a tokenizer ("estimated"):
text = one token per BYTES_PER_TOKEN UTF-8 bytes rounded up (labels are digit-heavy and
Qwen tokenizes digits one by one, so this over-counts prose rather than overflow a budget),
a frame = its visual tokens + message and image markers; reused = the tokens of the
messages shared with the previous request (the most a prefix cache can reuse); new tokens
= content chunks (one per decoded token on these servers).

Streaming and stop. Each content delta goes to on_text. A stop (pre-emption, cancel,
close) closes the HTTP stream: the reader checks after every chunk, and a watcher thread
shuts the connection down at once so a read waiting on a silent server returns too; the server
sees the connection drop and stops generating (vLLM aborts the request).

Failures. Connect and read timeouts (the read timeout bounds the wait for the first and
each next chunk); connection errors, timeouts, 429 and 5xx answers before any text are
retried `retries` times with exponential backoff (BACKOFF_SEC doubling, at most
BACKOFF_MAX_SEC; a stop interrupts the wait). Then `RemoteUnavailable` names the URL (the
engine turns it into a final with GENERATION_FAILED and carries on), unless a local
fallback backend is configured: it answers instead from the dialogue and the newest
FALLBACK_FRAMES frames, re-encoded from their JPEGs by its own vision tower (cached), and
extras["answered_by"] says which model answered. Once the server was found down, the next
triggers try it once without retries, so the fallback answers without the backoff delay;
a successful request restores the retries. Other errors (400, 401, 404; a stream that
breaks after text was streamed) are raised as they are.

Secrets and TLS. The API key is read from the environment variable named by api_key_env
when the backend is built and lives only in the client: no parameter, config or log line
holds it (an unset variable sends the placeholder "EMPTY", as vLLM's examples do). https
URLs are verified by the client library's httpx transport (certifi's CA bundle, or
SSL_CERT_FILE / SSL_CERT_DIR).
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import logging
import math
import os
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import urlparse

import numpy as np
import torch

from dispider_ros.core import schema
from dispider_ros.core.memory import DialogueTurn, FrameTokens
from dispider_ros.core.protocols import GenerationResult, PromptParts, ReactionVLM, TextCallback
from dispider_ros.models.processors import validate_image
from dispider_ros.models.qwen2_vl import TYPICAL_CAMERA, _plain, frame_label
from dispider_ros.models.vlm_config import ReactionVLMConfig

LOG = logging.getLogger(__name__)

PREFIX = "openai:"
TOKEN_PIXELS = 28  # Qwen2/2.5-VL: one visual token per 28x28 pixels
DEFAULT_MAX_PIXELS = 128 * TOKEN_PIXELS * TOKEN_PIXELS  # 100352: at most 128 tokens a frame
DEFAULT_MIN_PIXELS = 4 * TOKEN_PIXELS * TOKEN_PIXELS  # Qwen2-VL processors' own minimum
BYTES_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 5  # <|im_start|>{role}\n ... <|im_end|>\n
IMAGE_OVERHEAD_TOKENS = 2  # <|vision_start|> <|vision_end|>
ANSWER_HEADER_TOKENS = 3  # <|im_start|>assistant\n
BACKOFF_SEC = 0.5
BACKOFF_MAX_SEC = 4.0
FALLBACK_FRAMES = 8
CACHE_ENTRIES = 4096  # rendered image parts (pooled re-encodes) kept


def is_remote(model: str) -> bool:
    return isinstance(model, str) and model.startswith(PREFIX)


@dataclass
class RemoteConfig:
    """Args (the reaction node's remote_* parameters; core/schema.py describes them):
        base_url: the server's OpenAI API root, http(s)://host:port/v1.
        api_key_env: NAME of the environment variable holding the API key ("" = none).
        connect_timeout_sec, read_timeout_sec: connect timeout; longest wait for the first
            or next streamed chunk.
        retries: attempts after the first on connection errors, timeouts, 429 and 5xx.
        fallback_model: local reaction model answering when the server is unreachable
            ("" = none).
        jpeg_quality: JPEG quality of the frames sent.
        image_ids: send each image's content hash as its "uuid".
        extra_body: merged into every request body (server-specific options; code only).
        backoff_sec: the first retry's wait (doubling, at most BACKOFF_MAX_SEC).
    """

    base_url: str = schema.default("reaction_node", "remote_base_url")
    api_key_env: str = schema.default("reaction_node", "remote_api_key_env")
    connect_timeout_sec: float = schema.default("reaction_node", "remote_connect_timeout_sec")
    read_timeout_sec: float = schema.default("reaction_node", "remote_read_timeout_sec")
    retries: int = schema.default("reaction_node", "remote_retries")
    fallback_model: str = schema.default("reaction_node", "remote_fallback_model")
    jpeg_quality: int = schema.default("reaction_node", "remote_jpeg_quality")
    image_ids: bool = schema.default("reaction_node", "remote_image_ids")
    extra_body: dict = field(default_factory=dict)
    backoff_sec: float = BACKOFF_SEC

    def __post_init__(self):
        for name in ("base_url", "api_key_env", "connect_timeout_sec", "read_timeout_sec", "retries",
                     "fallback_model", "jpeg_quality", "image_ids"):
            setattr(self, name, schema.check("reaction_node", f"remote_{name}", getattr(self, name)))
        url = urlparse(self.base_url)
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ValueError(f"remote_base_url {self.base_url!r} must be an http(s)://host[:port]/... URL")
        if is_remote(self.fallback_model):
            raise ValueError(f"remote_fallback_model {self.fallback_model!r} must be a local model")
        if not (0.0 <= self.backoff_sec < math.inf):
            raise ValueError(f"backoff_sec {self.backoff_sec!r} must be a finite number >= 0")
        if not isinstance(self.extra_body, dict):
            raise TypeError(f"extra_body {self.extra_body!r} must be a dict")


class RemoteUnavailable(ConnectionError):
    """The server could not be reached (or kept failing) through every retry."""


def budget_grid(height: int, width: int, min_pixels: int, max_pixels: int) -> Tuple[int, int]:
    """(rows, cols) of 28-px visual tokens for an image, as Qwen2-VL's processor resizes it:
    each side rounded to a multiple of 28, then scaled (aspect kept) into [min, max] pixels."""
    t = TOKEN_PIXELS
    rows, cols = max(1, round(height / t)), max(1, round(width / t))
    if rows * cols * t * t > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        rows, cols = max(1, math.floor(height / beta / t)), max(1, math.floor(width / beta / t))
    elif rows * cols * t * t < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        rows, cols = math.ceil(height * beta / t), math.ceil(width * beta / t)
    return rows, cols


def jpeg_bytes(image: np.ndarray, size: Tuple[int, int], quality: int) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes of the image resized to size (width, height)."""
    from PIL import Image

    picture = Image.fromarray(image)
    if picture.size != tuple(size):
        picture = picture.resize(size, Image.BICUBIC)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as picture:
        return np.asarray(picture.convert("RGB"))


class RemoteVLM(ReactionVLM):
    """A VLM behind an OpenAI-compatible server (see the module docstring).

    Args:
        config: model ("openai:<served model name>"), generation settings, labels, pixels.
        remote: server, key, timeouts, retries, JPEG quality, image ids.
        fallback: a loaded local backend answering when the server is unreachable; closed
            with this one.
        http_hooks: httpx event hooks ({"request": [...], "response": [...]}) added to the
            client's own (tests capture the requests with them).
    """

    def __init__(self, config: ReactionVLMConfig, remote: RemoteConfig,
                 fallback: Optional[ReactionVLM] = None, http_hooks: Optional[Dict[str, list]] = None):
        import openai

        if not is_remote(config.model) or not config.model[len(PREFIX):].strip():
            raise ValueError(f"model {config.model!r} must be 'openai:<served model name>'")
        self.config, self.remote, self.fallback = config, remote, fallback
        self.model_name = config.model[len(PREFIX):]
        self.min_pixels = config.min_pixels or DEFAULT_MIN_PIXELS
        self.max_pixels = max(config.max_pixels or DEFAULT_MAX_PIXELS, self.min_pixels)
        hooks = {"request": [self._on_request], "response": []}
        for kind, extra in (http_hooks or {}).items():
            hooks.setdefault(kind, []).extend(extra)
        key = os.environ.get(remote.api_key_env) if remote.api_key_env else None
        self.client = openai.OpenAI(
            base_url=remote.base_url, api_key=key or "EMPTY", max_retries=0,
            timeout=openai.Timeout(remote.read_timeout_sec, connect=remote.connect_timeout_sec),
            http_client=openai.DefaultHttpxClient(event_hooks=hooks))
        self._retryable = (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError)
        self._parts: "OrderedDict[tuple, dict]" = OrderedDict()  # (media, grid) -> image part
        self._fallback_frames: "OrderedDict[tuple, FrameTokens]" = OrderedDict()
        self._previous: List[Tuple[dict, int]] = []  # last request: (message, estimated tokens)
        self._down = False  # the last request found the server unreachable
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "request_bytes": 0, "retries": 0, "unreachable": 0,
                       "fallbacks": 0, "stopped": 0}
        LOG.info("reaction VLM %s at %s (OpenAI chat completions; API key from $%s: %s; "
                 "fallback %s)", self.model_name, remote.base_url, remote.api_key_env or "-",
                 "set" if key else "unset", remote.fallback_model or "none")

    # ---- ReactionVLM -------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return 0  # zero-width placeholders: the server computes the visual tokens

    def count_tokens(self, text: str) -> int:
        return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)

    def frame_overhead_tokens(self, frame: Optional[FrameTokens] = None) -> int:
        """Its user message's markers, the image markers and its label (None = a labelled
        frame of a typical camera topic)."""
        if frame is None:
            frame = FrameTokens(torch.zeros(1, 0), (1, 1), camera_id=TYPICAL_CAMERA, stamp=1.0e6)
        return MESSAGE_OVERHEAD_TOKENS + IMAGE_OVERHEAD_TOKENS + self.count_tokens(self._label(frame))

    def turn_overhead_tokens(self) -> int:
        return MESSAGE_OVERHEAD_TOKENS

    def encode_frame(self, image: np.ndarray, camera_id: str = "", stamp: float = 0.0,
                     frame_index: int = 0, frame_id: str = "") -> FrameTokens:
        t0 = time.perf_counter()
        validate_image(image)
        rows, cols = budget_grid(image.shape[0], image.shape[1], self.min_pixels, self.max_pixels)
        media = jpeg_bytes(image, (cols * TOKEN_PIXELS, rows * TOKEN_PIXELS), self.remote.jpeg_quality)
        return FrameTokens(tokens=torch.zeros(rows * cols, 0), grid=(rows, cols), camera_id=camera_id,
                           stamp=float(stamp), frame_index=int(frame_index), frame_id=frame_id,
                           encode_ms=(time.perf_counter() - t0) * 1e3, media=media)

    def generate(self, parts: PromptParts, on_text: Optional[TextCallback] = None,
                 stop: Optional[threading.Event] = None) -> GenerationResult:
        stop = stop if stop is not None else threading.Event()
        t0 = time.perf_counter()
        try:
            return self._generate_remote(parts, on_text, stop, t0)
        except RemoteUnavailable as error:
            if self.fallback is None:
                raise
            LOG.warning("%s; the local fallback %s answers", error, self.remote.fallback_model)
            with self._lock:
                self.counts["fallbacks"] += 1
            result = self.fallback.generate(self._fallback_parts(parts), on_text, stop)
            result.extras.update(answered_by=f"fallback:{self.remote.fallback_model}",
                                 fallback_reason=str(error))
            return result

    def reset_cache(self) -> None:
        self._previous = []
        if self.fallback is not None:
            self.fallback.reset_cache()

    def release_memory(self) -> None:
        if self.fallback is not None:
            self.fallback.release_memory()

    def close(self) -> None:
        self.client.close()
        if self.fallback is not None:
            self.fallback.close()
            self.fallback = None

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counts, server_down=self._down)

    # ---- messages ------------------------------------------------------------------------
    def messages(self, parts: PromptParts) -> List[Tuple[dict, int]]:
        """The request's messages in order, each with its estimated prompt tokens."""
        out = [({"role": "system", "content": self.config.system_prompt},
                MESSAGE_OVERHEAD_TOKENS + self.count_tokens(self.config.system_prompt))]
        for item in parts.items:
            if isinstance(item, FrameTokens):
                label = self._label(item)
                content = ([{"type": "text", "text": label}] if label else []) + [self._image_part(item)]
                out.append(({"role": "user", "content": content},
                            item.n_tokens + self.frame_overhead_tokens(item)))
            elif isinstance(item, DialogueTurn):
                out.append((self._text_message(item.role, item.text),
                            MESSAGE_OVERHEAD_TOKENS + self.count_tokens(_plain(item.text))))
            else:
                raise TypeError(f"prompt item {type(item).__name__} is neither FrameTokens nor DialogueTurn")
        if parts.retrieved:  # after the memory, as in the local backends: the server's prefix cache holds
            content = [{"type": "text", "text": _plain(self.config.retrieval_header)}]
            cost = MESSAGE_OVERHEAD_TOKENS + self.count_tokens(_plain(self.config.retrieval_header))
            for frame in parts.retrieved:
                label = self._label(frame)
                content += ([{"type": "text", "text": label}] if label else []) + [self._image_part(frame)]
                cost += frame.n_tokens + self.frame_overhead_tokens(frame)
            out.append(({"role": "user", "content": content}, cost))
        out.append((self._text_message("user", parts.question),
                    MESSAGE_OVERHEAD_TOKENS + self.count_tokens(_plain(parts.question)) + ANSWER_HEADER_TOKENS))
        return out

    @staticmethod
    def _text_message(role: str, text: str) -> dict:
        # The question of request N is rendered exactly as its remembered turn in N + 1.
        if role == "assistant":
            return {"role": "assistant", "content": _plain(text)}
        return {"role": "user", "content": [{"type": "text", "text": _plain(text)}]}

    def _label(self, frame: FrameTokens) -> str:
        return frame_label(self.config, frame)

    def _image_part(self, frame: FrameTokens) -> dict:
        """The frame's image_url part at its grid: its JPEG as encoded, or (pooled) the
        JPEG re-encoded at grid * 28 pixels; cached, so a part is built once."""
        if frame.media is None:
            raise ValueError(f"frame {frame.camera_id}#{frame.frame_index} has no image: it was not "
                             "encoded by a remote backend")
        key = (frame.media, frame.grid)
        part = self._parts.get(key)
        if part is not None:
            self._parts.move_to_end(key)
            return part
        rows, cols = frame.grid
        size = (cols * TOKEN_PIXELS, rows * TOKEN_PIXELS)
        image = decode_jpeg(frame.media)
        data = frame.media if (image.shape[1], image.shape[0]) == size else \
            jpeg_bytes(image, size, self.remote.jpeg_quality)
        part = {"type": "image_url",
                "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")}}
        if self.remote.image_ids:
            part["uuid"] = hashlib.blake2b(data, digest_size=16).hexdigest()
        self._parts[key] = part
        if len(self._parts) > CACHE_ENTRIES:
            self._parts.popitem(last=False)
        return part

    # ---- the server ----------------------------------------------------------------------
    def _request(self, messages: List[dict]):
        config = self.config
        kwargs = dict(model=self.model_name, messages=messages, stream=True,
                      stream_options={"include_usage": True}, max_tokens=config.max_new_tokens,
                      temperature=config.temperature)
        if config.temperature > 0:
            kwargs["top_p"] = config.top_p
        extra = dict(self.remote.extra_body)
        if config.min_new_tokens:
            extra.setdefault("min_tokens", config.min_new_tokens)  # vLLM, SGLang
        return self.client.chat.completions.create(**kwargs, extra_body=extra or None)

    def _generate_remote(self, parts: PromptParts, on_text: Optional[TextCallback],
                         stop: threading.Event, t0: float) -> GenerationResult:
        rendered = self.messages(parts)
        messages = [m for m, _ in rendered]
        attempts = 1 + (0 if self._down else self.remote.retries)
        delay, error = self.remote.backoff_sec, None
        for attempt in range(attempts):
            if stop.is_set():
                return self._stopped(t0, rendered)
            if attempt:
                with self._lock:
                    self.counts["retries"] += 1
            try:
                stream = self._request(messages)
                result = self._consume(stream, on_text, stop, t0, rendered)
            except self._retryable as failure:  # nothing streamed yet (see _consume)
                error = failure
                LOG.info("VLM server %s: attempt %d/%d failed: %s: %s", self.remote.base_url,
                         attempt + 1, attempts, type(failure).__name__, failure)
                if attempt + 1 < attempts:
                    stop.wait(delay)
                    delay = min(2 * delay, BACKOFF_MAX_SEC)
                continue
            self._down = False
            self._previous = rendered
            return result
        self._down = True
        with self._lock:
            self.counts["unreachable"] += 1
        raise RemoteUnavailable(
            f"VLM server {self.remote.base_url} unreachable after {attempts} attempt(s) in "
            f"{time.perf_counter() - t0:.1f} s: {type(error).__name__}: {error}")

    def _consume(self, stream, on_text: Optional[TextCallback], stop: threading.Event, t0: float,
                 rendered: List[Tuple[dict, int]]) -> GenerationResult:
        """Read the stream to its end or to a stop; errors before any text are raised as
        they are (retryable), errors after it as RuntimeError (never retried)."""
        chunks: List[str] = []
        first: Optional[float] = None
        finish, usage = None, None
        done = threading.Event()
        watcher = threading.Thread(target=_close_on_stop, args=(stream, stop, done),
                                   name="remote-stream-stop", daemon=True)
        watcher.start()
        try:
            for chunk in stream:
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                for choice in chunk.choices[:1]:
                    text = choice.delta.content if choice.delta is not None else None
                    if text:
                        first = first or time.perf_counter()
                        chunks.append(text)
                        if on_text is not None:
                            on_text(text, len(chunks))
                    finish = choice.finish_reason or finish
                if stop.is_set():
                    break
        except Exception as error:  # noqa: BLE001 -- sorted below
            if not stop.is_set():
                if not chunks and isinstance(error, self._retryable):
                    raise
                raise RuntimeError(f"stream from {self.remote.base_url} broke after {len(chunks)} "
                                   f"chunk(s): {type(error).__name__}: {error}") from error
        finally:
            done.set()
            stream.close()
        if stop.is_set():
            with self._lock:
                self.counts["stopped"] += 1
        reason = "stopped" if stop.is_set() else "max_new_tokens" if finish == "length" else "eos"
        return self._result("".join(chunks), len(chunks), first, t0, reason, rendered, usage)

    def _result(self, text: str, chunks: int, first: Optional[float], t0: float, reason: str,
                rendered: List[Tuple[dict, int]], usage) -> GenerationResult:
        prompt = sum(tokens for _, tokens in rendered)
        shared = 0
        for (mine, tokens), (theirs, _) in zip(rendered, self._previous):
            if mine != theirs:
                break
            shared += tokens
        counts, new = "estimated", chunks
        if usage is not None and getattr(usage, "prompt_tokens", None):
            counts, prompt = "server", int(usage.prompt_tokens)
            new = int(getattr(usage, "completion_tokens", None) or chunks)
            details = getattr(usage, "prompt_tokens_details", None)
            cached = getattr(details, "cached_tokens", None) if details is not None else None
            shared = int(cached) if cached is not None else min(shared, prompt)
        return GenerationResult(
            text=text, ttft_sec=(first - t0) if first else math.nan, token_count=new,
            duration_sec=time.perf_counter() - t0, prompt_tokens=prompt, prefill_tokens=prompt - shared,
            reused_tokens=shared, stop_reason=reason,
            extras={"answered_by": PREFIX + self.model_name, "token_counts": counts})

    def _stopped(self, t0: float, rendered: List[Tuple[dict, int]]) -> GenerationResult:
        with self._lock:
            self.counts["stopped"] += 1
        return self._result("", 0, None, t0, "stopped", rendered, None)

    def _on_request(self, request) -> None:
        with self._lock:
            self.counts["requests"] += 1
            self.counts["request_bytes"] += len(request.content)

    # ---- fallback ------------------------------------------------------------------------
    def _fallback_parts(self, parts: PromptParts) -> PromptParts:
        """The dialogue and the newest FALLBACK_FRAMES frames, as the fallback's own tokens."""
        frames = [it for it in parts.items if isinstance(it, FrameTokens)][-FALLBACK_FRAMES:]
        keep = {id(f) for f in frames}
        items = [self._fallback_frame(it) if isinstance(it, FrameTokens) else it
                 for it in parts.items if not isinstance(it, FrameTokens) or id(it) in keep]
        return PromptParts(items, parts.question, cache_slot=parts.cache_slot)

    def _fallback_frame(self, frame: FrameTokens) -> FrameTokens:
        key = (frame.media, frame.grid)
        encoded = self._fallback_frames.get(key)
        if encoded is None:
            rows, cols = frame.grid
            image = decode_jpeg(frame.media)
            if (image.shape[1], image.shape[0]) != (cols * TOKEN_PIXELS, rows * TOKEN_PIXELS):
                image = decode_jpeg(jpeg_bytes(image, (cols * TOKEN_PIXELS, rows * TOKEN_PIXELS),
                                               self.remote.jpeg_quality))
            encoded = self.fallback.encode_frame(image, frame.camera_id, frame.stamp, frame.frame_index,
                                                 frame.frame_id)
            self._fallback_frames[key] = encoded
            if len(self._fallback_frames) > CACHE_ENTRIES:
                self._fallback_frames.popitem(last=False)
        # Keep the memory's key: the fallback's own KV cache recognises the frame next time.
        return dataclasses.replace(frame, tokens=encoded.tokens, grid=encoded.grid)


def _close_on_stop(stream, stop: threading.Event, done: threading.Event) -> None:
    """Close the stream as soon as stop is set (until done). Closing the response from this
    thread does not wake a read blocked in the reader's thread (it would wait out the read
    timeout), so the connection's socket is shut down first: the read returns at once and
    the server sees the connection drop."""
    while not done.is_set():
        if stop.wait(0.05):
            if done.is_set():
                return
            network = getattr(stream, "response", None)
            network = network.extensions.get("network_stream") if network is not None else None
            sock = network.get_extra_info("socket") if network is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # already closed by the other side
                    pass
            stream.close()
            return


def load_remote_vlm(config: ReactionVLMConfig, remote: Optional[RemoteConfig],
                    load_local: Callable[[ReactionVLMConfig], ReactionVLM]) -> RemoteVLM:
    """A RemoteVLM with its fallback (loaded now with load_local, so it is ready when the
    server goes down) if remote.fallback_model names one."""
    remote = remote or RemoteConfig()
    fallback = None
    if remote.fallback_model:
        fallback = load_local(dataclasses.replace(config, model=remote.fallback_model))
    try:
        return RemoteVLM(config, remote, fallback=fallback)
    except BaseException:
        if fallback is not None:
            fallback.close()
        raise


__all__ = ["RemoteVLM", "RemoteConfig", "RemoteUnavailable", "load_remote_vlm", "is_remote",
           "budget_grid", "PREFIX", "FALLBACK_FRAMES"]
