//! The command line, as clap types. Conventions follow restic where they fit.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Encrypted, deduplicating backups of VM disks, restorable bit for bit.
#[derive(Debug, Parser)]
#[command(name = "vmstash", version, about, max_term_width = 100)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Repository location: a directory, sftp://[user@]host[:port]/path, sftp:[user@]host:/path,
    /// or s3:https://host[:port]/bucket[/prefix] (credentials from AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY, or AWS_PROFILE and ~/.aws/credentials).
    #[arg(short = 'r', long = "repo", env = "VMSTASH_REPOSITORY", global = true)]
    pub repo: Option<String>,
    /// Read the password from this file (first line).
    #[arg(long, env = "VMSTASH_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Run this shell command and use its first line of output as the password.
    #[arg(long, env = "VMSTASH_PASSWORD_COMMAND", global = true)]
    pub password_command: Option<String>,
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Say more (repeat for more detail).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Say nothing but errors and results.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Take no lock: for commands that only read (snapshots, restore, check, mount, stats, cat)
    /// on read-only storage. Nothing then stops a prune from removing what they read.
    #[arg(long, global = true)]
    pub no_lock: bool,
    /// SSH private key for hypervisors (else ssh-agent, else ~/.ssh/id_*).
    #[arg(long, global = true, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// known_hosts file to check hypervisor host keys against [default: ~/.ssh/known_hosts].
    #[arg(long, global = true, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Accept and remember the host key of a hypervisor never seen before
    /// (a changed key is always refused).
    #[arg(long, global = true)]
    pub accept_new_host_key: bool,
    /// S3 signing region [default: AWS_REGION, else AWS_DEFAULT_REGION, else the bucket's
    /// region on AWS, else us-east-1].
    #[arg(long, global = true, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// How S3 requests name the bucket: dns (virtual-host style), path, or auto (dns on AWS,
    /// path elsewhere).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = BucketLookup::Auto,
        env = "VMSTASH_S3_BUCKET_LOOKUP"
    )]
    pub s3_bucket_lookup: BucketLookup,
}

/// `--s3-bucket-lookup`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BucketLookup {
    /// Virtual-host style on AWS, path style elsewhere.
    Auto,
    /// Virtual-host style: https://bucket.host/key.
    Dns,
    /// Path style: https://host/bucket/key.
    Path,
}

impl From<BucketLookup> for vmstash_s3::BucketLookup {
    fn from(b: BucketLookup) -> Self {
        match b {
            BucketLookup::Auto => vmstash_s3::BucketLookup::Auto,
            BucketLookup::Dns => vmstash_s3::BucketLookup::Dns,
            BucketLookup::Path => vmstash_s3::BucketLookup::Path,
        }
    }
}

