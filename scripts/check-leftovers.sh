#!/usr/bin/env bash
# Fails when the tests left anything behind in their data dirs
# ($REWIND_TEST_ROOT, else /var/tmp/rewind-test*): a process naming one on its
# command line, a sandbox cgroup of one (rewind-<first 8 hex digits of the
# SHA-256 of the data dir's path>), a mount below one, or a loop device whose
# backing file lies below one. The test binaries release all of these when
# they exit (tests/common/cleanup.rs, storage/tests/common).
set -uo pipefail

if [ -n "${REWIND_TEST_ROOT:-}" ]; then
  roots=("$REWIND_TEST_ROOT")
else
  roots=(/var/tmp/rewind-test*)
fi

found=0
report() {
  echo "LEFTOVER $*"
  found=1
}

under() { # under PATH ROOT
  case "$1" in "$2" | "$2"/*) return 0 ;; *) return 1 ;; esac
}

for root in "${roots[@]}"; do
  [ -d "$root" ] || continue
  while read -r _ _ _ _ mnt _; do
    if under "$mnt" "$root"; then report "mount $mnt"; fi
  done </proc/self/mountinfo
  for f in /sys/block/loop*/loop/backing_file; do
    [ -r "$f" ] || continue
    backing=$(cat "$f")
    backing=${backing% (deleted)}
    dev=${f#/sys/block/}
    if under "$backing" "$root"; then report "loop device /dev/${dev%%/*} backed by $backing"; fi
  done
  for p in /proc/[0-9]*; do
    { cmd=$(tr '\0' ' ' <"$p/cmdline"); } 2>/dev/null || continue
    case "$cmd" in *"$root"*) report "process ${p#/proc/}: $cmd" ;; esac
  done
  for dir in "$root" "$root"/*/; do
    dir=${dir%/}
    group="rewind-$(printf '%s' "$dir" | sha256sum | cut -c1-8)"
    for g in /sys/fs/cgroup/"$group" /sys/fs/cgroup/*/"$group"; do
      for sb in "$g"/*/; do
        if [ -d "$sb" ]; then report "sandbox cgroup $sb (data dir $dir)"; fi
      done
    done
  done
done

if [ "$found" -ne 0 ]; then
  echo "the tests left the above behind"
  exit 1
fi
echo "nothing left behind under ${roots[*]}"
