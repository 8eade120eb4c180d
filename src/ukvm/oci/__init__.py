"""oci: ukvm under containerd: the ukvm-oci runtime and `ukvm oci build`.

runtime.py (the command line; lean commands), state.py (state on disk, the shim's log),
create.py (create and the container's process), unikernel.py (what the image says, read as
hostile input), safeopen.py (paths of the image opened inside its rootfs), cgroups.py (the
container's cgroup and limits), network.py (its network namespace and NIC), launcher.py (the
lean executable for containerd), image.py (`ukvm oci build`).

A front end. May import machine (to check an image), options and errors; it hands a container
to `ukvm run` by exec, never by import.
"""
