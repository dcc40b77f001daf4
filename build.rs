//! Generates the man page `air-nanny(1)` and the bash, zsh and fish completions from the command
//! line's definitions (`src/cli.rs`), into `$OUT_DIR/generated/`, where `packaging/build.sh`
//! picks them up. They always match the binary built beside them.

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("generated");
    std::fs::create_dir_all(&out)?;
    let mut cmd = cli::Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(out.join("air-nanny.1"), page)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "air-nanny", &out)?;
    }
    Ok(())
}
