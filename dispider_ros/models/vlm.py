"""Reaction VLM role: per-frame visual tokens on arrival, streamed answers at trigger time.

`ReactionVLM` is the small interface the reaction core uses:
- `encode_frame(image)` runs the vision tower when a frame arrives and returns its visual
  tokens (`FrameTokens`: (n, hidden) embeddings in the language model's input space, plus
  their grid), so generation never re-runs vision;
- `generate(parts, on_text, stop)` answers a question over memory items (frames and
  dialogue turns in time order), streaming text through `on_text`, stopping early when
  `stop` is set, and returns a `GenerationResult` (text, time to first token, tokens).

`Qwen2VLBackend` serves the Qwen2-VL and Qwen2.5-VL families:
- Prompt: Qwen's chat format. Frames go into user messages as
  `{label}<|vision_start|><|image_pad|>*n<|vision_end|>`; a question closes the open user
  message, its answer follows as an assistant message; the trigger's question and
  `<|im_start|>assistant\\n` form the suffix. Frames are fed as images (t = 1), never
  through the video processor (which needs torchvision).
- Embeddings: text tokens go through the embedding table and the cached visual tokens are
  written at the `<|image_pad|>` positions (what the model's own forward does with
  `pixel_values`, minus the vision tower).
- Positions: M-RoPE position ids from the model's `get_rope_index`, computed for the new
  part of the sequence only and offset by the cached prefix's largest position (which is
  what `get_rope_index` over the full sequence gives, since text resumes at max + 1).
  A pooled frame with grid (rows, cols) gets image_grid_thw (1, rows * merge, cols * merge).
- KV reuse: everything before the question (system header, frames, past turns) is the
  prefix. It is prefilled into a `DynamicCache` that is kept across triggers; the next
  trigger compares token ids and visual-token identities (memory keys) position by
  position, crops the cache to the common prefix and prefills only the rest. `generate()`
  then runs on the question suffix with `model.model.rope_deltas` set from the full
  sequence (transformers derives decode positions from it once a cache is non-empty),
  and the cache is cropped back to the prefix afterwards. Compression changes old frames,
  so a trigger after compression re-prefills from the first pooled frame on. Any error
  drops the cache.

Plugging in another family (SmolVLM/Idefics3, LLaVA-OneVision) means a `ReactionVLM`
subclass registered with `register_backend(model_type, cls)` that provides:
1. `encode_frame`: its vision tower + connector/projector for one frame, returning
   `FrameTokens` whose rows are exactly what its forward would place at its image-token
   positions (Idefics3: `model.model.get_image_features` after the pixel-shuffle
   connector, image splitting off so one frame = one tile; LLaVA-OneVision: vision tower
   + `multi_modal_projector`, with the anyres/`image_newline` layout flattened into rows),
   with a grid describing their layout ((1, n) if it has none).
2. `generate`: its chat format and image token (`<image>` with Idefics3's
   `<fake_token_around_image>` wrappers; LLaVA's `<image>`), the same splice into
   `inputs_embeds`, and its positions: these families use plain 1-D positions, so the
   prefix cache can be extended with `cache_position` alone and `generate()` needs no
   `rope_deltas`. Pooled frames change n, which both families accept because the splice
   happens after their projector.
3. `count_tokens`, `hidden_size`, `close`.
The KV-prefix bookkeeping in `Qwen2VLBackend` (`_assemble`, `_prefill`) is family-neutral
apart from `_positions`; a subclass may override `_render`, `_positions` and
`_vision_forward` instead of starting from scratch.
"""
from __future__ import annotations

import abc
import copy
import functools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch

from dispider_ros.core.memory import DialogueTurn, FrameTokens, MemoryItem
from dispider_ros.models import tiny
from dispider_ros.models.loading import (DTYPES, LoadConfig, check_model_source,
                                         choose_attn_implementation, free_device_memory)

LOG = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant watching live camera streams. Answer briefly."
TextCallback = Callable[[str], None]


