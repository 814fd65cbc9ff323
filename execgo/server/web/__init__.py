"""
The server's HTTP face: the Klein API, its streams, the OpenAPI document,
authentication, streamed responses and the listener's limits.
"""
