"""The one exception type a user ever sees: the CLI prints its message on one line and exits 1."""


class GptlabError(Exception):
    """A failure caused by the user's input (a path, a flag, a corpus, a prompt), not by a bug."""
