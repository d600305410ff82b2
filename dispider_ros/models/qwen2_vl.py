"""Qwen2-VL / Qwen2.5-VL reaction backend: every transformers specific of the family.

`Qwen2VLBackend` implements `core.protocols.ReactionVLM`: `encode_frame(image)` runs the
vision tower when a frame arrives and returns its visual tokens (`FrameTokens`: (n,
hidden) embeddings in the language model's input space, plus their grid), so generation
never re-runs vision; `generate(parts, on_text, stop)` answers over memory items.
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
  prefix. Two prefix caches (slots, `DynamicCache`s) are kept across triggers; a prompt
  names its slot (PromptParts.cache_slot), whose token ids and visual-token identities
  (memory keys) are compared position by position with the new prefix, cropped to the
  common part, and only the rest is prefilled. `prefill(items, slot, max_tokens)` does the
  same outside any trigger, in bounded steps: the engine keeps the prefix current as frames
  arrive, and rebuilds the other slot after a compression while triggers are answered from
  the first. `generate()` runs on the question suffix with `model.model.rope_deltas` set
  from the full sequence (transformers derives decode positions from it once a cache is
  non-empty), and the slot is cropped back to the prefix afterwards. Any error drops the
  caches.
- Retrieved clips (PromptParts.retrieved): their keyframes open the suffix, after
  `retrieval_header` and each with its camera and time label, then the question; being
  after the prefix, they are prefilled per answer (the suffix but its last token, visual
  tokens spliced in, before `generate()` continues) and never disturb the cached memory.
- Frame labels: a frame with `labelled` set gets a label before it (`frame_label`, naming
  the camera, when `named` is set; else `time_label`); the others only their markers (the
  engine labels one frame every few seconds per camera and names the camera on a change).
"""
from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from dispider_ros.core.memory import DialogueTurn, FrameTokens
from dispider_ros.core.protocols import GenerationResult, PromptParts, ReactionVLM, TextCallback
from dispider_ros.models.loading import choose_attn_implementation, free_device_memory
from dispider_ros.models.processors import load_processor, validate_image
from dispider_ros.models.streaming import callback_streamer, stop_criteria
from dispider_ros.models.vlm_config import ReactionVLMConfig

LOG = logging.getLogger(__name__)
TYPICAL_CAMERA = "/camera/color/image_raw"  # its frame label is what the memory budget counts


def _plain(text: str) -> str:
    """Outside text must not smuggle in control tokens such as <|image_pad|> or <|im_end|>."""
    return text.replace("<|", "< |")


def frame_label(config: ReactionVLMConfig, frame: FrameTokens) -> str:
    """The label before a frame in the prompt: frame_label (naming the camera) when the frame
    is `named`, time_label otherwise, none when it is not `labelled`."""
    template = (config.frame_label if frame.named else config.time_label) if frame.labelled else ""
    if not template:
        return ""
    return _plain(template.format(camera_id=frame.camera_id, stamp=frame.stamp, frame_index=frame.frame_index))


