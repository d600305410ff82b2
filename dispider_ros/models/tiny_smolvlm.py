"""Build a tiny random-weight SmolVLM (SmolVLM2's family, Idefics3 lineage) with its processor files, offline.

The folder has the file layout of a real checkpoint such as
HuggingFaceTB/SmolVLM2-256M-Video-Instruct (config.json with model_type "smolvlm",
preprocessor_config.json naming SmolVLMImageProcessor, processor_config.json with
image_seq_len and processor_class SmolVLMProcessor, tokenizer files, chat template) and
reloads with `AutoModelForImageTextToText` under `local_files_only`. What is tiny:
- vision encoder: SigLIP-like, hidden 32, 2 layers, image 64, patch 8 -> 8x8 patches;
  pixel shuffle with scale_factor 2 -> 16 visual tokens per frame, a (4, 4) grid, in the
  64-wide text space (the real 256M: image 512, patch 16, scale 4 -> 64 tokens, (8, 8));
- text model: a Llama, hidden 64, 2 layers, 2 heads (1 KV head);
- image processor: SmolVLMImageProcessor with max_image_size 64 (one frame = one 64x64 tile;
  the backend turns image splitting off);
- tokenizer: a ~450-token byte-level BPE trained here with `tokenizers`, using the
  pre-tokenizer of SmolLM2 (single digits, GPT-2 byte-level regex), with SmolVLM's special
  tokens (<|im_start|>, <end_of_utterance>, <fake_token_around_image>, <global-img>,
  <image>, <row_r_col_c>) and SmolVLM2's chat template.

Processor: `SmolVLMProcessor` cannot be imported without torchvision (its module imports
the video processor), so the processor files are written as the real checkpoint has them
and `dispider_ros.models.processors.load_processor` assembles an `Idefics3Processor` (the
same single-image expansion) where torchvision is absent. Frames are always fed as images.
`build(folder, family="idefics3")` makes the same model as an Idefics3 (SmolVLM v1's family),
whose `Idefics3Processor` loads with `AutoProcessor` as it is.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path


from dispider_ros.models.tiny import save_random_model

LOG = logging.getLogger(__name__)

HIDDEN = 64
VISION_HIDDEN = 32
IMAGE_SIZE = 64
PATCH_SIZE = 8
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR ** 2  # 16 tokens per frame
VOCAB_SIZE = 450
SEED = 1234
# Weights drawn wider than the real ~0.02-0.04 so that the random model's greedy answers
# depend on its input (see tiny_qwen2_vl.INIT_RANGE).
INIT_RANGE = 0.3
FAMILIES = ("smolvlm", "idefics3")

# SmolLM2's ids 0-2 first, then SmolVLM's image tokens (the real checkpoint adds them after
# its BPE vocabulary; their ids do not matter to the model).
SPECIAL_TOKENS = (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<fake_token_around_image>", "<image>",
                   "<global-img>", "<end_of_utterance>"]
                  + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)])
# SmolVLM2's chat template (chat_template.json of SmolVLM2-256M-Video-Instruct).
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}"
    "{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SENTENCES = [
    "You are a helpful assistant watching live camera streams. Answer briefly.",
    "Tell me when the person picks up the red cup.",
    "What is on the table now? What changed?",
    "Guide me through what the cook is doing.",
    "Let me know when the door opens.",
    "Alert me if someone enters the room.",
    "Describe the scene as it happens.",
    "A rabbit stands in a green meadow under a blue sky.",
    "A flower slowly opens its petals in the sunlight.",
    "Water flows over the rocks in a small stream.",
    "A robot arm places a box on the shelf.",
    "The dog runs across the grass and jumps.",
    "The man is cutting vegetables in the kitchen.",
    "Is there anyone near the window? Yes, one person.",
    "Count the people standing by the counter: 3 people.",
    "Camera front at 12.5 s shows a car driving down the street.",
    "System: User: Assistant: cam 0.5s 1.0s 2.0s",
]


def build_tokenizer():
    """Byte-level BPE with SmolLM2's pre-tokenizer and SmolVLM's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    return GPT2TokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<end_of_utterance>",
        pad_token="<|im_end|>", unk_token="<|endoftext|>", model_max_length=8192,
        chat_template=CHAT_TEMPLATE, additional_special_tokens=SPECIAL_TOKENS[3:],
        add_bos_token=False, add_prefix_space=False,
        # generate() rejects token_type_ids, which the base class would otherwise add.
        model_input_names=["input_ids", "attention_mask"])


def _model_config(tokenizer, family: str = "smolvlm"):
    from transformers import Idefics3Config, SmolVLMConfig

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    text_config = dict(
        model_type="llama", vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=HIDDEN // 2,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
        bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<end_of_utterance>"],
        pad_token_id=ids["<|im_end|>"], tie_word_embeddings=False, initializer_range=INIT_RANGE)
    vision_config = dict(
        hidden_size=VISION_HIDDEN, intermediate_size=2 * VISION_HIDDEN, num_hidden_layers=2,
        num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, initializer_range=INIT_RANGE)
    config_cls = SmolVLMConfig if family == "smolvlm" else Idefics3Config
    return config_cls(text_config=text_config, vision_config=vision_config, scale_factor=SCALE_FACTOR,
                      image_token_id=ids["<image>"], pad_token_id=ids["<|im_end|>"], tie_word_embeddings=False)


def _image_processor(family: str = "smolvlm"):
    from transformers import Idefics3ImageProcessor, SmolVLMImageProcessor

    # The real checkpoint: size 4 * 512, max_image_size 512, splitting on (the backend turns it off).
    return (SmolVLMImageProcessor if family == "smolvlm" else Idefics3ImageProcessor)(do_resize=True, size={"longest_edge": 4 * IMAGE_SIZE},
                                 max_image_size={"longest_edge": IMAGE_SIZE}, do_image_splitting=False,
                                 image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])


def build(folder: Path, family: str = "smolvlm") -> None:
    """Save a tiny SmolVLM model, tokenizer and processor files into folder.

    Args:
        folder: an existing (empty) directory.
        family: "smolvlm" (the `tiny:smolvlm` spec) or "idefics3".
    """
    from transformers import Idefics3Processor

    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {FAMILIES}")
    folder = Path(folder)
    tokenizer = build_tokenizer()
    config = _model_config(tokenizer, family)
    model = save_random_model(config, folder, SEED)
    if family == "idefics3":
        Idefics3Processor(image_processor=_image_processor(family), tokenizer=tokenizer, image_seq_len=IMAGE_SEQ_LEN,
                          chat_template=CHAT_TEMPLATE).save_pretrained(folder)
        return
    tokenizer.save_pretrained(folder)
    image_processor = _image_processor()
    image_processor.processor_class = "SmolVLMProcessor"
    image_processor.save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps(
        {"image_seq_len": IMAGE_SEQ_LEN, "processor_class": "SmolVLMProcessor"}, indent=2))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    LOG.info("tiny %s saved to %s (%d parameters)", family, folder, sum(p.numel() for p in model.parameters()))
