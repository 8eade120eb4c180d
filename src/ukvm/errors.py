"""errors.py: the exception tree; each message is written once, here or at the raise site.

Only the CLI prints these (as `prog: message`) and turns them into an exit status.
Guest mistakes that the ABI answers with a return code never become exceptions.
"""


class UkvmError(Exception):
    """Base class: a user, host or guest error that ends the tender with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str = "", with_prog: bool = True):
        super().__init__(message)
        self.with_prog = with_prog   # a few upstream messages carry no `prog: ` prefix


class UsageError(UkvmError):
    """Bad command line; the CLI prints the usage text after the message."""

    def __init__(self, message: str = "", show_usage: bool = True):
        super().__init__(message)
        self.show_usage = show_usage


class ElfError(UkvmError):
    """The kernel file is not a loadable hvt unikernel (message already carries `FILE: `)."""


class ManifestError(UkvmError):
    """A manifest (binary note or JSON source) is invalid."""


class KvmError(UkvmError):
    """KVM refused something during set-up or run."""


class HostIOError(UkvmError):
    """A host file, tap or console operation failed; the guest cannot continue."""


class GuestMemoryError(UkvmError):
    """A guest-supplied address range falls outside guest memory (or hits a protected page)."""

    def __init__(self, gpa: int, size: int):
        super().__init__(f"Invalid guest access: gpa={gpa:#x}, sz={size}")
        self.gpa = gpa
        self.size = size


class GuestFault(UkvmError):
    """The vCPU stopped in a way the guest cannot recover from (bad port, triple fault, ...)."""


class SignalExit(UkvmError):
    """SIGINT or SIGTERM arrived; the tender ends the guest and exits 1."""

    def __init__(self, signum: int):
        super().__init__(f"Exiting on signal {signum}")
        self.signum = signum
