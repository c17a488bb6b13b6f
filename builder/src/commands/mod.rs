//! One module per subcommand: parse the options, call the library, print.
//! Commands never call each other.

pub mod build;
