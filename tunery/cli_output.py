"""Where the command line writes: results to stdout, messages and errors to stderr (every `tunery` command module
imports these; none imports another command module)."""

from rich.console import Console

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
