//! `tuna users create NAME`: a user and an API key (printed once; only its hash is stored).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tuna_server::db::SqliteStore;
use tuna_server::store::Store;

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Create a user and print its API key (stdout, once)
    Create(CreateArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// User name (letters, digits, `.`, `_`, `-`)
    pub name: String,
    /// The server's data directory
    #[arg(long, env = "TUNA_DATA_DIR", default_value = "./tuna-data")]
    pub data_dir: PathBuf,
}

pub fn run(cmd: UsersCommand) -> anyhow::Result<()> {
    match cmd {
        UsersCommand::Create(args) => create(args),
    }
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    let name = args.name.trim();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        bail!("user name `{name}` must be 1-64 letters, digits, `.`, `_` or `-`");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let settings = tuna_server::Settings::new(&args.data_dir);
        let store = SqliteStore::open(&settings.db_path())
            .await
            .context("opening the database")?;
        if store.user_by_name(name).await?.is_some() {
            bail!("user `{name}` already exists\n---> HINT: pick another name");
        }
        let (user, key) = tuna_server::auth::create_user(&store, name)
            .await
            .context("creating the user")?;
        eprintln!(
            "Created user {} ({}). Its API key (shown only now):",
            user.name, user.id
        );
        println!("{key}");
        Ok(())
    })
}
