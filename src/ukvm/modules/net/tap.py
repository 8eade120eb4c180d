"""tap.py: attaching Linux TAP interfaces (hvt-abi.md section 11): open, MTU, offloads off.

Every failure raises OSError with the errno upstream reports, so the caller can print
`Could not attach interface: IFACE: <errno text>`.
"""
import ctypes
import errno
import fcntl
import os
import socket
import struct

TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_UP = 0x1
IFF_RUNNING = 0x40
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFADDR = 0x8916
SIOCSIFNETMASK = 0x891C
SIOCGIFHWADDR = 0x8927
SIOCGIFMTU = 0x8921
SIOCETHTOOL = 0x8946
ETHTOOL_SGSO = 0x24
ETHTOOL_SGRO = 0x2C
IFNAMSIZ = 16
IFREQ = struct.Struct("16sH22x")          # ifr_name, then a short (flags) in the union
IFREQ_INT = struct.Struct("16si20x")      # ifr_name, then an int (mtu) in the union
IFREQ_PTR = struct.Struct("16sQ16x")      # ifr_name, then a pointer (ifr_data)
IFREQ_ADDR = struct.Struct("16sH2s4s16x")  # ifr_name, then a sockaddr_in (family, port, address)
IFREQ_HWADDR = struct.Struct("16sH6s16x")  # ifr_name, then a sockaddr (family, MAC)


def _ifreq_name(name: str) -> bytes:
    raw = os.fsencode(name)
    if len(raw) >= IFNAMSIZ:
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
    return raw


def _ioctl_sock(request: int, arg: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        return fcntl.ioctl(s.fileno(), request, arg)


def interface_mtu(name: str) -> int:
    return IFREQ_INT.unpack(_ioctl_sock(SIOCGIFMTU, IFREQ_INT.pack(_ifreq_name(name), 0)))[1]


def disable_offloads(name: str) -> None:
    """GRO/GSO off, so the kernel never hands the guest frames larger than the MTU. Best effort."""
    for cmd in (ETHTOOL_SGRO, ETHTOOL_SGSO):
        value = ctypes.create_string_buffer(struct.pack("II", cmd, 0))
        try:
            _ioctl_sock(SIOCETHTOOL, IFREQ_PTR.pack(_ifreq_name(name), ctypes.addressof(value)))
        except OSError:
            pass


def open_tap(name: str) -> tuple[int, int]:
    """Attach to the existing, up TAP interface `name`; returns (non-blocking fd, MTU)."""
    ifname = _ifreq_name(name)
    try:
        flags = IFREQ.unpack(_ioctl_sock(SIOCGIFFLAGS, IFREQ.pack(ifname, 0)))[1]
    except OSError as e:
        if e.errno == errno.ENODEV:    # checked first so that opening the TAP never creates one
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT)) from None
        raise
    if not flags & (IFF_UP | IFF_RUNNING):
        raise OSError(errno.ENETDOWN, os.strerror(errno.ENETDOWN))
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        got = fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(ifname, IFF_TAP | IFF_NO_PI))
        if IFREQ.unpack(got)[0].rstrip(b"\0") != ifname:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        mtu = interface_mtu(name)
    except BaseException:
        os.close(fd)
        raise
    disable_offloads(name)
    return fd, mtu


def adopt_tap_fd(fd: int) -> tuple[int, int, str]:
    """An already-open TAP fd handed over by an orchestrator (`@FD`): (fd, MTU, interface name).

    Upstream v0.12.1 cannot work here because it never learns the MTU; TUNGETIFF tells us the
    interface behind the fd, and its MTU comes from the interface as for `--net:NAME=IFACE`.
    """
    got = fcntl.ioctl(fd, TUNGETIFF, IFREQ.pack(b"", 0))
    name_raw, flags = IFREQ.unpack(got)
    if not flags & IFF_TAP or not flags & IFF_NO_PI:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
    os.set_blocking(fd, False)
    name = os.fsdecode(name_raw.rstrip(b"\0"))
    mtu = interface_mtu(name)
    disable_offloads(name)
    return fd, mtu, name


def create_tap(name: str, address: bytes, netmask: bytes) -> tuple[int, bytes]:
    """A new TAP `name` that lives as long as the returned fd, with IPv4 `address`/`netmask` on
    the host side, up; returns (non-blocking fd, the interface's MAC). For `ukvm serve`."""
    ifname = _ifreq_name(name)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, IFREQ.pack(ifname, IFF_TAP | IFF_NO_PI))
        _ioctl_sock(SIOCSIFADDR, IFREQ_ADDR.pack(ifname, socket.AF_INET, b"", address))
        _ioctl_sock(SIOCSIFNETMASK, IFREQ_ADDR.pack(ifname, socket.AF_INET, b"", netmask))
        flags = IFREQ.unpack(_ioctl_sock(SIOCGIFFLAGS, IFREQ.pack(ifname, 0)))[1]
        _ioctl_sock(SIOCSIFFLAGS, IFREQ.pack(ifname, flags | IFF_UP))
        mac = IFREQ_HWADDR.unpack(_ioctl_sock(SIOCGIFHWADDR, IFREQ_HWADDR.pack(ifname, 0, b"")))[2]
    except BaseException:
        os.close(fd)
        raise
    disable_offloads(name)
    return fd, mac
