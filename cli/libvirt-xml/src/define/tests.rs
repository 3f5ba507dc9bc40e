//! The rewrite's tests: exact outputs of real-looking `virsh dumpxml`
//! samples, every error with its message, and mutations of the samples.

use super::*;
use roxmltree::Document;

use crate::parse_domain;

/// The rewrite as most tests below were written for it: QEMU pass-through
/// kept, as it was before removing it became the default (whose own tests
/// follow the moved ones).
fn rewrite(xml: &str, new_name: Option<&str>, disks: &[RestoredDisk]) -> Result<String> {
    let options = DefineOptions {
        new_name,
        keep_qemu_passthrough: true,
    };
    rewrite_for_define(xml, disks, &options).map(|defined| defined.xml)
}

/// `virsh dumpxml` of a running domain: a qcow2 system disk on a backing
/// chain, a raw LVM data disk, a CD-ROM, two interfaces, VNC and SPICE,
/// generated security labels and QEMU pass-through arguments.
const RUNNING: &str = r#"<domain type='kvm' id='7' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web1</name>
  <uuid>6f1c3a52-8d0b-4c55-9a51-0e7d2b1c9f44</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <!-- system disk: an overlay on the golden image -->
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>
      <source file='/var/lib/libvirt/images/web1.qcow2' index='3'>
        <seclabel model='dac' relabel='no'/>
      </source>
      <backingStore type='file' index='2'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/debian12-base.qcow2'/>
        <backingStore type='file' index='1'>
          <format type='raw'/>
          <source file='/var/lib/libvirt/images/debian12.raw'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/vg0/web1-data' index='4'/>
      <backingStore/>
      <target dev='vdb' bus='virtio'/>
      <alias name='virtio-disk1'/>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/iso/debian-12.iso' index='5'/>
      <backingStore/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <alias name='sata0-0-0'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci' ports='15'>
      <alias name='usb'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </controller>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <source network='default' portid='0f4e5d7a-31c2-4d5e-8f3b-2a1c9e7d6b54' bridge='virbr0'/>
      <target dev='vnet3'/>
      <model type='virtio'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:1e:77:a0'/>
      <source bridge='br-lan'/>
      <target dev='web1-lan'/>
      <model type='virtio'/>
      <alias name='net1'/>
    </interface>
    <serial type='pty'>
      <source path='/dev/pts/3'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
      <alias name='serial0'/>
    </serial>
    <graphics type='vnc' port='5903' autoport='yes' websocket='5703' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <graphics type='spice' port='5930' autoport='no'>
      <listen type='address'/>
    </graphics>
    <video>
      <model type='virtio' heads='1' primary='yes'/>
      <alias name='video0'/>
    </video>
  </devices>
  <seclabel type='dynamic' model='selinux' relabel='yes'>
    <label>system_u:system_r:svirt_t:s0:c12,c345</label>
    <imagelabel>system_u:object_r:svirt_image_t:s0:c12,c345</imagelabel>
  </seclabel>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+107:+107</label>
    <imagelabel>+107:+107</imagelabel>
  </seclabel>
  <qemu:commandline>
    <qemu:arg value='-fw_cfg'/>
    <qemu:arg value='name=opt/web1,string=1'/>
  </qemu:commandline>
</domain>
"#;

fn restored(target: &str, path: &str, format: &str) -> RestoredDisk {
    RestoredDisk {
        target: target.to_string(),
        path: path.to_string(),
        format: format.to_string(),
    }
}

/// The sample's two disks, restored into /srv/restore.
fn both_disks() -> Vec<RestoredDisk> {
    vec![
        restored("vda", "/srv/restore/web1-vda.qcow2", "qcow2"),
        restored("vdb", "/srv/restore/web1-vdb.raw", "raw"),
    ]
}

