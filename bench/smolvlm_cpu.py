"""SmolVLM2-256M on a CPU robot: real-size shapes, random weights, two cores.

`python -m bench --only smolvlm` (in the quick run: 32 frames only). The model has the
shapes of HuggingFaceTB/SmolVLM2-256M-Video-Instruct (values below; the checkpoint's
config.json) with random weights built locally (initializer_range 0.02), saved once under
`<cache>/bench/smolvlm2_256m-v<BUILD_VERSION>` and loaded as reaction_node loads its model
(compose, shipped settings: system prompt, labels, KV reuse). The tokenizer is the tiny
SmolVLM's ~450-token BPE (the embedding and output layers keep the real 49280 rows: the
compute of a real vocabulary; ids past the tokenizer's decode to nothing). Compute cost does not depend on the weights' values, so
these are the figures of the real checkpoint on this CPU; answer quality is not measured.

Protocol (torch intra-op threads = THREADS, float32, sdpa attention; the load average is
recorded at the start and the end, since the figures are only as quiet as the machine):
- encode: `encode_frame` of 640x480 camera frames (image processor: the checkpoint's
  LANCZOS resize then the square 512 tile; then SigLIP + pixel shuffle + projection), p50
  over 3 frames (quick) or 6 after one warm-up; the preprocessing alone is timed apart.
- TTFT at N frames in memory (64 visual tokens + 3 wrappers + a label every 4th frame, as
  the engine labels at 2 fps): the frames' tokens are copies of encoded frames' tokens (a
  frame's cost in the decoder does not depend on its values) stored in a MemoryBuffer.
  "no KV reuse": generate() from an empty cache = prefill of the whole prompt (what a
  backend with kv_reuse off does on every trigger). "ours": the next triggers' generate()
  on the same memory with the prefix cached = the question-only prefill (the steady state
  the engine's background prefill keeps: new frames are prefilled on arrival, not here).
- decode: tokens/s of those answers (forced length: 8 quick, 16 full), at that context.
128 full-resolution frames (~8.8k tokens) go past SmolVLM2's 8192 trained positions: a
compute figure only (the shipped 4096-token memory budget pools frames long before that).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Dict, List

import torch

from bench import models
from bench.common import distinct_frames, load_average, median, percentile, set_threads
from dispider_ros.models import tiny

BUILD_VERSION = "1"
# One intra-op thread: on a two-core robot perception has the other core (bench/__main__'s
# allocation). Two threads for the reaction alone oversubscribe the cores as soon as anything
# else runs: measured here beside other load, 2 threads were 2-10x slower than 1 (OpenMP
# threads waiting on a descheduled sibling), never faster.
THREADS = 1
QUESTIONS = ["What is on the table now?", "Tell me when the door opens.", "What changed?"]

# SmolVLM2-256M-Video-Instruct's config.json. Checked: vision 768 wide, 12 layers, 12 heads,
# MLP 3072, patch 16, image 512; scale_factor 4; text (SmolLM2-135M) 576 wide, 30 layers,
# 9 heads / 3 KV heads (head_dim 64), MLP 1536, vocab 49280, 8192 positions; processor
# image_seq_len 64. Assumptions (not checked against the file here): rope_theta 100000,
# untied output layer (tie_word_embeddings false: 256M parameters with it, 228M without),
# vision hidden_act gelu_pytorch_tanh, rms_norm_eps 1e-5. None of them changes the compute.
REAL = {
    "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   image_size=512, patch_size=16),
    "scale_factor": 4,
    "text": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64, vocab_size=49280, max_position_embeddings=8192,
                 rope_theta=100000.0, rms_norm_eps=1e-5),
    "tie_word_embeddings": False,
}
TOKENS_PER_FRAME = (512 // 16) ** 2 // 4 ** 2  # 1024 patches -> pixel shuffle 4x4 -> 64


def _build(folder: Path) -> None:
    from transformers import AutoModelForImageTextToText, SmolVLMConfig, SmolVLMImageProcessor

    from dispider_ros.models import tiny_smolvlm as ts

    tokenizer = ts.build_tokenizer()
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ts.SPECIAL_TOKENS}
    text_config = dict(REAL["text"], model_type="llama", hidden_act="silu", initializer_range=models.INIT_RANGE,
                       bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<end_of_utterance>"],
                       pad_token_id=ids["<|im_end|>"], tie_word_embeddings=REAL["tie_word_embeddings"])
    config = SmolVLMConfig(text_config=text_config, vision_config=dict(REAL["vision"], initializer_range=0.02),
                           scale_factor=REAL["scale_factor"], image_token_id=ids["<image>"],
                           pad_token_id=ids["<|im_end|>"], tie_word_embeddings=REAL["tie_word_embeddings"])
    torch.manual_seed(models.SEED)
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    image_processor = SmolVLMImageProcessor(do_resize=True, size={"longest_edge": 4 * 512},
                                            max_image_size={"longest_edge": 512}, do_image_splitting=True,
                                            image_mean=[0.5] * 3, image_std=[0.5] * 3)
    image_processor.processor_class = "SmolVLMProcessor"
    image_processor.save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps(
        {"image_seq_len": TOKENS_PER_FRAME, "processor_class": "SmolVLMProcessor"}))


def model_path() -> str:
    folder = models.bench_root() / f"smolvlm2_256m-v{BUILD_VERSION}"
    return tiny.build_once(folder, _build, "SmolVLM2-256M-shaped")


def _memory(vlm, tokens: List[torch.Tensor], n: int):
    from dispider_ros.core.memory import MemoryBuffer, MemoryConfig

    mem = MemoryBuffer(MemoryConfig(max_tokens=1 << 30), frame_cost=vlm.frame_overhead_tokens)
    for i in range(n):
        frame = dataclasses.replace(tokens_template(tokens[i % len(tokens)]), camera_id="/camera/color/image_raw",
                                    stamp=i * 0.5, frame_index=i, labelled=i % 4 == 0, named=i == 0)
        mem.add_frame(frame)
    return mem


def tokens_template(t: torch.Tensor):
    from dispider_ros.core.memory import FrameTokens

    side = int(round(t.shape[0] ** 0.5))
    return FrameTokens(tokens=t.clone(), grid=(side, side))


def run(quick: bool) -> Dict:
    frames_list = [32] if quick else [32, 128]
    decode_tokens = 8 if quick else 16
    encode_frames = 3 if quick else 6
    load_start = [round(x, 2) for x in load_average()]
    previous = torch.get_num_threads()
    set_threads(THREADS)
    try:
        t0 = time.perf_counter()
        path = model_path()
        vlm = models.load_vlm({"vlm_model": path, "device": "cpu", "dtype": "float32"}, kv_reuse=True,
                              max_new_tokens=decode_tokens, min_new_tokens=decode_tokens)
        load_sec = time.perf_counter() - t0
        params = sum(p.numel() for p in vlm.model.parameters())
        images = distinct_frames(encode_frames + 1)
        vlm.encode_frame(images[0])  # warm-up
        encoded = [vlm.encode_frame(image) for image in images[1:]]
        encode_ms = [f.encode_ms for f in encoded]
        prep_ms = []
        for image in images[1:]:
            t = time.perf_counter()
            vlm.processor.image_processor(images=[[image]], do_image_splitting=False, return_tensors="pt")
            prep_ms.append((time.perf_counter() - t) * 1e3)
        assert all(f.n_tokens == TOKENS_PER_FRAME for f in encoded)
        rows = {}
        for n in frames_list:
            mem = _memory(vlm, [f.tokens for f in encoded], n)
            items = mem.snapshot()
            vlm.reset_cache()
            full = vlm.generate(_parts(items, QUESTIONS[0]))
            ours = [vlm.generate(_parts(items, q)) for q in QUESTIONS]
            rows[n] = {
                "prompt_tokens": full.prompt_tokens,
                "no_kv_reuse": {"ttft_ms": full.ttft_sec * 1e3, "prefill_tokens": full.prefill_tokens},
                "ours": {"ttft_ms_p50": median(r.ttft_sec * 1e3 for r in ours),
                         "ttft_ms_max": max(r.ttft_sec * 1e3 for r in ours),
                         "prefill_tokens_max": max(r.prefill_tokens for r in ours),
                         "reused_tokens_min": min(r.reused_tokens for r in ours)},
                "decode_tokens_per_sec_p50": median(r.tokens_per_sec for r in ours),
                "memory_tokens": mem.token_count(),
                # the real checkpoint's trained context (max_position_embeddings); the shipped
                # memory budget (max_tokens 4096) keeps prompts well inside it
                "beyond_trained_context": full.prompt_tokens > REAL["text"]["max_position_embeddings"],
            }
            rows[n]["ttft_ratio"] = rows[n]["no_kv_reuse"]["ttft_ms"] / rows[n]["ours"]["ttft_ms_p50"]
        result = {
            "model": "HuggingFaceTB/SmolVLM2-256M-Video-Instruct shapes, random weights",
            "config": REAL, "parameters": params, "threads": THREADS, "dtype": "float32",
            "attn_implementation": vlm.model.config._attn_implementation, "load_sec": load_sec,
            "tokens_per_frame": TOKENS_PER_FRAME,
            "frame_overhead_tokens": {"labelled": vlm.frame_overhead_tokens(),
                                      "unlabelled": vlm.frame_overhead_tokens(dataclasses.replace(
                                          encoded[0], labelled=False))},
            "encode_ms_p50": median(encode_ms), "encode_ms_p95": percentile(encode_ms, 95),
            "preprocess_ms_p50": median(prep_ms), "decode_tokens": decode_tokens,
            "frames": {str(n): row for n, row in rows.items()},
            "load_average_start": load_start, "load_average_end": [round(x, 2) for x in load_average()],
        }
        print(table(result), flush=True)
        vlm.close()
        return result
    finally:
        set_threads(previous)


def _parts(items, question):
    from dispider_ros.core.protocols import PromptParts

    return PromptParts(list(items), question)


def table(result: Dict) -> str:
    lines = [f"SmolVLM2-256M shapes on CPU, {result['threads']} threads, float32 "
             f"({result['parameters'] / 1e6:.0f}M parameters): frame encode p50 {result['encode_ms_p50']:.0f} ms "
             f"(preprocess {result['preprocess_ms_p50']:.0f} ms), {result['tokens_per_frame']} visual tokens/frame; "
             f"load average {result['load_average_start']} -> {result['load_average_end']}",
             f"{'frames':>6}  {'prompt':>7}  {'TTFT ours':>10}  {'TTFT no reuse':>13}  {'ratio':>6}  {'decode':>10}"]
    for n, row in result["frames"].items():
        lines.append(f"{n:>6}  {row['prompt_tokens']:>7}  {row['ours']['ttft_ms_p50']:>7.0f} ms  "
                     f"{row['no_kv_reuse']['ttft_ms']:>10.0f} ms  {row['ttft_ratio']:>5.1f}x  "
                     f"{row['decode_tokens_per_sec_p50']:>5.1f} tok/s")
    return "\n".join(lines)


__all__ = ["run", "model_path", "table", "REAL"]
