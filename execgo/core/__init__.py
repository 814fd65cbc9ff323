"""
Values and pure rules: errors, the request models, task records, validation,
plan resolution, capabilities, the capacity ledger, outcome classification,
recovery and configuration.  Standard library and attrs only: no I/O, no
Twisted; every other layer builds on it.
"""
