//! Source selection for `gradgate run`: image files, or one stream or camera.
//!
//! | source | kind |
//! | --- | --- |
//! | `-` | concatenated JPEG (or `--input-format` raw) frames on stdin |
//! | `v4l2:///dev/video0`, `/dev/video0` | a V4L2 camera |
//! | a FIFO, a `.mjpeg`/`.mjpg` file, or any file with `--input-format` | a byte stream |
//! | `file://PATH` | PATH, classified as above |
//! | anything else | image files, folders and glob patterns |

use anyhow::{bail, Context, Result};
use clap::Args;
use gradgate::source::stream::{MjpegStream, RawStream, StreamFormat};
use gradgate::source::{expand_sources, FrameSource};
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Args, Debug)]
#[command(next_help_heading = "Streams and cameras")]
pub(crate) struct InputArgs {
    /// Frame encoding of a stream or camera: mjpeg, or raw rgb24, bgr24, yuyv, nv12
    /// (cameras: mjpeg or yuyv) [default: mjpeg]
    #[arg(long, value_name = "FORMAT")]
    pub(crate) input_format: Option<StreamFormat>,
    /// Frame size of a raw stream, or the size to request from a camera, as WIDTHxHEIGHT
    /// [default for cameras: 640x480]
    #[arg(long, value_name = "WxH", value_parser = parse_size)]
    pub(crate) input_size: Option<(u32, u32)>,
    /// Process at most this many frames per second; frames in between are dropped and
    /// counted [default: as fast as the model runs]
    #[arg(long, value_name = "N", value_parser = parse_fps)]
    pub(crate) fps: Option<f64>,
}

/// The input of `run`.
pub(crate) enum Input {
    Files(Vec<PathBuf>),
    Stream(Box<dyn FrameSource>),
}

/// Parses `WIDTHxHEIGHT`.
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let parsed = text
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)));
    match parsed {
        Some((w, h)) if w > 0 && h > 0 && w <= 65_535 && h <= 65_535 => Ok((w, h)),
        _ => Err(format!(
            "'{text}' is not a frame size; write WIDTHxHEIGHT, for example 640x480"
        )),
    }
}

/// Parses a frame rate from 0.01 to 1000.
fn parse_fps(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(fps) if (0.01..=1000.0).contains(&fps) => Ok(fps),
        _ => Err(format!(
            "'{text}' is not a frame rate from 0.01 to 1000 frames per second"
        )),
    }
}

/// The kind of one command-line source.
enum Kind {
    Stdin,
    Camera(PathBuf),
    Stream(PathBuf),
    Files,
}

fn classify(source: &OsStr, args: &InputArgs) -> Kind {
    if source == "-" {
        return Kind::Stdin;
    }
    let text = source.to_string_lossy();
    if let Some(device) = text.strip_prefix("v4l2://") {
        return Kind::Camera(PathBuf::from(device));
    }
    let path = match text.strip_prefix("file://") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(source),
    };
    let Ok(meta) = std::fs::metadata(&path) else {
        // A missing camera gets the camera's error message, not "file not found".
        if path.starts_with("/dev") && text.contains("video") {
            return Kind::Camera(path);
        }
        return Kind::Files;
    };
    let file_type = meta.file_type();
    if file_type.is_char_device() {
        return Kind::Camera(path);
    }
    if file_type.is_fifo() {
        return Kind::Stream(path);
    }
    let mjpeg_extension = path
        .extension()
        .and_then(OsStr::to_str)
        .is_some_and(|e| e.eq_ignore_ascii_case("mjpeg") || e.eq_ignore_ascii_case("mjpg"));
    if file_type.is_file() && (mjpeg_extension || args.input_format.is_some()) {
        return Kind::Stream(path);
    }
    Kind::Files
}

impl Input {
    /// Classifies the command-line sources. A stream or camera must be the only source.
    pub(crate) fn open(
        sources: &[OsString],
        args: &InputArgs,
        max_frame_bytes: usize,
        stop: &Arc<AtomicBool>,
    ) -> Result<Input> {
        let mut streams = sources
            .iter()
            .filter(|s| !matches!(classify(s, args), Kind::Files));
        if let Some(stream) = streams.next() {
            if sources.len() > 1 {
                bail!(
                    "stream source '{}' cannot be combined with other sources; run one gradgate per stream",
                    stream.to_string_lossy()
                );
            }
        } else {
            if args.input_format.is_some() || args.input_size.is_some() {
                log::warn!("--input-format and --input-size apply to streams and cameras only");
            }
            return Ok(Input::Files(expand_sources(sources)?));
        }

        let source = &sources[0];
        let name = source.to_string_lossy().into_owned();
        let format = args.input_format.unwrap_or(StreamFormat::Mjpeg);
        let stream: Box<dyn FrameSource> = match classify(source, args) {
            Kind::Stdin => stream_source(std::io::stdin(), name, format, args, max_frame_bytes)?,
            Kind::Stream(path) => {
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("cannot open stream {}", path.display()))?;
                stream_source(file, name, format, args, max_frame_bytes)?
            }
            Kind::Camera(device) => camera(&device, name, format, args, stop)?,
            Kind::Files => unreachable!("a stream was found above"),
        };
        Ok(Input::Stream(stream))
    }
}

fn stream_source<R: std::io::Read + Send + 'static>(
    reader: R,
    name: String,
    format: StreamFormat,
    args: &InputArgs,
    max_frame_bytes: usize,
) -> Result<Box<dyn FrameSource>> {
    match format {
        StreamFormat::Mjpeg => Ok(Box::new(MjpegStream::new(reader, name, max_frame_bytes))),
        StreamFormat::Raw(raw) => {
            let Some((width, height)) = args.input_size else {
                bail!("a raw {raw} stream needs its frame size: add --input-size WIDTHxHEIGHT");
            };
            let stream = RawStream::new(reader, name, raw, width, height, max_frame_bytes)?;
            Ok(Box::new(stream))
        }
    }
}

#[cfg(feature = "v4l2")]
fn camera(
    device: &Path,
    _name: String,
    format: StreamFormat,
    args: &InputArgs,
    stop: &Arc<AtomicBool>,
) -> Result<Box<dyn FrameSource>> {
    use gradgate::source::v4l2::{V4l2Config, V4l2Format, V4l2Source};
    use gradgate::source::RawFormat;

    let mut config = V4l2Config::new(device);
    config.format = match format {
        StreamFormat::Mjpeg => V4l2Format::Mjpeg,
        StreamFormat::Raw(RawFormat::Yuyv) => V4l2Format::Yuyv,
        StreamFormat::Raw(other) => bail!(
            "cameras deliver mjpeg or yuyv, not {other}; drop --input-format or use one of those"
        ),
    };
    if let Some((width, height)) = args.input_size {
        config.width = width;
        config.height = height;
    }
    let source = V4l2Source::open(&config, Arc::clone(stop))
        .with_context(|| format!("cannot open camera {}", device.display()))?;
    Ok(Box::new(source))
}

#[cfg(not(feature = "v4l2"))]
fn camera(
    device: &Path,
    _name: String,
    _format: StreamFormat,
    _args: &InputArgs,
    _stop: &Arc<AtomicBool>,
) -> Result<Box<dyn FrameSource>> {
    bail!(
        "{} is a camera, but this gradgate was built without the v4l2 feature; rebuild with \
         --features v4l2, or pipe the camera: ffmpeg -f v4l2 -i {} -f mjpeg - | gradgate run -",
        device.display(),
        device.display()
    )
}
