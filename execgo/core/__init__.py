"""
Values and pure rules: errors, the request models, task records, the
untrusted-input layer (strict JSON, decoding, validation), plan
resolution, capabilities, the capacity ledger and its view, outcome
classification, recovery, configuration, and the JSON renderings of
tasks, events and timestamps.  Standard library and attrs only: no I/O,
no Twisted; every other layer builds on it.
"""