/// What `rewrite(RUNNING, None, both_disks())` must print: the
/// disks on their restored images, the live-only values gone, everything
/// else byte for byte.
const SAME_VM: &str = r#"<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>web1</name>
  <uuid>6f1c3a52-8d0b-4c55-9a51-0e7d2b1c9f44</uuid>
  <metadata>
    <libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
      <libosinfo:os id="http://debian.org/debian/12"/>
    </libosinfo:libosinfo>
  </metadata>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>4194304</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource>
    <partition>/machine</partition>
  </resource>
  <os>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-passthrough' check='none' migratable='on'/>
  <clock offset='utc'>
    <timer name='rtc' tickpolicy='catchup'/>
  </clock>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <!-- system disk: an overlay on the golden image -->
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>
      <source file='/srv/restore/web1-vda.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source file='/srv/restore/web1-vdb.raw'/>
      <target dev='vdb' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x05' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/iso/debian-12.iso'/>
      <backingStore/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci' ports='15'>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </controller>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <source network='default'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <interface type='bridge'>
      <mac address='52:54:00:1e:77:a0'/>
      <source bridge='br-lan'/>
      <target dev='web1-lan'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <source path='/dev/pts/3'/>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
    </serial>
    <graphics type='vnc' autoport='yes' websocket='-1' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
    </graphics>
    <graphics type='spice' port='5930' autoport='no'>
      <listen type='address'/>
    </graphics>
    <video>
      <model type='virtio' heads='1' primary='yes'/>
    </video>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-fw_cfg'/>
    <qemu:arg value='name=opt/web1,string=1'/>
  </qemu:commandline>
</domain>
"#;

#[test]
fn same_vm_restore_is_exact() {
    let out = rewrite(RUNNING, None, &both_disks()).expect("rewrite");
    assert_eq!(out, SAME_VM);
}

#[test]
fn clone_gets_new_name_and_no_uuid_or_macs() {
    let out = rewrite(RUNNING, Some("web1-copy"), &both_disks()).expect("rewrite");
    let expected = SAME_VM
        .replace("<name>web1</name>", "<name>web1-copy</name>")
        .replace("\n  <uuid>6f1c3a52-8d0b-4c55-9a51-0e7d2b1c9f44</uuid>", "")
        .replace("\n      <mac address='52:54:00:6b:3c:58'/>", "")
        .replace("\n      <mac address='52:54:00:1e:77:a0'/>", "");
    assert_eq!(out, expected);
    let domain = parse_domain(&out).expect("parse");
    assert_eq!(domain.name, "web1-copy");
    assert_eq!(domain.uuid, None);
}

#[test]
fn rewritten_disks_parse_back() {
    let out = rewrite(RUNNING, None, &both_disks()).expect("rewrite");
    let domain = parse_domain(&out).expect("parse");
    assert_eq!(domain.name, "web1");
    assert_eq!(
        domain.uuid.as_deref(),
        Some("6f1c3a52-8d0b-4c55-9a51-0e7d2b1c9f44")
    );
    let summary: Vec<_> = domain
        .disks
        .iter()
        .map(|d| {
            (
                d.target.as_str(),
                d.device.as_str(),
                d.kind.as_str(),
                d.source.as_deref(),
                d.format.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                "vda",
                "disk",
                "file",
                Some("/srv/restore/web1-vda.qcow2"),
                Some("qcow2")
            ),
            (
                "vdb",
                "disk",
                "file",
                Some("/srv/restore/web1-vdb.raw"),
                Some("raw")
            ),
            (
                "sda",
                "cdrom",
                "file",
                Some("/var/lib/libvirt/iso/debian-12.iso"),
                Some("raw")
            ),
        ]
    );

    let doc = Document::parse(&out).expect("well-formed");
    let root = doc.root_element();
    assert_eq!(root.attribute("id"), None);
    assert!(!root.children().any(|c| c.has_tag_name("seclabel")));
    let all = || root.descendants().filter(|n| n.is_element());
    assert_eq!(all().filter(|n| n.has_tag_name("alias")).count(), 0);
    assert!(all()
        .filter(|n| n.has_tag_name("source"))
        .all(|s| s.attribute("index").is_none()));
    // Only the CD-ROM's empty <backingStore/> is left.
    let backing: Vec<_> = all().filter(|n| n.has_tag_name("backingStore")).collect();
    assert_eq!(backing.len(), 1);
    assert_eq!(
        backing[0].parent().and_then(|d| d.attribute("device")),
        Some("cdrom")
    );
    let vnc = all()
        .find(|n| n.has_tag_name("graphics"))
        .expect("graphics");
    assert_eq!(vnc.attribute("port"), None);
    assert_eq!(vnc.attribute("autoport"), Some("yes"));
    assert_eq!(vnc.attribute("websocket"), Some("-1"));
}

