#!/usr/bin/env python3
"""bench/pyfloor.py N [TOUCH]: floor.c's `exits` loop (real-mode `out`, re-entered at once) driven
from Python with the tender's own KVM_RUN call (VcpuFd.run_ioctl, libc's ioctl through ctypes):
what one KVM_RUN round trip costs a Python process, printed in ns.
With TOUCH, that many small objects spread over the heap are updated between exits and only the
time inside KVM_RUN is counted: how the round trip grows with the memory a tender touches."""
import ctypes
import mmap
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))
from ukvm.kvm import abi  # noqa: E402
from ukvm.kvm.ioctls import Kvm  # noqa: E402

n = int(sys.argv[1])
touch = int(sys.argv[2]) if len(sys.argv) > 2 else 0
kvm = Kvm()
vm = kvm.create_vm()
vcpu = vm.create_vcpu(kvm)
mem = mmap.mmap(-1, 0x10000, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
mem[0x1000:0x1004] = bytes([0xE6, 0x10, 0xEB, 0xFC])        # out %al, $0x10; jmp back
pin = ctypes.c_char.from_buffer(mem)
vm.set_user_memory_region(0, 0, 0x10000, ctypes.addressof(pin))
sregs = vcpu.get_sregs()
sregs.cs.base = sregs.cs.selector = 0
vcpu.set_sregs(sregs)
vcpu.set_regs(abi.kvm_regs(rip=0x1000, rflags=2))
ioctl, fd, run = vcpu.run_ioctl, vcpu.fd, abi.KVM_RUN
if not touch:
    t = time.perf_counter()
    for _ in range(n):
        ioctl(fd, run, 0)
    print(f"{(time.perf_counter() - t) / n * 1e9:.0f}")
else:
    objects = [{"a": i} for i in range(200000)]
    stride = len(objects) // touch
    clock, inside = time.perf_counter, 0.0
    for i in range(n):
        t = clock()
        ioctl(fd, run, 0)
        inside += clock() - t
        for j in range(i % stride, len(objects), stride):
            objects[j]["a"] += 1
    print(f"{inside / n * 1e9:.0f}")
