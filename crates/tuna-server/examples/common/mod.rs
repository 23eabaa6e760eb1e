//! Shared by the benchmark examples: command-line numbers.

/// The number after `name` on the command line, or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// When the server started this executable as a worker (`NAME worker --data-dir D --job ID`, the
/// arguments `tuna worker` takes): trains the job and exits with the worker's code.
#[allow(dead_code)] // not every example starts workers
pub fn run_as_worker_if_asked() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some("worker") {
        return Ok(());
    }
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_default()
    };
    let attempt = std::env::var(tuna_server::queue::ATTEMPT_ENV)
        .ok()
        .and_then(|a| a.parse().ok());
    let code = tuna_server::worker::run(
        std::path::Path::new(&get("--data-dir")),
        &get("--job"),
        attempt,
    )?;
    std::process::exit(code);
}
