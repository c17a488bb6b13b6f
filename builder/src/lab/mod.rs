//! `piha lab`: every node of a cluster file as a QEMU VM on one private L2
//! network, and the failover test of seed 004 run on it (DESIGN.md, "The lab").
//!
//! - [`dir`]: where a lab lives (disks, consoles, state) and its namespace name;
//! - [`state`]: `lab.json`, written before anything is created, so a lab whose
//!   `piha` was killed is found and cleaned;
//! - [`plan`]: the cluster turned into VMs, and every refusal before any VM;
//! - [`net`]: the namespace, its bridge and the taps;
//! - [`vm`]: QEMU command lines, power on, clean stop, power cut;
//! - [`timeserver`]: SNTP on the gateway address inside the namespace;
//! - [`ssh`]: the lab's own key, and commands on the nodes;
//! - [`nodes`]: each node's VM state and agent phase;
//! - [`up`], [`down`]: bring a lab up and take it away;
//! - [`reflash`]: one node's card replaced (fresh disk, stamped again), the VIP probed meanwhile;
//! - [`probe`], [`watch`], [`check`]: HTTPS probes through the VIP, the
//!   directors' pools watched over ssh, and the measured rows.

pub mod check;
pub mod dir;
pub mod down;
pub mod net;
pub mod nodes;
pub mod plan;
pub mod probe;
pub mod reflash;
pub mod ssh;
pub mod state;
pub mod timeserver;
pub mod up;
pub mod vm;
pub mod watch;
