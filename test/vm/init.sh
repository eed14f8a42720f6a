#!/bin/busybox sh
# PID 1 of the test VM's initramfs (test/vm/initramfs.ts puts busybox, the
# kernel's modules for 9p/virtio/overlay and this script into it).
#
# The host's root file system arrives read-only over 9p (tag "hostroot") and
# gets a tmpfs overlay, so the job sees the host's programs and the project
# checkout and can write anywhere without touching the host. The job folder
# (tag "job", read-write) holds run.sh, and receives the exit code.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "kloak-vm: $*" >/dev/console; }
die() { say "$*"; poweroff -f; }

while read -r m; do
	[ -n "$m" ] || continue
	insmod "/modules/$m" 2>/dev/null || say "insmod $m failed"
done </modules/order

mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=1048576,cache=loose hostroot /lower ||
	die "cannot mount the host root over 9p"
mount -t tmpfs -o size=75% tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot ||
	die "cannot mount the overlay"

r=/newroot
mkdir -p $r/kloak-job
mount -t 9p -o trans=virtio,version=9p2000.L,msize=1048576 job $r/kloak-job || die "cannot mount the job folder"
mount -t proc proc $r/proc
mount -t sysfs sysfs $r/sys
mount -t devtmpfs devtmpfs $r/dev
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts devpts $r/dev/pts
mount -t tmpfs tmpfs $r/dev/shm
# /tmp stays the host's (under the overlay): the checkout may live there.
mount -t tmpfs tmpfs $r/run
mount -t bpf bpf $r/sys/fs/bpf
mount -t tracefs tracefs $r/sys/kernel/tracing
mount -t securityfs securityfs $r/sys/kernel/security
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup
ip link set lo up

say "ready $(uname -r) $(cat /sys/kernel/security/lockdown 2>/dev/null)"
# The job runs in the new root proper (switch_root, not chroot): a chrooted
# process may not create user namespaces, and the tests do (unshare -Urn).
cat >$r/run/kloak-stage2 <<'EOF'
cd "$(cat /kloak-job/cwd)" && /bin/sh /kloak-job/run.sh </dev/console >/dev/console 2>&1
code=$?
echo $code >/kloak-job/exit
sync
echo "kloak-vm: exit $code" >/dev/console
echo o >/proc/sysrq-trigger
EOF
exec switch_root $r /bin/sh /run/kloak-stage2