#[test]
fn unrestored_disk_is_an_error_naming_it() {
    let only_vda = &both_disks()[..1];
    let err = rewrite(RUNNING, None, only_vda).expect_err("vdb is missing");
    let msg = format!("{err:#}");
    assert!(msg.contains("vdb (/dev/vg0/web1-data)"), "{msg}");
    assert!(!msg.contains("vda"), "{msg}");
    assert!(!msg.contains("sda"), "{msg}");
    let err = rewrite(RUNNING, None, &[]).expect_err("both missing");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("vda (/var/lib/libvirt/images/web1.qcow2), vdb (/dev/vg0/web1-data)"),
        "{msg}"
    );
}

#[test]
fn restored_disk_not_in_domain_is_an_error() {
    let mut disks = both_disks();
    disks.push(restored("vdz", "/srv/restore/vdz.raw", "raw"));
    // The CD-ROM is not a disk that can be restored either.
    disks.push(restored("sda", "/srv/restore/sda.raw", "raw"));
    let err = rewrite(RUNNING, None, &disks).expect_err("vdz is unknown");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("not disks of the domain: sda, vdz (its disks: vda, vdb)"),
        "{msg}"
    );
}

#[test]
fn driver_source_and_type_are_added_when_absent() {
    let xml = "<domain type='kvm'><name>a</name><devices>\n  <disk>\n    <target dev='vda'/>\n  </disk>\n  <disk device='disk'>\n    <source file='/old/b.img'/>\n    <target dev='vdb'/>\n  </disk>\n</devices></domain>";
    let disks = [
        restored("vda", "/new/a.qcow2", "qcow2"),
        restored("vdb", "/new/b.raw", "raw"),
    ];
    let out = rewrite(xml, None, &disks).expect("rewrite");
    assert_eq!(
            out,
            "<domain type='kvm'><name>a</name><devices>\n  <disk type='file'>\n    <driver name='qemu' type='qcow2'/>\n    <source file='/new/a.qcow2'/>\n    <target dev='vda'/>\n  </disk>\n  <disk device='disk' type='file'>\n    <driver name='qemu' type='raw'/>\n    <source file='/new/b.raw'/>\n    <target dev='vdb'/>\n  </disk>\n</devices></domain>"
        );
}

#[test]
fn network_and_volume_disks_become_files() {
    let xml = r#"<domain type='kvm'>
  <name>db</name>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw' cache='writeback'/>
      <auth username='libvirt'>
        <secret type='ceph' uuid='2a5b08e4-3dcc-4ff4-8da0-2d0e6d1b8c1e'/>
      </auth>
      <source protocol='rbd' name='pool/db-root' index='2'>
        <host name='ceph1' port='6789'/>
        <host name='ceph2' port='6789'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='default' volume='db-data.qcow2'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>"#;
    let disks = [
        restored("vda", "/srv/db-vda.raw", "raw"),
        restored("vdb", "/srv/db-vdb.raw", "raw"),
    ];
    let out = rewrite(xml, None, &disks).expect("rewrite");
    assert!(out.contains(
            "<disk type='file' device='disk'>\n      <driver name='qemu' type='raw' cache='writeback'/>"
        ));
    assert!(out.contains("<source file='/srv/db-vda.raw'/>\n      <target dev='vda'"));
    assert!(out.contains(
            "<disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='/srv/db-vdb.raw'/>"
        ));
    assert!(!out.contains("<host"));
    assert!(!out.contains("pool="));
}

#[test]
fn unrestored_network_disk_error_says_where_it_was() {
    let xml = "<domain><name>db</name><devices><disk type='network'><source protocol='rbd' name='pool/img'/><target dev='vda'/></disk><disk type='volume'><source pool='p' volume='v'/><target dev='vdb'/></disk></devices></domain>";
    let err = rewrite(xml, None, &[]).expect_err("missing");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("vda (rbd pool/img), vdb (volume v in pool p)"),
        "{msg}"
    );
}

