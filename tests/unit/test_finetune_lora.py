"""LoRA fine-tuning: tiny random VLM on CPU, data from finetune-data, reloaded as a ranker."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rar_agent.errors import ConfigError
from rar_agent.finetune_data import FinetuneOptions, build_finetune_data
from rar_agent.ingest.builders import add_images, iter_image_folder
from rar_agent.memory import CategoryMemory
from tests.helpers.tiny_vlm import make_tiny_vlm

pytest.importorskip("peft")

from tools.finetune_ranker import (  # noqa: E402
    TrainConfig,
    encode_example,
    load_records,
    record_messages,
    train,
)


@pytest.fixture(scope="module")
def tiny_vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(make_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm")).removeprefix("hf:"))


@pytest.fixture(scope="module")
def train_json(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Any) -> Path:
    root = tmp_path_factory.mktemp("ft")
    rng = np.random.default_rng(0)
    for c, label in enumerate(["cat", "dog", "eel", "fox"]):
        (root / "images" / label).mkdir(parents=True)
        for i in range(2):
            arr = np.clip(60 * c + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype("uint8")
            Image.fromarray(arr).save(root / "images" / label / f"{i}.png")
    items = iter_image_folder(root / "images")
    out = root / "data" / "train.json"
    with CategoryMemory.open(root / "mem", collection="ft") as memory:
        add_images(memory, tiny_encoder, items)
        summary = build_finetune_data(
            memory,
            tiny_encoder,
            items,
            out,
            options=FinetuneOptions(k=3),
            image_root=root / "images",
        )
    assert summary.conversations >= 4
    return out


def test_prompt_tokens_are_masked(tiny_vlm_dir: Path, train_json: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vlm_dir)
    record = load_records(train_json)[0]
    messages, target = record_messages(record, image_root=train_json.parent.parent / "images")
    assert [m.type for m in messages] == ["system", "human"]
    assert target == record["conversations"][-1]["value"]
    batch = encode_example(processor, messages, target)
    labels = batch["labels"][0]
    learned = labels[labels != -100]
    assert (labels[: len(labels) - len(learned)] == -100).all()  # a masked prefix, then the reply
    text = processor.tokenizer.decode(learned)
    assert text.startswith(target) and "<|end|>" in text  # reply + end of turn only
    assert (
        int((batch["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum())
        > 0
    )


def test_two_steps_save_an_adapter_that_loads_as_a_ranker(
    tiny_vlm_dir: Path, train_json: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from rar_agent.ranking import RankingChain, RankingInput, load_ranker

    out = tmp_path / "adapter"
    cfg = TrainConfig(
        model=f"hf:{tiny_vlm_dir}",
        data=str(train_json),
        out=str(out),
        max_steps=2,
        image_root=str(train_json.parent.parent / "images"),
        device="cpu",
        lr=1e-3,
    )
    report = train(cfg)
    assert report.steps == 2 and len(report.losses) == 2
    assert all(math.isfinite(x) and x > 0 for x in report.losses)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_vlm_dir.resolve())
    weights = load_file(str(out / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)  # trained, not the init
    assert all("vision_tower" not in k for k in weights)  # only the language model adapted

    model = load_ranker(f"hf:{out}", max_new_tokens=8, device="cpu")
    chain = RankingChain(model, structured="never", max_retries=0)
    image = Image.new("RGB", (24, 24), (200, 40, 40))
    output = chain.invoke(RankingInput(image=image, candidates=["cat", "dog", "eel"]))
    assert sorted(output.order) == ["cat", "dog", "eel"]
    assert output.status in {"ranked", "fallback"} and output.raw_reply is not None


@pytest.mark.slow
def test_training_lowers_the_loss_on_one_example(
    tiny_vlm_dir: Path, train_json: Path, tmp_path: Path
) -> None:
    # the random tiny model's attention barely moves its logits; adapting lm_head too shows
    # that the masked reply tokens carry a gradient the optimizer follows
    cfg = TrainConfig(
        model=str(tiny_vlm_dir),
        data=str(train_json),
        out=str(tmp_path / "a"),
        max_steps=8,
        max_samples=1,
        image_root=str(train_json.parent.parent / "images"),
        device="cpu",
        lr=1e-2,
        dropout=0.0,
        targets=r".*language_model.*\.(q_proj|v_proj|up_proj)|lm_head",
    )
    losses = train(cfg).losses
    assert losses[-1] < 0.7 * losses[0]


def test_script_reports_bad_data_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.finetune_ranker import main

    bad = tmp_path / "bad.json"
    bad.write_text("[{]")
    code = main(["--model", "hf:/nowhere", "--data", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2 and "not JSON" in capsys.readouterr().err
    bad.write_text(json.dumps([{"conversations": [{"from": "human", "value": "hi"}]}]))
    with pytest.raises(ConfigError, match="gpt"):
        record_messages(load_records(bad)[0], image_root=tmp_path)


def test_script_without_the_model_offline_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No weights and no hub: one message at once (cache only), not minutes of retries."""
    from huggingface_hub import constants

    from tools.finetune_ranker import main

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    data = tmp_path / "train.json"
    turns = [{"from": "human", "value": "<image>rank"}, {"from": "gpt", "value": '["a"]'}]
    data.write_text(json.dumps([{"image": "x.png", "conversations": turns}]))
    code = main(["--model", "hf:nobody/no-such-model", "--data", str(data),
                 "--out", str(tmp_path / "o"), "--device", "cpu"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "model hub cannot be reached" in err and "hf download" in err


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--out", "{file}"], "is a file; the adapter is written as a folder"),
        (["--out", "{file}/sub"], "is a file; the adapter is written as a folder"),
        (["--log-every", "0"], "--log-every must be at least 1"),
        (["--epochs", "0"], "--epochs must be above zero"),
        (["--max-steps", "0"], "--max-steps must be at least 1"),
        (["--targets", "(("], "--targets is not a regular expression"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (["--lr", "-1", "--rank", "0"], "--rank must be at least 1, got 0; --lr must be above"),
        (["--device", "gpu"], "--device 'gpu' is not a device"),
    ],
)
def test_script_refuses_bad_settings_before_loading_or_training(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    says: str,
) -> None:
    """Each of these used to fail (a traceback) or be ignored only after the model trained."""
    import tools.finetune_ranker as script

    def no_load(*_: Any, **__: Any) -> Any:
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(script, "_model_path", no_load)
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    data = tmp_path / "train.json"
    data.write_text("[]")
    args = [f.format(file=afile) for f in flags]
    out = [] if "--out" in args else ["--out", str(tmp_path / "adapter")]
    code = script.main(["--model", "hf:/nowhere", "--data", str(data), *out, *args])
    assert code == 2 and says in capsys.readouterr().err


def test_cuda_asked_on_a_machine_without_it_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tools.finetune_ranker import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device; use cpu or auto"):
        _device("cuda")
    assert _device("auto") == "cpu" and _device("cpu") == "cpu"
