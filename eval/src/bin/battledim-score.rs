//! `battledim-score [--data DIR] SUBMISSION...`: prints the official-style BattLeDIM report
//! for each submission file (`pipe, YYYY-MM-DD HH:MM` per line). `DIR` holds `L-TOWN.inp`
//! and `leak-flows/` (default: the repository's `tests/data/battledim`).

use outpost_eval::battledim::Battledim;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/battledim");
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--data" => match args.next() {
                Some(d) => data = PathBuf::from(d),
                None => return usage(),
            },
            "-h" | "--help" => return usage(),
            _ => files.push(PathBuf::from(arg)),
        }
    }
    if files.is_empty() {
        return usage();
    }
    let b = match Battledim::load(&data) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    for f in files {
        match b.score_file(&f) {
            Ok(score) => {
                let team = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                print!("{}", score.render_report(&team, &b.leaks));
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("usage: battledim-score [--data DIR] SUBMISSION...");
    ExitCode::from(2)
}