impl Global {
    /// The SSH options the command line gives, for hypervisors and SFTP repositories.
    pub fn ssh_options(&self) -> vmstash_ssh::SshOptions {
        vmstash_ssh::SshOptions {
            identity: self.identity.clone(),
            known_hosts: self.known_hosts.clone(),
            accept_new_host_key: self.accept_new_host_key,
            ssh_config: None,
        }
    }
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new repository.
    Init(InitArgs),
    /// Back up disk images into a new snapshot.
    Backup(BackupArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// Remove snapshots by a retention policy or by id (their data stays until a prune).
    Forget(Box<ForgetArgs>),
    /// Reclaim the space of data no snapshot needs; backups, restores and mounts go on meanwhile.
    Prune(PruneCommandArgs),
    /// Change the tags of snapshots (each is rewritten; the old file goes once the new is stored).
    Tag(TagArgs),
    /// Remove stale locks and the temporary files of interrupted writes, left by killed runs.
    Unlock(UnlockArgs),
    /// Repair a damaged repository.
    #[command(subcommand)]
    Repair(RepairCommand),
    /// Show what changed between two snapshots, disk by disk.
    Diff(DiffArgs),
    /// Write a snapshot's disks back out as image files.
    Restore(RestoreArgs),
    /// Copy snapshots from another repository (--from-repo) into this one, re-encrypted under
    /// its key; chunks it has already and snapshots it holds are not copied again.
    Copy(CopyArgs),
    /// Verify the repository's structure, and with --read-data all of its data.
    Check(CheckArgs),
    /// Print a decoded repository file as JSON.
    Cat(CatArgs),
    /// Manage the passwords (key files) that open the repository.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Show how much is stored, and how well it deduplicates and compresses.
    Stats,
    /// List the VMs of a hypervisor with their disks.
    Vms(VmsArgs),
    /// Clean what a killed backup left on a VM: its backup job and checkpoint, qemu-nbd servers
    /// and bitmaps, overlays (committed back).
    VmRepair(VmRepairArgs),
    /// Mount the repository read-only: every backup's disks as raw images (runs until unmounted).
    Mount(MountArgs),
    /// List a snapshot's files without mounting: its disks, partitions, volumes and the files
    /// in their filesystems, as the mount shows them under snapshots/<id>/.
    Ls(LsArgs),
    /// Write a file of a snapshot to standard output (a directory: as a tar stream), without
    /// mounting.
    Dump(DumpArgs),
    /// Find files in the guest filesystems of snapshots: which snapshots hold them, and when
    /// they changed.
    Find(FindArgs),
    /// Run the daemon: scheduled jobs, an HTTPS API with live progress, a web dashboard
    /// (spec/SERVE.md); or check its configuration, or manage its API tokens.
    Serve(ServeArgs),
}

/// `vmstash serve`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The daemon's configuration (TOML, spec/SERVE.md §1).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/vmstash/vmstash.toml",
        global = true
    )]
    pub config: PathBuf,
    /// Check the configuration, print when every job runs next, and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Manage the daemon instead of running it.
    #[command(subcommand)]
    pub action: Option<ServeAction>,
}

