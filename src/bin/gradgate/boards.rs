//! Board profiles (`boards/NAME.toml`) and the `gradgate boards` command.
//!
//! A profile gives the settings that depend on the board: inference threads, inference
//! backend, GPIO line and camera source for `gradgate run --board NAME`, and the target
//! triple and CPU to build for. `boards/README.md` documents every key. Unknown keys are
//! rejected with their name and the file, as in the `--config` file.
//!
//! `--board NAME` is looked up as `NAME.toml` in these folders, first match wins:
//! `$GRADGATE_BOARDS_DIR`, `/usr/share/gradgate/boards` (the Debian package's), `boards/` in the
//! working folder, and `boards/` in the source tree the binary was built from. A NAME that
//! contains `/` or ends in `.toml` is a file path instead.

use crate::Outcome;
use anyhow::{bail, Context, Result};
use clap::Args;
use gradgate::model::Backend;
use gradgate::signal::gpio::GpioSpec;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Environment variable naming a folder searched before all others.
const BOARDS_DIR_ENV: &str = "GRADGATE_BOARDS_DIR";

/// One profile file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Board {
    /// Human-readable board name, for listings and logs.
    pub(crate) name: String,
    /// Rust target triple to build for.
    pub(crate) target: String,
    /// CPU to tune the build for (`-C target-cpu`); absent on generic profiles.
    pub(crate) target_cpu: Option<String>,
    /// RUSTFLAGS for a build tuned to this board; absent on generic profiles.
    pub(crate) rustflags: Option<String>,
    /// Inference threads (`--threads`).
    pub(crate) threads: Option<usize>,
    /// Inference backend: `cpu`, `cuda` or `auto` (`--backend`).
    pub(crate) backend: Option<Backend>,
    #[serde(default)]
    pub(crate) gpio: BoardGpio,
    #[serde(default)]
    pub(crate) camera: BoardCamera,
    /// Free text on pin naming, cameras and caveats, printed by `gradgate boards NAME`.
    pub(crate) notes: Option<String>,
}

/// `[gpio]` of a profile.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BoardGpio {
    /// Output line in `--gpio` syntax.
    pub(crate) line: Option<String>,
}

/// `[camera]` of a profile.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BoardCamera {
    /// Source used when `gradgate run` gets no SOURCE, in SOURCE syntax.
    pub(crate) source: Option<String>,
}

/// A profile and where it was read from.
#[derive(Debug)]
pub(crate) struct LoadedBoard {
    /// The file name without `.toml`: what `--board` takes.
    pub(crate) id: String,
    pub(crate) path: PathBuf,
    pub(crate) board: Board,
}

impl Board {
    /// Parses and checks a profile. `path` is only quoted in errors.
    pub(crate) fn parse(text: &str, path: &Path) -> Result<Board> {
        let board: Board = toml::from_str(text).map_err(|err| {
            anyhow::anyhow!(
                "board profile {}: {}",
                path.display(),
                err.to_string().trim_end()
            )
        })?;
        board
            .check()
            .with_context(|| format!("board profile {}", path.display()))?;
        Ok(board)
    }

    /// Checks the values serde cannot: GPIO syntax, thread count, target.
    fn check(&self) -> Result<()> {
        if let Some(line) = &self.gpio.line {
            line.parse::<GpioSpec>()
                .with_context(|| format!("gpio.line = \"{line}\" is invalid"))?;
        }
        if self.threads == Some(0) {
            bail!("threads = 0 is invalid; use 1 or more");
        }
        if self.target.is_empty() {
            bail!("target is empty; give the Rust target triple, for example aarch64-unknown-linux-gnu");
        }
        Ok(())
    }
}

impl LoadedBoard {
    /// Reads the profile at `path`; its id is the file name without `.toml`.
    pub(crate) fn read(path: &Path) -> Result<LoadedBoard> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read board profile {}", path.display()))?;
        let board = Board::parse(&text, path)?;
        let id = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(LoadedBoard {
            id,
            path: path.to_path_buf(),
            board,
        })
    }
}

/// True when `--board` got a file path rather than a profile name.
fn is_path(name: &str) -> bool {
    name.contains('/') || name.ends_with(".toml")
}

