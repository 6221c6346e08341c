#!/usr/bin/env bash
# Builds the cluster's Go binaries from the Go module proxy into $CACHE_DIR/bin:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy,
# kubectl, coredns, echo-basic. A binary whose version stamp matches is not rebuilt.
#
#   build-binaries.sh [TARGET...]   targets: etcd k8s coredns echo-basic (the default: all
#                                   four) and coredns@vX.Y.Z, CoreDNS at another version
#                                   into $BIN_DIR/coredns-vX.Y.Z (hack/images asks for the
#                                   tags the Gateway API conformance manifests name)
source "$(dirname "$0")/common.sh"
need_cmd go "install Go (https://go.dev) and make sure the module proxy is reachable"
mkdir -p "$BIN_DIR" "$CACHE_DIR/src"

stamp_ok() { [ -x "$BIN_DIR/$1" ] && [ "$(cat "$BIN_DIR/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$BIN_DIR/.$1.version"; }

build_k8s() {
  local comps=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl) todo=()
  for c in "${comps[@]}"; do stamp_ok "$c" "v$K8S_VERSION" || todo+=("$c"); done
  [ ${#todo[@]} -eq 0 ] && { log "kubernetes v$K8S_VERSION: cached"; return; }
  local mod=$CACHE_DIR/src/k8s-v$K8S_VERSION
  if [ "$(cat "$mod/.ready" 2>/dev/null)" != "${comps[*]}" ]; then
    log "kubernetes v$K8S_VERSION: preparing wrapper module"
    rm -rf "$mod"; mkdir -p "$mod"
    local gomod
    gomod=$(cd "$(mktemp -d)" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
    ( cd "$mod"
      go mod init local/k8sbin >/dev/null 2>&1
      go mod edit -go="$(go env GOVERSION | sed 's/^go//')"
      go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
      for m in $(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod"); do
        go mod edit -replace="$m=$m@v0.${K8S_VERSION#1.}"
      done
      printf 'package main\nimport (\n' > tools.go
      for c in "${comps[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c" >> tools.go; done
      printf ')\nfunc main() {}\n' >> tools.go
      go mod tidy >>"$CACHE_DIR/go-get.log" 2>&1 || die "go mod tidy for kubernetes failed: see $CACHE_DIR/go-get.log"
      rm tools.go )
    echo "${comps[*]}" > "$mod/.ready"
  fi
  local minor=${K8S_VERSION#1.}; minor=${minor%%.*}
  local ldf="-s -w"
  for kv in "gitVersion=v$K8S_VERSION" gitMajor=1 "gitMinor=$minor" gitTreeState=clean; do
    ldf+=" -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
  done
  for c in "${todo[@]}"; do
    log "building $c v$K8S_VERSION (cold: several minutes each on 2 cores)"
    ( cd "$mod" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldf" -o "$BIN_DIR/$c" "k8s.io/kubernetes/cmd/$c" )
    stamp "$c" "v$K8S_VERSION"
  done
}

build_simple() { # build_simple NAME MODULE@VERSION PACKAGE [EXTRA_MODULE@VERSION...]
  local name=$1 modver=$2 pkg=$3; shift 3
  stamp_ok "$name" "$modver" && { log "$name $modver: cached"; return; }
  local mod=$CACHE_DIR/src/$name-${modver##*@}
  log "building $name from $modver"
  rm -rf "$mod"; mkdir -p "$mod"
  ( cd "$mod"
    go mod init "local/$name" >/dev/null 2>&1
    printf 'package main\nimport _ "%s"\nfunc main() {}\n' "$pkg" > tools.go
    go get "$modver" "$@" >>"$CACHE_DIR/go-get.log" 2>&1 || die "go get $modver failed: see $CACHE_DIR/go-get.log"
    go mod tidy >>"$CACHE_DIR/go-get.log" 2>&1 || die "go mod tidy for $name failed: see $CACHE_DIR/go-get.log"
    rm tools.go
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/$name" "$pkg" )
  stamp "$name" "$modver"
}

# build_coredns VERSION NAME: CoreDNS vVERSION from its module into $BIN_DIR/NAME, with
# its own version stamp, so every version is cached separately.
build_coredns() {
  build_simple "$2" "github.com/coredns/coredns@v$1" github.com/coredns/coredns
}

targets=${*:-etcd k8s coredns echo-basic}
for t in $targets; do
  case $t in
    etcd) build_simple etcd "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" go.etcd.io/etcd/server/v3 ;;
    k8s) build_k8s ;;
    coredns) build_coredns "$COREDNS_VERSION" coredns ;;
    coredns@v*) v=${t#coredns@v}; build_coredns "$v" "coredns-v$v" ;;
    echo-basic) build_simple echo-basic "sigs.k8s.io/gateway-api/conformance@v$GATEWAY_API_VERSION" sigs.k8s.io/gateway-api/conformance/echo-basic "sigs.k8s.io/gateway-api@v$GATEWAY_API_VERSION" ;;
    *) die "unknown target $t (etcd k8s coredns echo-basic coredns@vX.Y.Z)" ;;
  esac
done
log "binaries ready in $BIN_DIR"