/// What `vmstash serve` does besides running.
#[derive(Debug, Subcommand)]
pub enum ServeAction {
    /// The API's bearer tokens (kept as hashes in the state directory).
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `vmstash serve token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it (once: only its hash is kept).
    Create {
        /// What it may do: viewer (read), operator (also start and cancel jobs), admin (also
        /// manage tokens).
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// Limit it to one tenant's repositories, hypervisors and jobs.
        #[arg(long)]
        tenant: Option<String>,
        /// What it is for (shown in lists).
        #[arg(long, default_value = "")]
        name: String,
        /// Let it expire after this long (e.g. 90d).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// List the tokens (without their secrets).
    List,
    /// Revoke a token by its id (as `list` shows it).
    Revoke {
        /// The token's id.
        id: String,
    },
}

/// `vmstash mount`
#[derive(Debug, Args)]
pub struct MountArgs {
    /// An empty directory to mount on.
    pub mountpoint: std::path::PathBuf,
    /// Let other users read the mount (needs `user_allow_other` in /etc/fuse.conf unless root).
    #[arg(long)]
    pub allow_other: bool,
    /// Read zeros where a repaired snapshot records bytes as lost (`repair snapshots`), instead
    /// of an I/O error.
    #[arg(long)]
    pub zero_lost: bool,
    /// Memory for verified chunks kept for further reads.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub cache_size: u64,
    /// Passphrases for the guests' LUKS volumes.
    #[command(flatten)]
    pub luks: LuksArgs,
}

/// Passphrases for LUKS volumes inside the guests' disks.
#[derive(Debug, Default, Args)]
pub struct LuksArgs {
    /// A file holding a passphrase for the guests' LUKS volumes (a trailing newline is not
    /// part of it); repeatable: each volume is opened with the first that fits. Without one,
    /// LUKS volumes show as their raw bytes only.
    #[arg(long = "luks-passphrase-file", value_name = "FILE")]
    pub files: Vec<std::path::PathBuf>,
}

/// `vmstash ls`
#[derive(Debug, Args)]
pub struct LsArgs {
    /// SNAPSHOT[:PATH]: a snapshot id (or unique prefix) or "latest", and a path in it as the
    /// mount shows it under snapshots/<id>/ (e.g. latest:vda/p1/etc, latest:vda/ubuntu-vg/root/etc).
    pub target: String,
    /// With "latest": the newest snapshot these filters match.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Passphrases for the guests' LUKS volumes.
    #[command(flatten)]
    pub luks: LuksArgs,
    /// Type, mode, links, owner, size and modification time of each entry, as `ls -l` shows them.
    #[arg(long, short = 'l')]
    pub long: bool,
    /// Memory for verified chunks.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub cache_size: u64,
}

/// `vmstash dump`
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// SNAPSHOT:PATH, as for `vmstash ls`.
    pub target: String,
    /// With "latest": the newest snapshot these filters match.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Passphrases for the guests' LUKS volumes.
    #[command(flatten)]
    pub luks: LuksArgs,
    /// Memory for verified chunks.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub cache_size: u64,
}

/// `vmstash find`
#[derive(Debug, Args)]
pub struct FindArgs {
    /// What to find: /a/path from a filesystem's root (globs allowed: /etc/nginx/*.conf), or
    /// a glob on file names (*.conf, fstab). Several: any of them.
    #[arg(required = true, value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// Which snapshots to search (--vm web1): all that match, oldest first.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Passphrases for the guests' LUKS volumes.
    #[command(flatten)]
    pub luks: LuksArgs,
    /// Show only the versions that differ from the snapshot before (new, changed, deleted).
    #[arg(long)]
    pub changed: bool,
    /// Memory for verified chunks (shared by all snapshots searched).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub cache_size: u64,
}

/// `vmstash vms`
#[derive(Debug, Args)]
pub struct VmsArgs {
    /// libvirt URI: qemu:///system, or qemu+ssh://user@host[:port]/system.
    #[arg(long, value_name = "URI")]
    pub connect: String,
}

/// `vmstash vm-repair`
#[derive(Debug, Args)]
pub struct VmRepairArgs {
    /// libvirt URI: qemu:///system, or qemu+ssh://user@host[:port]/system; or a QEMU's QMP
    /// socket: qmp:///path/to/qmp.sock, qmp+ssh://user@host/path/to/qmp.sock.
    #[arg(long, value_name = "URI")]
    pub connect: String,
    /// The VM to repair (a libvirt domain; not with a QMP socket, which names its QEMU).
    #[arg(long, required = false, default_value = "")]
    pub vm: String,
}

/// `vmstash prune`
#[derive(Debug, Args)]
pub struct PruneCommandArgs {
    /// How the prune runs.
    #[command(flatten)]
    pub options: PruneArgs,
    /// Print what would be deleted and repacked, and the space freed; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

/// `vmstash init`
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Chunk size: a power of two from 64KiB to 8MiB (fixed for the repository's life)
    /// [default: 512KiB, or the --from-repo's with --copy-chunker-params].
    #[arg(long, value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// Use the chunk size of the repository --from-repo names, so that `vmstash copy` between
    /// the two deduplicates (restic's `init --copy-chunker-params`).
    #[arg(long, requires = "from_repo", conflicts_with = "chunk_size")]
    pub copy_chunker_params: bool,
    /// The repository to take the chunk size from.
    #[command(flatten)]
    pub from: FromRepoArgs,
    /// zstd compression level for new data: -7 (fastest) … 22 (smallest); 1 to 19 are the usual range.
    #[arg(long, default_value_t = vmstash_repo::config::DEFAULT_COMPRESSION_LEVEL,
          value_parser = clap::value_parser!(i32).range(-7..=22))]
    pub compression_level: i32,
}

/// Another repository to read from (`copy`, `init --copy-chunker-params`), with its password
/// given as for `-r` (restic's `--from-*` options).
#[derive(Debug, Args)]
pub struct FromRepoArgs {
    /// The source repository: the same forms as -r.
    #[arg(long, env = "VMSTASH_FROM_REPOSITORY", value_name = "LOCATION")]
    pub from_repo: Option<String>,
    /// Read the source repository's password from this file (first line).
    #[arg(long, env = "VMSTASH_FROM_PASSWORD_FILE", value_name = "FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Run this shell command and use its first line of output as the source's password
    /// (else VMSTASH_FROM_PASSWORD, else a prompt).
    #[arg(long, env = "VMSTASH_FROM_PASSWORD_COMMAND", value_name = "COMMAND")]
    pub from_password_command: Option<String>,
}

/// `vmstash copy`
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Snapshots of the source by id (or unique prefix, or "latest"); without ids, every
    /// snapshot the filters match.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Where to copy from.
    #[command(flatten)]
    pub from: FromRepoArgs,
    /// Which snapshots (without ids).
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `vmstash backup`
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A disk image to back up: raw file, block device or qcow2 (detected by content). Repeatable.
    #[arg(
        long = "disk",
        value_name = "PATH",
        required_unless_present = "connect",
        conflicts_with = "connect"
    )]
    pub disks: Vec<PathBuf>,
    /// Back up VMs of this libvirt hypervisor: qemu:///system or qemu+ssh://user@host[:port]/system;
    /// or the QEMU behind a QMP socket: qmp:///path/to/qmp.sock, qmp+ssh://user@host/path/to/qmp.sock.
    #[arg(long, value_name = "URI")]
    pub connect: Option<String>,
    /// A VM to back up (repeatable); with --connect.
    #[arg(
        long = "vm",
        value_name = "NAME",
        requires = "connect",
        conflicts_with = "all"
    )]
    pub vms: Vec<String>,
    /// Back up every VM of the hypervisor; with --connect.
    #[arg(long, requires = "connect")]
    pub all: bool,
    /// Leave out this disk (guest device name, e.g. vdb) of every VM; repeatable.
    #[arg(long = "exclude-disk", value_name = "TARGET", requires = "connect")]
    pub exclude_disks: Vec<String>,
    /// Name of the snapshot series (default: the first disk's file name without extension).
    #[arg(long)]
    pub name: Option<String>,
    /// Tag the snapshot: a,b adds two tags (repeatable).
    #[arg(long = "tag", value_name = "TAG[,TAG…]", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// The snapshot's time instead of now: "YYYY-MM-DD HH:MM:SS" (UTC) or RFC 3339 with a zone;
    /// for imports and for building a history.
    #[arg(long, value_name = "TIME", value_parser = parse_snapshot_time)]
    pub time: Option<String>,
    /// Read whole disks over SFTP instead of hashing them on the host with the hashblocks
    /// helper (with --connect qemu+ssh://…).
    #[arg(long)]
    pub no_helper: bool,
    /// Changed-block tracking of running VMs (libvirt checkpoints): auto uses it where it can
    /// and says why not where it cannot; always fails where it cannot; never reads through an
    /// external snapshot instead, as before.
    #[arg(long, value_enum, default_value_t = CbtMode::Auto, requires = "connect")]
    pub cbt: CbtMode,
    /// Hash every chunk of every disk even where changed-block tracking could skip it, and
    /// compare: a chunk it would have skipped but that changed is reported (exit code 3). Done
    /// by default every 7th backup of a VM.
    #[arg(long, requires = "connect")]
    pub verify_cbt: bool,
}

/// `backup --cbt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CbtMode {
    /// Use changed-block tracking where it can be trusted; say why not elsewhere.
    Auto,
    /// Fail a running VM's backup that cannot use it.
    Always,
    /// Never use it.
    Never,
}

/// Which snapshots a command considers, as restic's `--host`/`--tag` filters.
#[derive(Debug, Args, Clone, Default)]
pub struct FilterArgs {
    /// Only snapshots of this VM (the snapshot name); repeatable: any of them.
    #[arg(long = "vm", value_name = "NAME")]
    pub vms: Vec<String>,
    /// Only snapshots made on this host; repeatable: any of them.
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Only snapshots carrying all of these tags (a,b); repeatable: any of the lists.
    #[arg(long = "tag", value_name = "TAG[,TAG…]")]
    pub tags: Vec<String>,
}

impl FilterArgs {
    /// The library's filter.
    pub fn filter(&self) -> vmstash_repo::selection::SnapshotFilter {
        vmstash_repo::selection::SnapshotFilter {
            names: self.vms.clone(),
            hosts: self.hosts.clone(),
            tags: self
                .tags
                .iter()
                .map(|t| vmstash_repo::selection::TagList::parse(t))
                .collect(),
        }
    }
}

/// `vmstash snapshots`
#[derive(Debug, Args)]
pub struct SnapshotsArgs {
    /// Which snapshots.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Only the newest N snapshots of each group.
    #[arg(long, value_name = "N")]
    pub latest: Option<usize>,
    /// Show snapshots in groups of equal vm, host, disks and/or tags (comma-separated; '' for
    /// none). Without it (and without --latest) one list, oldest first.
    #[arg(long, value_name = "FIELDS", value_parser = parse_group_by)]
    pub group_by: Option<vmstash_repo::selection::GroupBy>,
}

/// `vmstash tag`
#[derive(Debug, Args)]
pub struct TagArgs {
    /// Snapshots by id (or unique prefix); without ids, every snapshot the filters match.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Add these tags (a,b; repeatable).
    #[arg(long, value_name = "TAG[,TAG…]", value_delimiter = ',')]
    pub add: Vec<String>,
    /// Remove these tags (a,b; repeatable).
    #[arg(long, value_name = "TAG[,TAG…]", value_delimiter = ',')]
    pub remove: Vec<String>,
    /// Replace all tags by these (a,b; repeatable; `--set ''` removes every tag).
    #[arg(long, value_name = "TAG[,TAG…]", value_delimiter = ',', conflicts_with_all = ["add", "remove"])]
    pub set: Option<Vec<String>>,
    /// Which snapshots, without ids.
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// `vmstash repair …`
#[derive(Debug, Subcommand)]
pub enum RepairCommand {
    /// Rebuild the index from the packs' own headers (damaged index files, missing packs).
    Index,
    /// Copy the readable chunks of damaged packs into new packs, then delete the damaged packs.
    Packs(RepairPacksArgs),
    /// Rewrite snapshots whose chunks are gone into snapshots that record the lost bytes.
    Snapshots(RepairSnapshotsArgs),
}

/// `vmstash repair packs`
#[derive(Debug, Args)]
pub struct RepairPacksArgs {
    /// The damaged packs (ids or unique prefixes, as `check --read-data` names them).
    #[arg(value_name = "ID", required = true)]
    pub ids: Vec<String>,
}

/// `vmstash repair snapshots`
#[derive(Debug, Args)]
pub struct RepairSnapshotsArgs {
    /// Remove the snapshots that were rewritten, and snapshot files that cannot be read.
    #[arg(long)]
    pub forget: bool,
    /// Print what would be rewritten; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
}

/// `vmstash diff`
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older snapshot (id, unique prefix, or "latest").
    pub old: String,
    /// The newer snapshot (id, unique prefix, or "latest").
    pub new: String,
}

/// `vmstash unlock`
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// Remove every lock and temporary file, also those of processes that may still be running.
    #[arg(long)]
    pub remove_all: bool,
}

