"""
execgo: a durable task-execution runtime for one host.

This module only carries the version: importing the package must stay cheap
(no reactor, no Twisted) so the CLI and the supervisor start fast.
"""

__version__ = "1.1.0"
