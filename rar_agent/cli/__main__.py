"""``python -m rar_agent.cli``: the same as the ``rar-agent`` command."""

from rar_agent.cli import main

main()
