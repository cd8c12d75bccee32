//! `footunnel keygen`: a fresh random tunnel secret.

use std::path::PathBuf;

use anyhow::Result;
use footunnel::{os::files, secret};

#[derive(clap::Args)]
pub struct Args {
    /// Write it to this new file, created with mode 600 (never readable by
    /// others, unlike `keygen > FILE` until a chmod).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    match args.out {
        None => println!("{}", secret::generate()?),
        Some(path) => {
            files::create_private(&path, &format!("{}\n", secret::generate()?))?;
            eprintln!("footunnel: a new secret is in {} (mode 600)", path.display());
        }
    }
    Ok(())
}
