#!/usr/bin/env bash
# Reserve 2 MiB hugepages and mount hugetlbfs on /dev/hugepages. Idempotent; never fails the
# caller when the kernel refuses (containers, no privilege): DPDK then runs with --no-huge.
#
# usage: setup-hugepages.sh [--dry-run] [N]     (N = number of 2 MiB pages, default 512)
set -euo pipefail

dry=0
pages=${HUGEPAGES:-512}
for a in "$@"; do
    case "$a" in
        --dry-run|-n) dry=1 ;;
        -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
        ''|*[!0-9]*) echo "setup-hugepages: bad argument '$a' (want --dry-run or a page count)" >&2; exit 2 ;;
        *) pages=$a ;;
    esac
done

nr=/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages
mnt=/dev/hugepages
say() { echo "setup-hugepages: $*"; }
run() { if [ "$dry" = 1 ]; then say "would run: $*"; else "$@"; fi; }

if [ ! -e "$nr" ]; then
    say "no 2 MiB hugepage support in this kernel ($nr missing); DPDK will use --no-huge"
    exit 0
fi

cur=$(cat "$nr")
if [ "$cur" -ge "$pages" ]; then
    say "$cur x 2 MiB pages already reserved (wanted $pages); nothing to do"
else
    if [ "$dry" = 1 ]; then
        say "would reserve $pages x 2 MiB pages (now $cur): echo $pages > $nr"
    elif (echo "$pages" > "$nr") 2>/dev/null; then
        got=$(cat "$nr")
        if [ "$got" -lt "$pages" ]; then
            say "asked for $pages pages, kernel granted $got (fragmented memory?)"
        else
            say "reserved $got x 2 MiB pages (was $cur)"
        fi
    else
        say "kernel refused to reserve hugepages (not root / read-only sysfs); DPDK will use --no-huge"
    fi
fi

if grep -qs " $mnt hugetlbfs " /proc/mounts; then
    say "hugetlbfs already mounted on $mnt"
else
    run mkdir -p "$mnt"
    if [ "$dry" = 1 ]; then
        say "would run: mount -t hugetlbfs nodev $mnt"
    elif mount -t hugetlbfs nodev "$mnt" 2>/dev/null; then
        say "mounted hugetlbfs on $mnt"
    else
        say "could not mount hugetlbfs on $mnt; DPDK --in-memory still works, file-backed mode does not"
    fi
fi

free=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
say "HugePages_Free now: ${free:-0}"