@dataclass
class ReactionVLMConfig:
    """Args:
        model: Hugging Face id, local folder, or "tiny:qwen2_vl".
        device: torch device string ("cpu", "cuda:0", ...).
        dtype: float32 | float16 | bfloat16 | auto.
        attn_implementation: "auto", "sdpa", "eager", "flash_attention_2".
        local_files_only: never contact a hub.
        trust_remote_code: run code shipped with the checkpoint.
        max_new_tokens: answer length limit, >= 1.
        min_new_tokens: end-of-answer suppressed before this many tokens, >= 0.
        temperature: 0 = greedy decoding, > 0 = sampling.
        top_p: nucleus sampling mass in (0, 1] (sampling only).
        min_pixels, max_pixels: per-frame pixel range for the image processor's resize
            (None = the checkpoint's own); fewer pixels = fewer visual tokens per frame.
        kv_reuse: keep the prefilled buffer prefix across triggers.
        system_prompt: the system message.
        frame_label: text before each frame, formatted with camera_id, stamp, frame_index
            ("" = none); tells the model which camera and when.
    """

    model: str = "tiny:qwen2_vl"
    device: str = "cpu"
    dtype: str = "auto"
    attn_implementation: str = "auto"
    local_files_only: bool = True
    trust_remote_code: bool = False
    max_new_tokens: int = 64
    min_new_tokens: int = 0
    temperature: float = 0.0
    top_p: float = 1.0
    min_pixels: Optional[int] = None
    max_pixels: Optional[int] = None
    kv_reuse: bool = True
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    frame_label: str = "{camera_id} {stamp:.1f}s"

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model {self.model!r} must name a Hugging Face id, folder or tiny:<family>")
        if not isinstance(self.device, str):
            raise TypeError(f"device {self.device!r} must be a string such as 'cpu' or 'cuda:0'")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(DTYPES)}")
        for name, low in (("max_new_tokens", 1), ("min_new_tokens", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} {value!r} must be an int >= {low}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} > max_new_tokens {self.max_new_tokens}")
        if not (self.temperature >= 0.0):  # also rejects NaN
            raise ValueError(f"temperature {self.temperature!r} must be >= 0")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p {self.top_p!r} must be in (0, 1]")
        for name in ("min_pixels", "max_pixels"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 28 * 28):
                raise ValueError(f"{name} {value!r} must be None or an int >= {28 * 28}")
        if self.min_pixels and self.max_pixels and self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        try:
            self.frame_label.format(camera_id="cam", stamp=0.0, frame_index=0)
        except (KeyError, IndexError, ValueError, AttributeError) as error:
            raise ValueError(f"frame_label {self.frame_label!r} is not a valid template: {error}") from None

    def load_config(self, model_path: str) -> LoadConfig:
        return LoadConfig(model=model_path, device=self.device, dtype=self.dtype,
                          local_files_only=self.local_files_only,
                          trust_remote_code=self.trust_remote_code,
                          attn_implementation=self.attn_implementation)


@dataclass
class PromptParts:
    """What one answer is generated from.

    Args:
        items: memory items (FrameTokens, DialogueTurn) in time order.
        question: the trigger's query text.
    """

    items: Sequence[MemoryItem]
    question: str


@dataclass
class GenerationResult:
    """One finished (or stopped) generation."""

    text: str
    ttft_sec: float  # generate() call -> first new token (prompt build + prefill included)
    token_count: int  # new tokens, end-of-answer token included
    duration_sec: float
    prompt_tokens: int
    prefill_tokens: int  # prompt tokens computed by this call (the rest came from the KV cache)
    reused_tokens: int
    stop_reason: str  # eos | max_new_tokens | stopped
    token_ids: List[int] = field(default_factory=list)

    @property
    def tokens_per_sec(self) -> float:
        decode = self.duration_sec - self.ttft_sec
        return (self.token_count - 1) / decode if self.token_count > 1 and decode > 0 else float("nan")


