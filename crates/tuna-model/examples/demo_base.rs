//! Builds the demo model's committed file (run by `scripts/demo-base.sh`, not by users):
//!
//!   demo_base init DIR            the untrained demo model (seeded weights) as a model directory
//!   demo_base pack TRAINED OUT    packs a fully fine-tuned demo model (tuna_model::demo docs)
//!   demo_base write PACKED DIR    the demo model a packed file makes, as a model directory

use std::path::Path;
use std::process::ExitCode;

fn run(args: &[&str]) -> Result<(), String> {
    match args {
        ["init", dir] => {
            tuna_model::demo::write_init_model(Path::new(dir)).map_err(|e| e.to_string())
        }
        ["pack", trained, out] => {
            let (bytes, rms, max) =
                tuna_model::demo::pack_trained(Path::new(trained)).map_err(|e| e.to_string())?;
            std::fs::write(out, &bytes).map_err(|e| format!("{out}: {e}"))?;
            println!(
                "{out}: {} bytes; the packed embedding differs from the trained one by {rms:.4} (root mean square), {max:.4} at most",
                bytes.len()
            );
            Ok(())
        }
        ["write", packed, dir] => {
            let bytes = std::fs::read(packed).map_err(|e| format!("{packed}: {e}"))?;
            tuna_model::demo::write_demo_model_from(Path::new(dir), &bytes)
                .map_err(|e| e.to_string())
        }
        _ => Err("usage: demo_base init DIR | pack TRAINED_DIR OUT | write PACKED DIR".into()),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo_base: {e}");
            ExitCode::FAILURE
        }
    }
}