/// `vmstash forget`
#[derive(Debug, Args)]
pub struct ForgetArgs {
    /// Snapshots to forget by id (or unique prefix), instead of a policy.
    #[arg(value_name = "ID")]
    pub ids: Vec<String>,
    /// Keep the N newest snapshots ("unlimited" for all).
    #[arg(long, value_name = "N")]
    pub keep_last: Option<String>,
    /// Keep the newest snapshot of each of the N newest hours that have one.
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<String>,
    /// Keep the newest snapshot of each of the N newest days that have one (UTC days).
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<String>,
    /// Keep the newest snapshot of each of the N newest ISO weeks (Monday–Sunday) that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<String>,
    /// Keep the newest snapshot of each of the N newest months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<String>,
    /// Keep the newest snapshot of each of the N newest years that have one.
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<String>,
    /// Keep every snapshot newer than this span before the group's latest (e.g. 1y5m7d2h).
    #[arg(long, value_name = "SPAN")]
    pub keep_within: Option<String>,
    /// Keep the newest snapshot of each hour within this span before the latest.
    #[arg(long, value_name = "SPAN")]
    pub keep_within_hourly: Option<String>,
    /// Keep the newest snapshot of each day within this span before the latest.
    #[arg(long, value_name = "SPAN")]
    pub keep_within_daily: Option<String>,
    /// Keep the newest snapshot of each ISO week within this span before the latest.
    #[arg(long, value_name = "SPAN")]
    pub keep_within_weekly: Option<String>,
    /// Keep the newest snapshot of each month within this span before the latest.
    #[arg(long, value_name = "SPAN")]
    pub keep_within_monthly: Option<String>,
    /// Keep the newest snapshot of each year within this span before the latest.
    #[arg(long, value_name = "SPAN")]
    pub keep_within_yearly: Option<String>,
    /// Keep snapshots carrying all of these tags (a,b); repeatable: any of the lists.
    #[arg(long = "keep-tag", value_name = "TAG[,TAG…]")]
    pub keep_tags: Vec<String>,
    /// Apply the policy to groups of equal vm, host, disks and/or tags (comma-separated; ''
    /// for one group) [default: vm,host,disks].
    #[arg(long, value_name = "FIELDS", value_parser = parse_group_by)]
    pub group_by: Option<vmstash_repo::selection::GroupBy>,
    /// Which snapshots the policy considers (others are left alone).
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Print what would be forgotten; change nothing.
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Prune afterwards (with the prune options below).
    #[arg(long)]
    pub prune: bool,
    /// How the prune runs, with --prune.
    #[command(flatten)]
    pub prune_options: PruneArgs,
}