class ReactionVLM(abc.ABC):
    """Interface of a reaction model family (see the module docstring for plugging one in)."""

    config: ReactionVLMConfig
    model_type: str = ""

    @abc.abstractmethod
    def encode_frame(self, image: np.ndarray, camera_id: str = "", stamp: float = 0.0,
                     frame_index: int = 0, frame_id: str = "") -> FrameTokens:
        """Visual tokens of one frame, computed now.

        Args:
            image: (H, W, 3) uint8 RGB.
            camera_id, stamp, frame_index, frame_id: metadata copied into the result.
        """

    @abc.abstractmethod
    def generate(self, parts: PromptParts, on_text: Optional[TextCallback] = None,
                 stop: Optional[threading.Event] = None) -> GenerationResult:
        """Answer parts.question over parts.items.

        Args:
            parts: the memory snapshot and the question.
            on_text: called with each decoded text chunk, on the calling thread.
            stop: when set, generation ends after the current token (stop_reason "stopped").
        """

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Length of text in this model's tokens."""

    @property
    @abc.abstractmethod
    def hidden_size(self) -> int:
        """Width of the visual tokens."""

    def reset_cache(self) -> None:
        """Forget any cached prompt state."""

    def close(self) -> None:
        """Drop the model and return device memory."""


def callback_streamer(tokenizer, on_text: Optional[TextCallback]):
    """A transformers TextStreamer that hands each finalized text chunk to a plain callback.

    generate() calls put()/end() on the thread that runs it (the reaction worker), so there
    is no queue to block on: an exception in generate() (or in the callback) propagates
    straight to the caller instead of leaving a reader waiting for text that never comes.
    The streamer also records its chunks and when the first new token arrived.
    """
    return _streamer_class()(tokenizer, on_text)


@functools.lru_cache(maxsize=1)
def _streamer_class():
    from transformers import TextStreamer

    class CallbackStreamer(TextStreamer):
        def __init__(self, tokenizer, on_text: Optional[TextCallback]):
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.on_text = on_text
            self.chunks: List[str] = []
            self.first_token_time: Optional[float] = None

        def put(self, value):
            if self.first_token_time is None and not self.next_tokens_are_prompt:
                self.first_token_time = time.perf_counter()
            super().put(value)

        def on_finalized_text(self, text: str, stream_end: bool = False):
            if text:
                self.chunks.append(text)
                if self.on_text is not None:
                    self.on_text(text)

    return CallbackStreamer


def _stop_criteria(stop: Optional[threading.Event]):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _OnEvent(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    return StoppingCriteriaList([_OnEvent()] if stop is not None else [])


def no_video_processor():
    """A placeholder video processor for Qwen-style processors where torchvision is absent.

    ProcessorMixin checks its video processor against `transformers.BaseVideoProcessor`,
    which is a dummy class without torchvision; the placeholder derives from both.
    """
    import transformers
    from transformers.video_processing_utils import BaseVideoProcessor

    bases = (BaseVideoProcessor,)
    if transformers.BaseVideoProcessor is not BaseVideoProcessor:
        bases += (transformers.BaseVideoProcessor,)

    class NoVideoProcessor(*bases):
        def __call__(self, *args, **kwargs):
            raise RuntimeError("video input needs torchvision; feed frames as images")

    return NoVideoProcessor()


def load_processor(path: str, **kwargs):
    """AutoProcessor, or (without torchvision) the same processor class assembled from parts."""
    import transformers
    from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    try:
        return AutoProcessor.from_pretrained(path, use_fast=False, **kwargs)
    except ImportError as error:  # the video processor wants torchvision
        LOG.info("AutoProcessor unavailable (%s); assembling it without a video processor",
                 str(error).strip().splitlines()[0])
    model_type = AutoConfig.from_pretrained(path, **kwargs).model_type
    processor_cls = getattr(transformers, PROCESSOR_MAPPING_NAMES[model_type])
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    return processor_cls(image_processor=AutoImageProcessor.from_pretrained(path, use_fast=False, **kwargs),
                         tokenizer=tokenizer, video_processor=no_video_processor(),
                         chat_template=getattr(tokenizer, "chat_template", None))


def validate_image(image) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"image {desc} is not (H, W, 3) uint8 RGB")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image {image.shape} is empty")


