"""
The edges of the operating system: the host probe, cgroups, /proc, file
I/O, task identities (uids) and the vfork spawn extension.  Standard
library only, so the supervisor can use it.
"""
