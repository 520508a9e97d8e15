"""`python -m search.cli`."""

from . import main

main()
