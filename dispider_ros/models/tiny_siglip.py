"""Build a tiny random-weight SigLIP (vision + text tower) with its processor, offline.

The folder reloads with `AutoModel` / `AutoProcessor` (local_files_only) exactly like a
real checkpoint such as google/siglip-base-patch16-224. The tokenizer is a ~400-token
byte-level BPE trained here with the `tokenizers` library on a few English sentences and
wrapped in `PreTrainedTokenizerFast`, so no sentencepiece model or hub access is needed.
The weights are random: embeddings keep some similarity structure of the pixels (enough
to find scene cuts) but text-image scores carry no meaning until trained.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

LOG = logging.getLogger(__name__)

IMAGE_SIZE = 64
PATCH_SIZE = 8  # (64/8)^2 = 64 patches per image
HIDDEN = 64
TEXT_LENGTH = 16  # SigLIP pads every text to this length; the last position is pooled
VOCAB_SIZE = 400
SEED = 1234

SENTENCES = [
    "tell me when the person picks up the red cup",
    "what is on the table now",
    "guide me through what the cook is doing",
    "let me know when the door opens",
    "alert me if someone enters the room",
    "describe the scene as it happens",
    "a rabbit stands in a green meadow under a blue sky",
    "a flower slowly opens its petals in the sunlight",
    "water flows over the rocks in a small stream",
    "a robot arm places a box on the shelf",
    "the dog runs across the grass and jumps",
    "a car drives down the street at night",
    "the man is cutting vegetables in the kitchen",
    "a woman walks into the office and sits down",
    "narrate what the children are doing in the park",
    "keep me updated on the progress of the build",
    "is there anyone near the window",
    "count the people standing by the counter",
    "a bird flies over the trees and lands on a branch",
    "the butterfly rests on a yellow flower",
    "notify me when the light turns green",
    "step by step show me how to fold the shirt",
    "a photo of a cat sitting on a sofa",
    "a photo of a cup of coffee on a wooden table",
]


def build_tokenizer(sentences=SENTENCES, vocab_size: int = VOCAB_SIZE):
    """A lower-casing byte-level BPE that appends </s> like SigLIP's tokenizer, trained on
    `sentences` (a builder that knows other texts trains it on those)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(sentences) * 4, trainer=trainer)
    eos_id = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos_id)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=TEXT_LENGTH, model_input_names=["input_ids"])


def build(folder: Path) -> None:
    """Save a tiny SiglipModel plus SiglipProcessor into folder.

    Args:
        folder: an existing (empty) directory.
    """
    from transformers import SiglipModel, SiglipProcessor

    folder = Path(folder)
    tokenizer = build_tokenizer()
    config = siglip_config(tokenizer)
    torch.manual_seed(SEED)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        # SigLIP's paper initialisation (t' = log 10, b = -10) scaled so that cos = 1 gives a
        # confident sigmoid: exp(log 20) * 1 - 10 = +10, cos = 0 gives -10.
        model.logit_scale.fill_(float(torch.log(torch.tensor(20.0))))
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(folder, safe_serialization=True)
    SiglipProcessor(image_processor=image_processor(), tokenizer=tokenizer).save_pretrained(folder)
    LOG.info("tiny SigLIP saved to %s (%d parameters)", folder,
             sum(p.numel() for p in model.parameters()))


def siglip_config(tokenizer, patch_size: int = PATCH_SIZE, image_size: int = IMAGE_SIZE):
    """The tiny SigLIP architecture (both towers) for tokenizer's vocabulary."""
    from transformers import SiglipConfig

    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=TEXT_LENGTH,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id, projection_size=HIDDEN)
    vision_config = dict(
        hidden_size=HIDDEN, intermediate_size=2 * HIDDEN, num_hidden_layers=2,
        num_attention_heads=2, image_size=image_size, patch_size=patch_size)
    return SiglipConfig(text_config=text_config, vision_config=vision_config)


def image_processor(image_size: int = IMAGE_SIZE):
    """The processor's image half: an exact resize to an image_size square."""
    from transformers import SiglipImageProcessor

    return SiglipImageProcessor(size={"height": image_size, "width": image_size})
