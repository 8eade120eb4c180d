"""toolchain: `ukvm build` (compile and link a unikernel against the runtime) and the cache.

May import: ukvm.errors, ukvm.machine.manifest (the manifest note). Never a front end."""
