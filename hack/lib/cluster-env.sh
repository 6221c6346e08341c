# Names, paths and addresses of the local cluster. Sourced by hack/ scripts.
NETNS=waypoint
NETNS_PATH=/var/run/netns/$NETNS
STATE=${WAYPOINT_CLUSTER_STATE:-/var/lib/waypoint-cluster}
RUN=/run/waypoint-cluster
PKI=$STATE/pki
LOGS=$STATE/logs
CONTAINERD_SOCK=$RUN/containerd/containerd.sock
KUBECONFIG_ADMIN=$STATE/admin.kubeconfig
IMAGES_DIR=$CACHE_DIR/images

NODE_NAME=waypoint-node
NODE_IP=10.250.0.10          # on lo inside the namespace; the API server advertises it
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
DNS_SVC_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local
PAUSE_IMAGE=registry.k8s.io/pause:3.10
COREDNS_IMAGE=registry.k8s.io/coredns/coredns:v$COREDNS_VERSION

# Packages from Debian the node needs; installed by `hack/cluster up` when missing.
CLUSTER_APT_PACKAGES="containerd runc containernetworking-plugins umoci skopeo iptables conntrack openssl busybox-static curl jq gcc libc6-dev"

# in_ns CMD...: run CMD in the node's network namespace only. Not `ip netns exec`:
# that also makes a mount namespace and remounts /sys, which hides the cgroup mounts
# from containerd and the kubelet.
in_ns() { nsenter --net="$NETNS_PATH" -- "$@"; }
# kubectl built with the cluster (same version), not whatever the machine has.
kc() { in_ns "$BIN_DIR/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# Installs the Debian packages the node needs, when any is missing.
ensure_packages() {
  local missing=() p
  for p in $CLUSTER_APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  mkdir -p "$CACHE_DIR"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
    >"$CACHE_DIR/apt.log" 2>&1 || die "apt-get install ${missing[*]} failed: see $CACHE_DIR/apt.log"
}

# wait_established CRD...: `kubectl wait --for=condition` errors out while a new CRD
# has no status yet, so poll its Established condition instead.
crd_established() {
  local status
  status=$(kc get crd "$1" -o jsonpath='{.status.conditions[?(@.type=="Established")].status}') && [ "$status" = True ]
}
wait_established() {
  local crd
  for crd in "$@"; do
    wait_for 60 "CRD $crd to be Established" crd_established "$crd" || return 1
  done
}