/// `vmstash prune`, and the prune of `forget --prune`
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Unused space tolerated in kept packs: a percentage of the used space, a size, or
    /// "unlimited" (partly used packs beyond it are repacked).
    #[arg(long, value_name = "LIMIT", default_value = "5%")]
    pub max_unused: String,
    /// Copy at most this much when repacking (e.g. 10GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_repack_size: Option<u64>,
    /// Delete marked packs only once marked this long ago (e.g. 23h, 30m, 0): packs are never
    /// deleted while a backup, restore or mount that started before they were marked runs.
    #[arg(long, value_name = "DURATION", default_value = "23h", value_parser = parse_duration)]
    pub keep_delete: std::time::Duration,
    /// Delete unused packs now, under an exclusive lock that stops backups, restores and
    /// mounts from starting meanwhile (as restic does).
    #[arg(long)]
    pub instant_delete: bool,
}

/// Image format of restored disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RestoreFormat {
    /// Sparse raw image.
    Raw,
    /// qcow2 (through qemu-img).
    Qcow2,
}

/// `vmstash restore`
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// Snapshot id (or a unique prefix of it), or "latest"; SNAPSHOT:PATH restores one file or
    /// directory tree of a guest filesystem instead (PATH as `vmstash ls` shows it, e.g.
    /// latest:vda/p1/etc/nginx) into DIR/<its name>, with modes, times, links and, as root,
    /// owners and device nodes.
    pub snapshot: String,
    /// Directory to write `<disk>.raw` (or `.qcow2`) and `domain.xml` into, created if
    /// missing: a local path, or sftp://user@host[:port]/path on another host (files of
    /// SNAPSHOT:PATH: a local directory).
    #[arg(long, value_name = "DIR|URL")]
    pub target: String,
    /// With "latest": the newest snapshot these filters match.
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Passphrases for the guests' LUKS volumes.
    #[command(flatten)]
    pub luks: LuksArgs,
    /// Restore only this disk (repeatable).
    #[arg(long = "disk", value_name = "NAME")]
    pub disks: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = RestoreFormat::Raw)]
    pub format: RestoreFormat,
    /// Write zeros where a repaired snapshot records bytes as lost (`repair snapshots`),
    /// instead of failing there.
    #[arg(long)]
    pub zero_lost: bool,
    /// Define the VM from the snapshot's domain XML, with its disks pointing
    /// at the restored images.
    #[arg(long)]
    pub define: bool,
    /// With --define: the new VM's name (it then also gets a new UUID and
    /// new MAC addresses). Without it the original name is kept, which is
    /// refused while a VM of that name exists.
    #[arg(long, requires = "define")]
    pub name: Option<String>,
    /// With --define: the hypervisor to define the VM on [default: qemu:///system].
    #[arg(long, value_name = "URI", requires = "define")]
    pub connect: Option<String>,
    /// With --define: keep the backed-up domain's QEMU pass-through (<qemu:commandline>,
    /// <qemu:capabilities>, …), which is left out by default because it can name files, devices
    /// and sockets of the host the VM was backed up from.
    #[arg(long, requires = "define")]
    pub keep_qemu_passthrough: bool,
}

