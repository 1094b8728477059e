"""Which memory a command uses when none is named, and how a person finds it again.

recognize, chat and mcp resolve "no --memory" in one place (``configured_memory``): the
default memory if it holds entries, else the built-in one; ``memory list`` / ``stats`` /
``history`` / ``undo`` with no flags act on the memory the last command used, or say which
exist and how to pick one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rar_agent.cli import app
from rar_agent.cli.recent import describe_choice, last_used_settings, names_a_memory
from rar_agent.config import Settings
from rar_agent.errors import ConfigError, MemoryStoreError
from rar_agent.memory import configured_memory

runner = CliRunner()


@pytest.fixture()
def home(tmp_path: Path, tiny_openclip_spec: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("RAR_MEMORY_PATH", "RAR_COLLECTION", "RAR_QDRANT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RAR_CLIP_MODEL", tiny_openclip_spec)
    monkeypatch.setenv("RAR_CLIP_PRETRAINED", "")
    Image.fromarray(np.full((24, 24, 3), 90, np.uint8)).save(tmp_path / "a.png")
    return tmp_path / "home"


def test_read_only_does_not_change_which_memory_is_meant(home: Path) -> None:
    """mcp opens read-only: a missing default memory still means the built-in one (None)."""
    settings = Settings()
    assert configured_memory(settings, read_only=True) is None
    assert configured_memory(settings) is None
    named = Settings(collection="nothing-here")
    with pytest.raises(MemoryStoreError, match="no category memory"):
        configured_memory(named, read_only=True)


def test_the_built_in_memory_named_before_its_first_use_says_how_to_make_it(home: Path) -> None:
    """`recognize --collection builtin-efficientnet-lite0-8838` (the name the README gives)
    on a machine whose built-in memory was never used said "no category memory at ...: build
    one first (rar-agent memory build; ...)"; it is built on first use with no memory named,
    and the error says so."""
    named = Settings(collection="builtin-efficientnet-lite0-8838")
    with pytest.raises(MemoryStoreError) as err:
        configured_memory(named)
    said = str(err.value)
    assert said.startswith("no category memory at ") and "build one first" not in said, said
    assert "the built-in memory is built on its first use" in said, said
    assert "rar-agent recognize PHOTO with no memory named (no --collection)" in said, said
    with pytest.raises(MemoryStoreError, match="build one first"):
        configured_memory(Settings(collection="nothing-here"))


@pytest.mark.parametrize("value", ["", "  "])
def test_a_blank_rar_home_means_the_default_home_not_this_folder(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``export RAR_HOME=`` unsets it in a person's mind: memories must not land in the cwd."""
    from rar_agent.config import default_home

    monkeypatch.setenv("RAR_HOME", value)
    assert Settings().home == default_home()


def test_an_option_or_variable_names_a_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAR_COLLECTION", raising=False)
    monkeypatch.delenv("RAR_MEMORY_PATH", raising=False)
    monkeypatch.delenv("RAR_QDRANT_URL", raising=False)
    assert not names_a_memory(Settings())
    assert names_a_memory(Settings(collection="x"))
    monkeypatch.setenv("RAR_COLLECTION", "from-env")
    assert names_a_memory(Settings())


