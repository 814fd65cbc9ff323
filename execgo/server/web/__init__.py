"""
The server's HTTP face: the Klein API, its streams, the OpenAPI document,
authentication, streamed responses, the listener's limits, and the
operator page served beside the API (C{page}, its files in C{ui/}).
"""