/// `vmstash check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Also read and verify every byte of every pack.
    #[arg(long, conflicts_with = "read_data_subset")]
    pub read_data: bool,
    /// Read and verify only part of the packs: n/t (group n of t; t runs read all), N% (a
    /// random share) or a size such as 500M (random packs up to about that much).
    #[arg(long, value_name = "n/t|N%|SIZE", value_parser = parse_read_data_subset)]
    pub read_data_subset: Option<vmstash_repo::check::ReadData>,
}

/// A `--read-data-subset` value.
pub fn parse_read_data_subset(s: &str) -> Result<vmstash_repo::check::ReadData, String> {
    vmstash_repo::check::ReadData::parse_subset(s).map_err(|e| value_error(&e))
}

/// What `cat` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CatWhat {
    /// The repository config.
    Config,
    /// An index file.
    Index,
    /// A snapshot manifest.
    Snapshot,
    /// A key file (its public, wrapped form).
    Key,
}

/// `vmstash cat`
#[derive(Debug, Args)]
pub struct CatArgs {
    /// Which kind of file.
    #[arg(value_enum)]
    pub what: CatWhat,
    /// The file's id (or a unique prefix; "latest" for snapshots).
    pub id: Option<String>,
}

/// `vmstash key …`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Add a password.
    Add(NewPassword),
    /// List key files.
    List,
    /// Remove a key file (not the one in use).
    Remove {
        /// Key id (or a unique prefix).
        id: String,
    },
    /// Change the password in use.
    Passwd(NewPassword),
}

