"""
The server process on Twisted: the runtime, the scheduler, the adbapi
database, waiters, the link to the supervisor, upkeep, metrics, logs and
the twistd service.
"""
