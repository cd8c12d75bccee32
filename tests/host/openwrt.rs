//! The OpenWrt files (packaging/openwrt), without OpenWrt: the init script
//! runs under sh with procd's and UCI's functions stubbed, and the command
//! it would start must be one `footunnel client` accepts; every option of
//! the UCI example is one the script reads.

use std::process::Command;

use footunnel_tests::footunnel_bin;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/openwrt");

/// procd and UCI as far as the script uses them: options come from
/// UCI_<name> variables, each instance's command is printed on one line.
const STUBS: &str = r#"
config_load() { :; }
config_foreach() { "$1" office; }
config_get() { eval "$1=\"\${UCI_$3:-$4}\""; }
config_get_bool() { eval "$1=\"\${UCI_$3:-$4}\""; }
procd_open_instance() { CMD=; }
procd_set_param() { if [ "$1" = command ]; then shift; CMD="$*"; fi; }
procd_append_param() { if [ "$1" = command ]; then shift; CMD="$CMD $*"; fi; }
procd_close_instance() { printf '%s\n' "$CMD"; }
mkdir() { :; }
. "$0"
start_service
"#;

/// The command the init script starts for UCI options `options`, or its
/// error output.
fn started(options: &[(&str, &str)]) -> Result<String, String> {
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(STUBS).arg(format!("{DIR}/footunnel.init"));
    for (name, value) in options {
        sh.env(format!("UCI_{name}"), value);
    }
    let out = sh.output().expect("run sh");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() && !stdout.is_empty() {
        Ok(stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into())
    }
}

#[test]
fn the_openwrt_init_script_starts_a_client_the_binary_accepts() {
    let every = [
        ("broker", "broker.example.net"),
        ("secret_file", "/etc/footunnel/office.secret"),
        ("link", "fou0"),
        ("interval", "15"),
        ("address", "10.0.0.2/30"),
        ("port", "42424"),
        ("broker_port", "42425"),
        ("metrics", "127.0.0.1:9587"),
        ("family", "4"),
    ];
    for options in [&every[..], &every[..2]] {
        let command = started(options).unwrap_or_else(|e| panic!("the init script failed: {e}"));
        let mut words = command.split_whitespace();
        assert_eq!(words.next(), Some("/usr/sbin/footunnel"), "{command}");
        let args: Vec<&str> = words.collect();
        assert_eq!(args.first(), Some(&"client"), "{command}");
        assert_eq!(args.last(), Some(&options[0].1), "the broker comes last: {command}");
        for (name, value) in options {
            // `family 4` is -4.
            let passed = if *name == "family" { format!("-{value}") } else { value.to_string() };
            assert!(args.contains(&passed.as_str()), "option {name} is not passed on: {command}");
        }
        // clap rejects an unknown flag or a missing value before it reads --help.
        let out = Command::new(footunnel_bin()).args(&args).arg("--help").output().unwrap();
        assert!(
            out.status.success(),
            "`footunnel {}` is refused: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let err = started(&[("broker", "broker.example.net")]).unwrap_err();
    assert!(err.contains("needs 'broker' and 'secret_file'"), "{err}");
}

#[test]
fn every_option_of_the_uci_example_is_read_by_the_init_script() {
    let config = std::fs::read_to_string(format!("{DIR}/footunnel.config")).unwrap();
    let script = std::fs::read_to_string(format!("{DIR}/footunnel.init")).unwrap();
    let options: Vec<&str> = config
        .lines()
        .filter_map(|l| l.trim().trim_start_matches('#').strip_prefix("option "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(options.len() >= 9, "{options:?}");
    for option in options {
        assert!(
            script.contains(&format!("\"$cfg\" {option}")),
            "the UCI example's option {option} is not read by footunnel.init"
        );
    }
}