#[test]
fn administrator_settings_are_kept() {
    let xml = r#"<domain type='kvm' id='3'>
  <name>fw</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/old/fw.raw'/>
      <target dev='vda'/>
    </disk>
    <interface type='ethernet'>
      <mac address='52:54:00:00:00:01'/>
      <target dev='vnet-fw0' managed='no'/>
    </interface>
    <interface type='bridge'>
      <source bridge='br0'/>
      <target dev='macvtap7'/>
    </interface>
    <graphics type='vnc' port='5901' autoport='no' websocket='5701'/>
  </devices>
  <seclabel type='static' model='selinux' relabel='yes'>
    <label>system_u:system_r:svirt_t:s0:c1,c2</label>
  </seclabel>
</domain>"#;
    let disks = [restored("vda", "/new/fw.raw", "raw")];
    let out = rewrite(xml, None, &disks).expect("rewrite");
    assert!(out.starts_with("<domain type='kvm'>\n"));
    assert!(out.contains("<target dev='vnet-fw0' managed='no'/>"));
    assert!(!out.contains("macvtap7"));
    assert!(out.contains("<source bridge='br0'/>"));
    assert!(out.contains("<graphics type='vnc' port='5901' autoport='no' websocket='5701'/>"));
    assert!(out.contains("<seclabel type='static' model='selinux' relabel='yes'>"));
    assert!(out.contains("<mac address='52:54:00:00:00:01'/>"));
}

#[test]
fn names_and_paths_are_escaped() {
    let disks = [
        restored("vda", "/srv/a&b's \"vm\" <1>.qcow2", "qcow2"),
        restored("vdb", "/srv/caf\u{e9}.raw", "raw"),
    ];
    let out = rewrite(RUNNING, Some("web<1> & 'co'"), &disks).expect("rewrite");
    let domain = parse_domain(&out).expect("parse");
    assert_eq!(domain.name, "web<1> & 'co'");
    assert_eq!(
        domain.disks[0].source.as_deref(),
        Some("/srv/a&b's \"vm\" <1>.qcow2")
    );
    assert_eq!(
        domain.disks[1].source.as_deref(),
        Some("/srv/caf\u{e9}.raw")
    );
}

#[test]
fn bad_arguments_are_errors() {
    let check = |new_name: Option<&str>, disks: &[RestoredDisk], expected: &str| {
        let err = rewrite(RUNNING, new_name, disks).expect_err(expected);
        let msg = format!("{err:#}");
        assert!(msg.contains(expected), "{msg} does not say {expected}");
    };
    let vda = restored("vda", "/srv/vda.qcow2", "qcow2");
    let vdb = |path: &str, format: &str| restored("vdb", path, format);
    let good = [vda.clone(), vdb("/srv/vdb.raw", "raw")];
    check(
        None,
        &[vda.clone(), vdb("/srv/vdb", "vmdk")],
        "\"vmdk\" is not raw or qcow2",
    );
    check(
        None,
        &[vda.clone(), vdb("srv/vdb", "raw")],
        "\"srv/vdb\" is not absolute",
    );
    check(
        None,
        &[vda.clone(), vdb("/srv/a\nb", "raw")],
        "contains control characters",
    );
    check(
        None,
        &[vda.clone(), vda.clone()],
        "disk vda is restored twice",
    );
    check(Some(""), &good, "the new domain name is empty");
    check(Some("  "), &good, "the new domain name is empty");
    check(Some(" web1"), &good, "starts or ends with spaces");
    check(Some("a/b"), &good, "contains '/'");
    check(Some("a\u{0}b"), &good, "contains control characters");
}

#[test]
fn malformed_domains_are_errors() {
    let vda = [restored("vda", "/srv/vda.raw", "raw")];
    let check = |xml: &str, expected: &str| {
        let err = rewrite(xml, None, &vda).expect_err(expected);
        let msg = format!("{err:#}");
        assert!(msg.contains(expected), "{msg} does not say {expected}");
    };
    check("", "parsing the backed-up domain XML");
    check("<domain>", "parsing the backed-up domain XML");
    check(
        "<domain><name/><devices/></domain>",
        "the domain XML has no <name>",
    );
    check(
        "<network><name>default</name></network>",
        "its root element is <network>",
    );
    check(
        "<!DOCTYPE domain [<!ENTITY e 'x'>]><domain><name>&e;</name></domain>",
        "parsing the backed-up domain XML",
    );
    check(
        "<domain><name>a</name><devices><disk><source file='/a'/></disk></devices></domain>",
        "a disk of the domain (/a) has no <target dev>",
    );
    check(
            "<domain><name>a</name><devices><disk><target dev='vda'/></disk><disk><target dev='vda'/></disk></devices></domain>",
            "two disks with target vda",
        );
}

