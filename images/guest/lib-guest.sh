# shellcheck shell=bash
# Building blocks of images/build-guest.sh. Sourced; uses its globals
# (MODULES, OPTIONAL_MODULES, CMDLINE, GUEST_VERSION, agent, rootfs, here).
# shellcheck disable=SC2154

# kernel_package -> the concrete linux-image-<ver> package linux-image-amd64 depends on
kernel_package() {
    local dep
    if pkg_installed linux-image-amd64; then
        dep="$(dpkg-query -W -f='${Depends}' linux-image-amd64)"
    else
        dep="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')"
    fi
    dep="$(printf '%s' "$dep" | grep -o 'linux-image-[0-9][^ ,(]*' | head -n1)"
    [ -n "$dep" ] || die "cannot resolve linux-image-amd64 (apt-get update, or install linux-image-amd64)"
    printf '%s' "$dep"
}

pkg_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

# pkg_version PKG -> installed version, else apt's candidate
pkg_version() {
    if pkg_installed "$1"; then
        dpkg-query -W -f='${Version}' "$1"
    else
        apt-cache policy "$1" | awk '/Candidate:/ {print $2}'
    fi
}

file_hash() { sha256sum "$1" | cut -d' ' -f1; }

guest_recipe() {
    local kpkg="$1"
    cat <<R
guest_version=$GUEST_VERSION
kernel=$kpkg $(pkg_version "$kpkg")
busybox=busybox-static $(pkg_version busybox-static)
modules=$(printf '%s' "$MODULES" | tr '\n' ' ') optional: $OPTIONAL_MODULES
cmdline=$CMDLINE
init_sha256=$(file_hash "$here/guest/init")
lib_sha256=$(file_hash "$here/guest/lib-guest.sh")
rootfs=$(cat "$rootfs/$MARKER")
agent_sha256=$(file_hash "$agent")
R
}

# unpack_deb PKG DEST: apt-get download PKG and extract it into DEST
unpack_deb() {
    local pkg="$1" dest="$2" deb
    mkdir -p "$dest"
    (cd "$dest" && apt-get -q -o APT::Sandbox::User=root download "$pkg" >&2) || die "apt-get download $pkg failed"
    deb="$(ls "$dest"/*.deb)"
    dpkg-deb -x "$deb" "$dest"
    rm -f "$deb"
}

# fetch_packages KPKG WORK: sets KROOT, KVER and BUSYBOX
fetch_packages() {
    local kpkg="$1" work="$2"
    KVER="${kpkg#linux-image-}"
    if pkg_installed "$kpkg"; then
        KROOT=""
    else
        log "downloading $kpkg"
        unpack_deb "$kpkg" "$work/kernel"
        KROOT="$work/kernel"
    fi
    if pkg_installed busybox-static; then
        BUSYBOX=/bin/busybox
    else
        log "downloading busybox-static"
        unpack_deb busybox-static "$work/busybox"
        BUSYBOX="$work/busybox/bin/busybox"
    fi
    [ -f "$KROOT/boot/vmlinuz-$KVER" ] || die "no kernel at $KROOT/boot/vmlinuz-$KVER"
    if [ ! -f "$KROOT/lib/modules/$KVER/modules.dep" ]; then
        # a bare .deb ships no modules.dep (its postinst runs depmod)
        need_cmds depmod
        depmod -b "${KROOT:-/}" "$KVER" || die "depmod for $KVER failed"
    fi
}

# resolve_modules MODDIR NAME... -> module paths (relative to MODDIR), dependencies first
resolve_modules() {
    local moddir="$1" line path deps base name
    shift
    declare -A DEPS PATHOF SEEN
    while IFS= read -r line; do
        path="${line%%:*}"
        deps="${line#*:}"
        DEPS["$path"]="$deps"
        base="${path##*/}"
        name="${base%%.ko*}"
        PATHOF["${name//-/_}"]="$path"
    done <"$moddir/modules.dep"
    visit() {
        local p="$1" d
        [ -n "${SEEN[$p]:-}" ] && return 0
        SEEN["$p"]=1
        for d in ${DEPS[$p]}; do visit "$d"; done
        printf '%s\n' "$p"
    }
    for name in "$@"; do
        path="${PATHOF[${name//-/_}]:-}"
        [ -n "$path" ] || die "kernel module $name not found in $moddir (built in? remove it from MODULES)"
        visit "$path"
    done
}

