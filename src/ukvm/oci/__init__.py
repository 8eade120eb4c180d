"""oci: ukvm under containerd: the ukvm-oci runtime (runtime.py) and `ukvm oci build` (image.py).

A front end. May import machine (to check an image) and errors; it hands a container to `ukvm run`
by exec, never by import.
"""
