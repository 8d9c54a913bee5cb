"""The one exception type a user ever sees: the CLI prints its message on one line and exits 1."""

import os


class GptlabError(Exception):
    """A failure caused by the user's input (a path, a flag, a corpus, a prompt), not by a bug."""


def is_main_process() -> bool:
    """False in the processes of a torchrun job other than rank 0, which leave warnings and errors to it
    (several processes fail alike)."""
    return int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("RANK", "0") == "0"
