#!/usr/bin/env bash
# test.sh: install what the test suite needs, then run all of it (unit, integration, network).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v gcc >/dev/null || need+=(gcc)
command -v ld >/dev/null || need+=(binutils)
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v gdb >/dev/null || need+=(gdb)
# solo5-hvt (../shared/solo5-v0.12.1, the reference the conformance tests compare with) links it.
[ -e /lib/x86_64-linux-gnu/libseccomp.so.2 ] || [ -e /usr/lib/x86_64-linux-gnu/libseccomp.so.2 ] || need+=(libseccomp2)
# The lwIP example (ukvm serve's tests) builds lwIP from Debian's source package: `apt-get source`
# needs deb-src entries and dpkg-dev.
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
command -v curl >/dev/null || need+=(curl)
# ukvm-oci's tests start Debian's containerd (with its runc shim) and use the CNI plugins.
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
# The Kubernetes tests: kube-proxy programs iptables; the cluster's certificates come from openssl.
command -v iptables >/dev/null || need+=(iptables)
command -v openssl >/dev/null || need+=(openssl)
update=0
bash examples/httpd/apt-deb-src.sh | grep -q added && update=1
if [ ${#need[@]} -gt 0 ] || [ $update = 1 ]; then
    echo "test.sh: installing ${need[*]}"
    apt-get update -qq
    [ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'
# The Kubernetes tests (tests/integration/test_k8s.py) run a real cluster: kubelet & co built from
# Debian's source once per cache (~8-11 minutes on 2 cores when absent; their fixture builds them
# too when they run alone). For the whole suite, build first, so that the cost shows here.
[ $# -gt 0 ] || bash scripts/build-k8s.sh
exec python3 -m pytest -q -ra "$@"
