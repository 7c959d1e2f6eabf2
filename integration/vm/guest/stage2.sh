#!/bin/sh
# PID 1 after switch_root, run by the static busybox in /run/dmvpn-vm (the
# host's root is now /). Runs the job's script with its output in the job
# directory, stores the exit status there and powers the VM off. The host
# times the boot by the "command starts" line on the console.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
J=/run/dmvpn-vm
BB=$J/busybox
$BB ip link set lo up
# no udev: load the NIC driver when qemu gave the VM a virtio NIC (device id 1)
if $BB grep -qx 0x0001 /sys/bus/virtio/devices/*/device 2>/dev/null; then
	modprobe virtio_net || echo "dmvpn-vm: stage2: modprobe virtio_net failed"
fi
echo "dmvpn-vm: command starts"
$BB sh "$J/job/script" >"$J/job/out" 2>&1 </dev/null
rc=$?
echo "$rc" >"$J/job/rc"
echo "dmvpn-vm: command exited with status $rc"
sync
$BB poweroff -f
echo o >/proc/sysrq-trigger
while :; do $BB sleep 1; done
