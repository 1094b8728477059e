"""A tiny random image-text-to-text model, built offline, for tests of the local ranker.

``make_tiny_vlm(dir)`` saves a LLaVA model (a 2-layer CLIP vision tower, a 2-layer Llama) with a
processor whose tokenizer is trained locally with the ``tokenizers`` library and whose chat
template handles system/user/assistant turns with interleaved images. ``arch="idefics3"``
saves the architecture of SmolVLM (the default local ranker) instead: a SigLIP-style tower with
pixel shuffle, Idefics3's processor and a SmolVLM-style "User:/Assistant:" template. Either loads
through ``AutoModelForImageTextToText`` / ``AutoProcessor`` exactly like a real checkpoint and
generates on CPU in well under a second. Its answers are meaningless by construction.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["make_tiny_vlm", "TINY_CHAT_TEMPLATE", "TINY_IDEFICS3_TEMPLATE"]

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

TINY_IDEFICS3_TEMPLATE = (
    "<|im_start|>"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %} {{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %} {{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_utterance>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

_IDEFICS3_SPECIALS = [
    "<|im_start|>",
    "<fake_token_around_image>",
    "<global-img>",
    "<end_of_utterance>",
] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]

_SPECIALS = [
    "<pad>",
    "<s>",
    "</s>",
    "<image>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
]

_CORPUS = [
    "You are an expert visual classifier. Reply with a JSON array of strings.",
    'Candidates (3):\n1. "tabby cat"\n2. "lynx"\n3. "golden retriever"',
    '["lynx", "tabby cat", "golden retriever"]',
    "airplane automobile bird cat deer dog frog horse ship truck",
    "T-shirt trouser pullover dress coat sandal shirt sneaker bag ankle boot",
    "The image shows a small animal on grass, most likely first, least likely last.",
    "0123456789 , . : ; ' \" [ ] { } ( ) - _",
]

IMAGE_SIZE = 32
PATCH_SIZE = 8


def _tokenizer(extra_specials: list[str] | None = None):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=_SPECIALS + (extra_specials or []),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def make_tiny_vlm(directory: str | Path, seed: int = 0, arch: str = "llava") -> str:
    """Build and save a tiny random image-text-to-text model + processor to ``directory``.

    Args:
        directory: Where to save (created if missing).
        seed: Torch seed for the random weights (same seed, same model).
        arch: ``llava`` (default) or ``idefics3`` (SmolVLM's architecture).

    Returns:
        The ranker spec ``"hf:<directory>"``.
    """
    if arch == "idefics3":
        return _make_tiny_idefics3(Path(directory), seed)
    if arch != "llava":
        raise ValueError(f"unknown tiny VLM architecture {arch!r}; use llava or idefics3")
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TINY_CHAT_TEMPLATE,
    )
    ids = tokenizer.convert_tokens_to_ids
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=ids("<s>"),
        eos_token_id=ids("</s>"),
        pad_token_id=ids("<pad>"),
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = ids("</s>")
    model.generation_config.pad_token_id = ids("<pad>")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return f"hf:{out}"


def _tiny_llama(tokenizer):  # type: ignore[no-untyped-def]
    from transformers import LlamaConfig

    ids = tokenizer.convert_tokens_to_ids
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=ids("<s>"),
        eos_token_id=ids("<end_of_utterance>"),
        pad_token_id=ids("<pad>"),
    )


def _make_tiny_idefics3(out: Path, seed: int) -> str:
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessor,
        Idefics3Processor,
        Idefics3VisionConfig,
    )

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(_IDEFICS3_SPECIALS)
    scale = 2
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
    )
    seq_len = (IMAGE_SIZE // PATCH_SIZE) ** 2 // scale**2
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=seq_len,
        chat_template=TINY_IDEFICS3_TEMPLATE,
    )
    vision = Idefics3VisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=_tiny_llama(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    model.generation_config.pad_token_id = tokenizer.convert_tokens_to_ids("<pad>")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return f"hf:{out}"
