"""The base of every error ``mvot`` reports to a person (bad params, data, checkpoints...).

The CLI prints such an error as one message and exits non-zero; anything else is a bug
and keeps its traceback. Kept in a module of its own so that catching it imports nothing
heavy.
"""


class MvotError(Exception):
    """A problem with the user's input or files; the message names it and the fix."""
