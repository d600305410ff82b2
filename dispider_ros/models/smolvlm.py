"""SmolVLM2 / Idefics3 reaction backend: every transformers specific of the family.

`SmolVLMBackend` serves `smolvlm` checkpoints (HuggingFaceTB/SmolVLM2-256M-Video-Instruct,
-500M-Video-Instruct, -2.2B-Instruct) and `idefics3` ones (SmolVLM v1, Idefics3-8B), the
CPU-robot family. It is a `qwen2_vl.Qwen2VLBackend` with the family hooks overridden; the
KV-prefix bookkeeping (two slots, common-prefix crop, bounded `prefill`) is the same code.
- Frames: one frame = one tile. Image splitting is turned off, so the image processor
  squares each frame to the vision encoder's size (512 for SmolVLM2-256M/500M) and
  `encode_frame` returns `model.model.get_image_features(...)`: the SigLIP encoder, then the
  connector's pixel shuffle (scale_factor^2 patches into one token) and projection, i.e.
  exactly the rows the model's forward writes at its `<image>` positions. 256M: 512x512 ->
  32x32 = 1024 patches of 16 px -> shuffle 4x4 -> 64 tokens, an (8, 8) grid (row-major).
- Prompt: SmolVLM2's chat format, `<|im_start|>` once, then `System: ...<end_of_utterance>\\n`,
  `User:` + frames + text + `<end_of_utterance>\\n`, `Assistant: ...<end_of_utterance>\\n`, and
  `Assistant:` to answer. A frame is `<fake_token_around_image><global-img>` + `<image>` * n +
  `<fake_token_around_image>` (what the processor expands one unsplit image to), with our
  time label (` {label}`, after a space so that it tokenizes the same wherever it stands)
  before labelled frames. A pooled frame (memory compression) simply has fewer `<image>`
  tokens: the splice into `inputs_embeds` happens after the connector, so any n is valid
  input to the decoder (the model's own `inputs_merger` only wants whole tiles of pixels).
- Positions: plain 1-D (a Llama decoder): position = cache position, so the prefix cache is
  extended with `cache_position` alone and `generate()` needs no `rope_deltas`.
- A partial prefill never caches a frame's two opening tokens without the frame
  (`FRAME_LEAD` = 2).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from dispider_ros.core.memory import DialogueTurn, FrameTokens
from dispider_ros.core.protocols import PromptParts
from dispider_ros.models.processors import validate_image
from dispider_ros.models.qwen2_vl import TYPICAL_CAMERA, Qwen2VLBackend

FAKE = "<fake_token_around_image>"
GLOBAL = "<global-img>"
IMAGE = "<image>"
EOU = "<end_of_utterance>"
FAMILIES = ("smolvlm", "idefics3")


class SmolVLMBackend(Qwen2VLBackend):
    """SmolVLM2 / Idefics3 reaction model (see the module docstring).

    Args:
        config: what to load and how to generate (min_pixels / max_pixels do not apply:
            every frame becomes one square tile of the encoder's size).
        path: resolved local folder or hub id of the checkpoint.
    """

    FRAME_LEAD = 2  # <fake_token_around_image><global-img>
    EOS_TOKENS = (EOU, "<|im_end|>", "<|endoftext|>")

    def _init_family(self, model) -> None:
        vision = model.config.vision_config
        self.scale = int(model.config.scale_factor)
        self.tile = int(vision.image_size)
        side = self.tile // int(vision.patch_size) // self.scale
        self.tile_grid = (side, side)  # visual tokens of one tile, row-major after the pixel shuffle
        self.processor.image_processor.do_image_splitting = False  # one frame = one tile
        # Outside text must not smuggle in control tokens (<image>, <end_of_utterance>, ...).
        added = [t for t in self.tokenizer.get_added_vocab() if t.startswith("<") and len(t) > 1]
        self._control = sorted(set(added) | {FAKE, GLOBAL, IMAGE, EOU, "<|im_start|>"}, key=len, reverse=True)

    # ---- ReactionVLM -------------------------------------------------------------------
    def frame_overhead_tokens(self, frame: Optional[FrameTokens] = None) -> int:
        """<fake_token_around_image><global-img> ... <fake_token_around_image> and the frame's
        label if it has one (None = a labelled frame of a typical camera topic)."""
        if frame is None:
            frame = FrameTokens(torch.zeros(1, 1), (1, 1), camera_id=TYPICAL_CAMERA, stamp=1.0e6)
        label = self._label(frame)
        return (self.count_tokens(" " + label) if label else 0) + 3

    def turn_overhead_tokens(self) -> int:
        """Assistant: ... <end_of_utterance>\\n around a turn's text."""
        return self.count_tokens(f"Assistant:{EOU}\n")

    def _encode(self, images: Sequence[np.ndarray]) -> List[Tuple[torch.Tensor, Tuple[int, int], tuple]]:
        """Visual tokens of several images in one vision forward (the base's encode_images and
        encode_frame call this).

        Args:
            images: (H, W, 3) uint8 RGB arrays (sizes may differ: each is squared to one tile).
        Returns:
            per image: ((n, hidden) tokens on the model's device, (rows, cols) grid, () no side
            features).
        """
        for image in images:
            validate_image(image)
        model = self._require_model()
        inputs = self.processor.image_processor(images=[list(images)], do_image_splitting=False,
                                                return_tensors="pt")
        pixels = inputs["pixel_values"]  # (1, N, 3, tile, tile)
        if pixels.shape[1] != len(images):
            raise RuntimeError(f"the image processor made {pixels.shape[1]} tiles of {len(images)} frames")
        with torch.inference_mode():
            embeds = model.model.get_image_features(
                pixels.to(self.device, self.dtype),
                inputs["pixel_attention_mask"].to(self.device))  # (N, rows * cols, hidden)
        n = self.tile_grid[0] * self.tile_grid[1]
        if embeds.shape[:2] != (len(images), n):
            # get_image_features drops all-zero tiles (its padding); a frame must never vanish.
            raise RuntimeError(f"vision tokens {tuple(embeds.shape)} for {len(images)} frames of {n} tokens")
        parts = [embeds[i].clone() if len(images) > 1 else embeds[i] for i in range(len(images))]
        return [(tokens, self.tile_grid, ()) for tokens in parts]

    # ---- prompt --------------------------------------------------------------------------
    def prompt_text(self, parts: PromptParts) -> str:
        """The prompt as text with one <image> per frame (what the processor expands)."""
        prefix, suffix = self._render(parts)
        text = "".join(p if isinstance(p, str) else IMAGE for p in prefix + suffix)
        return text.replace(f"{FAKE}{GLOBAL}{IMAGE}{FAKE}", IMAGE)

    def _render(self, parts: PromptParts) -> Tuple[list, list]:
        """Prefix and suffix pieces: text strings and FrameTokens, in prompt order."""
        prefix: list = [f"<|im_start|>System: {self._plain(self.config.system_prompt)}{EOU}\n"]
        open_user = False
        for item in parts.items:
            if isinstance(item, FrameTokens):
                if not open_user:
                    prefix.append("User:")
                    open_user = True
                label = self._label(item)
                prefix += [(f" {label}" if label else "") + f"{FAKE}{GLOBAL}", item, FAKE]
            elif isinstance(item, DialogueTurn):
                if item.role == "user":
                    prefix.append(("" if open_user else "User: ") + f"{self._plain(item.text)}{EOU}\n")
                else:
                    prefix.append((f"{EOU}\n" if open_user else "") + f"Assistant: {self._plain(item.text)}{EOU}\n")
                open_user = False
            else:
                raise TypeError(f"prompt item {type(item).__name__} is neither FrameTokens nor DialogueTurn")
        suffix: list = []
        lead = "" if open_user else "User: "
        if parts.retrieved:  # after the cached prefix: retrieval never invalidates it
            suffix.append(lead + self._plain(self.config.retrieval_header))
            for frame in parts.retrieved:
                label = self._label(frame)
                suffix += [(f" {label}" if label else "") + f"{FAKE}{GLOBAL}", frame, FAKE]
            lead = " "
        suffix.append(f"{lead}{self._plain(parts.question)}{EOU}\nAssistant:")
        return prefix, suffix

    def _label(self, frame: FrameTokens) -> str:
        return self._plain(super()._label(frame))

    def _plain(self, text: str) -> str:
        """Control tokens in outside text broken up (<image> -> < image>)."""
        while True:
            before = text
            for token in self._control:
                if token in text:
                    text = text.replace(token, f"{token[0]} {token[1:]}")
            if text == before:
                return text

    # ---- positions, prefill, decode ------------------------------------------------------
    def _positions(self, prompt, start: int, held: torch.Tensor) -> torch.Tensor:
        """(1, L) plain positions: a token's position is its index (= its cache position)."""
        return torch.arange(len(prompt.ids), dtype=torch.long)[None]

    def _forward_prefix(self, embeds: torch.Tensor, positions: torch.Tensor, cache, start: int, end: int,
                        **inputs) -> None:
        self._require_model().model.text_model(
            inputs_embeds=embeds, position_ids=positions[:, start:end].to(self.device),
            past_key_values=cache, use_cache=True, cache_position=torch.arange(start, end, device=self.device),
            **inputs)

    def _prepare_decode(self, positions: torch.Tensor, length: int) -> None:
        """Nothing: generate() continues at the cache length, which is the next position."""


__all__ = ["SmolVLMBackend", "FAMILIES"]
