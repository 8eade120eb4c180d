"""cri_client.py: a small CRI (runtime.v1) client, the calls kubelet makes to start a pod.

gRPC itself is grpcio's; the messages are encoded here with a minimal protobuf writer and read
with a minimal reader, for the few fields these tests use (field numbers from the CRI API,
k8s.io/cri-api runtime/v1 api.proto).
"""
from __future__ import annotations

import grpc

RUNTIME = "/runtime.v1.RuntimeService/"
IMAGE = "/runtime.v1.ImageService/"


# --- protobuf, the minimum -----------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value) -> bytes:
    """One field: str/bytes/nested message (bytes) as length-delimited, int/bool as varint."""
    if isinstance(value, bool) or isinstance(value, int):
        return _varint(number << 3) + _varint(int(value))
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def message(*fields: bytes) -> bytes:
    return b"".join(fields)


def string_map(number: int, mapping: dict[str, str]) -> bytes:
    return b"".join(field(number, message(field(1, k), field(2, v))) for k, v in mapping.items())


def parse(data: bytes) -> dict[int, list]:
    """Field number -> values (varints as int, length-delimited as bytes)."""
    out: dict[int, list] = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 2:
            length, i = _read_varint(data, i)
            value, i = data[i:i + length], i + length
        elif wire == 1:
            value, i = data[i:i + 8], i + 8
        elif wire == 5:
            value, i = data[i:i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


def first(msg: dict[int, list], number: int, default=None):
    return msg.get(number, [default])[0]


# --- the client ------------------------------------------------------------------------------------
class CriClient:
    def __init__(self, socket_path: str, timeout: float = 120):
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.timeout = timeout

    def call(self, method: str, request: bytes) -> dict[int, list]:
        stub = self.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        return parse(stub(request, timeout=self.timeout))

    def version(self) -> str:
        reply = self.call(RUNTIME + "Version", field(1, "v1"))
        return first(reply, 2, b"").decode() + " " + first(reply, 3, b"").decode()

    @staticmethod
    def sandbox_config(name: str, uid: str, namespace: str, log_dir: str) -> bytes:
        metadata = message(field(1, name), field(2, uid), field(3, namespace), field(4, 0))
        return message(field(1, metadata), field(2, name), field(3, log_dir))

    def run_pod_sandbox(self, config: bytes, runtime_handler: str = "") -> str:
        req = message(field(1, config), field(2, runtime_handler)) if runtime_handler else field(1, config)
        return first(self.call(RUNTIME + "RunPodSandbox", req), 1).decode()

    def pod_ip(self, sandbox_id: str) -> str:
        status = parse(first(self.call(RUNTIME + "PodSandboxStatus", field(1, sandbox_id)), 1))
        network = parse(first(status, 5, b""))
        return first(network, 1, b"").decode()

    def create_container(self, sandbox_id: str, sandbox_config: bytes, name: str, image: str,
                         log_path: str, memory_limit: int = 0) -> str:
        parts = [field(1, message(field(1, name), field(2, 0))), field(2, field(1, image)), field(11, log_path)]
        if memory_limit:
            resources = field(4, memory_limit)          # LinuxContainerResources.memory_limit_in_bytes
            parts.append(field(15, field(1, resources)))  # LinuxContainerConfig.resources
        req = message(field(1, sandbox_id), field(2, message(*parts)), field(3, sandbox_config))
        return first(self.call(RUNTIME + "CreateContainer", req), 1).decode()

    def start_container(self, cid: str) -> None:
        self.call(RUNTIME + "StartContainer", field(1, cid))

    def container_state(self, cid: str) -> tuple[int, int]:
        """(state: 0 created, 1 running, 2 exited, 3 unknown; exit code)."""
        status = parse(first(self.call(RUNTIME + "ContainerStatus", field(1, cid)), 1))
        return first(status, 3, 0), first(status, 7, 0)

    def stop_container(self, cid: str, timeout: int = 10) -> None:
        self.call(RUNTIME + "StopContainer", message(field(1, cid), field(2, timeout)))

    def remove_container(self, cid: str) -> None:
        self.call(RUNTIME + "RemoveContainer", field(1, cid))

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.call(RUNTIME + "StopPodSandbox", field(1, sandbox_id))

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.call(RUNTIME + "RemovePodSandbox", field(1, sandbox_id))

    def close(self) -> None:
        self.channel.close()
