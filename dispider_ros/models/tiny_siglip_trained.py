"""Build a tiny SigLIP that knows the closed world of `dispider_ros.world`, trained here.

The `tiny:siglip` architecture (tiny_siglip.siglip_config) with 16-pixel patches (16 tokens
per 64-pixel image: a quarter of the compute, which buys the training steps); its tokenizer
is trained on the world's texts and both towers are trained contrastively with SigLIP's
sigmoid loss on camera views of the world's photographs (and of the CC0 clips found under
the shared data folder) against every text that names a scene: its caption ("a rocket"),
its word ("rocket"), "a photo of a rocket", and each MATCH_TEMPLATES question ("Tell me
when the rocket appears.") in full and as the decision embeds it (query_text.event_text:
"the rocket appears"). Images go through the encoder's own preprocessing
(vision._FastPreprocess), so training sees what inference sees; views are 4:3 at the
streams' zoom range. Hard scenes are sampled more often: half of each batch is drawn in
proportion to each scene's running image loss, so the grey textures the model confuses
(grass and gravel at 16 patches) get the steps they need rather than the scenes it knows.

Calibration: the trained (logit_scale, logit_bias) are replaced by a Platt fit on held-out
views (another seed): a logistic regression of "the question names the scene in view" on
the cosine similarity of the view and the text the decision embeds for each scene's
questions, over every (view, question) pair -- so the prior is the world's: one question in
N scenes names what is in view -- with a weak Gaussian prior on the scale so separable data
keep it finite. sigmoid(scale * cos + bias) is then the probability that the named scene is
in view, which MatchPolicy smooths and compares with trigger_threshold.

Deterministic: fixed seeds and one torch thread while building; the cache key
(`cache_key`) adds the sources it depends on, the scene list and the clips found. A record
of the build (time, loss, held-out accuracy, calibration) is saved as training.json.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from dispider_ros import world
from dispider_ros.core import query_text
from dispider_ros.models import tiny_siglip

LOG = logging.getLogger(__name__)

SEED = 1234
VIEWS_PER_SCENE = 400  # training pool, each view also seen mirrored
HELD_OUT_VIEWS = 24  # per scene, another seed: calibration and the recorded accuracy
# (W, H) before preprocessing: 4:3 like the streams (world.shot_frames: 320x240) at a few
# sizes; zoom as the streams show scenes (0.55-0.95) with a little margin below.
VIEW_SIZES = ((80, 60), (96, 72), (64, 48))
ZOOM = (0.5, 0.95)
NOISE = 1.5  # grey levels at view size: a camera's sensor noise after shrinking ~4x
STEPS = 600
BATCH = 128  # images per step
TEXTS_PER_SCENE = 2  # texts of every scene in every step: each step contrasts all scenes
PATCH_SIZE = 16  # (64/16)^2 = 16 patches: a quarter of tiny:siglip's compute per image
IMAGE_SIZE = 64  # 96 (36 patches) measured no better at the same build time
HARD = 0.5  # share of each batch drawn in proportion to the scenes' running image loss
LR = 3e-3
WARMUP = 25
PRIOR_SCALE = 1e-5  # Platt fit: Gaussian prior weight on the scale


def scenes() -> Tuple[List[world.Scene], Dict[str, List[np.ndarray]]]:
    """The scenes this model learns (photographs, then the clips found) and the clips' frames."""
    clips = world.video_scenes(world.shared_data_dir())
    found = [s for s in world.VIDEO_SCENES if s.name in clips]
    return list(world.PHOTO_SCENES) + found, clips


def cache_key() -> str:
    """What the model depends on beyond this file: sources, the scene list, the clips found."""
    from dispider_ros.models import vision

    digest = hashlib.sha256()
    for module in (world, tiny_siglip, query_text, vision):
        digest.update(Path(module.__file__).read_bytes())
    shared = world.shared_data_dir()
    clips = {}
    for s in world.VIDEO_SCENES:
        path = None if shared is None else shared / "videos" / f"{s.name}.mp4"
        if path is not None and path.is_file():
            clips[s.name] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    photo = [(s.name, s.caption, s.word) for s in world.PHOTO_SCENES]
    return json.dumps({"sources": digest.hexdigest()[:16], "photos": photo, "clips": clips})


def texts(scene: world.Scene) -> List[str]:
    """Every text that names scene: caption, word, a photo of it, and the questions in full
    and as the decision embeds them."""
    out = [scene.caption, scene.word, f"a photo of {scene.caption}"]
    for question in world.match_questions(scene):
        out += [question, query_text.event_text(question)]
    return list(dict.fromkeys(out))


def corpus() -> List[str]:
    """The tokenizer's training texts: the world's texts plus tiny_siglip's generic sentences."""
    every = [t for s in world.PHOTO_SCENES + world.VIDEO_SCENES for t in texts(s)]
    return every + [world.NOW_QUESTION] + list(tiny_siglip.SENTENCES)