/// Where a new password comes from.
#[derive(Debug, Args)]
pub struct NewPassword {
    /// Read the new password from this file (else VMSTASH_NEW_PASSWORD, else a prompt).
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
}

/// Parses "256KiB", "1MiB", "65536".
/// What is wrong with a command-line value the library refused: a parameter error's reason
/// without its "invalid parameter: " prefix.
pub fn value_error(e: &vmstash_repo::Error) -> String {
    match e {
        vmstash_repo::Error::InvalidParameter(why) => why.clone(),
        other => other.to_string(),
    }
}

/// A `--group-by` value: vm, host, disks and tags, comma-separated, or '' for one group.
pub fn parse_group_by(s: &str) -> Result<vmstash_repo::selection::GroupBy, String> {
    vmstash_repo::selection::GroupBy::parse(s).map_err(|e| value_error(&e))
}

/// A `--time` value as the snapshot stores it (RFC 3339, UTC, to the second).
pub fn parse_snapshot_time(s: &str) -> Result<String, String> {
    let t = s.trim();
    let parsed = vmstash_repo::policy::parse_time(t)
        .or_else(|| vmstash_repo::policy::parse_time(&format!("{}Z", t.replacen(' ', "T", 1))));
    match parsed {
        Some(time) => Ok(time.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        None => Err(format!(
            "{s:?} is not a time: write \"YYYY-MM-DD HH:MM:SS\" (UTC) or RFC 3339 like 2026-11-26T21:30:05+01:00"
        )),
    }
}

/// Parses a duration: `0`, or a number with a unit (`30m`, `23h`, `2d`, `1h30m`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}): use e.g. 0, 30m, 23h, 2d"))
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    vmstash_repo::units::parse_size(s)
        .ok_or_else(|| format!("{s:?} is not a size (use a number with KiB, MiB, GiB or TiB)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256KiB"), Ok(262_144));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn clap_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
