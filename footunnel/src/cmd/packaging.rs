//! What packaging generates from the command's own definition: manual
//! pages and shell completions (hidden subcommands).

use std::path::Path;

use anyhow::{Context, Result};

/// footunnel(8) and footunnel-SUBCOMMAND(8), from the same text as --help.
pub fn write_manpages(dir: &Path, top: clap::Command) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let top = top.name("footunnel");
    let write = |name: &str, cmd: clap::Command| -> Result<()> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).title(name).section("8").render(&mut page)?;
        let path = dir.join(format!("{name}.8"));
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))
    };
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        // A short-lived command: leaking the few names is simpler than clap's `string` feature.
        let name: &'static str = Box::leak(format!("footunnel-{}", sub.get_name()).into_boxed_str());
        write(name, sub.clone().name(name))?;
    }
    write("footunnel", top)
}

/// footunnel.bash, _footunnel (zsh) and footunnel.fish, from the same
/// definition as --help.
pub fn write_completions(dir: &Path, mut top: clap::Command) -> Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut top, "footunnel", dir)
            .with_context(|| format!("cannot write {shell} completions into {}", dir.display()))?;
        eprintln!("footunnel: {}", path.display());
    }
    Ok(())
}
