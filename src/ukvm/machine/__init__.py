"""machine: one hvt virtual machine: guest memory, the ELF loader, the manifest, vCPU set-up, the
exit loop, the CPL3 supervisor, snapshots and their clones (clone.py).

May import: ukvm.errors, ukvm.hvt_abi, ukvm.options, ukvm.kvm, ukvm.modules (the module interface
only), ukvm.sandbox.needs (to declare what the clone and snapshot machinery needs once
confined). Not ukvm.toolchain: the supervisor's image is built with the package and only loaded here.
Never a front end (cli, serve, oci)."""
