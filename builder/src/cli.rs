//! Command-line definitions. One `XxxOpts` per leaf command; every argument is
//! documented (checked by `Cli::command().debug_assert()` in the tests).

use std::path::PathBuf;

use clap::builder::PossibleValue;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::pipeline::plan::Profile;

#[derive(Debug, Parser)]
#[command(
    name = "piha",
    version,
    about = "Build, stamp and flash Kubernetes appliance images for Raspberry Pi, arm64 and amd64 clusters"
)]
#[command(help_expected = true, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented example cluster file and generate the cluster's secrets.
    Init(InitOpts),
    /// Replace the cluster's secrets (CAs, keys, token). Cards stamped before must be re-stamped.
    RotateSecrets(RotateSecretsOpts),
    /// Check a cluster file and report every problem at once.
    Validate(ValidateOpts),
    /// Write, for review, the files the agent will write on one node.
    Render(RenderOpts),
    /// Write one node's identity and secrets onto the PIHA-CFG partition of a card or image.
    Stamp(StampOpts),
    /// Build a flashable disk image for a board.
    Build(BuildOpts),
    /// Write an image to a card (only its mapped blocks, verified by reading back), then stamp a node onto it.
    Flash(FlashOpts),
    /// Check every host tool piha needs and say how to install what is missing.
    Doctor(DoctorOpts),
    /// The agents' status: of every node of a cluster over SSH, or from one card or image.
    Status(StatusOpts),
    /// Write an admin kubeconfig for this workstation, minted from the cluster CA.
    Kubeconfig(KubeconfigOpts),
    /// The whole cluster as QEMU VMs on one private network, and its failover test.
    Lab(LabOpts),
    /// Print shell completions.
    Completions(CompletionsOpts),
    /// Write man pages.
    Man(ManOpts),
}

/// The cluster file and its secrets directory.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Cluster file.
    #[arg(long, short = 'c', default_value = "cluster.yaml")]
    pub cluster: PathBuf,
    /// Secrets directory [default: `secrets/` beside the cluster file].
    #[arg(long)]
    pub secrets: Option<PathBuf>,
}

impl ClusterArgs {
    pub fn secrets_dir(&self) -> PathBuf {
        match &self.secrets {
            Some(s) => s.clone(),
            None => self
                .cluster
                .parent()
                .map(|p| p.join("secrets"))
                .unwrap_or_else(|| PathBuf::from("secrets")),
        }
    }
}

