"""CLI sub-commands for this area (see minillm/cli.py). Not built yet."""


def register(sub):
    pass
