"""serve: `ukvm serve`: a fresh clone of one unikernel for every TCP connection (docs/serve.md).

Theory of operation. The unikernel boots once, on a NIC whose frames go through the switch, and
is warmed up: a handshake from the host's address to its port, answered, then reset (warmup.py);
at the next POLL with nothing pending ("ready": it has answered and waits) it is snapshotted and
the boot VM closed. A pool of clones is made from the snapshot, each
with a vCPU thread that runs its VM for one connection at a time and resets it afterwards.

The main thread runs one event loop (epoll) over: the listening socket, the TAP, each clone's
end of the switch, the two sockets of every connection, and an eventfd through which clone
threads report that a run ended. For a connection accepted on --listen it takes an idle clone,
opens a TCP connection from the host side of the TAP to the guest's IP and port, and relays
bytes between the two. The guest's own TCP/IP stack talks to the host's end to end.

Every clone has the same MAC and IP (they are one snapshot), so the switch routes frames by the
host side's port: a frame from the TAP to the guest's port goes to the clone serving the
connection that owns the frame's source port. The switch answers ARP both ways itself (the
guest's MAC to the host, the TAP's MAC to a clone), so a clone's first frame needs no round
trip, and it lets a clone send only TCP from the guest's port to its own connection: a clone
cannot reach another clone's connection or anything else on the host.

A run ends when the connection ends (the clone is stopped in POLL, woken by its eventfd), when
its deadline passes (a spinning guest is stopped by immediate_exit and a signal), or when the
guest halts or faults; in every case the clone is reset and goes back to the pool, and only
that connection is affected. SIGTERM stops accepting, lets the connections in flight finish
(bounded by their deadlines), and releases everything: clones, TAP, sockets, the snapshot.

The package: config (the command line, validated, pure), frames and switch (frames as bytes,
pure), warmup (boot until ready, snapshot), pool (a clone and its thread), relay (one
connection's bytes), metrics, server (set-up and teardown), loop (the event loop), main
(`ukvm serve`).

A front end. May import machine, modules, sandbox (and the bottom: errors, hvt_abi, options);
never cli or oci.
"""


def serve_main(argv: list[str]) -> int:
    from ukvm.serve.main import serve_main as main
    return main(argv)
