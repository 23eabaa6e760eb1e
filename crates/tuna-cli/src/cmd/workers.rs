//! `tuna workers list`: the nodes that run jobs on the shared database (every `tuna serve` with
//! local workers and every `tuna worker` node), their devices, jobs and last heartbeat.

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum WorkersCommand {
    /// List the workers: name, devices, memory, running jobs, seconds since the last heartbeat
    List(ListArgs),
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub state: super::SharedStateArgs,
}

pub fn run(cmd: WorkersCommand) -> anyhow::Result<()> {
    let WorkersCommand::List(args) = cmd;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = args.state.open_store().await?;
        let workers = store.list_workers().await?;
        if workers.is_empty() {
            eprintln!(
                "No worker has joined yet: `tuna serve` and `tuna worker` nodes list themselves."
            );
            return Ok(());
        }
        let now = tuna_server::ids::now_f64();
        println!("NAME\tDEVICES\tMEMORY_MIB\tJOBS\tLAST_HEARTBEAT_S_AGO");
        for w in workers {
            let jobs: Vec<&str> = w.jobs.iter().map(|(id, _)| id.as_str()).collect();
            println!(
                "{}\t{}\t{}\t{}\t{:.1}",
                w.worker.name,
                w.worker.devices,
                w.worker
                    .memory_bytes
                    .map_or("-".to_string(), |m| (m >> 20).to_string()),
                if jobs.is_empty() {
                    "-".to_string()
                } else {
                    jobs.join(",")
                },
                (now - w.worker.last_heartbeat).max(0.0)
            );
        }
        Ok(())
    })
}