@dataclass
class _Slot:
    """One prefix cache: what it holds, token by token."""

    cache: object = None  # DynamicCache or None
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    src: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    pos: torch.Tensor = field(default_factory=lambda: torch.zeros(3, 0, dtype=torch.long))


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

    A family with plain 1-D positions (models/smolvlm.py) subclasses it, overriding the
    family hooks: `_init_family`, `_render` (+ `prompt_text`, `_label`, the overhead counts),
    `encode_images`, `_positions`, `_forward_prefix`, `_prepare_decode`, `FRAME_LEAD`,
    `EOS_TOKENS`.
    """

    FRAME_LEAD = 1  # tokens that open a frame (<|vision_start|>): never cached without the frame
    EOS_TOKENS = ("<|im_end|>", "<|endoftext|>")  # end an answer besides generation_config's

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
        self.image_pad_id = int(model.config.image_token_id)
        self.eos_ids = self._eos_ids()
        self._init_family(model)
        self._text_ids: Dict[str, np.ndarray] = {}  # tokenized text runs (labels, turns, header)
        self._gen_lock = threading.Lock()  # one generation at a time: the cache is shared state
        self._temp_key = -1
        self.reset_cache()
        LOG.info("reaction VLM %s (%s, hidden %d) on %s %s, KV reuse %s", config.model, self.model_type,
                 self.hidden_size, config.device, str(self.dtype).replace("torch.", ""),
                 "on" if config.kv_reuse else "off")

    def _init_family(self, model) -> None:
        """Family-specific settings read once the model is loaded."""
        self.merge = int(model.config.vision_config.spatial_merge_size)
        self._pixel_kwargs = {k: v for k, v in (("min_pixels", self.config.min_pixels),
                                                ("max_pixels", self.config.max_pixels)) if v is not None}

    # ---- ReactionVLM -------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return int(self._require_model().config.text_config.hidden_size)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def frame_overhead_tokens(self, frame: Optional[FrameTokens] = None) -> int:
        """<|vision_start|>, <|vision_end|> and the frame's label if it has one (None = a
        labelled frame of a typical camera topic)."""
        if frame is None:
            frame = FrameTokens(torch.zeros(1, 1), (1, 1), camera_id=TYPICAL_CAMERA, stamp=1.0e6)
        label = self._label(frame)
        return (self.count_tokens(label) if label else 0) + 2

    def turn_overhead_tokens(self) -> int:
        """<|im_start|>{role}\n ... <|im_end|>\n around a turn's text."""
        return self.count_tokens("<|im_start|>assistant\n<|im_end|>\n")

    def prefill(self, items: Sequence, slot: int = 0, max_tokens: int = 1 << 30) -> Tuple[int, int]:
        if not self.config.kv_reuse:
            return 0, 0
        with self._gen_lock, torch.inference_mode():
            try:
                prompt = self._assemble(PromptParts(list(items), "", cache_slot=slot))
                cached, _, _ = self._prefill(prompt, slot, limit=max_tokens)
            except BaseException:
                self.reset_cache()
                raise
        done = len(self._slots[slot].ids)
        return min(done, prompt.prefix_len), prompt.prefix_len

    def encode_frame(self, image: np.ndarray, camera_id: str = "", stamp: float = 0.0,
                     frame_index: int = 0, frame_id: str = "") -> FrameTokens:
        t0 = time.perf_counter()
        tokens, grid, extra = self._encode([image])[0]
        return FrameTokens(tokens=tokens, grid=grid, camera_id=camera_id, stamp=float(stamp),
                           frame_index=int(frame_index), frame_id=frame_id,
                           encode_ms=(time.perf_counter() - t0) * 1e3, extra=extra)

    def encode_images(self, images: Sequence[np.ndarray]) -> List[Tuple[torch.Tensor, Tuple[int, int]]]:
        """Visual tokens of several images in one vision forward.

        Args:
            images: (H, W, 3) uint8 RGB arrays (sizes may differ).
        Returns:
            per image: ((n, hidden) tokens on the model's device, (rows, cols) grid).
        """
        return [(tokens, grid) for tokens, grid, _ in self._encode(images)]

    def _encode(self, images: Sequence[np.ndarray]) -> List[Tuple[torch.Tensor, Tuple[int, int], tuple]]:
        """encode_images plus each image's side features (FrameTokens.extra) in one vision forward."""
        return self.encode_pixels(*self.preprocess(images))

    def preprocess(self, images: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(pixel_values (sum patches, C), image_grid_thw (N, 3)) of images, as the image
        processor makes them for this model's pixel budget."""
        for image in images:
            validate_image(image)
        inputs = self.processor.image_processor(images=list(images), return_tensors="pt",
                                                **self._pixel_kwargs)
        return inputs["pixel_values"], inputs["image_grid_thw"]

    def encode_pixels(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
                      ) -> List[Tuple[torch.Tensor, Tuple[int, int], tuple]]:
        """(tokens, grid, side features) per preprocessed image (`preprocess`). With the model
        in training mode the vision forward keeps its autograd graph."""
        embeds, extra = self._vision_forward(pixel_values, grid_thw)  # (sum n, hidden), [(sum n, d)]
        sizes = (grid_thw.prod(-1) // self.merge ** 2).tolist()
        parts = torch.split(embeds, sizes)
        extra_parts = list(zip(*(torch.split(rows, sizes) for rows in extra))) or [()] * len(parts)
        if len(parts) > 1:  # own storage per frame, so memory can free frames one by one
            parts = [p.clone() for p in parts]
            extra_parts = [tuple(rows.clone() for rows in per) for per in extra_parts]
        return [(tokens, (int(thw[1]) // self.merge, int(thw[2]) // self.merge), tuple(per))
                for tokens, thw, per in zip(parts, grid_thw, extra_parts)]

    def generate(self, parts: PromptParts, on_text: Optional[TextCallback] = None,
                 stop: Optional[threading.Event] = None) -> GenerationResult:
        model = self._require_model()
        t0 = time.perf_counter()
        with self._gen_lock, torch.inference_mode():
            try:
                prompt = self._assemble(parts)
                slot = self._slot_index(parts.cache_slot)
                reused, cache, positions = self._prefill(prompt, slot)
                length = len(prompt.ids)
                # retrieved keyframes sit in the suffix, which generate() would embed as plain
                # <|image_pad|> ids: run the suffix up to its last token here, frames spliced in
                if any(start >= prompt.prefix_len for start, _ in prompt.frames):
                    end = length - 1  # the suffix ends in text: generate() starts from its last token
                    self._forward_prefix(self._embed(prompt, prompt.prefix_len, end), positions, cache,
                                         prompt.prefix_len, end,
                                         **self._decoder_inputs(prompt, prompt.prefix_len, end))
                self._prepare_decode(positions, length)
                streamer = callback_streamer(self.tokenizer, on_text)
                input_ids = torch.from_numpy(prompt.ids)[None].to(self.device)  # (1, L)
                out = model.generate(
                    input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                    past_key_values=cache, generation_config=self._generation_config(),
                    streamer=streamer, stopping_criteria=stop_criteria(stop))
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
        self._slots = [_Slot(), _Slot()]

    def release_memory(self) -> None:
        free_device_memory(self.config.device)

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
                prefix += [f"{self._label(item)}<|vision_start|>", item, "<|vision_end|>"]
            elif isinstance(item, DialogueTurn):
                if item.role == "user":
                    prefix.append(("" if open_user else "<|im_start|>user\n") + f"{_plain(item.text)}<|im_end|>\n")
                else:
                    prefix.append(("<|im_end|>\n" if open_user else "")
                                  + f"<|im_start|>assistant\n{_plain(item.text)}<|im_end|>\n")
                open_user = False
            else:
                raise TypeError(f"prompt item {type(item).__name__} is neither FrameTokens nor DialogueTurn")
        suffix: list = [] if open_user else ["<|im_start|>user\n"]
        if parts.retrieved:  # after the cached prefix: retrieval never invalidates it
            suffix.append(_plain(self.config.retrieval_header))
            for frame in parts.retrieved:
                suffix += [f"{self._label(frame)}<|vision_start|>", frame, "<|vision_end|>"]
        suffix.append(f"{_plain(parts.question)}<|im_end|>\n<|im_start|>assistant\n")
        return prefix, suffix

    def _label(self, frame: FrameTokens) -> str:
        return frame_label(self.config, frame)

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
    def _slot_index(self, slot: int) -> int:
        if slot not in (0, 1):
            raise ValueError(f"cache slot {slot!r} is not 0 or 1")
        return slot

    def _prefill(self, prompt: _Assembled, slot: int, limit: Optional[int] = None
                 ) -> Tuple[int, object, torch.Tensor]:
        """Bring cache `slot` to prompt.prefix_len (at most `limit` new tokens, stopping before
        a frame that would not fit whole); returns (reused tokens, cache, (3, L) positions)."""
        from transformers import DynamicCache

        model = self._require_model()
        held = self._slots[self._slot_index(slot)]
        common = 0
        if self.config.kv_reuse and held.cache is not None:
            n = min(len(held.ids), prompt.prefix_len)
            diff = np.flatnonzero((held.ids[:n] != prompt.ids[:n]) | (held.src[:n] != prompt.src[:n]))
            common = int(diff[0]) if len(diff) else n
            lead = self.FRAME_LEAD
            for start, frame in prompt.frames:
                # Never split a frame from its <|vision_start|>: get_rope_index finds images by it.
                if start - lead < common < start + frame.n_tokens:
                    common = start - lead
        if common == 0 or held.cache is None:
            cache, common = DynamicCache(config=model.config.text_config), 0
            held.pos = torch.zeros(3, 0, dtype=torch.long)
        else:
            cache = held.cache
            cache.crop(common)
        positions = self._positions(prompt, common, held.pos)  # (3, L)
        end = prompt.prefix_len
        if limit is not None and end - common > limit:
            end = self._cut(prompt, common, common + max(1, limit))
        if end > common:
            self._forward_prefix(self._embed(prompt, common, end), positions, cache, common, end,
                                 **self._decoder_inputs(prompt, common, end))
        if self.config.kv_reuse:
            self._slots[slot] = _Slot(cache, prompt.ids[:end], prompt.src[:end], positions[:, :end])
        return common, cache, positions

    def _cut(self, prompt: _Assembled, start: int, end: int) -> int:
        """end moved so that no frame is split from its <|vision_start|> (its FRAME_LEAD
        opening tokens): back before them, or past the frame when it starts the step; > start."""
        lead = self.FRAME_LEAD
        for first, frame in prompt.frames:
            if first - lead < end < first + frame.n_tokens:
                return first - lead if first - lead > start else first + frame.n_tokens
        return end

    def _forward_prefix(self, embeds: torch.Tensor, positions: torch.Tensor, cache, start: int, end: int,
                        **inputs) -> None:
        """Run the decoder over prompt positions start..end-1 (embeds (1, T, H)) into cache;
        inputs: the family's further decoder inputs (`_decoder_inputs`)."""
        self._require_model().model.language_model(
            inputs_embeds=embeds, position_ids=positions[:, None, start:end].to(self.device),
            past_key_values=cache, use_cache=True, cache_position=torch.arange(start, end, device=self.device),
            **inputs)

    def _prepare_decode(self, positions: torch.Tensor, length: int) -> None:
        """Before generate() continues a prompt of `length` tokens whose positions are given."""
        delta = int(positions.max()) + 1 - length  # M-RoPE offset of decode positions
        self._require_model().model.rope_deltas = torch.tensor([[delta]], device=self.device)

    def _positions(self, prompt: _Assembled, start: int, held: torch.Tensor) -> torch.Tensor:
        """(3, L) M-RoPE positions: the slot's cached ones (held) before start, get_rope_index
        for the rest."""
        model = self._require_model()
        tail = torch.from_numpy(prompt.ids[start:])[None]  # (1, L - start)
        grids = [(1, f.grid[0] * self.merge, f.grid[1] * self.merge) for s, f in prompt.frames if s >= start]
        grid_thw = torch.tensor(grids, dtype=torch.long) if grids else None
        new, _ = model.model.get_rope_index(input_ids=tail, image_grid_thw=grid_thw)  # (3, 1, L - start)
        new = new[:, 0].cpu()
        if start == 0:
            return new
        head = held[:, :start]
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

    def _decoder_inputs(self, prompt: _Assembled, start: int, end: int) -> dict:
        """Further language-model inputs for prefilling positions start..end (none here; a
        subclass adds per-frame side inputs such as Qwen3-VL's DeepStack features)."""
        return {}

    def _vision_forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
                        ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """(sum n, hidden) visual tokens of the images, and side features with rows aligned
        with them ((sum n, d) each; Qwen2-VL has none)."""
        model = self._require_model()
        visual = model.model.visual
        with torch.inference_mode(not visual.training):  # training: gradients reach the tower
            return visual(pixel_values.to(self.device, visual.dtype), grid_thw=grid_thw.to(self.device)), []

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
        for token in self.EOS_TOKENS:
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return {int(i) for i in ids}

    def _require_model(self) -> torch.nn.Module:
        if self.model is None:
            raise RuntimeError("reaction VLM is closed")
        return self.model


__all__ = ["Qwen2VLBackend"]
