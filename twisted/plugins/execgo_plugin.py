# -*- test-case-name: tests.test_plugin -*-
"""
The C{execgo} twistd plugin: C{twistd -n execgo serve ...}.

Two statements and a lazy import, so twistd's plugin scan stays cheap.
"""

from twisted.application.service import ServiceMaker

execgo = ServiceMaker(
    "execgo", "execgo.server.tap", "A durable task-execution runtime for one host.", "execgo"
)
