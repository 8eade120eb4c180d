#!/usr/bin/env bash
# build-k8s.sh: build Kubernetes v1.20.2 (kubelet, the control plane, kube-proxy, kubectl) from Debian's
# `kubernetes` source package, offline, with Debian's Go; install etcd. The binaries land in
# $UKVM_K8S_DIR (default ~/.cache/ukvm/k8s-v1.20.2/bin) and are reused when present, so only the
# first run pays (~8-11 minutes on 2 cores). Why from source: Debian packages no kubelet, and the Go
# module proxy is not reachable here (../shared/k8s/README.md). Needs root (apt-get).
# `--source-only`: just fetch the source tree (the CRI API's .proto for the tests' CRI client).
# Environment: UKVM_K8S_DIR, K8S_GO_PROCS (parallel go compiles; default: all cores).
set -euo pipefail
source_only=0
[ "${1:-}" = --source-only ] && source_only=1
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${UKVM_K8S_DIR:-$HOME/.cache/ukvm/k8s-v1.20.2}"
bin="$dir/bin"
version=v1.20.2
binaries=(kubelet kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl)

missing=()
for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || missing+=("$b"); done
[ $source_only = 0 ] || missing=(source)
need=()
[ $source_only = 1 ] || command -v etcd >/dev/null || need+=(etcd-server)
[ ${#missing[@]} -eq 0 ] || [ $source_only = 1 ] || { command -v go >/dev/null || need+=(golang-go); command -v dpkg-source >/dev/null || need+=(dpkg-dev); }
[ $source_only = 0 ] || command -v dpkg-source >/dev/null || need+=(dpkg-dev)
if [ ${#need[@]} -gt 0 ]; then
    echo "build-k8s.sh: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Debian's etcd-server package enables a service; the tests start their own etcd instead.
[ ${#missing[@]} -gt 0 ] || { echo "build-k8s.sh: binaries present in $bin"; exit 0; }

mkdir -p "$dir/src" "$bin"
if [ ! -d "$dir/src/kubernetes-1.20.2" ]; then
    bash "$here/examples/httpd/apt-deb-src.sh" | grep -q added && apt-get update -qq
    # apt-get source extracts with dpkg-source, which applies debian/patches (format 3.0 quilt).
    (cd "$dir/src" && apt-get source -qq kubernetes >/dev/null 2>"$dir/src/apt.log") || { cat "$dir/src/apt.log" >&2; exit 1; }
    mv "$dir"/src/kubernetes-1.20.[0-9]*/ "$dir/src/kubernetes-1.20.2.tmp" 2>/dev/null || true
    mv "$dir/src/kubernetes-1.20.2.tmp" "$dir/src/kubernetes-1.20.2"
fi
[ $source_only = 0 ] || { echo "$dir/src/kubernetes-1.20.2"; exit 0; }
echo "build-k8s.sh: building ${missing[*]} into $bin"
# Kubernetes 1.20 builds in GOPATH mode (module mode refuses the vendored tree).
export GOPATH="$dir/gopath" GOCACHE="$dir/gocache" GO111MODULE=off GOPROXY=off CGO_ENABLED=0
export GOFLAGS="-p=${K8S_GO_PROCS:-$(nproc)}"
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$dir/src/kubernetes-1.20.2" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"
ldflags="-s -w -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitVersion=$version
 -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMajor=1
 -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMinor=20
 -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitTreeState=clean
 -X k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version.gitVersion=$version"
go_build() {  # go_build OUT PKG
    nice -n 19 go build -ldflags "$ldflags" -o "$1.tmp" "$2" && mv "$1.tmp" "$1"
}

openapi=pkg/generated/openapi/zz_generated.openapi.go
for b in "${missing[@]}"; do
    if [ "$b" = kube-apiserver ] && [ ! -s "$openapi" ]; then
        # The tarball lacks the generated OpenAPI definitions that upstream's make writes: generate
        # them over every package that carries an openapi-gen tag, as upstream's make does.
        go_build "$dir/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
        # Upstream's Makefile.generated_files: every non-vendor Go dir (staging named as vendor/),
        # files with a +k8s: tag, those with an openapi-gen tag; not code-generator/sample-apiserver.
        pkgs=$(find -H . \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune -o -type f -name '*.go' -print \
               | sed -e 's|^\./staging/src|vendor|' -e 's|^\./||' | xargs grep -l '^// *+k8s:' \
               | xargs grep -l '+k8s:openapi-gen=' \
               | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
               | xargs -n1 dirname | LC_ALL=C sort -u | sed 's|^|k8s.io/kubernetes/|' | paste -sd,)
        nice -n 19 "$dir/openapi-gen" -i "$pkgs" -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
            -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt -r "$dir/openapi-api-rules.report" >"$dir/openapi-gen.log" 2>&1 \
            || { tail -20 "$dir/openapi-gen.log" >&2; exit 1; }
        diff -q "$dir/openapi-api-rules.report" api/api-rules/violation_exceptions.list >/dev/null \
            || echo "build-k8s.sh: note: openapi-gen's API-rule report differs from upstream's list" >&2
    fi
    echo "build-k8s.sh: go build $b ($(date +%T))"
    go_build "$bin/$b" "./cmd/$b"
done
"$bin/kubelet" --version
echo "build-k8s.sh: done ($(date +%T))"