/// Every strict prefix of the sample is malformed (the root element is
/// not closed), and must be an error, not a panic.
#[test]
fn truncations_are_errors() {
    let disks = both_disks();
    let end = RUNNING.trim_end().len();
    for len in (0..RUNNING.len()).filter(|&len| RUNNING.is_char_boundary(len)) {
        let result = rewrite(&RUNNING[..len], None, &disks);
        assert_eq!(result.is_ok(), len >= end, "prefix of {len} bytes");
    }
}

/// Fuzz-style property: for every prefix and single-byte mutations of the
/// sample, the rewrite returns instead of panicking, its own consistency
/// check never fires, and whenever it succeeds, its output is well-formed, points the disks at the
/// restored images, and is a fixed point (rewriting it again changes
/// nothing).
#[test]
fn mutations_never_panic_and_successes_are_stable() {
    let disks = both_disks();
    let check = |xml: &str, new_name: Option<&str>| -> bool {
        let out = match rewrite(xml, new_name, &disks) {
            Ok(out) => out,
            Err(err) => {
                let msg = format!("{err:#}");
                assert!(
                    !msg.contains("internal error") && !msg.contains("vmstash bug"),
                    "{msg}; input:\n{xml}"
                );
                return false;
            }
        };
        let domain = parse_domain(&out).expect("the output parses");
        for restored in &disks {
            let disk = domain
                .disks
                .iter()
                .find(|d| d.target == restored.target)
                .expect("restored disk present");
            assert_eq!(disk.source.as_deref(), Some(restored.path.as_str()));
            assert_eq!(disk.format.as_deref(), Some(restored.format.as_str()));
        }
        let again = rewrite(&out, new_name, &disks).expect("rewrite again");
        assert_eq!(again, out, "not a fixed point; input:\n{xml}");
        true
    };
    let bytes = RUNNING.as_bytes();
    let mut successes = 0_usize;
    for len in 0..=bytes.len() {
        if let Some(prefix) = RUNNING.get(..len) {
            successes += usize::from(check(prefix, None));
        }
    }
    for pos in 0..bytes.len() {
        let deleted = [&bytes[..pos], &bytes[pos + 1..]].concat();
        let variants = b"<'/x"
            .iter()
            .map(|&b| {
                let mut mutated = bytes.to_vec();
                mutated[pos] = b;
                mutated
            })
            .chain(std::iter::once(deleted));
        for variant in variants {
            if let Ok(xml) = String::from_utf8(variant) {
                successes += usize::from(check(&xml, Some("web1-copy")));
            }
        }
    }
    // Many mutations hit text or values and still parse: the property
    // was checked on real successes, not only on errors.
    assert!(successes > 1000, "only {successes} successes");
}

/// The pass-through block of [`RUNNING`], with the whitespace before it.
const COMMANDLINE: &str = "\n  <qemu:commandline>\n    <qemu:arg value='-fw_cfg'/>\n    <qemu:arg value='name=opt/web1,string=1'/>\n  </qemu:commandline>";

/// The 1-based line of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> u32 {
    let at = text.find(needle).expect("needle");
    let newlines = text[..at].matches('\n').count();
    u32::try_from(newlines + 1).expect("small")
}

