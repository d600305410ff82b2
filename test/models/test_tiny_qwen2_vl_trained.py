"""tiny:qwen2_vl_trained's build: its faster training kernels compute what the vision tower's
own forward computes (values and gradients), and the build is deterministic (a build from an
empty folder gives the cached weights bit for bit). What it answers: test/semantic."""
import pytest
import torch
from tiny_builds import assert_rebuild_matches_cache

from dispider_ros.models import tiny_qwen2_vl_trained as trained

SPEC = "tiny:qwen2_vl_trained"


def _tower():
    from transformers import AutoModelForImageTextToText

    from dispider_ros.models import tiny_qwen2_vl as tq

    tokenizer = tq.build_tokenizer(trained.world_sentences(), vocab_size=trained.VOCAB_SIZE)
    config = tq._model_config(tokenizer, "qwen2_vl", hidden=trained.HIDDEN, vision_embed=trained.VISION_EMBED,
                              layers=trained.LAYERS, init_range=0.02)
    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_config(config).model.visual.train()


def test_training_kernels_equal_the_towers_own_forward_and_gradients():
    visual = _tower()
    pixels = torch.randn(3 * 48, visual.patch_embed.proj.weight[0].numel())
    grid = torch.tensor([[1, 6, 8]] * 3)  # three 4:3 frames of 12 visual tokens

    def run():
        visual.zero_grad()
        out = visual(pixels, grid_thw=grid)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out.detach(), [p.grad.clone() for p in visual.parameters()]

    reference, reference_grads = run()
    with trained.training_kernels(visual):
        fast, fast_grads = run()
    assert "forward" not in vars(visual.patch_embed)  # restored
    assert torch.allclose(fast, reference, atol=1e-5, rtol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-3) for a, b in zip(fast_grads, reference_grads))
    assert any(g.abs().sum() > 0 for g in fast_grads)


@pytest.mark.slow
def test_the_build_is_deterministic(tmp_path):
    cached = assert_rebuild_matches_cache(SPEC, trained.build, tmp_path)
    assert sum(f.stat().st_size for f in cached.iterdir()) < 2e6
