//! The build host: its tools (`piha doctor`, preflight) and its apt sources.

pub mod apt;
pub(crate) mod doctor;