#[test]
fn qemu_passthrough_is_removed_by_default_and_reported() {
    let defined =
        rewrite_for_define(RUNNING, &both_disks(), &DefineOptions::default()).expect("rewrite");
    assert!(SAME_VM.contains(COMMANDLINE));
    assert_eq!(defined.xml, SAME_VM.replace(COMMANDLINE, ""));
    let line = line_of(RUNNING, "<qemu:commandline>");
    assert_eq!(line, 113);
    assert_eq!(
        defined.removed,
        [Removed {
            element: "qemu:commandline".to_string(),
            line,
            xml: COMMANDLINE.trim_start().to_string(),
        }]
    );
    assert_eq!(
        defined.removed[0].to_string(),
        format!(
            "<qemu:commandline> (line 113 of the backed-up domain XML):\n{}",
            COMMANDLINE.trim_start()
        )
    );
    // A copy loses it too.
    let options = DefineOptions {
        new_name: Some("web1-copy"),
        keep_qemu_passthrough: false,
    };
    let copy = rewrite_for_define(RUNNING, &both_disks(), &options).expect("rewrite");
    assert!(!copy.xml.contains("qemu:arg"));
    assert_eq!(copy.removed, defined.removed);
}

#[test]
fn qemu_passthrough_is_kept_on_request() {
    let options = DefineOptions {
        new_name: None,
        keep_qemu_passthrough: true,
    };
    let defined = rewrite_for_define(RUNNING, &both_disks(), &options).expect("rewrite");
    assert_eq!(defined.xml, SAME_VM);
    assert!(defined.removed.is_empty());
}

/// Every child of `<domain>` in the QEMU namespace goes, whatever its prefix;
/// other namespaces, `<metadata>` and QEMU elements libvirt does not read
/// (not directly under `<domain>`) stay.
#[test]
fn every_qemu_passthrough_element_is_removed_under_any_prefix() {
    let xml = r#"<domain type='kvm' xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0' xmlns:xen='http://libvirt.org/schemas/domain/xen/1.0'>
  <name>vm</name>
  <metadata>
    <q:commandline><q:arg value='-kept-in-metadata'/></q:commandline>
  </metadata>
  <devices>
    <disk type='block'>
      <source dev='/dev/sdb'/>
      <target dev='vda'/>
    </disk>
  </devices>
  <q:capabilities>
    <q:add capability='blockdev'/>
    <q:del capability='drive'/>
  </q:capabilities>
  <xen:commandline>
    <xen:arg value='kept'/>
  </xen:commandline>
  <q:override>
    <q:device alias='ua-disk'>
      <q:frontend>
        <q:property name='serial' type='string' value='x'/>
      </q:frontend>
    </q:device>
  </q:override>
  <q:deprecation behavior='crash'/>
  <q:commandline>
    <q:arg value='-chardev'/>
    <q:arg value='socket,id=s0,path=/run/source-host.sock'/>
    <q:env name='QEMU_AUDIO_DRV' value='none'/>
  </q:commandline>
</domain>"#;
    let disks = [restored("vda", "/srv/vda.raw", "raw")];
    let defined = rewrite_for_define(xml, &disks, &DefineOptions::default()).expect("rewrite");
    let names: Vec<_> = defined
        .removed
        .iter()
        .map(|r| (r.element.as_str(), r.line))
        .collect();
    assert_eq!(
        names,
        [
            ("q:capabilities", 12),
            ("q:override", 19),
            ("q:deprecation", 26),
            ("q:commandline", 27)
        ]
    );
    assert_eq!(
        defined.removed[3].xml,
        "<q:commandline>\n    <q:arg value='-chardev'/>\n    <q:arg value='socket,id=s0,path=/run/source-host.sock'/>\n    <q:env name='QEMU_AUDIO_DRV' value='none'/>\n  </q:commandline>"
    );
    assert_eq!(
        defined.xml,
        r#"<domain type='kvm' xmlns:q='http://libvirt.org/schemas/domain/qemu/1.0' xmlns:xen='http://libvirt.org/schemas/domain/xen/1.0'>
  <name>vm</name>
  <metadata>
    <q:commandline><q:arg value='-kept-in-metadata'/></q:commandline>
  </metadata>
  <devices>
    <disk type='file'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/vda.raw'/>
      <target dev='vda'/>
    </disk>
  </devices>
  <xen:commandline>
    <xen:arg value='kept'/>
  </xen:commandline>
</domain>"#
    );
    let kept = DefineOptions {
        new_name: None,
        keep_qemu_passthrough: true,
    };
    let defined = rewrite_for_define(xml, &disks, &kept).expect("rewrite");
    assert!(defined.removed.is_empty());
    assert!(defined.xml.contains("<q:deprecation behavior='crash'/>"));
    assert!(defined
        .xml
        .contains("socket,id=s0,path=/run/source-host.sock"));
}

