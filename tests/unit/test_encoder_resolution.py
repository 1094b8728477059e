"""Which encoder loads: named > the memory's recorded spec > CLIP where it can be had > offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rar_agent.config import Settings
from rar_agent.encoders import EncoderSpec, load_encoder, resolve_encoder, spec_of
from rar_agent.encoders import loader as resolve_mod
from rar_agent.encoders.loader import canonical_spec
from rar_agent.errors import ConfigError, EncoderMismatchError, ModelLoadError

ROOT = Path(__file__).resolve().parents[2]
FACTORY_FILE = ROOT / "tests" / "helpers" / "encoder_factories.py"
runner = CliRunner()


def test_the_default_hub_repo_is_open_clips_entry_for_the_default() -> None:
    import open_clip

    cfg = open_clip.get_pretrained_cfg("ViT-B-16", "openai")
    assert cfg["hf_hub"].rstrip("/") == resolve_mod._DEFAULT_HUB_REPO


def test_offline_the_default_is_the_offline_encoder_with_one_note() -> None:
    # conftest: HF_HUB_OFFLINE=1 and an empty hub cache
    reason = resolve_mod.clip_unavailable_reason()
    assert reason and "HF_HUB_OFFLINE" in reason
    encoder, note = resolve_mod.load_default_encoder(device="cpu")
    assert spec_of(encoder) == EncoderSpec("efficientnet-lite0")
    assert note is not None and "\n" not in note
    assert "efficientnet-lite0" in note and "ViT-B-16/openai" in note and "--clip-model" in note
    heard: list[str] = []
    assert resolve_encoder(None, device="cpu", announce=heard.append) is encoder
    assert heard == [note]


def test_the_default_is_clip_when_it_can_be_had(
    monkeypatch: pytest.MonkeyPatch, tiny_openclip_spec: str
) -> None:
    monkeypatch.setattr(resolve_mod, "clip_unavailable_reason", lambda: None)
    monkeypatch.setattr(resolve_mod, "DEFAULT_CLIP", EncoderSpec(tiny_openclip_spec))
    encoder, note = resolve_mod.load_default_encoder(device="cpu")
    assert note is None and encoder.fingerprint.startswith("open_clip:")
    # the hub answered but the load failed: still an answer, with the reason
    monkeypatch.setattr(resolve_mod, "DEFAULT_CLIP", EncoderSpec("local-dir:/no/such/clip"))
    encoder, note = resolve_mod.load_default_encoder(device="cpu")
    assert encoder.fingerprint.startswith("effnet:") and "did not load" in (note or "")


def test_the_offline_encoder_is_announced_on_first_use_in_a_rar_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every command on a machine without CLIP began with the same three wrapped lines
    ("using the offline encoder efficientnet-lite0 ...: CLIP ViT-B-16/openai is not available
    (...); for CLIP, run once where ..."). It is said on first use in a RAR_HOME and again
    when its words change (another reason), while the note naming the memory used stays on
    every run; a CLIP whose weights failed to load is a problem, warned of every time."""
    from rar_agent.cli import app

    for name in ("RAR_CLIP_MODEL", "RAR_CLIP_PRETRAINED", "RAR_ENCODER", "RAR_MEMORY_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    photo = str(ROOT / "examples" / "images" / "cat.jpg")
    said = []
    for _ in range(2):
        done = runner.invoke(app, ["recognize", photo, "--no-progress", "--json"])
        assert done.exit_code == 0, done.output
        said.append(" ".join(done.stderr.split()))
    assert "using the offline encoder efficientnet-lite0" in said[0], said[0]
    assert "using the offline encoder" not in said[1], said[1]
    assert "using the built-in memory 'builtin-efficientnet-lite0" in said[1], said[1]
    # another reason: said again, once
    monkeypatch.setattr(resolve_mod, "clip_unavailable_reason", lambda: "the hub is on holiday")
    again = [runner.invoke(app, ["recognize", photo, "--json"]).stderr for _ in range(2)]
    assert "on holiday" in again[0] and "offline encoder" not in again[1], again
    # cached weights that fail to load: a warning each time (logging's, as a library's)
    monkeypatch.setattr(resolve_mod, "clip_unavailable_reason", lambda: None)
    monkeypatch.setattr(resolve_mod, "DEFAULT_CLIP", EncoderSpec("local-dir:/no/such/clip"))
    for _ in range(2):
        caplog.clear()
        assert runner.invoke(app, ["recognize", photo, "--json"]).exit_code == 0
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("/no/such/clip" in w and "did not load" in w for w in warned), warned


def test_an_unanswering_hub_note_says_how_to_skip_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the hub does not answer, every command waits up to 3 s for it before the
    offline encoder loads; the note (said once per RAR_HOME) says how to skip that wait."""
    from huggingface_hub import constants

    from rar_agent.encoders import hub

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    reason = resolve_mod.clip_unavailable_reason() or ""
    assert "did not answer within 3 s" in reason, reason
    assert "HF_HUB_OFFLINE=1" in reason and "skip" in reason, reason


def test_a_named_encoder_never_falls_back() -> None:
    with pytest.raises(ModelLoadError):
        resolve_encoder(EncoderSpec("local-dir:/no/such/clip"), device="cpu")
    with pytest.raises(ModelLoadError, match="this memory was built with encoder"):
        resolve_encoder(None, EncoderSpec("local-dir:/no/such/clip"), device="cpu")


def test_settings_say_whether_an_encoder_was_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RAR_CLIP_MODEL", "RAR_CLIP_PRETRAINED", "RAR_ENCODER"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().explicit_encoder is None
    assert Settings(clip_model="ViT-B-32").explicit_encoder == ("ViT-B-32", "openai")
    assert Settings(clip_pretrained="/w.pt").explicit_encoder == ("ViT-B-16", "/w.pt")
    assert Settings(encoder="m:f").explicit_encoder == ("m:f", None)
    assert Settings(encoder="m:f", clip_pretrained="x").explicit_encoder == ("m:f", "x")
    monkeypatch.setenv("RAR_CLIP_MODEL", "efficientnet-lite0")
    assert Settings().explicit_encoder == ("efficientnet-lite0", "openai")


def test_canonical_specs_load_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # and back to where the run started, whatever that was
    (tmp_path / "clip").mkdir()
    assert canonical_spec("local-dir:clip", "openai") == EncoderSpec(
        f"local-dir:{tmp_path / 'clip'}"
    )
    assert canonical_spec("hf:clip").model == f"hf:{tmp_path / 'clip'}"
    assert canonical_spec("hf:org/repo").model == "hf:org/repo"
    assert canonical_spec("efficientnet-lite0", "openai") == EncoderSpec("efficientnet-lite0")
    assert canonical_spec("x/f.py:create").model == f"{tmp_path / 'x' / 'f.py'}:create"
    assert canonical_spec("pkg.mod:create", "openai") == EncoderSpec("pkg.mod:create", "openai")
    assert canonical_spec("ViT-B-16", "openai") == EncoderSpec("ViT-B-16", "openai")


def test_a_factory_file_path_loads_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    encoder = load_encoder(f"{FACTORY_FILE}:hashing_encoder")
    assert encoder.fingerprint == "hashing:16:0"
    monkeypatch.chdir(FACTORY_FILE.parent)
    assert load_encoder("encoder_factories.py:hashing_encoder") is encoder  # same file, cached
    assert spec_of(encoder) == EncoderSpec(f"{FACTORY_FILE}:hashing_encoder")
    with pytest.raises(ConfigError, match="does not exist"):
        load_encoder("no_such_file.py:create")
    with pytest.raises(ConfigError, match="has no attribute") as missing:
        load_encoder(f"{FACTORY_FILE}:no_such_factory")
    # what to name instead: the functions the file defines, not the ones it imports
    assert "name the function that returns the encoder (it defines " in str(missing.value)
    assert "hashing_encoder" in str(missing.value) and "Path" not in str(missing.value)
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="boom"):
        load_encoder(f"{broken}:create")


def test_a_factory_may_load_another_encoder(tmp_path: Path) -> None:
    # a factory that wraps an encoder load_encoder gives (the built-in one, say) hung the
    # command for good, with no word: the load held a lock the factory's own load waited on
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(
        "from rar_agent.encoders import load_encoder\n\n"
        "def create():\n"
        f"    return load_encoder({str(FACTORY_FILE) + ':hashing_encoder'!r})\n"
    )
    loaded: list[object] = []
    worker = threading.Thread(
        target=lambda: loaded.append(load_encoder(f"{wrapper}:create")), daemon=True
    )
    worker.start()
    worker.join(timeout=60)  # a guard against hanging the suite, not a timing
    assert not worker.is_alive(), "loading an encoder from a factory that loads one hung"
    assert loaded[0] is load_encoder(f"{FACTORY_FILE}:hashing_encoder")
    # the encoder it handed back keeps the spec that loads it (what its memories record)
    assert spec_of(loaded[0]) == EncoderSpec(f"{FACTORY_FILE}:hashing_encoder")


def _images(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for label in ("alpha", "beta"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / label / f"{i}.png")
    return root


def test_a_memory_remembers_its_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rar_agent.cli import app

    for name in ("RAR_CLIP_MODEL", "RAR_CLIP_PRETRAINED", "RAR_ENCODER", "RAR_MEMORY_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    images = _images(tmp_path / "imgs")
    memory = tmp_path / "mem"
    monkeypatch.chdir(FACTORY_FILE.parent)
    built = runner.invoke(app, ["memory", "build", "--from-folder", str(images), "--memory",
                                str(memory), "--encoder", "encoder_factories.py:hashing_encoder",
                                "--no-progress"])  # fmt: skip
    assert built.exit_code == 0, built.output
    stats = json.loads(
        runner.invoke(app, ["memory", "stats", "--memory", str(memory), "--json"]).stdout
    )
    assert stats["encoder_spec"] == {"model": f"{FACTORY_FILE}:hashing_encoder", "pretrained": None}

    monkeypatch.chdir(tmp_path)  # elsewhere, and no encoder flag: the memory's own is used
    query = str(images / "beta" / "1.png")
    done = runner.invoke(app, ["recognize", query, "--memory", str(memory), "--k", "2", "--json"])
    assert done.exit_code == 0, done.output
    record = json.loads(done.stdout)
    assert record["label"] == "beta" and record["encoder"] == f"{FACTORY_FILE}:hashing_encoder"
    refused = runner.invoke(app, ["memory", "add", "gamma", query, "--memory", str(memory)])
    assert refused.exit_code == 2 and "already stored as an example of 'beta'" in refused.output
    fresh = tmp_path / "gamma.png"
    Image.new("RGB", (24, 24), (10, 200, 90)).save(fresh)
    added = runner.invoke(app, ["memory", "add", "gamma", str(fresh), "--memory", str(memory)])
    assert added.exit_code == 0, added.output

    other = runner.invoke(app, ["recognize", query, "--memory", str(memory),
                                "--clip-model", "efficientnet-lite0"])  # fmt: skip
    assert other.exit_code == 2
    message = " ".join(other.output.split())
    assert "hashing_encoder" in message and "efficientnet-lite0" in message
    assert "or leave them out and its own loads" in message and "--clip-pretrained" not in message


def test_python_api_opens_a_memory_with_its_recorded_encoder(tmp_path: Path) -> None:
    from rar_agent.ingest.builders import add_images, iter_image_folder
    from rar_agent.memory import CategoryMemory
    from rar_agent.pipeline import Recognizer

    encoder = load_encoder(f"{FACTORY_FILE}:hashing_encoder")
    images = _images(tmp_path / "imgs")
    with CategoryMemory.open(tmp_path / "mem") as memory:
        add_images(memory, encoder, iter_image_folder(images))
    with Recognizer(CategoryMemory.open(tmp_path / "mem"), k=2) as rec:
        assert rec.encoder is encoder
        assert rec.recognize(images / "alpha" / "0.png").label == "alpha"
    with CategoryMemory.open(tmp_path / "bare") as memory:
        memory.bind_encoder("made-by-hand", 16)
        with pytest.raises(ConfigError, match="records no encoder spec"):
            Recognizer(memory)
    with CategoryMemory.open(tmp_path / "mem") as memory, pytest.raises(EncoderMismatchError) as e:
        Recognizer(memory, load_encoder("efficientnet-lite0", device="cpu"))
    assert "Recognizer(memory) with no encoder" in str(e.value)  # the Python way, not only flags


def test_recognize_refuses_a_mistyped_memory_without_creating_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAR_")}
    env["RAR_HOME"] = str(tmp_path / "home")
    missing = tmp_path / "no-such-memory"
    done = subprocess.run(
        [sys.executable, "-m", "rar_agent.cli", "recognize", str(ROOT / "examples/images/cat.jpg"),
         "--memory", str(missing), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "no category memory" in done.stderr and "memory build" in done.stderr
    assert "efficientnet" not in done.stderr
    assert not missing.exists()


def test_an_encoder_name_that_nearly_matches_says_which_was_meant() -> None:
    """`--clip-model efficientnet-lite1` or `vit-b-16` said 'unknown encoder' and listed the
    forms a name may take; a near miss (letter case aside) names the encoder meant."""
    with pytest.raises(
        ConfigError, match=r"'efficientnet-lite1' \(did you mean efficientnet-lite0\?\)"
    ):
        load_encoder("efficientnet-lite1")
    with pytest.raises(ConfigError, match=r"did you mean ViT-B-16, ") as lower:
        load_encoder("vit-b-16")
    assert "use an open_clip architecture" in str(lower.value)
    with pytest.raises(ConfigError) as far:
        load_encoder("nosuch-model")
    assert "did you mean" not in str(far.value)
