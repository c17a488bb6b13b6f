//! The contract between the piha builder, the piha-agent and the people who edit
//! cluster files: the cluster file (`cluster`), the per-node `node.yaml` on the
//! PIHA-CFG partition (`node`), their validation (`validate`) and the renderers
//! of every file the agent writes on a node (`render`). One copy, used by both.

pub mod cluster;
pub mod ipvs;
pub mod k8s;
pub mod node;
pub mod problem;
pub mod render;
pub mod secrets;
mod sections;
pub mod status;
pub mod validate;
pub mod yaml;
