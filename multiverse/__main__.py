"""``python -m multiverse …``: the same CLI as the ``multiverse`` command (:func:`multiverse.cli.main`)."""

from .cli import main

main()