#[derive(Debug, Args)]
pub struct InitOpts {
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

#[derive(Debug, Args)]
pub struct RotateSecretsOpts {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Confirm that the old secrets are to be replaced.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct ValidateOpts {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Print the problems as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RenderOpts {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Node name from the cluster file.
    #[arg(long, short = 'n')]
    pub node: String,
    /// Directory to write the node's files into (as paths under it, e.g. OUT/etc/hosts).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct StampOpts {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Node name from the cluster file.
    #[arg(long, short = 'n')]
    pub node: String,
    /// Image file or block device holding a PIHA-CFG partition.
    #[arg(required_unless_present = "partition_image", conflicts_with = "partition_image")]
    pub target: Option<PathBuf>,
    /// Instead of a card, write a bare PIHA-CFG FAT filesystem image to this file.
    #[arg(long)]
    pub partition_image: Option<PathBuf>,
    /// Allow a block device that is neither removable nor on USB/MMC (an internal disk, a loop device).
    #[arg(long)]
    pub allow_non_removable: bool,
}

impl ValueEnum for Profile {
    fn value_variants<'a>() -> &'a [Self] {
        &[Profile::Production, Profile::Test]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            Profile::Production => "What users flash: real Kubernetes packages",
            Profile::Test => "Adds the test-only overlay (recording kubeadm, power-off when the agent is done)",
        };
        Some(PossibleValue::new(self.as_str()).help(help))
    }
}

#[derive(Debug, Args)]
pub struct BuildOpts {
    /// Board file name from `boards/`, e.g. amd64, rpi4, rpi5, arm64-uefi.
    #[arg(long, short = 'b')]
    pub board: String,
    /// Cluster file [default: embedded defaults].
    #[arg(long, short = 'c')]
    pub cluster: Option<PathBuf>,
    /// Distro file name from `distros/`; overrides the cluster file's distro.
    #[arg(long, short = 'd')]
    pub distro: Option<String>,
    /// Output directory.
    #[arg(long, short = 'o', default_value = "out")]
    pub out: PathBuf,
    /// Build profile.
    #[arg(long, value_enum, default_value_t = Profile::Production)]
    pub profile: Profile,
    /// Kubernetes packages from this local directory of .debs instead of pkgs.k8s.io.
    #[arg(long)]
    pub k8s_bundle: Option<PathBuf>,
    /// Debian/Ubuntu mirror URL [default: the distro file's, or the host's apt mirror for Debian].
    #[arg(long)]
    pub mirror: Option<String>,
    /// Cache directory for rootfs tarballs and .debs.
    #[arg(long, env = "PIHA_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Build a fresh root filesystem even if a cached one matches.
    #[arg(long)]
    pub no_cache: bool,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A `NODE=DEVICE` pair for `piha flash --all --pairs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePair {
    pub node: String,
    pub device: PathBuf,
}

fn parse_device_pair(s: &str) -> Result<DevicePair, String> {
    match s.split_once('=') {
        Some((node, device)) if !node.is_empty() && !device.is_empty() => Ok(DevicePair {
            node: node.to_string(),
            device: PathBuf::from(device),
        }),
        _ => Err(format!("{s:?} is not NODE=DEVICE (e.g. cp1=/dev/sdb)")),
    }
}

#[derive(Debug, Args)]
pub struct FlashOpts {
    /// Image to write: .img, .img.zst or .img.xz; a .bmap beside it (X.img.bmap, X.img.zst.bmap or X.bmap) is used when present.
    pub image: PathBuf,
    /// Whole-disk block device to write, e.g. /dev/sdb or /dev/mmcblk0.
    #[arg(long, short = 'd', conflicts_with_all = ["to_file", "all"], required_unless_present_any = ["to_file", "all"])]
    pub device: Option<PathBuf>,
    /// Write a sparse image file (for a VM) instead of a device.
    #[arg(long, conflicts_with = "all")]
    pub to_file: Option<PathBuf>,
    /// Node from the cluster file whose identity is stamped onto the card's PIHA-CFG partition.
    #[arg(long, short = 'n', conflicts_with = "all", required_unless_present = "all")]
    pub node: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Flash one card per node of the cluster file, in order, recording each in flash-ledger.json beside it.
    #[arg(long)]
    pub all: bool,
    /// With --all: NODE=DEVICE pairs to use instead of asking, comma-separated (cp1=/dev/sdb,w1=/dev/sdc).
    #[arg(long, requires = "all", value_delimiter = ',', value_parser = parse_device_pair)]
    pub pairs: Vec<DevicePair>,
    /// Block map to use instead of the one found beside the image.
    #[arg(long)]
    pub bmap: Option<PathBuf>,
    /// Write without asking for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Allow a disk that is neither removable nor on USB/MMC (an internal disk, a loop device).
    #[arg(long)]
    pub allow_non_removable: bool,
    /// UNSAFE: skip reading the card back. A failing or fake-capacity card that does not keep what was written goes unnoticed until the node fails to boot. The block map's checksums are still checked and the first MiB is still written last.
    #[arg(long)]
    pub no_verify: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DoctorOpts {
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusOpts {
    /// Image file or block device (a card in a reader).
    #[arg(required_unless_present = "cluster", conflicts_with = "cluster")]
    pub target: Option<PathBuf>,
    /// Every node of this cluster, over SSH (the system `ssh`: your keys,
    /// agent and ~/.ssh/config apply).
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// With --cluster: refresh every few seconds until interrupted (with
    /// --json, one JSON array per line).
    #[arg(long, requires = "cluster")]
    pub watch: bool,
    /// With --cluster: the user to log in as.
    #[arg(long, default_value = crate::day2::remote::ADMIN_USER, requires = "cluster")]
    pub user: String,
    /// Print JSON: the raw status.json of a TARGET, or the rows of --cluster.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KubeconfigOpts {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Where to write it (mode 0600) [default: <cluster name>.kubeconfig beside the cluster file].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Days the client certificate lasts (Kubernetes cannot revoke one, so keep it short).
    #[arg(long, default_value_t = crate::day2::kubeconfig::DEFAULT_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(crate::day2::kubeconfig::MAX_DAYS)))]
    pub days: u32,
}

#[derive(Debug, Args)]
pub struct LabOpts {
    #[command(subcommand)]
    pub command: LabCommand,
}

/// The lab a subcommand acts on.
#[derive(Debug, Clone, Args)]
pub struct LabDirArg {
    /// The lab's directory: its state, disks, console logs and built images.
    #[arg(long, default_value = crate::lab::dir::DEFAULT_DIR)]
    pub dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build or reuse the images, stamp one disk per node, boot every node and wait for its agent.
    Up(LabUpOpts),
    /// Each node's VM state and agent phase.
    Status {
        #[command(flatten)]
        dir: LabDirArg,
        /// Print the nodes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Shut a node down cleanly (ACPI power button), or cut its power.
    Stop {
        #[command(flatten)]
        dir: LabDirArg,
        /// Node name from the cluster file.
        node: String,
        /// Cut the power instead of shutting down.
        #[arg(long)]
        hard: bool,
    },
    /// Power a stopped node on.
    Start {
        #[command(flatten)]
        dir: LabDirArg,
        /// Node name from the cluster file.
        node: String,
    },
    /// Replace a node's card: power cut, a fresh disk from its image stamped
    /// again, power on; waits for its agent and reports how the VIP fared.
    Reflash {
        #[command(flatten)]
        dir: LabDirArg,
        /// Node name from the cluster file.
        node: String,
        /// Stamp from this cluster file instead of the lab's (e.g. one that
        /// gained a node); the lab's secrets are used.
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// Minutes to wait for the node's agent.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// Return once the VM is powered on, without waiting for its agent.
        #[arg(long)]
        no_wait: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove every VM, tap and the namespace (also of a lab whose piha was killed).
    Down {
        #[command(flatten)]
        dir: LabDirArg,
    },
    /// Run the failover test (seed 004) and print what it measured.
    Check {
        #[command(flatten)]
        dir: LabDirArg,
        /// Print the rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Internal: the lab's SNTP server, run by `up` inside the lab's namespace.
    #[command(hide = true)]
    ServeTime {
        /// Address to answer on (the cluster's gateway).
        #[arg(long)]
        address: std::net::Ipv4Addr,
    },
}

#[derive(Debug, Args)]
pub struct LabUpOpts {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub dir: LabDirArg,
    /// Build profile of the images (production needs the Kubernetes package sources).
    #[arg(long, value_enum, default_value_t = Profile::Test)]
    pub profile: Profile,
    /// Boot every node as an amd64 VM whatever its board: a fast rehearsal of the cluster rather than the boards.
    #[arg(long)]
    pub as_amd64: bool,
    /// Boot only these nodes (comma-separated names), e.g. to rehearse part of a big cluster; it must include the init control plane and, in lvs-dr mode, a director.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub nodes: Vec<String>,
    /// Use this image instead of building one (for the board its image.json names); repeatable.
    #[arg(long)]
    pub image: Vec<PathBuf>,
    /// QEMU accelerator.
    #[arg(long, value_enum, default_value_t = crate::lab::vm::Accel::Auto)]
    pub accel: crate::lab::vm::Accel,
    /// Virtual CPUs per VM.
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory per VM, MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// MiB added to each node's disk (the root filesystem grows into it on first boot).
    #[arg(long, default_value_t = 1024)]
    pub disk_grow: u64,
    /// Minutes to wait for every agent to finish.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Debian/Ubuntu mirror URL for a build [default: the distro file's, or the host's apt mirror for Debian].
    #[arg(long)]
    pub mirror: Option<String>,
    /// Kubernetes packages from this local directory of .debs, for a production build.
    #[arg(long)]
    pub k8s_bundle: Option<PathBuf>,
    /// Cache directory for rootfs tarballs and .debs.
    #[arg(long, env = "PIHA_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsOpts {
    /// Shell to generate completions for.
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManOpts {
    /// Directory to write piha.1 and one page per subcommand into.
    pub out: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn cli_is_consistent_and_documented() {
        Cli::command().debug_assert();
    }
}
