"""toolchain: `ukvm build` (compile and link a unikernel against the runtime), the cache, and the
supervisor image's build (run by setup.py's build hook).

May import: ukvm.errors, ukvm.machine.manifest (the manifest note), ukvm.machine.elf (the mode
note's bits), ukvm.machine.supervisor (where its image goes and how it is hashed). Never a front end."""
