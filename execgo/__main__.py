"""
C{python -m execgo}: the same as the C{execgo-runtime} console script.
"""

from execgo.cli.main import main

main()
