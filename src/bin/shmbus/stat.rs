//! `shmbus stat`: a running hub's clients, pending calls and cache, as a table or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

/// Prints the report of the hub in `dir` (the default directory if `None`).
pub(crate) fn run(dir: Option<PathBuf>, json: bool) -> ExitCode {
    let dir = dir.unwrap_or_else(shmbus::hub::default_dir);
    match shmbus::hub::stat(&dir) {
        Ok(r) => {
            if json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                print!("{}", r.to_table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("shmbus stat: no hub at {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}
