# Shared by the benchmarks that back up a running libvirt VM: a guest that
# costs no CPU, defined and started from disk images.
#
# Source it after bench/lib/common.sh (it needs `quiet`); call
# `start_halting_vm NAME DIR DISK...` where each DISK is FORMAT:PATH (qcow2 or
# raw), given to the guest as vda, vdb, … in order. DIR gets the kernel and
# the domain XML. The caller's cleanup calls `remove_halting_vm NAME...`.

# start_halting_vm NAME DIR DISK...: defines and starts domain NAME whose
# "kernel" is a multiboot image that halts the CPU at once (the same bytes as
# HALT_KERNEL in tests/e2e/fixtures/libvirt.rs).
start_halting_vm() {
  local name="$1" dir="$2" disks="" letter=a spec
  shift 2
  printf '\x02\xb0\xad\x1b\x00\x00\x01\x00\xfe\x4f\x51\xe4\x00\x00\x10\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20\x00\x10\x00\xfa\xf4\xeb\xfd' >"$dir/halt.bin"
  for spec in "$@"; do
    disks+="    <disk type='file' device='disk'>
      <driver name='qemu' type='${spec%%:*}'/>
      <source file='${spec#*:}'/>
      <target dev='vd$letter' bus='virtio'/>
    </disk>
"
    letter="$(echo "$letter" | tr a-y b-z)"
  done
  cat >"$dir/$name.xml" <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>$dir/halt.bin</kernel></os>
  <devices>
$disks    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
XML
  quiet "define-$name" virsh -c qemu:///system define "$dir/$name.xml"
  quiet "start-$name" virsh -c qemu:///system start "$name"
}

# remove_halting_vm NAME...: destroys and undefines each domain, its checkpoints'
# metadata with it; errors ignored (a cleanup: the domain may not exist yet).
remove_halting_vm() {
  local name
  for name in "$@"; do
    virsh -c qemu:///system destroy "$name" >/dev/null 2>&1
    virsh -c qemu:///system undefine "$name" --checkpoints-metadata >/dev/null 2>&1
  done
  return 0
}
