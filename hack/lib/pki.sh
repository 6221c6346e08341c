# Certificates for the local cluster: one CA, a serving certificate for the API server
# and the kubelet, and a client certificate per component. Regenerated on every `up`.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/cluster-env.sh"

_cert() { # _cert NAME SUBJECT [SAN]
  local name=$1 subj=$2 san=${3:-} ext
  ext=$(mktemp)
  { echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$san";
    else echo "extendedKeyUsage=clientAuth"; fi; } > "$ext"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 30 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$ext" "$PKI/$name.csr"
}

_kubeconfig() { # _kubeconfig FILE CERTNAME
  cat > "$1" <<KC
apiVersion: v1
kind: Config
clusters:
- name: waypoint
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority: $PKI/ca.crt
users:
- name: $2
  user:
    client-certificate: $PKI/$2.crt
    client-key: $PKI/$2.key
contexts:
- name: waypoint
  context: {cluster: waypoint, user: $2}
current-context: waypoint
KC
}

make_pki() {
  mkdir -p "$PKI"
  openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -subj "/CN=waypoint-local-ca" \
    -days 30 -out "$PKI/ca.crt" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  _cert apiserver "/CN=kube-apiserver" \
    "IP:$NODE_IP,IP:$KUBERNETES_SVC_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN"
  _cert kubelet-serving "/CN=$NODE_NAME" "IP:$NODE_IP,DNS:$NODE_NAME"
  _cert admin "/O=system:masters/CN=kubernetes-admin"
  _cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  _cert controller-manager "/CN=system:kube-controller-manager"
  _cert scheduler "/CN=system:kube-scheduler"
  _cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME"
  _cert kube-proxy "/CN=system:kube-proxy"
  for c in admin controller-manager scheduler kubelet kube-proxy; do _kubeconfig "$STATE/$c.kubeconfig" "$c"; done
}
