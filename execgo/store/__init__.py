"""
The task store both processes share: the schema and its transitions,
listing, tallies, idempotency and the task files beside the rows.
Standard library only; the server reaches it through adbapi.
"""
