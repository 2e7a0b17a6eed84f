"""The one exception type for mistakes a user can make (bad input, bad flags, missing files).

The CLI catches it, prints one line `error: <message>` to stderr and exits with code 2, never a
traceback. Anything else that escapes is a bug in minillm and keeps its traceback.
"""


class MiniLLMError(Exception):
    """A user mistake: the message says what went wrong and what to do about it."""