/// The report is printed on a terminal: what the backup wrote cannot move
/// the cursor or clear the screen.
#[test]
fn removed_elements_print_without_terminal_controls() {
    let removed = Removed {
        element: "qemu:commandline".to_string(),
        line: 3,
        xml: "<qemu:commandline>\n\t<qemu:arg value='\u{9b}2J\r'/>\n</qemu:commandline>"
            .to_string(),
    };
    let shown = removed.to_string();
    assert_eq!(
        shown,
        "<qemu:commandline> (line 3 of the backed-up domain XML):\n<qemu:commandline>\n\t<qemu:arg value='\\u{9b}2J\\r'/>\n</qemu:commandline>"
    );
    assert!(!shown
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t'));
}

#[test]
fn errors_say_whose_fault_they_are() {
    let vda = [restored("vda", "/srv/vda.raw", "raw")];
    let run = |xml: &str| rewrite(xml, None, &vda).expect_err("refused");
    let malformed = |err: Error, expected: &str| {
        assert!(
            matches!(&err, Error::Malformed { what } if what.contains(expected)),
            "{err:?} is not Malformed with {expected:?}"
        );
    };
    let unsupported = |err: Error, expected: &str| {
        assert!(
            matches!(&err, Error::Unsupported { what } if what.contains(expected)),
            "{err:?} is not Unsupported with {expected:?}"
        );
    };
    malformed(run("<domain>"), "never closed");
    malformed(run("<domain><devices/></domain>"), "has no <name>");
    malformed(run("<network><name>n</name></network>"), "<network>");
    malformed(
        run("<domain xmlns='urn:x'><name>a</name></domain>"),
        "in XML namespace urn:x",
    );
    malformed(
        run("<domain><name>a</name><devices>\n<disk device='cdrom'><target dev='vda'/></disk>\n<disk><target dev='vda'/></disk></devices></domain>"),
        "two disks with target vda (the second on line 3)",
    );
    malformed(
        run("<domain><name>a</name><devices>\n\n<disk><source file='/a'/></disk></devices></domain>"),
        "has no <target dev> (line 3)",
    );
    unsupported(
        run("<!DOCTYPE domain><domain><name>a</name></domain>"),
        "it has a DTD",
    );
    let attr = "<domain xmlns:x='urn:x'><name>a</name><devices>\n<disk x:type='block'><target dev='vda'/></disk></devices></domain>";
    unsupported(
        run(attr),
        "line 2: attribute type of <disk> in XML namespace urn:x",
    );
    let element = "<domain xmlns:x='urn:x'><name>a</name><devices><disk><target dev='vda'/>\n<x:source file='/old'/></disk></devices></domain>";
    unsupported(
        run(element),
        "line 2: element <source> in XML namespace urn:x",
    );
    let missing = rewrite(RUNNING, None, &vda).expect_err("vdb missing");
    assert!(
        matches!(missing, Error::InvalidArgument { .. }),
        "{missing:?}"
    );
    let name = rewrite(RUNNING, Some("a/b"), &both_disks()).expect_err("bad name");
    assert!(matches!(name, Error::InvalidArgument { .. }), "{name:?}");
}

#[test]
fn oversized_xml_is_refused_before_parsing() {
    let mut xml = String::from("<domain><name>big</name><description>");
    xml.push_str(&"x".repeat(MAX_DOMAIN_XML));
    xml.push_str("</description></domain>");
    let err = rewrite(&xml, None, &[]).expect_err("too large");
    assert!(
        matches!(&err, Error::Unsupported { what } if what.contains("more than virsh define reads")),
        "{err:?}"
    );
}

/// U+FFFE and U+FFFF are not XML characters: a name or path with one would
/// make the output unparseable, so it is refused as an argument.
#[test]
fn noncharacters_in_names_and_paths_are_refused() {
    let name = rewrite(RUNNING, Some("web\u{FFFF}"), &both_disks()).expect_err("name");
    assert!(matches!(name, Error::InvalidArgument { .. }), "{name:?}");
    let disks = [
        restored("vda", "/srv/vda\u{FFFE}.qcow2", "qcow2"),
        restored("vdb", "/srv/vdb.raw", "raw"),
    ];
    let path = rewrite(RUNNING, None, &disks).expect_err("path");
    assert!(matches!(path, Error::InvalidArgument { .. }), "{path:?}");
}

/// A disk with very many children is rewritten in one look at each: the
/// walk decides what a disk's children are once, not once per child.
#[test]
fn wide_disks_are_rewritten() {
    let mut xml = String::from("<domain><name>w</name><devices><disk>");
    for _ in 0..100_000 {
        xml.push_str("<target/><source/>");
    }
    xml.push_str("<target dev='vda'/></disk></devices></domain>");
    // The first <target> has no dev, so this disk has no target: refused.
    let err = rewrite(&xml, None, &[restored("vda", "/a.raw", "raw")]).expect_err("no dev");
    assert!(matches!(err, Error::Malformed { .. }), "{err:?}");
    let xml = xml.replacen("<target/>", "<target dev='vda'/>", 1);
    let out = rewrite(&xml, None, &[restored("vda", "/a.raw", "raw")]).expect("rewrite");
    let domain = parse_domain(&out).expect("parse");
    assert_eq!(domain.disks[0].source.as_deref(), Some("/a.raw"));
    // One source replaced, the other 99,999 removed.
    assert_eq!(out.matches("<source").count(), 1);
}

/// Rewriting with the default options fails exactly where keeping the
/// pass-through does, and never leaves pass-through behind: mutations of
/// the root's start tag (with the namespace declaration) and of everything
/// after `</devices>`.
#[test]
fn mutations_remove_passthrough_consistently() {
    let disks = both_disks();
    let bytes = RUNNING.as_bytes();
    let first_line = RUNNING.find('\n').expect("lines");
    let tail = RUNNING.find("</devices>").expect("devices");
    for pos in (0..first_line).chain(tail..bytes.len()) {
        let mut mutated = bytes.to_vec();
        mutated[pos] = b'x';
        let Ok(xml) = String::from_utf8(mutated) else {
            continue;
        };
        let kept = rewrite(&xml, None, &disks);
        let removed = rewrite_for_define(&xml, &disks, &DefineOptions::default());
        match (kept, removed) {
            (Ok(kept), Ok(removed)) => {
                // A mutated namespace name makes the element someone else's.
                if xml.contains(QEMU_NAMESPACE) {
                    assert!(!removed.xml.contains("qemu:arg"), "input:\n{xml}");
                    assert_eq!(removed.removed.len(), 1, "input:\n{xml}");
                } else {
                    assert_eq!(removed.xml, kept, "input:\n{xml}");
                    assert!(removed.removed.is_empty(), "input:\n{xml}");
                }
                for r in &removed.removed {
                    assert!(kept.contains(&r.xml), "input:\n{xml}");
                    assert!(xml.contains(&r.xml), "input:\n{xml}");
                }
            }
            (Err(a), Err(b)) => assert_eq!(a, b),
            (kept, removed) => panic!("{kept:?} but {removed:?}; input:\n{xml}"),
        }
    }
}

/// The parser accepts at most `MAX_ATTRIBUTES` attributes on an element, so
/// the rewrite does not add one to an element that has as many: its output
/// would not read back.
#[test]
fn no_attribute_is_added_past_the_cap() {
    let with = |n: usize, kind: &str| {
        let attrs: String = (0..n).map(|i| format!(" a{i}='x'")).collect();
        format!("<domain><name>a</name><devices>\n<disk{kind}{attrs}><target dev='vda'/></disk></devices></domain>")
    };
    let vda = [restored("vda", "/srv/vda.raw", "raw")];
    let err = rewrite(&with(MAX_ATTRIBUTES, ""), None, &vda).expect_err("full");
    assert!(
        matches!(&err, Error::Unsupported { what } if what.contains("line 2: <disk> has 64 attributes")),
        "{err:?}"
    );
    let out = rewrite(&with(MAX_ATTRIBUTES - 1, " type='block'"), None, &vda).expect("replaced");
    assert_eq!(rewrite(&out, None, &vda).expect("again"), out);
    let out = rewrite(&with(MAX_ATTRIBUTES - 1, ""), None, &vda).expect("added");
    assert_eq!(rewrite(&out, None, &vda).expect("again"), out);
}