# install_module SRC DESTDIR -> prints the installed file name (decompressed .ko)
install_module() {
    local src="$1" dest="$2" base
    base="${src##*/}"
    case "$base" in
        *.ko.xz) xz -dc "$src" >"$dest/${base%.xz}"; base="${base%.xz}" ;;
        *.ko.zst) zstd -qdc "$src" >"$dest/${base%.zst}"; base="${base%.zst}" ;;
        *.ko.gz) gzip -dc "$src" >"$dest/${base%.gz}"; base="${base%.gz}" ;;
        *) cp "$src" "$dest/$base" ;;
    esac
    printf '%s\n' "$base"
}

# build_initrd WORK OUT: writes OUT/vmlinuz and OUT/initrd.img
build_initrd() {
    local work="$1" outdir="$2" moddir st m
    moddir="$KROOT/lib/modules/$KVER"
    st="$work/initrd"
    mkdir -p "$st"/{bin,dev,etc,proc,sys,mnt,newroot,lib/modules}
    mknod -m 600 "$st/dev/console" c 5 1
    cp "$BUSYBOX" "$st/bin/busybox"
    install -m 0755 "$here/guest/init" "$st/init"
    : >"$st/etc/rewind-modules"
    local f opt
    # shellcheck disable=SC2086 # the module lists split on purpose
    for m in $(resolve_modules "$moddir" $MODULES $OPTIONAL_MODULES); do
        f="$(install_module "$moddir/$m" "$st/lib/modules")"
        opt=""
        case " $OPTIONAL_MODULES " in *" $(printf '%s' "${f%%.ko*}" | tr - _) "*) opt="?" ;; esac
        printf '%s%s\n' "$opt" "$f" >>"$st/etc/rewind-modules"
    done
    log "initramfs modules: $(tr '\n' ' ' <"$st/etc/rewind-modules")"
    (cd "$st" && find . -print0 | LC_ALL=C sort -z |
        cpio --null -o -H newc --owner=0:0 --reproducible --quiet) | gzip -9n >"$outdir/initrd.img"
    cp "$KROOT/boot/vmlinuz-$KVER" "$outdir/vmlinuz"
    rm -rf "$st"
}

# build_root_disk FILE: the rootfs + agent as a read-only, journal-less, minimal ext4
build_root_disk() {
    local img="$1" st used_mb inodes blocks bsize
    st="$(dirname "$img")/.stage"
    cp -a --reflink=auto "$rootfs/." "$st/"
    rm -f "$st/$MARKER"
    install -D -m 0755 "$agent" "$st/usr/local/bin/rewind-agent"
    used_mb="$(du -s -B1M --one-file-system "$st" | cut -f1)"
    inodes="$(( $(find "$st" -xdev | wc -l) * 5 / 4 + 4096 ))"
    truncate -s "$(( used_mb * 13 / 10 + 256 ))M" "$img"
    mkfs.ext4 -q -F -L rewind-root -m 0 -O ^has_journal -N "$inodes" -d "$st" "$img" >&2
    rm -rf "$st"
    e2fsck -fy "$img" >/dev/null 2>&1 || [ $? -le 1 ] || die "e2fsck of $img failed"
    resize2fs -M "$img" >/dev/null 2>&1 || die "resize2fs -M $img failed"
    blocks="$(dumpe2fs -h "$img" 2>/dev/null | awk -F: '/^Block count/ {gsub(/ /,"",$2); print $2}')"
    bsize="$(dumpe2fs -h "$img" 2>/dev/null | awk -F: '/^Block size/ {gsub(/ /,"",$2); print $2}')"
    truncate -s "$(( blocks * bsize ))" "$img"
}