def _views(sources: Sequence[List[np.ndarray]], per_scene: int, rng: np.random.Generator,
           prep) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) float16 preprocessed camera views and (N,) scene indices."""
    pixels, labels = [], []
    for label, frames in enumerate(sources):
        for i in range(per_scene):
            frame = frames[int(rng.integers(len(frames)))]
            view = world.render(frame, world.random_window(rng, *ZOOM), VIEW_SIZES[i % len(VIEW_SIZES)])
            view = world.camera_effects(view, rng, noise=NOISE)
            pixels.append(prep(view))
            labels.append(label)
    return torch.from_numpy(np.stack(pixels)).half(), torch.tensor(labels)


def _embed(model, pixels: torch.Tensor = None, ids: torch.Tensor = None) -> torch.Tensor:
    if pixels is not None:
        feats = model.get_image_features(pixel_values=pixels.float())  # (N, D)
    else:
        feats = model.get_text_features(input_ids=ids)  # (T, D)
    return torch.nn.functional.normalize(feats, dim=-1)


def _train(model, pixels, labels, ids, text_labels, generator) -> List[float]:
    """SigLIP sigmoid loss: every image against every text, +1 where they name one scene."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: min(
        1.0, (step + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * step / STEPS)))
    counts = torch.bincount(text_labels)  # texts of each scene, listed scene by scene
    starts = torch.cumsum(counts, 0) - counts
    n_scenes = len(counts)
    by_scene = [torch.nonzero(labels == k)[:, 0] for k in range(n_scenes)]  # view indices
    scene_loss = torch.ones(n_scenes)  # running mean image loss of each scene's views
    model.train()
    losses = []
    for _ in range(STEPS):
        # Hard scenes more often: half the batch uniform, half in proportion to scene_loss.
        weight = (1 - HARD) / n_scenes + HARD * scene_loss / scene_loss.sum()
        scene = torch.multinomial(weight, BATCH, replacement=True, generator=generator)
        slot = torch.randint(1 << 30, (BATCH,), generator=generator)
        pick = torch.stack([by_scene[k][j % len(by_scene[k])] for k, j in zip(scene.tolist(), slot.tolist())])
        batch = pixels[pick].float()  # (B, 3, S, S)
        mirror = torch.rand(BATCH, generator=generator) < 0.5  # each view also seen mirrored
        batch = torch.where(mirror[:, None, None, None], batch.flip(-1), batch)
        words = torch.cat([start + torch.randint(int(count), (TEXTS_PER_SCENE,), generator=generator)
                           for start, count in zip(starts, counts)])  # (T,)
        image, text = _embed(model, pixels=batch), _embed(model, ids=ids[words])  # (B, D), (T, D)
        logits = model.logit_scale.exp() * image @ text.T + model.logit_bias  # (B, T)
        sign = (labels[pick][:, None] == text_labels[words][None]).float() * 2 - 1
        per_image = -torch.nn.functional.logsigmoid(sign * logits).sum(1)  # (B,)
        loss = per_image.sum() / BATCH
        with torch.no_grad():
            total = torch.zeros(n_scenes).index_add_(0, scene, per_image.detach())
            seen = torch.bincount(scene, minlength=n_scenes).float()
            mean = torch.where(seen > 0, total / seen.clamp(min=1), scene_loss)
            scene_loss = 0.9 * scene_loss + 0.1 * mean
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


def platt(cos: np.ndarray, positive: np.ndarray) -> Tuple[float, float]:
    """(scale, bias) maximising the mean log-likelihood of sigmoid(scale * cos + bias) with
    a Gaussian prior PRIOR_SCALE * scale^2 / 2: Newton's method with backtracking."""
    weight = np.full(len(cos), 1.0 / len(cos))  # (N,)
    x = np.stack([cos, np.ones_like(cos)], axis=1)  # (N, 2)
    sign = np.where(positive, 1.0, -1.0)
    prior = np.diag([PRIOR_SCALE, PRIOR_SCALE * 1e-3])

    def objective(theta):  # -log-likelihood (weighted) + prior
        return float(weight @ np.logaddexp(0.0, -sign * (x @ theta)) + theta @ prior @ theta / 2)

    theta = np.array([10.0, -5.0])
    for _ in range(200):
        p = 0.5 * (1 + np.tanh(x @ theta / 2))  # sigmoid, overflow-free
        grad = x.T @ (weight * (p - positive)) + prior @ theta
        hess = (x * (weight * p * (1 - p))[:, None]).T @ x + prior
        step, size = np.linalg.solve(hess, grad), 1.0
        while objective(theta - size * step) > objective(theta) and size > 1e-6:
            size /= 2
        theta = theta - size * step
        if np.abs(size * step).max() < 1e-8:
            break
    return float(theta[0]), float(theta[1])


