"""A bad option value, from the command line or a ``RAR_*`` variable, is one ``error:`` line on
stderr naming the option (and its variable), what was wrong and what to give; exit 2.

typer reads option values with pydantic, and said so in pydantic's words in a framed box:
`mcp --per-minute -1` gave "Invalid value for '--per-minute' (env var: 'RAR_PER_MINUTE'):
Input should be greater than or equal to 1"; ``Settings`` did the same for --ranker-timeout,
--qdrant-timeout and RAR_FETCH_K (as a --fetch-k no command has). `eval --gate xyz`
and `--reject auto:2` named no option ("Unknown gate setting 'xyz'..."), nor `finetune-data
--top-n 0` ("top_n must be a positive integer"), `--top-n 3 --k 5` ("top_n (3) must be at
least k (5)") or `--kind both` ("kind must be auto, image or text").
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rar_agent.cli import app
from rar_agent.cli.options import EXIT_USAGE

runner = CliRunner()

FINETUNE = ["finetune-data", "--from-folder", "d", "--out", "o.json"]

CASES = [
    # (command line, environment, the name it must give, what to give)
    (["mcp", "--per-minute", "-1"], {}, "--per-minute (RAR_PER_MINUTE)", "1 or more"),
    (["mcp", "--per-minute", "abc"], {}, "--per-minute (RAR_PER_MINUTE)", "1 or more"),
    (["mcp", "--max-body-mb", "0"], {}, "--max-body-mb (RAR_MAX_BODY_MB)", "1 or more"),
    (["mcp"], {"RAR_BATCH_IMAGES": "0"}, "--batch-images (RAR_BATCH_IMAGES)", "1 or more"),
    (["mcp"], {"RAR_MAX_PIXELS": "abc"}, "--max-pixels (RAR_MAX_PIXELS)", "1 or more"),
    (["mcp", "--port", "70000"], {}, "--port", "from 0 to 65535"),
    (["chat", "--port", "abc"], {}, "--port", "from 0 to 65535"),
    (["mcp", "--k", "abc"], {}, "--k", "a whole number"),
    (["mcp", "--ranker-timeout", "-1"], {}, "--ranker-timeout (RAR_RANKER_TIMEOUT)", "above 0"),
    (["mcp", "--ranker-timeout", "nan"], {}, "--ranker-timeout (RAR_RANKER_TIMEOUT)", "above 0"),
    (["mcp", "--qdrant-timeout", "0"], {}, "--qdrant-timeout (RAR_QDRANT_TIMEOUT)", "1 or more"),
    (["mcp"], {"RAR_QDRANT_TIMEOUT": "abc"}, "--qdrant-timeout (RAR_QDRANT_TIMEOUT)", "number"),
    (["recognize", "x.jpg"], {"RAR_FETCH_K": "0"}, "invalid RAR_FETCH_K", "1 or more"),
    (["memory", "history", "--limit", "0"], {}, "--limit", "1 or more"),
    (["memory", "undo", "abc"], {}, "invalid n", "a whole number"),
    (["memory", "push", "--shards", "0"], {}, "--shards", "1 or more"),
    (["datasets", "augment", "src", "out", "--views", "0"], {}, "--views", "1 or more"),
    (["eval", "--dataset", "d", "--gate", "xyz"], {}, "invalid --gate", "a margin like 0.05"),
    (["eval", "--dataset", "d", "--reject", "auto:2"], {}, "invalid --reject", "(0, 0.5]"),
    (["eval", "--dataset", "d", "--stream", "--stream-share", "2"], {}, "--stream-share", "(0, 1)"),
    ([*FINETUNE, "--k", "1"], {}, "invalid --k", "from 2 to 100"),
    ([*FINETUNE, "--k", "101"], {}, "invalid --k", "101 is more than 100"),
    ([*FINETUNE, "--top-n", "0"], {}, "invalid --top-n", "1 or more"),
    ([*FINETUNE, "--windows", "0"], {}, "invalid --windows", "1 or more"),
    ([*FINETUNE, "--max-per-class", "0"], {}, "invalid --max-per-class", "1 or more"),
    ([*FINETUNE, "--top-n", "3", "--k", "5"], {}, "invalid --top-n", "less than --k (5)"),
    ([*FINETUNE, "--kind", "both"], {}, "invalid --kind", "one of 'auto', 'image', 'text'"),
    (["teach"], {}, "Missing argument 'label'", "rar-agent teach --help"),
    (["mcp", "--bogus"], {}, "No such option: --bogus", "rar-agent mcp --help"),
    (["--bogus"], {}, "No such option: --bogus", "rar-agent --help"),  # the group's own
    # typer said only "No such option": eval builds its memory and reads no stored one
    (["eval", "--collection", "x"], {}, "No such option: --collection", "--memory PATH keeps"),
    # typer offered --help for teach's --label, --gate and --k for the server's --token
    (["teach", "--label", "x", "a.png"], {}, "No such option: --label", "teach LABEL IMAGE"),
    (["mcp", "--token", "x"], {}, "No such option: --token", "rar-agent auth add NAME"),
    # memory add takes its label as teach does, and offered only --help for --label
    (["memory", "add", "--label", "x", "a.png"], {}, "No such option: --label", "add LABEL IMAGE"),
    # click's near misses offered --api-key for --top-k: the suggestion a misspelt RAR_*
    # variable gets (the setting other tools call so, else a spelling at least 0.7 alike)
    (["recognize", "--top-k", "3", "a.png"], {}, "No such option: --top-k (did you mean --k?)",
     "`rar-agent recognize --help`"),
    (["recognize", "--topk", "3", "a.png"], {}, "No such option: --topk (did you mean --k?)",
     "`rar-agent recognize --help`"),
    (["recognize", "--threshold", "0.5", "a.png"], {}, "--threshold (did you mean --reject?)",
     "`rar-agent recognize --help`"),
    (["recognize", "--colection", "c", "a.png"], {}, "(did you mean --collection?)", "--help"),
    (["memory", "history", "--top-k", "3"], {}, "No such option: --top-k (`rar-agent memory",
     "history --help`"),  # no --k there: not --token either
    (["recognize", "--verbose", "a.png"], {}, "No such option: --verbose (`rar-agent", "--help"),
    # a group's command given at the top: typer said only "No such command 'stats'"
    (["stats"], {}, "No such command 'stats' (did you mean `rar-agent memory stats`?)",
     "`rar-agent --help`"),
    (["list"], {}, "(did you mean `rar-agent auth list` or `rar-agent memory list`?)", "--help"),
    (["memroy", "list"], {}, "No such command 'memroy'", "Did you mean 'memory'?"),  # typer's
]  # fmt: skip


@pytest.mark.parametrize(("args", "env", "name", "wanted"), CASES)
def test_a_bad_value_is_one_line_naming_the_option(
    args: list[str], env: dict[str, str], name: str, wanted: str, tmp_path: Path
) -> None:
    done = runner.invoke(app, args, env={"RAR_HOME": str(tmp_path), **env})
    assert done.exit_code == EXIT_USAGE, done.output
    assert isinstance(done.exception, SystemExit)  # no traceback
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert name in lines[0] and wanted in lines[0], lines[0]
    for library_words in ("Input should", "valid integer", "unable to parse", "Invalid value"):
        assert library_words not in done.output, done.output
    assert "--fetch-k" not in done.output  # no command has it: the variable alone is named


def test_chat_on_a_port_it_cannot_have_says_so(
    tiny_cli_env: Path,
) -> None:
    """`chat --port N` with N in use (or --host a name that is not this machine's) died in
    Gradio with a traceback and exit 1: "Cannot find empty port in range: N-N. You can
    specify a different port by setting the GRADIO_SERVER_PORT..."."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = runner.invoke(app, ["chat", "--port", str(port), "--labels", "a,b"])
    assert done.exit_code == EXIT_USAGE, done.output
    assert isinstance(done.exception, SystemExit)  # no traceback
    said = " ".join(done.stderr.split())  # rich wraps long lines
    assert f"error: cannot serve the chat page on 127.0.0.1:{port}" in said, said
    assert "pick another --port (0 picks a free one) or --host" in said, said
    assert "GRADIO" not in done.output
    # a walk saw 'chat page on http://127.0.0.1:N/ (Ctrl+C to stop)' printed before the error
    assert "Ctrl+C to stop" not in done.output, done.output