def _plain(text: str) -> str:
    """Outside text must not smuggle in control tokens such as <|image_pad|> or <|im_end|>."""
    return text.replace("<|", "< |")


@dataclass
class _Assembled:
    ids: np.ndarray  # (L,) int64 token ids, visual positions hold the image-pad id
    src: np.ndarray  # (L,) int64 memory key at visual positions, -1 at text positions
    frames: List[Tuple[int, FrameTokens]]  # (start position, frame) in order
    prefix_len: int  # everything before the question


class Qwen2VLBackend(ReactionVLM):
    """Qwen2-VL / Qwen2.5-VL reaction model (see the module docstring).

    Args:
        config: what to load and how to generate.
        path: resolved local folder or hub id of the checkpoint.
    """

    def __init__(self, config: ReactionVLMConfig, path: str):
        from transformers import AutoModelForImageTextToText

        self.config = config
        load = config.load_config(path)
        kwargs = load.pretrained_kwargs()
        self.processor = load_processor(path, **kwargs)
        self.tokenizer = self.processor.tokenizer
        model = AutoModelForImageTextToText.from_pretrained(
            path, dtype=load.torch_dtype,
            attn_implementation=choose_attn_implementation(config.attn_implementation, config.device),
            **kwargs)
        self.model: Optional[torch.nn.Module] = model.to(config.device).eval()
        self.model_type = model.config.model_type
        self.device = torch.device(config.device)
        self.dtype = load.torch_dtype
        self.merge = int(model.config.vision_config.spatial_merge_size)
        self.image_pad_id = int(model.config.image_token_id)
        self.eos_ids = self._eos_ids()
        self._pixel_kwargs = {k: v for k, v in (("min_pixels", config.min_pixels),
                                                ("max_pixels", config.max_pixels)) if v is not None}
        self._text_ids: Dict[str, np.ndarray] = {}  # tokenized text runs (labels, turns, header)
        self._gen_lock = threading.Lock()  # one generation at a time: the cache is shared state
        self._temp_key = -1
        self.reset_cache()
        LOG.info("reaction VLM %s (%s, hidden %d) on %s %s, KV reuse %s", config.model, self.model_type,
                 self.hidden_size, config.device, str(self.dtype).replace("torch.", ""),
                 "on" if config.kv_reuse else "off")

    # ---- ReactionVLM -------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self._require_model().config.text_config.hidden_size)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def encode_frame(self, image: np.ndarray, camera_id: str = "", stamp: float = 0.0,
                     frame_index: int = 0, frame_id: str = "") -> FrameTokens:
        t0 = time.perf_counter()
        tokens, grid = self.encode_images([image])[0]
        return FrameTokens(tokens=tokens, grid=grid, camera_id=camera_id, stamp=float(stamp),
                           frame_index=int(frame_index), frame_id=frame_id,
                           encode_ms=(time.perf_counter() - t0) * 1e3)

    def encode_images(self, images: Sequence[np.ndarray]) -> List[Tuple[torch.Tensor, Tuple[int, int]]]:
        """Visual tokens of several images in one vision forward.

        Args:
            images: (H, W, 3) uint8 RGB arrays (sizes may differ).
        Returns:
            per image: ((n, hidden) tokens on the model's device, (rows, cols) grid).
        """
        for image in images:
            validate_image(image)
        inputs = self.processor.image_processor(images=list(images), return_tensors="pt",
                                                **self._pixel_kwargs)
        grid_thw = inputs["image_grid_thw"]  # (N, 3) in patches
        embeds = self._vision_forward(inputs["pixel_values"], grid_thw)  # (sum n, hidden)
        sizes = (grid_thw.prod(-1) // self.merge ** 2).tolist()
        parts = torch.split(embeds, sizes)
        if len(parts) > 1:  # own storage per frame, so memory can free frames one by one
            parts = [p.clone() for p in parts]
        return [(tokens, (int(thw[1]) // self.merge, int(thw[2]) // self.merge))
                for tokens, thw in zip(parts, grid_thw)]

    def generate(self, parts: PromptParts, on_text: Optional[TextCallback] = None,
                 stop: Optional[threading.Event] = None) -> GenerationResult:
        model = self._require_model()
        t0 = time.perf_counter()
        with self._gen_lock, torch.inference_mode():
            try:
                prompt = self._assemble(parts)
                reused, cache, positions = self._prefill(prompt)
                length = len(prompt.ids)
                delta = int(positions.max()) + 1 - length  # M-RoPE offset of decode positions
                model.model.rope_deltas = torch.tensor([[delta]], device=self.device)
                streamer = callback_streamer(self.tokenizer, on_text)
                input_ids = torch.from_numpy(prompt.ids)[None].to(self.device)  # (1, L)
                out = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    past_key_values=cache, generation_config=self._generation_config(),
                    streamer=streamer, stopping_criteria=_stop_criteria(stop))
                if self.config.kv_reuse:
                    cache.crop(prompt.prefix_len)  # back to the stable prefix for the next trigger
                else:
                    self.reset_cache()
            except BaseException:
                self.reset_cache()  # a failed prefill or decode may leave the cache half-written
                raise
        new_ids = out[0, length:].tolist()
        if stop is not None and stop.is_set():
            reason = "stopped"
        elif new_ids and new_ids[-1] in self.eos_ids:
            reason = "eos"
        else:
            reason = "max_new_tokens"
        first = streamer.first_token_time
        return GenerationResult(
            text="".join(streamer.chunks), ttft_sec=(first - t0) if first else float("nan"),
            token_count=len(new_ids), duration_sec=time.perf_counter() - t0, prompt_tokens=length,
            prefill_tokens=length - reused, reused_tokens=reused, stop_reason=reason,
            token_ids=new_ids)

    def reset_cache(self) -> None:
        self._cache = None
        self._cache_ids = np.zeros(0, np.int64)
        self._cache_src = np.zeros(0, np.int64)
        self._cache_pos = torch.zeros(3, 0, dtype=torch.long)

    def close(self) -> None:
        if self.model is not None:
            self.model = None
            self.reset_cache()
            free_device_memory(self.config.device)
            LOG.info("reaction VLM %s closed", self.config.model)

    # ---- prompt --------------------------------------------------------------------------
    def prompt_text(self, parts: PromptParts) -> str:
        """The prompt as text with one <|image_pad|> per frame (what a processor expands)."""
        pad = self.tokenizer.convert_ids_to_tokens(self.image_pad_id)
        prefix, suffix = self._render(parts)
        return "".join(p if isinstance(p, str) else pad for p in prefix + suffix)

    def _render(self, parts: PromptParts) -> Tuple[list, list]:
        """Prefix and suffix pieces: text strings and FrameTokens, in prompt order."""
        prefix: list = [f"<|im_start|>system\n{self.config.system_prompt}<|im_end|>\n"]
        open_user = False
        for item in parts.items:
            if isinstance(item, FrameTokens):
                if not open_user:
                    prefix.append("<|im_start|>user\n")
                    open_user = True
                label = _plain(self.config.frame_label.format(
                    camera_id=item.camera_id, stamp=item.stamp, frame_index=item.frame_index))
                prefix += [f"{label}<|vision_start|>", item, "<|vision_end|>"]
            elif isinstance(item, DialogueTurn):
                if item.role == "user":
                    prefix.append(("" if open_user else "<|im_start|>user\n") + f"{_plain(item.text)}<|im_end|>\n")
                else:
                    prefix.append(("<|im_end|>\n" if open_user else "")
                                  + f"<|im_start|>assistant\n{_plain(item.text)}<|im_end|>\n")
                open_user = False
            else:
                raise TypeError(f"prompt item {type(item).__name__} is neither FrameTokens nor DialogueTurn")
        suffix = [("" if open_user else "<|im_start|>user\n")
                  + f"{_plain(parts.question)}<|im_end|>\n<|im_start|>assistant\n"]
        return prefix, suffix

    def _tokenize(self, text: str) -> np.ndarray:
        ids = self._text_ids.get(text)
        if ids is None:
            ids = np.asarray(self.tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
            if len(self._text_ids) > 8192:  # labels carry stamps: bound the memo
                self._text_ids.clear()
            self._text_ids[text] = ids
        return ids

    def _assemble(self, parts: PromptParts) -> _Assembled:
        prefix, suffix = self._render(parts)
        ids: List[np.ndarray] = []
        src: List[np.ndarray] = []
        frames: List[Tuple[int, FrameTokens]] = []
        pos = 0
        prefix_len = 0
        for group, pieces in enumerate((prefix, suffix)):
            text = ""
            for piece in pieces + [None]:
                if isinstance(piece, str):
                    text += piece  # adjacent text is tokenized as one run, as a processor would
                    continue
                if text:
                    run = self._tokenize(text)
                    ids.append(run)
                    src.append(np.full(len(run), -1, np.int64))
                    pos += len(run)
                    text = ""
                if piece is None:
                    break
                if piece.tokens.shape[1] != self.hidden_size:
                    raise ValueError(f"frame {piece.camera_id}#{piece.frame_index} has tokens of width "
                                     f"{piece.tokens.shape[1]}, the model needs {self.hidden_size}")
                ids.append(np.full(piece.n_tokens, self.image_pad_id, np.int64))
                src.append(np.full(piece.n_tokens, self._frame_key(piece), np.int64))
                frames.append((pos, piece))
                pos += piece.n_tokens
            if group == 0:
                prefix_len = pos
        return _Assembled(np.concatenate(ids), np.concatenate(src), frames, prefix_len)

    def _frame_key(self, frame: FrameTokens) -> int:
        if frame.key >= 0:
            return frame.key
        self._temp_key -= 1  # frames from outside a MemoryBuffer are never reused (-1 = text)
        return self._temp_key

    # ---- prefill -------------------------------------------------------------------------
    def _prefill(self, prompt: _Assembled) -> Tuple[int, object, torch.Tensor]:
        """Bring the cache to prompt.prefix_len; returns (reused tokens, cache, (3, L) positions)."""
        from transformers import DynamicCache

        model = self._require_model()
        common = 0
        if self.config.kv_reuse and self._cache is not None:
            n = min(len(self._cache_ids), prompt.prefix_len)
            diff = np.flatnonzero((self._cache_ids[:n] != prompt.ids[:n]) | (self._cache_src[:n] != prompt.src[:n]))
            common = int(diff[0]) if len(diff) else n
            for start, frame in prompt.frames:
                # Never split a frame from its <|vision_start|>: get_rope_index finds images by it.
                if start - 1 < common < start + frame.n_tokens:
                    common = start - 1
        if common == 0 or self._cache is None:
            cache, common = DynamicCache(config=model.config.text_config), 0
        else:
            cache = self._cache
            cache.crop(common)
        positions = self._positions(prompt, common)  # (3, L)
        end = prompt.prefix_len
        if end > common:
            embeds = self._embed(prompt, common, end)  # (1, T, H)
            model.model.language_model(
                inputs_embeds=embeds, position_ids=positions[:, None, common:end].to(self.device),
                past_key_values=cache, use_cache=True,
                cache_position=torch.arange(common, end, device=self.device))
        if self.config.kv_reuse:
            self._cache = cache
            self._cache_ids = prompt.ids[:end]
            self._cache_src = prompt.src[:end]
            self._cache_pos = positions[:, :end]
        return common, cache, positions

    def _positions(self, prompt: _Assembled, start: int) -> torch.Tensor:
        """(3, L) M-RoPE positions: cached ones before start, get_rope_index for the rest."""
        model = self._require_model()
        tail = torch.from_numpy(prompt.ids[start:])[None]  # (1, L - start)
        grids = [(1, f.grid[0] * self.merge, f.grid[1] * self.merge) for s, f in prompt.frames if s >= start]
        grid_thw = torch.tensor(grids, dtype=torch.long) if grids else None
        new, _ = model.model.get_rope_index(input_ids=tail, image_grid_thw=grid_thw)  # (3, 1, L - start)
        new = new[:, 0].cpu()
        if start == 0:
            return new
        head = self._cache_pos[:, :start]
        return torch.cat([head, new + int(head.max()) + 1], dim=1)

    def _embed(self, prompt: _Assembled, start: int, end: int) -> torch.Tensor:
        """(1, end - start, H) input embeddings with the frames' cached visual tokens spliced in."""
        model = self._require_model()
        ids = torch.from_numpy(prompt.ids[start:end]).to(self.device)
        embeds = model.get_input_embeddings()(ids)  # (T, H)
        visual = [f.tokens for s, f in prompt.frames if start <= s < end]
        if visual:
            mask = (ids == self.image_pad_id)[:, None]  # (T, 1)
            if int(mask.sum()) != sum(v.shape[0] for v in visual):
                raise ValueError(f"{int(mask.sum())} image-pad positions for "
                                 f"{sum(v.shape[0] for v in visual)} visual tokens")
            embeds = embeds.masked_scatter(mask, torch.cat(visual).to(embeds.device, embeds.dtype))
        return embeds[None]

    def _vision_forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        model = self._require_model()
        visual = model.model.visual
        with torch.inference_mode():
            return visual(pixel_values.to(self.device, visual.dtype), grid_thw=grid_thw.to(self.device))

    # ---- helpers -------------------------------------------------------------------------
    def _generation_config(self):
        gen = copy.deepcopy(self._require_model().generation_config)
        gen.max_new_tokens = self.config.max_new_tokens
        gen.min_new_tokens = self.config.min_new_tokens
        gen.num_beams = 1
        gen.eos_token_id = sorted(self.eos_ids)
        gen.pad_token_id = self.tokenizer.pad_token_id
        if self.config.temperature > 0:
            gen.do_sample, gen.temperature, gen.top_p, gen.top_k = True, self.config.temperature, self.config.top_p, None
        else:
            gen.do_sample, gen.temperature, gen.top_p, gen.top_k = False, None, None, None
        return gen

    def _eos_ids(self) -> set:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        for token in ("<|im_end|>", "<|endoftext|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return {int(i) for i in ids}

    def _require_model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("reaction VLM is closed")
        return self.model


BACKENDS: Dict[str, Type[ReactionVLM]] = {
    "qwen2_vl": Qwen2VLBackend,
    "qwen2_5_vl": Qwen2VLBackend,
}


def register_backend(model_type: str, backend: Type[ReactionVLM]) -> None:
    """Serve checkpoints whose config.model_type is model_type with backend(config, path)."""
    if not (isinstance(backend, type) and issubclass(backend, ReactionVLM)):
        raise TypeError(f"backend {backend!r} must be a ReactionVLM subclass")
    BACKENDS[model_type] = backend


def load_reaction_vlm(config: ReactionVLMConfig) -> ReactionVLM:
    """Load config.model with the backend of its family (config.json's model_type).

    Args:
        config: model, device, dtype and generation settings.
    Raises:
        FileNotFoundError: the model folder or cache entry is missing.
        ValueError: no backend serves the model's family.
    """
    from transformers import AutoConfig

    path = tiny.resolve_model_path(config.model)
    load = config.load_config(path)
    kwargs = load.pretrained_kwargs()
    check_model_source(path, kwargs["local_files_only"])
    model_type = AutoConfig.from_pretrained(path, **kwargs).model_type
    if model_type not in BACKENDS:
        raise ValueError(f"model {config.model!r} is a {model_type!r} model; reaction backends exist for "
                         f"{sorted(BACKENDS)} (register_backend() adds one)")
    return BACKENDS[model_type](config, path)


__all__ = ["ReactionVLMConfig", "PromptParts", "GenerationResult", "ReactionVLM", "Qwen2VLBackend",
           "callback_streamer", "BACKENDS", "register_backend", "load_reaction_vlm", "load_processor",
           "no_video_processor", "DEFAULT_SYSTEM_PROMPT"]