def build(folder: Path) -> None:
    """Train and save the model plus its SiglipProcessor into folder (an empty directory)."""
    from transformers import SiglipModel, SiglipProcessor

    from dispider_ros.models.vision import _FastPreprocess

    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same sums in the same order on every run
    try:
        known, clips = scenes()
        sources = [clips[s.name] if s.name in clips else [world.load_photo(s.name)] for s in known]
        tokenizer = tiny_siglip.build_tokenizer(corpus())
        processor = SiglipProcessor(image_processor=tiny_siglip.image_processor(IMAGE_SIZE), tokenizer=tokenizer)
        prep = _FastPreprocess.from_processor(processor.image_processor)
        pixels, labels = _views(sources, VIEWS_PER_SCENE, np.random.default_rng(SEED), prep)
        held_pixels, held_labels = _views(sources, HELD_OUT_VIEWS, np.random.default_rng(SEED + 1), prep)
        all_texts, text_labels = [], []
        for label, s in enumerate(known):
            all_texts += texts(s)
            text_labels += [label] * len(texts(s))
        ids = tokenizer(all_texts, padding="max_length", truncation=True,
                        max_length=tiny_siglip.TEXT_LENGTH, return_tensors="pt")["input_ids"]
        views_sec = time.perf_counter() - started

        torch.manual_seed(SEED)
        model = SiglipModel(tiny_siglip.siglip_config(tokenizer, patch_size=PATCH_SIZE, image_size=IMAGE_SIZE))
        with torch.no_grad():
            # SigLIP's t' = log 10, but b = -3, not -10: -10 suits 32k-text batches where
            # negatives swamp the loss; with 48 texts of 18 scenes it stalls ~200 steps.
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-3.0)
        losses = _train(model, pixels, labels, ids, torch.tensor(text_labels),
                        torch.Generator().manual_seed(SEED))
        trained = (model.logit_scale.exp().item(), model.logit_bias.item())

        # Held-out views against what the decision embeds for each scene's questions.
        questions = [[query_text.event_text(q) for q in world.match_questions(s)] for s in known]
        flat = [q for qs in questions for q in qs]
        q_labels = np.repeat(np.arange(len(known)), [len(qs) for qs in questions])
        with torch.no_grad():
            q_ids = tokenizer(flat, padding="max_length", truncation=True,
                              max_length=tiny_siglip.TEXT_LENGTH, return_tensors="pt")["input_ids"]
            cos = (_embed(model, pixels=held_pixels) @ _embed(model, ids=q_ids).T).numpy()  # (N, Q)
        positive = held_labels.numpy()[:, None] == q_labels[None]  # (N, Q)
        scale, bias = platt(cos.ravel().astype(np.float64), positive.ravel())
        with torch.no_grad():
            model.logit_scale.fill_(math.log(scale))
            model.logit_bias.fill_(bias)
        prob = 1 / (1 + np.exp(-(scale * cos + bias)))
        starts = np.cumsum([0] + [len(qs) for qs in questions])[:-1]  # each scene's match_question
        accuracy = float((cos[:, starts].argmax(1) == held_labels.numpy()).mean())

        model.save_pretrained(folder, safe_serialization=True)
        processor.save_pretrained(folder)
        record = {
            "scenes": [[s.name, s.caption, s.word] for s in known],
            "templates": list(world.MATCH_TEMPLATES),
            "texts_per_scene": len(texts(known[0])), "views_per_scene": VIEWS_PER_SCENE,
            "held_out_views_per_scene": HELD_OUT_VIEWS, "steps": STEPS, "batch": BATCH,
            "texts_per_scene_per_step": TEXTS_PER_SCENE, "patch_size": PATCH_SIZE,
            "image_size": IMAGE_SIZE, "zoom": list(ZOOM), "view_sizes": [list(v) for v in VIEW_SIZES],
            "hard_share": HARD,
            "loss_first": losses[0], "loss_last": float(np.mean(losses[-20:])),
            "trained_scale_bias": trained, "calibration": [scale, bias],
            "held_out_accuracy_match_question": accuracy,
            "held_out_prob_positive_p05": float(np.percentile(prob[positive], 5)),
            "held_out_prob_positive_median": float(np.median(prob[positive])),
            "held_out_prob_negative_p99": float(np.percentile(prob[~positive], 99)),
            "held_out_prob_negative_median": float(np.median(prob[~positive])),
            "views_seconds": round(views_sec, 2),
            "build_seconds": round(time.perf_counter() - started, 2),
        }
        (Path(folder) / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        LOG.info("trained tiny SigLIP saved to %s in %.1f s: held-out accuracy %.3f, calibration "
                 "(%.1f, %.1f)", folder, record["build_seconds"], accuracy, scale, bias)
    finally:
        torch.set_num_threads(threads)
