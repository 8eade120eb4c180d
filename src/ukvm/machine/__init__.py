"""machine: one hvt virtual machine: guest memory, the ELF loader, the manifest, vCPU set-up, the
exit loop, the CPL3 supervisor, snapshots.

May import: ukvm.errors, ukvm.hvt_abi, ukvm.kvm, ukvm.modules (the module interface only), and
ukvm.toolchain (the supervisor's build). Never a front end (cli, serve, oci)."""
