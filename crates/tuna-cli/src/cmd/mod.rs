//! One file per subcommand.

pub mod bench;
pub mod chat;
pub mod data;
pub mod generate;
pub mod sampling;
