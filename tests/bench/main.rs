//! `cargo xtask bench`: the numbers behind footunnel's claims, as ratios
//! measured side by side in one run. `bench host DIR` and `bench vm DIR`
//! each write JSON sections into DIR; xtask renders the table.

mod flood;
mod flood_failover;
mod per_packet;
mod raw_bpf;
mod shared;
mod vm;

use serde_json::Value;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // cargo bench passes `--bench`; our own arguments follow it.
    let args: Vec<&str> = args.iter().skip(1).map(String::as_str).filter(|a| !a.starts_with("--")).collect();
    let (section, dir) = match args.as_slice() {
        [section, dir, ..] => (*section, std::path::PathBuf::from(dir)),
        _ => {
            eprintln!("usage: bench host|vm|per_packet OUTPUT-DIR   (run it through `cargo xtask bench`)");
            std::process::exit(2);
        }
    };
    std::fs::create_dir_all(&dir).expect("output directory");
    let results: Vec<(&str, Value)> = match section {
        "host" => {
            vec![("per_packet", per_packet::run()), ("flood", flood::run()), ("flood_failover", flood_failover::run())]
        }
        // The per-packet table alone, for a quick look while changing the path.
        "per_packet" => vec![("per_packet", per_packet::run())],
        "vm" => vm::run(),
        other => panic!("unknown section {other}"),
    };
    for (name, value) in results {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&value).unwrap()).expect("write results");
        println!("wrote {}", path.display());
    }
}
