"""kvm: the KVM API as ctypes structs and ioctls (the lowest layer).

May import: ukvm.errors only."""
