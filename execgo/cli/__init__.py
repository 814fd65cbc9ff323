"""
The C{execgo-runtime} command line: click commands and the small
synchronous HTTP transport they use.  Never imports Twisted outside the
commands that start a server.
"""
