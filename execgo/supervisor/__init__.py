"""
The supervisor process: the daemon and its loop, the engine that runs and
reaps tasks, the launcher that builds a workload process and the sandbox
wrapper.  Standard library only, so it starts fast and stays small.
"""
