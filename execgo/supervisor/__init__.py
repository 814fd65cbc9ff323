"""
The supervisor processes: the daemon and its loop (C{daemon}), the
single-task shim (C{shim}), the plumbing they share (C{plumbing}), the
engine that runs and reaps tasks (C{engine}) on its clock (C{timers}) and
its edges to the kernel (C{processes}), the launcher that builds a
workload process and the sandbox wrapper.  Standard library only, so it
starts fast and stays small.
"""