def test_memory_list_without_flags_shows_the_memory_the_last_command_used(
    home: Path, tmp_path: Path
) -> None:
    done = runner.invoke(app, ["memory", "list"])
    assert done.exit_code == 2
    assert "no memory exists under" in done.output and "memory build" in done.output

    added = runner.invoke(app, ["memory", "add", "thing", str(tmp_path / "a.png"),
                                "--collection", "my-things"])  # fmt: skip
    assert added.exit_code == 0, added.output
    listed = runner.invoke(app, ["memory", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert listed.stdout.strip() == '{"thing": 1}'
    assert "memory 'my-things', used last by `rar-agent memory add`" in listed.output
    stats = runner.invoke(app, ["memory", "stats", "--json"])
    assert stats.exit_code == 0 and '"collection": "my-things"' in stats.stdout

    named = runner.invoke(app, ["memory", "list", "--collection", "other"])
    assert named.exit_code == 2 and "no category memory" in named.output


def test_memory_history_and_undo_without_flags_act_on_the_memory_memory_list_shows(
    home: Path, tmp_path: Path
) -> None:
    """After `memory add ... --collection my-things`, `memory list` showed my-things while
    `memory undo` took back the default memory's last teaching (or failed: no such memory)."""
    image = str(tmp_path / "a.png")
    taught = runner.invoke(app, ["teach", "kitty", image])
    assert taught.exit_code == 0, taught.output
    added = runner.invoke(app, ["memory", "add", "thing", image, "--collection", "my-things"])
    assert added.exit_code == 0, added.output

    history = runner.invoke(app, ["memory", "history"])
    assert history.exit_code == 0, history.output
    assert "'thing'" in history.stdout and "'kitty'" not in history.stdout
    assert "memory 'my-things', used last by `rar-agent memory add`" in history.output
    undone = runner.invoke(app, ["memory", "undo"])
    assert undone.exit_code == 0, undone.output
    assert "'thing'" in undone.stdout
    listed = runner.invoke(app, ["memory", "list", "--json", "--collection", "default"])
    assert listed.stdout.strip() == '{"kitty": 1}'  # the default memory's teaching is kept


def test_memory_remove_without_flags_removes_from_the_memory_memory_list_shows(
    home: Path, tmp_path: Path
) -> None:
    """`memory list` showed my-things and its 'thing'; `memory remove thing` then looked in
    the default memory and answered "no category 'thing' in this memory"."""
    image = str(tmp_path / "a.png")
    assert runner.invoke(app, ["teach", "kitty", image]).exit_code == 0
    added = runner.invoke(app, ["memory", "add", "thing", image, "--collection", "my-things"])
    assert added.exit_code == 0, added.output
    removed = runner.invoke(app, ["memory", "remove", "thing"])
    assert removed.exit_code == 0, removed.output
    assert "removed 1 entry of 'thing'" in removed.stdout
    assert "memory 'my-things', used last by `rar-agent memory add`" in removed.stderr
    listed = runner.invoke(app, ["memory", "list", "--json", "--collection", "default"])
    assert listed.stdout.strip() == '{"kitty": 1}'


def test_without_a_record_the_error_lists_the_memories_and_how_to_pick(home: Path) -> None:
    for name in ("birds", "garments"):
        (home / "memories" / name).mkdir(parents=True)
    message = describe_choice(Settings())
    assert "birds, garments" in message and "--collection NAME" in message
    assert last_used_settings(Settings()) == (Settings(), None)


@pytest.mark.parametrize(
    "command",
    [
        ["finetune-data", "--from-folder", "FOLDER", "--out", "OUT/train.json"],
        ["memory", "snapshot", "OUT/snap"],
        ["memory", "push", "--qdrant-url", "http://127.0.0.1:9"],
    ],
    ids=["finetune-data", "snapshot", "push"],
)
def test_a_command_on_no_memory_named_lists_the_memories_there_are(
    home: Path, tmp_path: Path, command: list[str]
) -> None:
    """A walk: `memory build --from-folder garments/ --collection garments`, then
    `finetune-data --from-folder garments/ --out train.json` said "no category memory at
    .../memories/default: build one first", as did `memory snapshot OUT` and `memory push`,
    though a memory had just been built. With none named and no default memory, they say
    which memories exist and how to pick one, as `memory list` does."""
    folder = tmp_path / "photos" / "thing"
    folder.mkdir(parents=True)
    shutil.copy(tmp_path / "a.png", folder / "a.png")
    added = runner.invoke(app, ["memory", "add", "thing", str(folder / "a.png"),
                                "--collection", "my-things"])  # fmt: skip
    assert added.exit_code == 0, added.output
    line = [a.replace("FOLDER", str(folder.parent)).replace("OUT", str(tmp_path)) for a in command]
    done = runner.invoke(app, line)
    assert done.exit_code == 2, done.output
    said = " ".join(done.stderr.split())
    assert "no memory named 'default'" in said and "my-things" in said, said
    assert "pick one with --collection NAME" in said and "build one first" not in said


def test_a_default_memory_that_cannot_be_opened_says_why_not_that_there_is_none(
    home: Path, tmp_path: Path
) -> None:
    """With no memory named, `finetune-data` on a default memory whose metadata was damaged
    said "no memory named 'default': memories under ...: default, my-things; pick one with
    --collection NAME", listing the very memory it said was not there: any failure to open
    it read as its absence. Only a missing memory lists the others now; this one says what
    is wrong with it."""
    added = runner.invoke(app, ["memory", "add", "thing", str(tmp_path / "a.png"),
                                "--collection", "my-things"])  # fmt: skip
    assert added.exit_code == 0, added.output
    shutil.copytree(home / "memories" / "my-things", home / "memories" / "default")
    (home / "memories" / "default" / "rar_memory.json").write_text("{not json", encoding="utf-8")
    folder = tmp_path / "photos" / "thing"
    folder.mkdir(parents=True)
    shutil.copy(tmp_path / "a.png", folder / "a.png")
    line = ["finetune-data", "--from-folder", str(folder.parent), "--out", str(tmp_path / "t.json")]
    done = runner.invoke(app, line)
    assert done.exit_code == 2, done.output
    said = " ".join(done.stderr.split())
    assert "cannot read memory metadata" in said and "no memory named" not in said, said


def test_a_default_memory_that_cannot_be_opened_is_not_passed_over(
    home: Path, tmp_path: Path
) -> None:
    """With no memory named, a default memory whose metadata was damaged was taken for a
    missing one: `recognize` answered from the built-in memory instead (its note naming that
    memory the only sign), and the person's own categories went unasked. It says what is
    wrong with the memory instead; a missing default memory still means the built-in one."""
    added = runner.invoke(app, ["memory", "add", "thing", str(tmp_path / "a.png")])
    assert added.exit_code == 0, added.output
    memory = configured_memory(Settings())
    assert memory is not None
    memory.close()
    (home / "memories" / "default" / "rar_memory.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(MemoryStoreError, match="cannot read memory metadata"):
        configured_memory(Settings())
    shutil.rmtree(home / "memories" / "default")
    assert configured_memory(Settings()) is None


def test_teach_and_memory_add_take_a_folder_of_photos_as_recognize_does(
    home: Path, tmp_path: Path
) -> None:
    """A walk: `teach coat photos/coat` answered "error: photos/coat is a directory, not an
    image file: pass a file inside it", while `recognize photos/` takes every image in a
    folder. A folder stands for every image in it and below it, for teaching too; an empty
    one is refused before anything loads."""
    folder = tmp_path / "photos" / "coat"
    (folder / "more").mkdir(parents=True)
    for i, where in enumerate((folder, folder, folder / "more")):
        Image.fromarray(np.full((24, 24, 3), 40 + 50 * i, np.uint8)).save(where / f"{i}.png")
    taught = runner.invoke(app, ["teach", "coat", str(folder), "--collection", "shop"])
    assert taught.exit_code == 0, taught.output
    listed = runner.invoke(app, ["memory", "list", "--json", "--collection", "shop"])
    assert json.loads(listed.stdout) == {"coat": 3}
    hats = tmp_path / "photos" / "hat"
    hats.mkdir()
    Image.fromarray(np.full((24, 24, 3), 250, np.uint8)).save(hats / "h.png")
    added = runner.invoke(app, ["memory", "add", "hat", str(hats), "--collection", "shop"])
    assert added.exit_code == 0 and "'hat'" in added.stdout, added.output
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["teach", "cap", str(tmp_path / "empty"), "--collection", "shop"])
    assert empty.exit_code == 2 and "no image files in the folder" in empty.output


def test_teach_refuses_a_folder_of_category_folders(home: Path, tmp_path: Path) -> None:
    """`teach coat photos/`, where photos/ holds coat/ and hat/ as `memory build
    --from-folder` reads them, stored the hats as coats too once a folder stood for every
    image below it. A folder with no image of its own and two or more sub-folders of them is
    refused before anything loads, with the commands that do what was meant; a folder of one
    category's photos in sub-folders is taught by naming them."""
    photos = tmp_path / "photos"
    for i, name in enumerate(("coat", "hat")):
        (photos / name).mkdir(parents=True)
        Image.fromarray(np.full((24, 24, 3), 40 + 50 * i, np.uint8)).save(photos / name / "0.png")
    for command in (["teach", "coat"], ["memory", "add", "coat"]):
        done = runner.invoke(app, [*command, str(photos), "--collection", "shop"])
        assert done.exit_code == 2, done.output
        said = " ".join(done.stderr.split())
        assert "only sub-folders of them (coat, hat)" in said, said
        assert f"rar-agent teach coat {photos / 'coat'}" in said, said
        assert f"memory build --from-folder {photos}" in said, said
    assert not (home / "memories" / "shop").exists()
    both = [str(photos / "coat"), str(photos / "hat")]
    taught = runner.invoke(app, ["teach", "coat", *both, "--collection", "shop"])
    assert taught.exit_code == 0, taught.output


def test_a_build_of_one_categorys_photos_says_to_teach_them(home: Path, tmp_path: Path) -> None:
    """`memory build photos/` (a folder given bare) said only "Got unexpected extra
    argument(s) (photos/)", and `memory build --from-folder photos/` on one category's photos
    said to make class sub-folders, not that `teach LABEL DIR` stores them as they are. Both
    now say what to run for what the folder holds, before anything loads."""
    cats = tmp_path / "cats"
    cats.mkdir()
    for i in range(2):
        Image.fromarray(np.full((24, 24, 3), 40 + 50 * i, np.uint8)).save(cats / f"{i}.png")
    for command in (
        ["memory", "build", str(cats)],
        ["memory", "build", "--from-folder", str(cats)],
    ):
        done = runner.invoke(app, [*command, "--collection", "shop"])
        said = " ".join(done.stderr.split())
        assert done.exit_code == 2 and "holds 2 images and no sub-folder of them" in said, said
        assert f"rar-agent teach LABEL {cats} (e.g. rar-agent teach cats {cats})" in said, said
    (cats / "0.png").rename(tmp_path / "0.png")
    (cats / "black").mkdir()
    (tmp_path / "0.png").rename(cats / "black" / "0.png")  # now a folder with one class folder
    done = runner.invoke(app, ["memory", "build", str(cats), "--collection", "shop"])
    said = " ".join(done.stderr.split())
    assert done.exit_code == 2 and f"memory build --from-folder {cats} stores each" in said, said
    done = runner.invoke(app, ["memory", "build", str(tmp_path / "nope")])
    said = " ".join(done.stderr.split())
    assert done.exit_code == 2 and "--from-folder DIR (a sub-folder per category" in said, said
    assert not (home / "memories" / "shop").exists()


def test_memory_list_finds_labels_by_a_word_and_counts_them(home: Path, tmp_path: Path) -> None:
    """A walk: `memory list` of the built-in memory printed a table of 998 rows and no count,
    with no way to look for one label but scrolling; the agents' list_categories takes
    `contains`. `memory list --contains WORD` keeps the labels containing it (any case), and
    the table ends with how many labels and entries it shows."""
    for i, label in enumerate(("house cat", "wild Cat", "mug")):
        photo = tmp_path / f"{i}.png"
        Image.fromarray(np.full((24, 24, 3), 30 + 70 * i, np.uint8)).save(photo)
        taught = runner.invoke(app, ["memory", "add", label, str(photo), "--collection", "c"])
        assert taught.exit_code == 0, taught.output
    found = runner.invoke(app, ["memory", "list", "--contains", "CAT", "--json"])
    assert found.exit_code == 0 and json.loads(found.stdout) == {"house cat": 1, "wild Cat": 1}
    table = runner.invoke(app, ["memory", "list", "--contains", "cat"]).stdout
    assert table.rstrip().endswith("2 of 3 labels contain 'cat' (2 entries)"), table
    every = runner.invoke(app, ["memory", "list"]).stdout
    assert every.rstrip().endswith("3 labels, 3 entries"), every
    none = runner.invoke(app, ["memory", "list", "--contains", "dog"])
    assert none.exit_code == 0 and "no label contains 'dog' (of 3)" in none.stdout


def test_recognize_names_the_built_in_memory_and_memory_list_finds_it(
    home: Path, tmp_path: Path
) -> None:
    done = runner.invoke(app, ["recognize", str(tmp_path / "a.png"), "--no-progress"])
    assert done.exit_code == 0, done.output
    note = next(line for line in done.output.splitlines() if "built-in memory" in line)
    name = note.split("built-in memory '", 1)[1].split("'", 1)[0]
    assert name.startswith("builtin-") and (home / "memories" / name).is_dir()
    listed = runner.invoke(app, ["memory", "list", "--json"])
    assert listed.exit_code == 0 and f"memory {name!r}, used last by" in listed.output
    again = runner.invoke(app, ["memory", "stats", "--collection", name, "--json"])
    assert again.exit_code == 0 and f'"collection": "{name}"' in again.stdout


def test_recognize_from_the_built_in_memory_names_the_one_just_taught(
    home: Path, tmp_path: Path
) -> None:
    """A walk: `teach sneaker photo.png --collection closet`, then `recognize next.png`
    answered from the built-in memory (ImageNet's classes), its note saying only that no
    memory 'default' exists: nothing said where the photo just taught was. The note names
    the memory the last command used and the option that answers from it, once (the
    built-in memory is then the one used last)."""
    image = str(tmp_path / "a.png")
    taught = runner.invoke(app, ["teach", "sneaker", image, "--collection", "closet"])
    assert taught.exit_code == 0, taught.output
    done = runner.invoke(app, ["recognize", image, "--no-progress"])
    said = " ".join(done.stderr.split())
    assert done.exit_code == 0 and "using the built-in memory" in said, said
    hint = "`rar-agent teach` used the memory 'closet' last: --collection closet answers from it"
    assert hint in said, said
    again = runner.invoke(app, ["recognize", image, "--no-progress"])
    assert "used the memory" not in again.stderr, again.stderr
    named = runner.invoke(app, ["recognize", image, "--collection", "closet"])
    assert named.exit_code == 0 and "built-in memory" not in named.stderr, named.stderr


def test_the_memory_folder_used_last_is_named_as_it_is_typed(home: Path, tmp_path: Path) -> None:
    """After `teach ... --memory "my memories/closet"`, `recognize` from the built-in memory
    said "--memory .../my memories/closet answers from it": pasted, the space split it in
    two and the command failed. The folder is quoted for the shell."""
    import shlex

    image, folder = str(tmp_path / "a.png"), tmp_path / "my memories" / "closet"
    taught = runner.invoke(app, ["teach", "sneaker", image, "--memory", str(folder)])
    assert taught.exit_code == 0, taught.output
    done = runner.invoke(app, ["recognize", image, "--no-progress"])
    said = " ".join(done.stderr.split())
    assert f"--memory {shlex.quote(str(folder))} answers from it" in said, said


def test_a_mistyped_collection_names_the_memory_meant(home: Path, tmp_path: Path) -> None:
    """A walk: `recognize photo --collection closte` (for closet) said "no category memory at
    .../closte: build one first ... or check the path", as did `memory list`; the memories
    whose names are close are named, with the others there."""
    image = str(tmp_path / "a.png")
    taught = runner.invoke(app, ["teach", "sneaker", image, "--collection", "closet"])
    assert taught.exit_code == 0, taught.output
    for command in (["recognize", image, "--no-progress"], ["memory", "list"]):
        done = runner.invoke(app, [*command, "--collection", "closte"])
        said = " ".join(done.stderr.split())
        assert done.exit_code == 2, said
        assert "no memory named 'closte' (did you mean 'closet'?): memories under" in said, said
        far = runner.invoke(app, [*command, "--collection", "zzz"])
        assert "build one first" in far.stderr and "did you mean" not in far.stderr


def test_teach_after_recognize_teaches_the_memory_that_answered(home: Path, tmp_path: Path) -> None:
    """`recognize` answered from the built-in memory, then `teach mug photo.jpg` created a
    one-category default memory that every later `recognize` answered from ('mug' for any
    photo): teach with no memory named teaches the memory the last command used."""
    image = str(tmp_path / "a.png")
    done = runner.invoke(app, ["recognize", image, "--no-progress"])
    assert done.exit_code == 0, done.output
    builtin = done.output.split("built-in memory '", 1)[1].split("'", 1)[0]

    taught = runner.invoke(app, ["teach", "mug", image])
    assert taught.exit_code == 0, taught.output
    assert f"teaching the memory {builtin!r}, used last by `rar-agent recognize`" in taught.stderr
    assert "--collection NAME" in taught.stderr
    assert not (home / "memories" / "default").exists()
    listed = runner.invoke(app, ["memory", "list", "--json", "--collection", builtin])
    assert json.loads(listed.stdout)["mug"] >= 1

    again = runner.invoke(app, ["recognize", image, "--no-progress", "--json"])
    assert again.exit_code == 0, again.output
    assert f"using the built-in memory {builtin!r}" in again.stderr


def test_teach_says_when_a_new_default_memory_takes_over_from_the_built_in_one(
    home: Path, tmp_path: Path
) -> None:
    image = str(tmp_path / "a.png")
    taught = runner.invoke(app, ["teach", "mug", image])  # nothing used before: the default
    assert taught.exit_code == 0, taught.output
    assert (home / "memories" / "default").is_dir()
    told = taught.stdout.splitlines()[-1]
    assert "from now on, with no memory named, they answer from 'default'" in told
    assert "which knows only 'mug'" in told and "--collection builtin-" in told
    assert "rar-agent memory undo" in told

    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(tmp_path / "b.png")
    more = runner.invoke(app, ["teach", "cup", str(tmp_path / "b.png")])
    assert more.exit_code == 0, more.output
    assert "from now on" not in more.output  # said once, when it took over
    named = runner.invoke(app, ["teach", "jar", image, "--collection", "jars"])
    assert named.exit_code == 0 and "from now on" not in named.output


def test_teach_into_a_mistyped_memory_name_says_it_made_a_new_one(
    home: Path, tmp_path: Path
) -> None:
    """`teach cup b.png --collection garmnets` (for garments) made a memory of one category
    and said only "Stored b.png as the first example of the new category 'cup'"."""
    image = str(tmp_path / "a.png")
    first = runner.invoke(app, ["teach", "mug", image, "--collection", "garments"])
    assert first.exit_code == 0, first.output
    assert "memory 'garments' held nothing: it holds only what this taught" in first.stderr
    assert "did you mean" not in first.stderr
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(tmp_path / "b.png")
    typo = runner.invoke(app, ["teach", "cup", str(tmp_path / "b.png"), "--collection", "garmnets"])
    assert typo.exit_code == 0, typo.output
    assert "memory 'garmnets' held nothing" in typo.stderr
    assert "did you mean 'garments'?" in typo.stderr
    assert "`rar-agent memory undo --collection garmnets` takes this teaching back" in typo.stderr
    Image.fromarray(np.full((24, 24, 3), 30, np.uint8)).save(tmp_path / "c.png")
    again = runner.invoke(
        app, ["teach", "jar", str(tmp_path / "c.png"), "--collection", "garments"]
    )
    assert again.exit_code == 0 and "held nothing" not in again.stderr


def test_teach_after_recognize_labels_leaves_that_memory_of_names_alone(
    home: Path, tmp_path: Path
) -> None:
    """A --labels memory answers among exactly the names given: a photo taught into it would
    make `recognize --labels cat,dog` answer 'fox'."""
    image = str(tmp_path / "a.png")
    done = runner.invoke(app, ["recognize", image, "--labels", "cat,dog", "--no-progress"])
    assert done.exit_code == 0, done.output
    vocabulary = json.loads((home / "last-memory.json").read_text())["collection"]
    taught = runner.invoke(app, ["teach", "fox", image])
    assert taught.exit_code == 0, taught.output
    assert vocabulary not in taught.output and (home / "memories" / "default").is_dir()
    listed = runner.invoke(app, ["memory", "list", "--json", "--collection", vocabulary])
    assert set(json.loads(listed.stdout)) == {"cat", "dog"}


def test_teach_after_the_memory_used_last_was_deleted_teaches_the_default_one(
    home: Path, tmp_path: Path
) -> None:
    image = str(tmp_path / "a.png")
    added = runner.invoke(app, ["memory", "add", "thing", image, "--collection", "gone"])
    assert added.exit_code == 0, added.output
    shutil.rmtree(home / "memories" / "gone")
    taught = runner.invoke(app, ["teach", "mug", image])
    assert taught.exit_code == 0, taught.output
    assert "'gone'" not in taught.output and not (home / "memories" / "gone").exists()
    assert (home / "memories" / "default").is_dir()


def test_eval_suggests_the_built_in_dataset_name(tmp_path: Path) -> None:
    from rar_agent.evaluation.data import resolve_sets

    def resolve(dataset: str) -> object:
        return resolve_sets(dataset=dataset, memory_set=None, test_set=None, shots=10,
                            text_memory=False, limit=None, seed=0, workdir=tmp_path)  # fmt: skip

    with pytest.raises(ConfigError, match="did you mean --dataset fashion-mnist"):
        resolve("fashion_mnist")
    with pytest.raises(ConfigError, match="does not exist"):  # not a near miss: the usual error
        resolve("cifar")


def test_a_memory_left_empty_by_undo_or_remove_says_it_stays_and_how_to_remove_it(
    home: Path, tmp_path: Path
) -> None:
    """`teach mug a.png --collection mugs`, then `memory undo`: 'The memory now holds 0 example
    images.', and `memory list` showed an empty table without a word, the memory that
    teaching made still there. No command deletes a memory that was there before it: the
    undo, list and remove of its last category say it stays, empty, and how to remove it."""
    image = str(tmp_path / "a.png")
    assert runner.invoke(app, ["teach", "mug", image, "--collection", "mugs"]).exit_code == 0
    folder = home / "memories" / "mugs"
    stays = "memory 'mugs' holds nothing now; it stays, empty"
    undone = runner.invoke(app, ["memory", "undo"])
    assert undone.exit_code == 0, undone.output
    assert undone.stdout.rstrip().endswith("The memory now holds nothing.")
    said = " ".join(undone.stderr.split())
    assert stays in said and f"delete its folder {folder} to remove it" in said
    again = runner.invoke(app, ["memory", "undo"])  # nothing left to undo: said once, above
    assert again.exit_code == 0 and "Nothing to undo" in again.stdout
    assert stays not in " ".join(again.stderr.split())
    listed = runner.invoke(app, ["memory", "list"])
    assert listed.exit_code == 0 and stays in " ".join(listed.stderr.split())
    assert folder.is_dir()  # it stays, as said
    assert runner.invoke(app, ["teach", "mug", image]).exit_code == 0
    removed = runner.invoke(app, ["memory", "remove", "mug"])
    assert removed.exit_code == 0 and stays in " ".join(removed.stderr.split())
    # a memory that still holds something says nothing of the kind
    assert runner.invoke(app, ["teach", "mug", image]).exit_code == 0
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(tmp_path / "b.png")
    assert runner.invoke(app, ["teach", "cup", str(tmp_path / "b.png")]).exit_code == 0
    kept = runner.invoke(app, ["memory", "undo"])
    assert kept.exit_code == 0 and "holds nothing" not in kept.stderr
    assert kept.stdout.rstrip().endswith("The memory now holds 1 example image.")


def test_removing_a_category_the_memory_lacks_names_the_memory(home: Path, tmp_path: Path) -> None:
    """After `memory add cat a.png --collection pets` and a teaching of the default memory,
    `memory remove cat` said 'no category 'cat' in this memory', with no word of which memory
    it had looked in (the default one: the last command used it)."""
    image = str(tmp_path / "a.png")
    assert (
        runner.invoke(app, ["memory", "add", "cat", image, "--collection", "pets"]).exit_code == 0
    )
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(tmp_path / "b.png")
    assert (
        runner.invoke(
            app, ["teach", "dog", str(tmp_path / "b.png"), "--collection", "default"]
        ).exit_code
        == 0
    )
    done = runner.invoke(app, ["memory", "remove", "cat"])
    said = " ".join(done.output.split())
    default = home / "memories" / "default"
    assert done.exit_code == 2 and f"no category 'cat' in the memory at {default}," in said, said
    assert "--collection NAME or --memory DIR picks another memory" in said


def test_removing_a_category_a_memory_folder_lacks_names_the_folder(
    home: Path, tmp_path: Path
) -> None:
    """`memory remove nothing --memory garments-memory` said "no category 'nothing' in memory
    'default'" (a --memory folder's collection is 'default' whatever the folder) and offered
    only --collection NAME: it names the folder, and --memory DIR too."""
    folder = tmp_path / "garments-memory"
    added = runner.invoke(
        app, ["memory", "add", "cat", str(tmp_path / "a.png"), "--memory", str(folder)]
    )
    assert added.exit_code == 0, added.output
    done = runner.invoke(app, ["memory", "remove", "dog", "--memory", str(folder)])
    said = " ".join(done.output.split())
    assert done.exit_code == 2 and f"no category 'dog' in the memory at {folder}," in said, said
    assert "memory 'default'" not in said and "or --memory DIR picks another" in said


def test_a_memory_folder_used_last_is_named_by_its_folder(home: Path, tmp_path: Path) -> None:
    """After `recognize ... --memory seven-memory`, `teach bag photo.png` said "teaching the
    memory 'default', used last by `rar-agent recognize` (/tmp/.../seven-memory)": a --memory
    folder's collection is 'default' whatever the folder. It names the folder."""
    folder = tmp_path / "seven-memory"
    image = str(tmp_path / "a.png")
    added = runner.invoke(app, ["memory", "add", "cat", image, "--memory", str(folder)])
    assert added.exit_code == 0, added.output
    Image.fromarray(np.full((24, 24, 3), 30, np.uint8)).save(tmp_path / "b.png")
    taught = runner.invoke(app, ["teach", "bag", str(tmp_path / "b.png")])
    said = " ".join(taught.stderr.split())
    assert taught.exit_code == 0, taught.output
    assert f"teaching the memory at {folder}, used last by `rar-agent memory add`" in said, said
    assert "'default'" not in said