/// Returns the profile folders in search order, without duplicates and without folders
/// that do not exist. A `$GRADGATE_BOARDS_DIR` that is not a folder is an error, because
/// the user asked for it.
pub(crate) fn search_dirs() -> Result<Vec<PathBuf>> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os(BOARDS_DIR_ENV).filter(|dir| !dir.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            bail!(
                "{BOARDS_DIR_ENV}={} is not a folder; point it at a folder of board profiles or unset it",
                dir.display()
            );
        }
        candidates.push(dir);
    }
    candidates.push(Path::new(crate::INSTALL_DIR).join("boards"));
    candidates.push(PathBuf::from("boards"));
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("boards"));

    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut seen = Vec::new();
    for dir in candidates {
        // The working folder may be the source tree, so compare canonical paths.
        let Ok(canonical) = dir.canonicalize() else {
            continue;
        };
        if canonical.is_dir() && !seen.contains(&canonical) {
            seen.push(canonical);
            dirs.push(dir);
        }
    }
    Ok(dirs)
}

/// Loads the profile `name`: a file path, or a name searched in [`search_dirs`]. A relative
/// path is taken relative to `base`, the folder of the config file that named it, when
/// given.
pub(crate) fn load(name: &str, base: Option<&Path>) -> Result<LoadedBoard> {
    if is_path(name) {
        let path = match base {
            Some(base) if Path::new(name).is_relative() => base.join(name),
            _ => PathBuf::from(name),
        };
        if !path.is_file() {
            bail!(
                "board profile file {} not found; give a profile name (see 'gradgate boards') or the path of a .toml profile",
                path.display()
            );
        }
        return LoadedBoard::read(&path);
    }

    let dirs = search_dirs()?;
    for dir in &dirs {
        let path = dir.join(format!("{name}.toml"));
        if path.is_file() {
            return LoadedBoard::read(&path);
        }
    }
    let searched = dirs
        .iter()
        .map(|dir| dir.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let available = profile_files(&dirs)
        .iter()
        .filter_map(|path| path.file_stem())
        .map(|stem| stem.to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    if available.is_empty() {
        bail!(
            "board profile '{name}' not found, and no profiles were found (searched: {}); set {BOARDS_DIR_ENV} to a folder of profiles or pass a profile file",
            if searched.is_empty() { "no existing folder" } else { &searched }
        );
    }
    bail!(
        "board profile '{name}' not found (searched: {searched}); available: {}",
        available.join(", ")
    )
}

/// Returns the `*.toml` files of `dirs`, one per file name: the first folder wins, as in
/// [`load`]. Sorted by name.
fn profile_files(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            log::warn!("cannot read board profile folder {}", dir.display());
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
            .collect();
        found.sort();
        for path in found {
            let shadowed = files
                .iter()
                .any(|known| known.file_name() == path.file_name());
            if !shadowed {
                files.push(path);
            }
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files
}

#[derive(Args)]
pub(crate) struct BoardsArgs {
    /// Print this profile, with its notes, instead of the table: a name or a .toml file
    #[arg(value_name = "NAME")]
    name: Option<String>,
}

/// `gradgate boards`: prints the table of profiles, or one profile.
pub(crate) fn boards_command(args: BoardsArgs) -> Result<Outcome> {
    if let Some(name) = &args.name {
        let loaded = load(name, None)?;
        print!("{}", describe(&loaded));
        return Ok(Outcome::AllFrames);
    }

    let dirs = search_dirs()?;
    let mut loaded = Vec::new();
    let mut invalid = 0;
    for path in profile_files(&dirs) {
        match LoadedBoard::read(&path) {
            Ok(board) => loaded.push(board),
            Err(err) => {
                // One broken file should not hide the others, but it still fails the command.
                log::error!("{err:#}");
                invalid += 1;
            }
        }
    }
    if loaded.is_empty() && invalid == 0 {
        bail!("no board profiles found; set {BOARDS_DIR_ENV} to a folder of profiles");
    }
    print!("{}", table(&loaded));
    Ok(if invalid == 0 {
        Outcome::AllFrames
    } else {
        Outcome::SomeSkipped
    })
}

/// Renders the listing: one row per profile, columns padded to their widest cell.
fn table(boards: &[LoadedBoard]) -> String {
    let unset = || "-".to_string();
    let mut rows = vec![[
        "NAME", "BOARD", "TARGET", "BACKEND", "THREADS", "GPIO", "CAMERA", "FILE",
    ]
    .map(str::to_string)];
    for loaded in boards {
        let board = &loaded.board;
        rows.push([
            loaded.id.clone(),
            board.name.clone(),
            board.target.clone(),
            board.backend.map_or_else(unset, |b| b.to_string()),
            board.threads.map_or_else(unset, |n| n.to_string()),
            board.gpio.line.clone().unwrap_or_else(unset),
            board.camera.source.clone().unwrap_or_else(unset),
            loaded.path.display().to_string(),
        ]);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < columns {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Renders one profile with its notes and the build command it implies.
fn describe(loaded: &LoadedBoard) -> String {
    let board = &loaded.board;
    let or_unset = |value: Option<&str>| value.unwrap_or("(not set)").to_string();
    let mut out = format!("{}: {}\n", loaded.id, board.name);
    let fields = [
        ("file", loaded.path.display().to_string()),
        ("target", board.target.clone()),
        ("target_cpu", or_unset(board.target_cpu.as_deref())),
        ("rustflags", or_unset(board.rustflags.as_deref())),
        (
            "threads",
            board
                .threads
                .map_or_else(|| or_unset(None), |n| n.to_string()),
        ),
        ("backend", or_unset(board.backend.map(Backend::name))),
        ("gpio.line", or_unset(board.gpio.line.as_deref())),
        ("camera.source", or_unset(board.camera.source.as_deref())),
    ];
    for (key, value) in fields {
        out.push_str(&format!("{key:<14} {value}\n"));
    }
    let rustflags = board
        .rustflags
        .as_deref()
        .map(|flags| format!("RUSTFLAGS=\"{flags}\" "))
        .unwrap_or_default();
    // The Jetson profiles select the GPU, which a build without the CUDA feature lacks.
    let features = match board.backend {
        Some(Backend::Cuda | Backend::Auto) => " --features cuda-12",
        _ => "",
    };
    out.push_str(&format!(
        "build          {rustflags}CROSS_CONFIG=cross.toml cross build --profile dist{features} \
         --target {}\n",
        board.target
    ));
    if let Some(notes) = &board.notes {
        out.push('\n');
        out.push_str(notes.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Vec<LoadedBoard> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("boards");
        profile_files(&[dir])
            .iter()
            .map(|path| LoadedBoard::read(path).unwrap())
            .collect()
    }

    #[test]
    fn shipped_profiles_count() {
        assert_eq!(shipped().len(), 6);
    }

    #[test]
    fn shipped_profiles_set_every_run_key() {
        for loaded in shipped() {
            let board = &loaded.board;
            assert!(board.threads.is_some(), "{}: threads", loaded.id);
            assert!(board.backend.is_some(), "{}: backend", loaded.id);
            assert!(board.gpio.line.is_some(), "{}: gpio.line", loaded.id);
            assert!(
                board.camera.source.is_some(),
                "{}: camera.source",
                loaded.id
            );
            assert!(board.notes.is_some(), "{}: notes", loaded.id);
        }
    }

    #[test]
    fn shipped_rustflags_match_target_cpu() {
        for loaded in shipped() {
            let board = &loaded.board;
            let expected = board
                .target_cpu
                .as_ref()
                .map(|cpu| format!("-C target-cpu={cpu}"));
            assert_eq!(board.rustflags, expected, "{}", loaded.id);
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Board::parse(
            "name = \"x\"\ntarget = \"x86_64-unknown-linux-gnu\"\nthread = 2\n",
            Path::new("/tmp/x.toml"),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("unknown field `thread`"));
    }

    #[test]
    fn unknown_key_names_file() {
        let err = Board::parse("name = \"x\"\ncolour = 1\n", Path::new("/tmp/x.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("/tmp/x.toml"));
    }

    #[test]
    fn bad_backend_is_rejected() {
        let text = "name = \"x\"\ntarget = \"t\"\nbackend = \"gpu\"\n";
        let err = Board::parse(text, Path::new("x.toml")).unwrap_err();
        assert!(format!("{err:#}")
            .contains("unknown variant `gpu`, expected one of `cpu`, `cuda`, `auto`"));
    }

    #[test]
    fn bad_gpio_line_is_rejected() {
        let text = "name = \"x\"\ntarget = \"t\"\n[gpio]\nline = \"GPIO17\"\n";
        let err = Board::parse(text, Path::new("x.toml")).unwrap_err();
        assert!(format!("{err:#}").contains("gpio.line = \"GPIO17\" is invalid"));
    }

    #[test]
    fn zero_threads_are_rejected() {
        let text = "name = \"x\"\ntarget = \"t\"\nthreads = 0\n";
        assert!(Board::parse(text, Path::new("x.toml")).is_err());
    }

    #[test]
    fn path_forms() {
        assert!(is_path("./pi.toml"));
        assert!(is_path("pi.toml"));
        assert!(is_path("/etc/gradgate/board"));
        assert!(!is_path("raspberry-pi-5"));
    }

    #[test]
    fn table_pads_columns() {
        let loaded = LoadedBoard {
            id: "b".into(),
            path: PathBuf::from("/x/b.toml"),
            board: Board {
                name: "Board B".into(),
                target: "t".into(),
                threads: Some(3),
                ..Board::default()
            },
        };
        let text = table(&[loaded]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "b     Board B  t       -        3        -     -       /x/b.toml"
        );
    }
}
