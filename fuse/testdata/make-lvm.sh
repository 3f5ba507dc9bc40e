#!/usr/bin/env bash
# Rebuilds lvm-pv-head.bin: the first bytes of a 64 MiB LVM2 physical volume (label, PV
# header, metadata area with two copies of the metadata: vgcreate's and the restore's) of
# volume group "vgt" with two linear volumes: root (extents 0-7 of pv0) and swap (two
# segments: pv0 extent 12, then extents 9-10). There is no device-mapper here, so the volumes
# are written into the metadata with vgcfgrestore, never lvcreate. Trailing zeros are cut
# (the unit tests pad the file back to 64 MiB). Needs root and lvm2.
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/lvm-pv-head.bin"
work="$(mktemp -d)"
trap 'losetup -d "$loop" 2>/dev/null || true; rm -rf "$work"' EXIT
truncate -s 64M "$work/pv.img"
loop="$(losetup -f --show "$work/pv.img")"
pvcreate -q "$loop"
vgcreate -q vgt "$loop"
vgcfgbackup -q -f "$work/vg.txt" vgt
python3 - "$work/vg.txt" <<'PY'
import sys
p = sys.argv[1]
t = open(p).read()
seg = lambda n, start, count, pv_extent: f'''
			segment{n} {{
				start_extent = {start}
				extent_count = {count}
				type = "striped"
				stripe_count = 1
				stripes = ["pv0", {pv_extent}]
			}}'''
lvs = f'''
	logical_volumes {{
		root {{
			id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-000001"
			status = ["READ", "WRITE", "VISIBLE"]
			segment_count = 1{seg(1, 0, 8, 0)}
		}}
		swap {{
			id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-000002"
			status = ["READ", "WRITE", "VISIBLE"]
			segment_count = 2{seg(1, 0, 1, 12)}{seg(2, 1, 2, 9)}
		}}
	}}
'''
i = t.rindex('}')
open(p, 'w').write(t[:i] + lvs + t[i:])
PY
vgcfgrestore -q -f "$work/vg.txt" vgt
python3 -c "import sys; d=open(sys.argv[1],'rb').read(1<<20).rstrip(b'\0'); open(sys.argv[2],'wb').write(d)" "$work/pv.img" "$out"
echo "wrote $out"
