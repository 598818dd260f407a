"""``python -m alfa_ad`` = the ``alfa-ad`` command."""

from .cli import main

main()
