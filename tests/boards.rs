//! Board profiles end to end: `gradgate boards`, `run --board`, the precedence of the command
//! line and the config file over a profile, and the errors for bad or missing profiles.
//!
//! Every run sets GRADGATE_BOARDS_DIR to the shipped `boards/`, so profiles installed on the
//! machine (/usr/share/gradgate/boards) cannot shadow them.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The six shipped profiles, in the order `gradgate boards` lists them.
const PROFILES: [&str; 6] = [
    "generic-aarch64",
    "generic-x86_64",
    "jetson-agx-orin",
    "jetson-orin-nano",
    "raspberry-pi-4",
    "raspberry-pi-5",
];

const FP32: &str = "models/efficientnet-lite0-fp32.onnx";
const IMAGES: [&str; 2] = [
    "tests/data/id/african-chameleon-branch.jpg",
    "tests/data/id/airliner-cutout.png",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn gradgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradgate"))
        .args(args)
        .current_dir(root())
        .env("GRADGATE_BOARDS_DIR", root().join("boards"))
        .env_remove("GRADGATE_MODEL")
        .env_remove("GRADGATE_MQTT_USERNAME")
        .env_remove("GRADGATE_MQTT_PASSWORD")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// `gradgate run -v` on the fp32 model over the two images, with `extra` options.
fn run_images(extra: &[&str]) -> Output {
    let mut args = vec!["run", "-v", "--model", FP32];
    args.extend_from_slice(extra);
    args.extend_from_slice(&IMAGES);
    gradgate(&args)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes `text` to `name` in `dir` and returns the path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Returns the frame lines of a run without the fields that differ between runs.
fn scores(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|line| {
            let mut value: Value = serde_json::from_str(line).unwrap();
            let object = value.as_object_mut().unwrap();
            object.remove("time");
            object.remove("latency_ms");
            value
        })
        .collect()
}

#[test]
fn boards_lists_all_six() {
    let output = gradgate(&["boards"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    let names: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(names, PROFILES);
}

#[test]
fn boards_table_columns() {
    let output = gradgate(&["boards"]);
    let text = stdout(&output);
    let header: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "BOARD", "TARGET", "BACKEND", "THREADS", "GPIO", "CAMERA", "FILE"]
    );
}

#[test]
fn boards_row_of_pi5() {
    let output = gradgate(&["boards"]);
    let text = stdout(&output);
    let row = text
        .lines()
        .find(|line| line.starts_with("raspberry-pi-5 "))
        .unwrap();
    for cell in [
        "Raspberry Pi 5",
        "aarch64-unknown-linux-gnu",
        "cpu",
        " 3 ",
        "cdev:GPIO17",
    ] {
        assert!(row.contains(cell), "{cell} missing from {row}");
    }
}

#[test]
fn boards_name_prints_notes() {
    let output = gradgate(&["boards", "raspberry-pi-5"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(stdout(&output).contains("gpiochip4"));
}

#[test]
fn boards_name_prints_build() {
    let output = gradgate(&["boards", "jetson-orin-nano"]);
    let expected = "build          RUSTFLAGS=\"-C target-cpu=cortex-a78ae\" \
                    CROSS_CONFIG=cross.toml cross build --profile dist --features cuda-12 \
                    --target aarch64-unknown-linux-gnu";
    assert!(stdout(&output).contains(expected), "{}", stdout(&output));
}

#[test]
fn boards_reports_broken_file() {
    let dir = tempfile::tempdir().unwrap();
    for name in PROFILES {
        let text = std::fs::read_to_string(root().join(format!("boards/{name}.toml"))).unwrap();
        write(dir.path(), &format!("{name}.toml"), &text);
    }
    write(
        dir.path(),
        "broken.toml",
        "name = \"B\"\ntarget = \"t\"\ncolour = 1\n",
    );
    let output = Command::new(env!("CARGO_BIN_EXE_gradgate"))
        .arg("boards")
        .env("GRADGATE_BOARDS_DIR", dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("unknown field `colour`"));
    assert_eq!(stdout(&output).lines().count(), 1 + PROFILES.len());
}

#[test]
fn run_with_generic_x86_64() {
    let output = run_images(&["--board", "generic-x86_64"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(scores(&output).len(), IMAGES.len());
    let log = stderr(&output);
    let profile = root().join("boards/generic-x86_64.toml");
    let loaded = format!(
        "board profile generic-x86_64 (Generic x86_64) loaded from {}",
        profile.display()
    );
    assert!(log.contains(&loaded), "{log}");
    let threads = format!("threads 2 (from board profile {})", profile.display());
    assert!(log.contains(&threads), "{log}");
    let gpio = format!("gpio line none from board profile {}", profile.display());
    assert!(log.contains(&gpio), "{log}");
    assert!(log.contains("inference threads: 2"), "{log}");
}

#[test]
fn run_board_file_path() {
    let output = run_images(&["--board", "boards/generic-x86_64.toml"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
}

#[test]
fn cli_overrides_profile() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write(
        dir.path(),
        "test-board.toml",
        "name = \"Test\"\ntarget = \"x86_64-unknown-linux-gnu\"\nthreads = 2\n\
         [gpio]\nline = \"cdev:NO_SUCH_LINE\"\n",
    );
    let profile = profile.to_str().unwrap();
    let output = run_images(&["--board", profile, "--gpio", "none", "--threads", "1"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let log = stderr(&output);
    assert!(log.contains("threads 1 (from the command line)"), "{log}");
    assert!(
        log.contains("gpio line none from the command line"),
        "{log}"
    );
}

#[test]
fn profile_gpio_line_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write(
        dir.path(),
        "test-board.toml",
        "name = \"Test\"\ntarget = \"x86_64-unknown-linux-gnu\"\n\
         [gpio]\nline = \"cdev:gpiochip99:1\"\n",
    );
    let output = run_images(&["--board", profile.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    // The GPIO error names the profile that chose the line.
    assert!(
        stderr(&output).contains("board profile \"test-board\""),
        "{}",
        stderr(&output)
    );
}

#[test]
fn config_overrides_profile() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "gradgate.toml",
        "board = \"generic-x86_64\"\nthreads = 1\n",
    );
    let output = run_images(&["--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let expected = format!("threads 1 (from config file {})", config.display());
    assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
}

#[test]
fn config_board_path_is_relative_to_config() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "mine.toml",
        "name = \"Mine\"\ntarget = \"x86_64-unknown-linux-gnu\"\nthreads = 1\n",
    );
    let config = write(dir.path(), "gradgate.toml", "board = \"mine.toml\"\n");
    let output = run_images(&["--config", config.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let expected = format!("loaded from {}", dir.path().join("mine.toml").display());
    assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
}

#[test]
fn unknown_key_names_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write(
        dir.path(),
        "typo.toml",
        "name = \"Typo\"\ntarget = \"x86_64-unknown-linux-gnu\"\nthread = 2\n",
    );
    let output = run_images(&["--board", profile.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let log = stderr(&output);
    assert!(log.contains("unknown field `thread`"), "{log}");
    assert!(log.contains(&profile.display().to_string()), "{log}");
}

#[test]
fn missing_profile_lists_available() {
    let output = run_images(&["--board", "raspberry-pi-3"]);
    assert_eq!(output.status.code(), Some(2));
    let expected = format!("available: {}", PROFILES.join(", "));
    assert!(stderr(&output).contains(&expected), "{}", stderr(&output));
}

#[test]
fn missing_source_without_camera() {
    let output = gradgate(&["run", "--model", FP32]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no SOURCE given"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn board_camera_is_the_default_source() {
    let dir = tempfile::tempdir().unwrap();
    let profile = write(
        dir.path(),
        "cam.toml",
        "name = \"Cam\"\ntarget = \"x86_64-unknown-linux-gnu\"\n\
         [camera]\nsource = \"tests/data/id/airliner-cutout.png\"\n",
    );
    let output = gradgate(&["run", "--model", FP32, "--board", profile.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let lines = scores(&output);
    assert_eq!(lines[0]["source"], "tests/data/id/airliner-cutout.png");
}

#[test]
fn zero_threads_rejected() {
    let output = run_images(&["--threads", "0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("use 1 to"), "{}", stderr(&output));
}

#[test]
fn two_threads_same_scores() {
    let serial = run_images(&["--threads", "1", "--scorer", "gradnorm"]);
    let parallel = run_images(&["--threads", "2", "--scorer", "gradnorm"]);
    assert_eq!(serial.status.code(), Some(0), "{}", stderr(&serial));
    assert_eq!(parallel.status.code(), Some(0), "{}", stderr(&parallel));
    assert_eq!(scores(&serial), scores(&parallel));
}
