//! Day two: what the workstation does for a running cluster. An admin
//! kubeconfig minted from the CA in `secrets/` (`kubeconfig`), and every
//! node's agent status read over SSH (`node_status`, `remote`), which
//! `piha status --cluster` and `piha lab status` share.

pub mod kubeconfig;
pub mod node_status;
pub mod remote;
