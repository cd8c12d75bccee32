//! The `footunnel` command on bad input: a clear error, exit status 1, no
//! panic, and nothing touched (validation runs before any system access, so
//! these need no privileges).

use std::process::Command;

fn footunnel(args: &[&str]) -> (Option<i32>, String) {
    let dir = std::env::temp_dir().join(format!("footunnel-cli-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_footunnel"))
        .args(args)
        // Were anything written, it would land here, and the test would see it.
        .args(["--pin-dir", &dir.join("pins").display().to_string()])
        .args(["--state-dir", &dir.join("state").display().to_string()])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run footunnel");
    let touched = dir.exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!touched, "bad input created {}", dir.display());
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_legacy_secret_too_long_for_the_data_plane_is_an_error_not_a_panic() {
    let secret = "s".repeat(70);
    let (code, out) = footunnel(&["broker", "--legacy", "fou0", &secret]);
    assert!(!out.contains("panicked"), "{out}");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("70 bytes") && out.contains("at most 60"), "{out}");
}

#[test]
fn a_bad_freshness_window_is_an_error() {
    let (code, out) = footunnel(&["broker", "--freshness-window", "100000", "fou0", "a secret of sufficient length"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--freshness-window"), "{out}");
}

#[test]
fn keygen_out_creates_a_private_file_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("footunnel-keygen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("fou0.secret");
    let run = || Command::new(env!("CARGO_BIN_EXE_footunnel")).args(["keygen", "--out"]).arg(&file).output().unwrap();
    assert!(run().status.success());
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read_to_string(&file).unwrap();
    assert!(secret.trim_end().len() >= 32, "{secret:?}");
    let again = run();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("must not exist yet"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret, "keygen overwrote a secret");
    std::fs::remove_dir_all(&dir).unwrap();
}
