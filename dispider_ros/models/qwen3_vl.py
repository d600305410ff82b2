"""Qwen3-VL / Qwen3-VL-MoE reaction backend: what differs from Qwen2-VL, on top of `Qwen2VLBackend`.

Same contract, prompt, KV slots and prefill bookkeeping as `qwen2_vl.Qwen2VLBackend` (read
its docstring); Qwen3-VL differs in three places, all handled here or checked to need nothing:
- DeepStack: the vision tower returns, besides the merged visual tokens, one feature row per
  visual token for each of `vision_config.deepstack_visual_indexes` (taken from early vision
  blocks, merged by their own mergers into the text width). The language model adds feature
  list k to the hidden states at the visual positions after decoder layer k
  (`visual_pos_masks`, `deepstack_visual_embeds`). They are computed once on arrival with the
  tokens and kept in `FrameTokens.extra` (rows aligned with `tokens`, so memory pooling pools
  them exactly like the tokens), and every prefill -- a partial one of the tail included --
  passes the features of the frames it covers with the mask of their positions. Frames are
  never split across prefill steps, so each step's rows are whole frames in prompt order.
- Positions: interleaved M-RoPE (`mrope_section` frequencies interleaved T,H,W inside the
  rotary embedding) consumes the same (3, L) position ids; `get_rope_index` gives an image
  (t = 1) the Qwen2-VL layout (text index, then rows x cols offset by it). Timestamps only
  concern videos, which are never fed here. The inherited `_positions` (get_rope_index on the
  tail, offset by the cached prefix's max) and the decode `rope_deltas` therefore hold as is;
  test/models/test_qwen3_vl.py checks both against the model's own full-sequence path.
- Image processor: Qwen2VLImageProcessor with patch 16 and 2x2 merge, so one visual token
  per 32x32 pixels (Qwen2-VL: 28x28); the chat markers are the same
  (<|vision_start|><|image_pad|><|vision_end|>). Qwen3-VL's video processor needs
  torchvision; `processors.load_processor` assembles the processor without it.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from dispider_ros.models.qwen2_vl import Qwen2VLBackend, _Assembled


class Qwen3VLBackend(Qwen2VLBackend):
    """Qwen3-VL (dense) and Qwen3-VL-MoE reaction model (see the module docstring)."""

    @property
    def deepstack_layers(self) -> int:
        """How many decoder layers receive DeepStack features (len(FrameTokens.extra))."""
        return len(self._require_model().config.vision_config.deepstack_visual_indexes)

    def _vision_forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
                        ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        model = self._require_model()
        visual = model.model.visual
        with torch.inference_mode():
            embeds, deepstack = visual(pixel_values.to(self.device, visual.dtype),
                                       grid_thw=grid_thw.to(self.device))
        return embeds, list(deepstack)

    def _decoder_inputs(self, prompt: _Assembled, start: int, end: int) -> dict:
        """visual_pos_masks (1, T) and per-layer (visual tokens, hidden) DeepStack features of
        the frames in start..end, in prompt order."""
        frames = [f for s, f in prompt.frames if start <= s < end]
        if not frames or self.deepstack_layers == 0:
            return {}
        for frame in frames:
            if len(frame.extra) != self.deepstack_layers:
                raise ValueError(f"frame {frame.camera_id}#{frame.frame_index} carries {len(frame.extra)} "
                                 f"DeepStack feature sets, the model needs {self.deepstack_layers} "
                                 "(encode frames with this model's encode_frame)")
        mask = torch.from_numpy(prompt.ids[start:end] == self.image_pad_id)[None].to(self.device)  # (1, T)
        deepstack = [torch.cat([f.extra[layer] for f in frames]).to(self.device)
                     for layer in range(self.deepstack_layers)]
        return {"visual_pos_masks": mask, "deepstack_visual_embeds": deepstack}


__all__ = ["Qwen3VLBackend"]
