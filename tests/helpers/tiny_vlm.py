"""A tiny random image-text-to-text model, built offline, for tests of the local ranker.

``make_tiny_vlm(dir)`` saves a LLaVA model (a 2-layer CLIP vision tower, a 2-layer Llama) with a
processor whose tokenizer is trained locally with the ``tokenizers`` library and whose chat
template handles system/user/assistant turns with interleaved images. It loads through
``AutoModelForImageTextToText`` / ``AutoProcessor`` exactly like a real checkpoint, and generates
on CPU in well under a second. Its answers are meaningless by construction.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["make_tiny_vlm", "TINY_CHAT_TEMPLATE"]

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


def _tokenizer():  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=_SPECIALS,
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


def make_tiny_vlm(directory: str | Path, seed: int = 0) -> str:
    """Build and save a tiny random LLaVA model + processor to ``directory``.

    Args:
        directory: Where to save (created if missing).
        seed: Torch seed for the random weights (same seed, same model).

    Returns:
        The ranker spec ``"hf:<directory>"``.
    """
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
