//! `tuna users create|create-key|list|revoke`: users and their API keys. A key is printed once,
//! when it is made; the store keeps only its SHA-256 and its first characters (to tell keys apart).

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tuna_server::store::{Store, User};

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Create a user and print its API key (stdout, once)
    Create(NameArgs),
    /// Give an existing user one more API key (printed once)
    CreateKey(NameArgs),
    /// List users with their keys (prefixes only) and what they hold
    List(DataDirArgs),
    /// Revoke a user's API keys (all of them, or the one with `--key PREFIX`)
    Revoke(RevokeArgs),
}

#[derive(Args, Debug)]
pub struct DataDirArgs {
    #[command(flatten)]
    pub state: super::SharedStateArgs,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    /// User name (letters, digits, `.`, `_`, `-`)
    pub name: String,
    #[command(flatten)]
    pub dir: DataDirArgs,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// User name
    pub name: String,
    /// Only the key whose prefix `tuna users list` shows (`sk-tuna-AbCd`)
    #[arg(long)]
    pub key: Option<String>,
    #[command(flatten)]
    pub dir: DataDirArgs,
}

pub fn run(cmd: UsersCommand) -> anyhow::Result<()> {
    let dir = match &cmd {
        UsersCommand::Create(a) | UsersCommand::CreateKey(a) => &a.dir,
        UsersCommand::List(a) => a,
        UsersCommand::Revoke(a) => &a.dir,
    };
    let state = dir.state.clone();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = state.open_store().await?;
        let store = &*store;
        match cmd {
            UsersCommand::Create(a) => create(store, &a.name).await,
            UsersCommand::CreateKey(a) => create_key(store, &a.name).await,
            UsersCommand::List(_) => list(store).await,
            UsersCommand::Revoke(a) => revoke(store, &a.name, a.key.as_deref()).await,
        }
    })
}

fn check_name(name: &str) -> anyhow::Result<&str> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        bail!("user name `{name}` must be 1-64 letters, digits, `.`, `_` or `-`");
    }
    Ok(name)
}

async fn existing(store: &dyn Store, name: &str) -> anyhow::Result<User> {
    match store.user_by_name(name).await? {
        Some(u) => Ok(u),
        None => bail!(
            "there is no user `{name}`\n---> HINT: `tuna users list` shows them; `tuna users create {name}` makes one"
        ),
    }
}

async fn create(store: &dyn Store, name: &str) -> anyhow::Result<()> {
    let name = check_name(name)?;
    if store.user_by_name(name).await?.is_some() {
        bail!(
            "user `{name}` already exists\n---> HINT: pick another name, or `tuna users create-key {name}` for another key"
        );
    }
    let (user, key) = tuna_server::auth::create_user(store, name)
        .await
        .context("creating the user")?;
    eprintln!(
        "Created user {} ({}). Its API key (shown only now):",
        user.name, user.id
    );
    println!("{key}");
    Ok(())
}

async fn create_key(store: &dyn Store, name: &str) -> anyhow::Result<()> {
    let user = existing(store, check_name(name)?).await?;
    let key = tuna_server::ids::new_api_key();
    store
        .add_api_key(
            &user.id,
            &tuna_server::ids::hash_key(&key),
            &tuna_server::ids::key_prefix(&key),
        )
        .await
        .context("adding the key")?;
    eprintln!("A new API key for {} (shown only now):", user.name);
    println!("{key}");
    Ok(())
}

async fn list(store: &dyn Store) -> anyhow::Result<()> {
    let users = store.list_users().await?;
    if users.is_empty() {
        eprintln!("No users yet: `tuna users create NAME` makes one.");
        return Ok(());
    }
    let keys = store.list_api_keys().await?;
    println!("NAME\tID\tKEYS\tFILES\tSTORED_MIB\tQUEUED\tRUNNING");
    for u in users {
        let usage = store.usage(&u.id).await?;
        let prefixes: Vec<&str> = keys
            .iter()
            .filter(|k| k.user_id == u.id)
            .map(|k| k.key_prefix.as_str())
            .collect();
        let stored = (usage.file_bytes + usage.checkpoint_bytes) as f64 / (1 << 20) as f64;
        println!(
            "{}\t{}\t{}\t{}\t{stored:.1}\t{}\t{}",
            u.name,
            u.id,
            if prefixes.is_empty() {
                "(revoked)".to_string()
            } else {
                prefixes.join(",")
            },
            usage.files,
            usage.queued_jobs,
            usage.running_jobs
        );
    }
    Ok(())
}

async fn revoke(store: &dyn Store, name: &str, key: Option<&str>) -> anyhow::Result<()> {
    let user = existing(store, check_name(name)?).await?;
    let n = store.revoke_api_keys(&user.id, key).await?;
    match (n, key) {
        (0, Some(k)) => bail!(
            "user `{}` has no key `{k}`\n---> HINT: `tuna users list` shows the prefixes of each user's keys",
            user.name
        ),
        (0, None) => eprintln!("User {} had no keys.", user.name),
        (n, _) => eprintln!(
            "Revoked {n} key(s) of {}: requests with them are refused from now on.",
            user.name
        ),
    }
    Ok(())
}
