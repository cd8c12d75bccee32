//! `footunnel unload`: detach the data plane and remove its pinned state.

use std::path::PathBuf;

use anyhow::{Context, Result};
use footunnel::{broker, config};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = config::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    super::runtime()?.block_on(broker::unload(&args.state_dir, &args.pin_dir)).context("unload failed")?;
    println!("footunnel's data plane is detached and its pinned state removed");
    Ok(())
}
