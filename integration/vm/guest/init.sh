#!/bin/sh
# /init of the dmvpn test VM's initramfs: busybox sh, PID 1.
#
# Mounts the host's root (9p tag "hostroot", read-only) as the lower layer of
# an overlay whose upper layer is tmpfs, so the whole root is writable and
# every write is thrown away at power-off. Mounts tmpfs on /run, the job
# directory (9p tag "job") on /run/dmvpn-vm/job and the shared directories
# listed in the job's "shares" file (lines "TAG PATH") at their host paths,
# then switch_roots into stage2, which runs the job. Stage2 and the job
# wrapper run under the static busybox copied to tmpfs: exec-ing the host's
# dynamically linked shell over 9p first costs ~0.4 s under TCG.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() {
	echo "dmvpn-vm: init: $*"
	poweroff -f
}
while read -r m; do
	insmod "/modules/$m" || echo "dmvpn-vm: init: insmod $m failed"
done </modules/order
P9=trans=virtio,version=9p2000.L,msize=512000
mkdir -p /lower /upper /newroot
mount -t 9p -o "$P9,ro,cache=loose" hostroot /lower || fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot ||
	fail "cannot mount the overlay root"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
J=/newroot/run/dmvpn-vm
mkdir -p "$J/job" /newroot/run/lock
mount -t 9p -o "$P9,cache=none" job "$J/job" || fail "cannot mount the job directory"
if [ -f "$J/job/shares" ]; then
	while read -r tag path; do
		mkdir -p "/newroot$path" || fail "cannot create $path"
		mount -t 9p -o "$P9,cache=none" "$tag" "/newroot$path" || fail "cannot mount the shared directory $path"
	done <"$J/job/shares"
fi
cp /stage2 /bin/busybox "$J/" # power-off must not depend on the 9p root
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
ln -sf pts/ptmx /newroot/dev/ptmx
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t bpf bpf /newroot/sys/fs/bpf 2>/dev/null
# shared propagation, so that `ip netns add` can bind-mount under /run/netns
mount --make-rshared /newroot
hostname "$(cat "$J/job/hostname" 2>/dev/null || echo dmvpn-vm)"
exec switch_root /newroot /run/dmvpn-vm/busybox sh /run/dmvpn-vm/stage2
