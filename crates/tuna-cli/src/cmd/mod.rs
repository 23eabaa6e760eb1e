//! One file per subcommand.

pub mod bench;
pub mod bench_train;
pub mod chat;
pub mod data;
pub mod generate;
pub mod merge;
pub mod models;
pub mod sampling;
pub mod serve;
pub mod train;
pub mod users;
pub mod worker;
