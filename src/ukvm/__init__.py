"""ukvm: a minimal unikernel monitor for Linux/KVM (Solo5 hvt ABI 2)."""

__version__ = "0.1.0"
HVT_ABI_VERSION = 2
