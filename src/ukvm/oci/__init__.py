"""oci: ukvm under containerd: the ukvm-oci runtime (runtime.py) and `ukvm oci build` (image.py)."""
