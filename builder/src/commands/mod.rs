//! One module per subcommand: parse the options, call the library, print.
//! Commands never call each other.

pub mod build;
pub mod docs;
pub mod doctor;
pub mod flash;
pub mod init;
pub mod kubeconfig;
pub mod lab;
pub mod render;
pub mod stamp;
pub mod status;
pub mod validate;
