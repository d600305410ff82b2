"""Tiny SigLIP builder and VisionEncoder (SigLIP and CLIP families), offline on CPU."""
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dispider_ros.models import tiny
from dispider_ros.models.vision import VisionEncoder, VisionEncoderConfig

torch.set_num_threads(1)
VIDEO = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "videos" / \
    "moviepy_big_buck_bunny_0_30.webm"


@pytest.fixture(scope="module")
def siglip_path():
    return tiny.resolve_model_path("tiny:siglip")


@pytest.fixture(scope="module")
def encoder():
    enc = VisionEncoder(VisionEncoderConfig(model="tiny:siglip", batch_size=4))
    yield enc
    enc.close()


def images(count, seed=0, shape=(120, 160, 3)):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]


def test_tiny_siglip_reloads_with_the_auto_classes(siglip_path):
    from transformers import AutoModel, AutoProcessor, AutoTokenizer

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    model = AutoModel.from_pretrained(siglip_path, local_files_only=True)
    processor = AutoProcessor.from_pretrained(siglip_path, local_files_only=True, use_fast=False)
    tokenizer = AutoTokenizer.from_pretrained(siglip_path, local_files_only=True)
    assert type(model).__name__ == "SiglipModel" and type(processor).__name__ == "SiglipProcessor"
    ids = tokenizer("Tell me when the DOOR opens")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and 300 <= len(tokenizer) <= 500
    assert tokenizer.decode(ids, skip_special_tokens=True).strip() == "tell me when the door opens"
    inputs = processor(text=["a cat"], images=images(1), padding="max_length", max_length=16,
                       return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs)
    assert out.logits_per_image.shape == (1, 1)


def test_encode_images_is_normalised_batched_and_deterministic(encoder):
    frames = images(9) + images(1, shape=(480, 640, 3))
    out = encoder.encode_images(frames)  # 3 batches of 4
    assert out.shape == (10, encoder.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    single = np.concatenate([encoder.encode_images([f]) for f in frames])
    np.testing.assert_allclose(out, single, atol=1e-5)
    assert encoder.last_timing["frames"] == 1
    assert encoder.encode_images([]).shape == (0, encoder.dim)


def test_fast_preprocess_matches_the_processor(siglip_path):
    fast = VisionEncoder(VisionEncoderConfig(model=siglip_path))
    slow = VisionEncoder(VisionEncoderConfig(model=siglip_path, fast_preprocess=False))
    # smooth images (detail coarser than a target pixel): on fine detail PIL's bicubic
    # antialiasing and OpenCV's box average legitimately differ most
    ramp = np.linspace(0, 255, 640)[None, :, None] + np.linspace(0, 100, 480)[:, None, None] \
        * np.array([1, -0.5, 0.3])
    smooth = [np.clip(ramp, 0, 255).astype(np.uint8)] + \
        [cv2.GaussianBlur(im, (0, 0), 15) for im in images(2, seed=3, shape=(480, 640, 3))]
    cos = np.sum(fast.encode_images(smooth) * slow.encode_images(smooth), axis=1)
    assert cos.min() > 0.99, cos
    if VIDEO.is_file():  # real 1280x720 footage: the two paths agree closely
        capture = cv2.VideoCapture(str(VIDEO))
        frames = []
        for i in range(720):
            ok, bgr = capture.read()
            if ok and i % 48 == 0:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        capture.release()
        cos = np.sum(fast.encode_images(frames) * slow.encode_images(frames), axis=1)
        assert len(frames) == 15 and cos.min() > 0.999, cos


def test_encode_texts_same_space_and_calibration(encoder):
    texts = encoder.encode_texts(["a rabbit in a meadow", "a rabbit in a meadow", "water"])
    assert texts.shape == (3, encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(texts[0], texts[1], atol=1e-6)
    assert encoder.match_calibration() == pytest.approx((20.0, -10.0))
    with pytest.raises(TypeError, match="one string"):
        encoder.encode_texts("a rabbit")


def test_bad_images_are_named(encoder):
    with pytest.raises(ValueError, match=r"image 1: float32 \(4, 4, 3\)"):
        encoder.encode_images([images(1)[0], np.zeros((4, 4, 3), np.float32)])


def test_clip_family_loads_and_encodes(tmp_path):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from dispider_ros.models.tiny_siglip import build_tokenizer

    tokenizer = build_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)).save_pretrained(tmp_path)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                     crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(tmp_path)
    fast = VisionEncoder(VisionEncoderConfig(model=str(tmp_path)))
    slow = VisionEncoder(VisionEncoderConfig(model=str(tmp_path), fast_preprocess=False))
    assert fast.family == "clip" and fast.dim == 24
    frames = images(3, shape=(90, 160, 3))
    assert np.sum(fast.encode_images(frames) * slow.encode_images(frames), axis=1).min() > 0.99
    assert fast.encode_texts(["a dog", "a much longer sentence about a dog"]).shape == (2, 24)
    scale, bias = fast.match_calibration()
    assert bias == pytest.approx(-0.25 * scale)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VisionEncoder(VisionEncoderConfig(model=str(tmp_path / "missing")))
    with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
        VisionEncoder(VisionEncoderConfig(model="nobody/no-such-model-xyz"))
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="'bert' model"):
        VisionEncoder(VisionEncoderConfig(model=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown tiny model 'tiny:nope'"):
        VisionEncoder(VisionEncoderConfig(model="tiny:nope"))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"model": ""}, ValueError, "model ''"),
    ({"batch_size": 0}, ValueError, "batch_size 0"),
    ({"dtype": "float8"}, ValueError, "dtype 'float8'"),
    ({"device": "gpu9"}, ValueError, "device 'gpu9'"),
    ({"device": 0}, TypeError, "device 0"),
])
def test_config_errors_name_the_value(kwargs, error, match):
    with pytest.raises(error, match=match):
        VisionEncoderConfig(**kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_request_without_cuda_is_explained():
    with pytest.raises(ValueError, match="CUDA is not available"):
        VisionEncoderConfig(device="cuda:0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bfloat16_matches_cpu():
    cpu = VisionEncoder(VisionEncoderConfig(model="tiny:siglip"))
    gpu = VisionEncoder(VisionEncoderConfig(model="tiny:siglip", device="cuda:0", dtype="bfloat16"))
    frames = images(4)
    assert np.sum(cpu.encode_images(frames) * gpu.encode_images(frames), axis=1).min() > 0.98
    gpu.close()


def test_close_frees_and_blocks_further_use():
    enc = VisionEncoder(VisionEncoderConfig(model="tiny:siglip"))
    enc.close()
    enc.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        enc.encode_images(images(1))


def test_timing_per_frame_is_reported(encoder, capsys):
    frames = images(16, shape=(480, 640, 3))
    encoder.encode_images(frames[:4])  # warm-up
    started = time.perf_counter()
    encoder.encode_images(frames)
    total_ms = (time.perf_counter() - started) * 1e3 / len(frames)
    timing = encoder.last_timing
    assert timing["frames"] == 16 and timing["forward_ms"] > 0 and timing["preprocess_ms"] > 0
    with capsys.disabled():
        print(f"\n[tiny siglip, 640x480, batch 4] encode {total_ms:.2f} ms/frame "
              f"(preprocess {timing['preprocess_ms'] / 16:.2f}, forward {timing['forward_ms'] / 16:.2f})")
