//! What goes onto a card: the node's files and secrets, the PKI they come
//! from, stamping them into PIHA-CFG, flashing a whole card, and the ledger of
//! flashed cards.

pub(crate) mod contents;
pub mod flash;
pub mod ledger;
pub mod pki;
pub(crate) mod report;
pub mod secrets;
pub mod stamp;

pub use contents::{network_renderer, node_config};
