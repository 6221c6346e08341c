# mkimage: turn a directory into an OCI image with umoci and save it as a
# docker-archive (which `ctr images import` names from its RepoTags).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# copy_with_libs ROOTFS BINARY [DEST]: copy a dynamically linked binary and its ldd
# closure (glibc included) into ROOTFS; the machine's Rust targets glibc only.
copy_with_libs() {
  local root=$1 bin=$2 dest=${3:-$2} lib
  install -D -m 0755 "$bin" "$root$dest"
  for lib in $(ldd "$bin" 2>/dev/null | grep -oE '/[^ ]+' | sort -u); do
    [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
}

# base_rootfs ROOTFS: the few files every image wants.
base_rootfs() {
  local root=$1
  mkdir -p "$root"/{etc,tmp,var/run,proc,sys,dev}
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
}

# mkimage NAME:TAG ROOTFS OUT.tar ENTRYPOINT...
mkimage() {
  local ref=$1 root=$2 out=$3; shift 3
  local work; work=$(mktemp -d)
  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:img"
  umoci unpack --image "$work/oci:img" "$work/bundle" >/dev/null
  cp -a "$root/." "$work/bundle/rootfs/"
  umoci repack --image "$work/oci:img" "$work/bundle"
  local args=(--image "$work/oci:img" --os linux --architecture amd64 --config.workingdir /
              --config.env PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin)
  for e in "$@"; do args+=(--config.entrypoint "$e"); done
  umoci config "${args[@]}"
  mkdir -p "$(dirname "$out")"
  rm -f "$out"
  skopeo --insecure-policy copy -q "oci:$work/oci:img" "docker-archive:$out:$ref"
  rm -rf "$work"
}
