//! The binary's start-up errors: one clear line naming the file and field, exit code 2.

use std::process::Command;

fn wattserve(args: &[&str], dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wattserve"))
        .args(args)
        .current_dir(dir)
        .env_remove("WATTSERVE_CONFIG")
        .env_remove("WATTSERVE_PORT")
        .env_remove("WATTSERVE_MODELS")
        .env_remove("WATTSERVE_MODELS_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out.status.code().unwrap_or(-1), stderr)
}

fn error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line expected:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    lines[0]
}

#[test]
fn bad_config_field_exits_2_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[server]\nport = \"eighty\"\n").unwrap();
    let (code, stderr) = wattserve(&["serve", "--config", "bad.toml"], dir.path());
    assert_eq!(code, 2, "{stderr}");
    let line = error_line(&stderr);
    assert!(
        line.contains("bad.toml:2:") && line.contains("port"),
        "{line}"
    );
}

#[test]
fn unknown_config_key_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("wattserve.toml"),
        "[limits]\nmax_body = 1\n",
    )
    .unwrap();
    let (code, stderr) = wattserve(&["serve"], dir.path());
    assert_eq!(code, 2, "{stderr}");
    let line = error_line(&stderr);
    assert!(
        line.contains("wattserve.toml:2:") && line.contains("max_body"),
        "{line}"
    );
}

#[test]
fn missing_config_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = wattserve(&["serve", "--config", "nope.toml"], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(error_line(&stderr).contains("nope.toml"), "{stderr}");
}

#[test]
fn unknown_model_and_bad_model_toml_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("m")).unwrap();
    std::fs::write(
        models.join("m/model.toml"),
        "task = \"embedding\"\nformat = \"safetensors\"\npooling = \"median\"\n",
    )
    .unwrap();
    let (code, stderr) = wattserve(&["serve", "--port", "0", "--model", "other"], dir.path());
    assert_eq!(code, 2, "{stderr}");
    assert!(error_line(&stderr).contains("other"), "{stderr}");
    let (code, stderr) = wattserve(&["serve", "--port", "0"], dir.path());
    assert_eq!(code, 2, "{stderr}");
    let line = error_line(&stderr);
    assert!(
        line.contains("model.toml:3:") && line.contains("pooling"),
        "{line}"
    );
}

#[test]
fn model_that_fails_to_load_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(models.join("m/weights")).unwrap();
    std::fs::write(
        models.join("m/model.toml"),
        "name = \"broken\"\ntask = \"embedding\"\nformat = \"safetensors\"\n",
    )
    .unwrap();
    std::fs::write(models.join("m/weights/config.json"), "{ not json").unwrap();
    let (code, stderr) = wattserve(&["serve", "--port", "0"], dir.path());
    assert_eq!(code, 2, "{stderr}");
    let line = error_line(&stderr);
    assert!(
        line.contains("broken") && line.contains("config.json"),
        "{line}"
    );
}
