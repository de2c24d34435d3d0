//! Settings of `gradgate run` that a board profile can supply, resolved in precedence order:
//! command line, then `--config` file, then board profile, then defaults.
//!
//! The gate and MQTT settings have no board default and are resolved in `signals.rs`, with
//! the same order between command line and config file.

use crate::boards::{self, LoadedBoard};
use crate::config::ConfigFile;
use anyhow::{bail, Context, Result};
use gradgate::model::Backend;
use std::ffi::OsString;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

/// Inference threads without `--threads`, config or profile: tract's serial path.
pub(crate) const DEFAULT_THREADS: usize = 1;

/// Factor over the CPU cores above which a thread count is rejected. More threads than cores
/// only add contention. Up to 4× is still allowed, because a cgroup quota can report fewer
/// cores than the machine has.
const MAX_THREADS_PER_CORE: usize = 4;

/// Source of a setting: one level of the precedence order.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Origin {
    CommandLine,
    ConfigFile(PathBuf),
    Board(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::CommandLine => write!(f, "the command line"),
            Origin::ConfigFile(path) => write!(f, "config file {}", path.display()),
            Origin::Board(path) => write!(f, "board profile {}", path.display()),
            Origin::Default => write!(f, "the default"),
        }
    }
}

/// A value and where it came from, for logs and error messages.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    pub(crate) origin: Origin,
}

/// The values given at each level for one setting.
struct Levels<'a, T> {
    cli: Option<T>,
    config: Option<T>,
    config_path: Option<&'a Path>,
    board: Option<T>,
    board_path: Option<&'a Path>,
}

impl<T> Levels<'_, T> {
    /// Returns the first value given, in precedence order.
    fn pick(self) -> Option<Setting<T>> {
        if let Some(value) = self.cli {
            return Some(Setting {
                value,
                origin: Origin::CommandLine,
            });
        }
        if let (Some(value), Some(path)) = (self.config, self.config_path) {
            return Some(Setting {
                value,
                origin: Origin::ConfigFile(path.to_path_buf()),
            });
        }
        if let (Some(value), Some(path)) = (self.board, self.board_path) {
            return Some(Setting {
                value,
                origin: Origin::Board(path.to_path_buf()),
            });
        }
        None
    }

    /// Returns the first value given, else `default`.
    fn pick_or(self, default: T) -> Setting<T> {
        self.pick().unwrap_or(Setting {
            value: default,
            origin: Origin::Default,
        })
    }
}

/// Command-line values of the settings a profile can supply.
#[derive(Debug, Default)]
pub(crate) struct CommandLine {
    pub(crate) board: Option<String>,
    pub(crate) threads: Option<usize>,
    pub(crate) backend: Option<Backend>,
    pub(crate) gpio: Option<String>,
    pub(crate) sources: Vec<OsString>,
}

/// The resolved settings of one run.
#[derive(Debug)]
pub(crate) struct RunSettings {
    pub(crate) board: Option<LoadedBoard>,
    pub(crate) threads: Setting<usize>,
    pub(crate) backend: Setting<Backend>,
    /// `None` when no level names a line: no GPIO output.
    pub(crate) gpio_line: Option<Setting<String>>,
    pub(crate) sources: Setting<Vec<OsString>>,
}

impl RunSettings {
    /// Loads the profile that the command line or the config file names, then resolves.
    pub(crate) fn load(
        cli: CommandLine,
        config: &ConfigFile,
        config_path: Option<&Path>,
    ) -> Result<RunSettings> {
        let board = match (&cli.board, &config.board) {
            (Some(name), _) => Some(boards::load(name, None)?),
            (None, Some(name)) => {
                // A relative path in the config file is relative to that file.
                let base = config_path.and_then(Path::parent);
                let loaded = boards::load(name, base).with_context(|| {
                    format!(
                        "board = \"{name}\" in config file {}",
                        config_path.map_or_else(String::new, |p| p.display().to_string())
                    )
                })?;
                Some(loaded)
            }
            (None, None) => None,
        };
        if let Some(loaded) = &board {
            log::info!(
                "board profile {} ({}) loaded from {}",
                loaded.id,
                loaded.board.name,
                loaded.path.display()
            );
        }
        RunSettings::resolve(cli, config, config_path, board)
    }

    /// Resolves each setting from the command line, the config file, `board`, then defaults,
    /// and checks the thread count against this machine.
    pub(crate) fn resolve(
        cli: CommandLine,
        config: &ConfigFile,
        config_path: Option<&Path>,
        board: Option<LoadedBoard>,
    ) -> Result<RunSettings> {
        let profile = board.as_ref().map(|loaded| &loaded.board);
        let board_path = board.as_ref().map(|loaded| loaded.path.as_path());

        let threads = Levels {
            cli: cli.threads,
            config: config.threads,
            config_path,
            board: profile.and_then(|b| b.threads),
            board_path,
        }
        .pick_or(DEFAULT_THREADS);
        check_threads(threads.value).map_err(|reason| {
            anyhow::anyhow!(
                "threads = {} from {}: {reason}",
                threads.value,
                threads.origin
            )
        })?;

        let backend = Levels {
            cli: cli.backend,
            config: config.backend,
            config_path,
            board: profile.and_then(|b| b.backend),
            board_path,
        }
        .pick_or(Backend::default());

        let gpio_line = Levels {
            cli: cli.gpio,
            config: config.gpio.line.clone(),
            config_path,
            board: profile.and_then(|b| b.gpio.line.clone()),
            board_path,
        }
        .pick();

        let cli_sources = (!cli.sources.is_empty()).then_some(cli.sources);
        let as_sources = |source: &Option<String>| source.clone().map(|s| vec![OsString::from(s)]);
        let sources = Levels {
            cli: cli_sources,
            config: as_sources(&config.camera.source),
            config_path,
            board: profile.and_then(|b| as_sources(&b.camera.source)),
            board_path,
        }
        .pick();
        let Some(sources) = sources else {
            bail!(
                "no SOURCE given; name image files, folders or a stream on the command line, \
                 or give a camera source with --board NAME (see 'gradgate boards') or \
                 [camera] source in the --config file"
            );
        };

        Ok(RunSettings {
            board,
            threads,
            backend,
            gpio_line,
            sources,
        })
    }

    /// Returns the profile's id, for error messages that name the board.
    pub(crate) fn board_id(&self) -> Option<&str> {
        self.board.as_ref().map(|loaded| loaded.id.as_str())
    }
}

/// Returns the CPU cores this process may use, 1 when unknown.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Checks a thread count against this machine's cores. The error is only the reason.
pub(crate) fn check_threads(threads: usize) -> Result<(), String> {
    let cores = cores();
    let max = cores * MAX_THREADS_PER_CORE;
    if threads == 0 || threads > max {
        return Err(format!(
            "use 1 to {max} threads ({MAX_THREADS_PER_CORE} × the {cores} CPU cores available here), \
             best at most {cores}"
        ));
    }
    Ok(())
}

/// Parses `--threads`.
pub(crate) fn parse_threads(text: &str) -> Result<usize, String> {
    let threads: usize = text
        .parse()
        .map_err(|_| format!("'{text}' is not a thread count; give a whole number from 1 up"))?;
    check_threads(threads)?;
    Ok(threads)
}

/// Sets the number of threads tract runs matrix products and element-wise ops on, for the
/// whole process. One thread keeps tract's serial executor and starts no pool.
pub(crate) fn install_threads(threads: usize) -> Result<()> {
    if threads > cores() {
        log::warn!(
            "{threads} inference threads on {} CPU cores: the threads compete for cores",
            cores()
        );
    }
    if threads <= 1 {
        log::info!("inference threads: 1");
        return Ok(());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|index| format!("gradgate-infer-{index}"))
        .build()
        .with_context(|| format!("cannot start {threads} inference threads; try --threads 1"))?;
    tract_linalg::multithread::set_default_executor(
        tract_linalg::multithread::Executor::MultiThread(std::sync::Arc::new(pool)),
    );
    log::info!("inference threads: {threads}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boards::Board;

    fn board(threads: usize, line: &str, source: &str) -> LoadedBoard {
        let text = format!(
            "name = \"Test\"\ntarget = \"x86_64-unknown-linux-gnu\"\nthreads = {threads}\n\
             backend = \"auto\"\n[gpio]\nline = \"{line}\"\n[camera]\nsource = \"{source}\"\n"
        );
        LoadedBoard {
            id: "test".into(),
            path: PathBuf::from("/boards/test.toml"),
            board: Board::parse(&text, Path::new("/boards/test.toml")).unwrap(),
        }
    }

    fn config(text: &str) -> ConfigFile {
        toml::from_str(text).unwrap()
    }

    const CONFIG_PATH: &str = "/etc/gradgate/gradgate.toml";

    fn resolve(cli: CommandLine, file: &str, board: Option<LoadedBoard>) -> RunSettings {
        RunSettings::resolve(cli, &config(file), Some(Path::new(CONFIG_PATH)), board).unwrap()
    }

    fn with_sources() -> CommandLine {
        CommandLine {
            sources: vec!["tests/data/id".into()],
            ..CommandLine::default()
        }
    }

    #[test]
    fn threads_default() {
        let settings = resolve(with_sources(), "", None);
        assert_eq!(settings.threads.value, DEFAULT_THREADS);
        assert_eq!(settings.threads.origin, Origin::Default);
    }

    // The levels give 1 (command line), 3 (config) and 2 (board) threads, all within the
    // 4 × cores limit of a one-core machine.

    #[test]
    fn threads_from_board() {
        let settings = resolve(with_sources(), "", Some(board(2, "none", "-")));
        assert_eq!(settings.threads.value, 2);
        assert_eq!(
            settings.threads.origin,
            Origin::Board("/boards/test.toml".into())
        );
    }

    #[test]
    fn threads_config_over_board() {
        let settings = resolve(with_sources(), "threads = 3\n", Some(board(2, "none", "-")));
        assert_eq!(settings.threads.value, 3);
        assert_eq!(
            settings.threads.origin,
            Origin::ConfigFile(CONFIG_PATH.into())
        );
    }

    #[test]
    fn threads_cli_over_config() {
        let cli = CommandLine {
            threads: Some(1),
            ..with_sources()
        };
        let settings = resolve(cli, "threads = 3\n", Some(board(2, "none", "-")));
        assert_eq!(settings.threads.value, 1);
        assert_eq!(settings.threads.origin, Origin::CommandLine);
    }

    #[test]
    fn threads_beyond_cores_rejected() {
        let err = RunSettings::resolve(
            with_sources(),
            &config("threads = 100000\n"),
            Some(Path::new(CONFIG_PATH)),
            None,
        )
        .unwrap_err();
        assert!(err
            .to_string()
            .contains("from config file /etc/gradgate/gradgate.toml"));
    }

    #[test]
    fn backend_from_board() {
        let settings = resolve(with_sources(), "", Some(board(1, "none", "-")));
        assert_eq!(settings.backend.value, Backend::Auto);
    }

    #[test]
    fn backend_cli_over_config() {
        let cli = CommandLine {
            backend: Some(Backend::Cpu),
            ..with_sources()
        };
        let settings = resolve(cli, "backend = \"cuda\"\n", Some(board(1, "none", "-")));
        assert_eq!(settings.backend.value, Backend::Cpu);
    }

    #[test]
    fn backend_config_over_board() {
        let settings = resolve(
            with_sources(),
            "backend = \"cuda\"\n",
            Some(board(1, "none", "-")),
        );
        assert_eq!(settings.backend.value, Backend::Cuda);
    }

    #[test]
    fn backend_default_cpu() {
        let settings = resolve(with_sources(), "", None);
        assert_eq!(settings.backend.value, Backend::Cpu);
    }

    #[test]
    fn gpio_cli_over_board() {
        let cli = CommandLine {
            gpio: Some("none".into()),
            ..with_sources()
        };
        let settings = resolve(cli, "", Some(board(1, "cdev:GPIO17", "-")));
        assert_eq!(settings.gpio_line.unwrap().value, "none");
    }

    #[test]
    fn gpio_config_over_board() {
        let settings = resolve(
            with_sources(),
            "[gpio]\nline = \"rppal:17\"\n",
            Some(board(1, "cdev:GPIO17", "-")),
        );
        assert_eq!(settings.gpio_line.unwrap().value, "rppal:17");
    }

    #[test]
    fn gpio_from_board() {
        let settings = resolve(with_sources(), "", Some(board(1, "cdev:GPIO17", "-")));
        assert_eq!(settings.gpio_line.unwrap().value, "cdev:GPIO17");
    }

    #[test]
    fn gpio_unset_without_levels() {
        let settings = resolve(with_sources(), "", None);
        assert!(settings.gpio_line.is_none());
    }

    #[test]
    fn sources_from_board() {
        let settings = resolve(
            CommandLine::default(),
            "",
            Some(board(1, "none", "/dev/video0")),
        );
        assert_eq!(settings.sources.value, vec![OsString::from("/dev/video0")]);
    }

    #[test]
    fn sources_config_over_board() {
        let settings = resolve(
            CommandLine::default(),
            "[camera]\nsource = \"-\"\n",
            Some(board(1, "none", "/dev/video0")),
        );
        assert_eq!(settings.sources.value, vec![OsString::from("-")]);
    }

    #[test]
    fn sources_cli_over_board() {
        let settings = resolve(with_sources(), "", Some(board(1, "none", "/dev/video0")));
        assert_eq!(
            settings.sources.value,
            vec![OsString::from("tests/data/id")]
        );
    }

    #[test]
    fn sources_missing_is_an_error() {
        let err =
            RunSettings::resolve(CommandLine::default(), &config(""), None, None).unwrap_err();
        assert!(err.to_string().starts_with("no SOURCE given"));
    }

    #[test]
    fn zero_threads_rejected() {
        assert!(parse_threads("0").is_err());
    }

    #[test]
    fn one_thread_accepted() {
        assert_eq!(parse_threads("1"), Ok(1));
    }

    #[test]
    fn text_threads_rejected() {
        assert_eq!(
            parse_threads("two"),
            Err("'two' is not a thread count; give a whole number from 1 up".to_string())
        );
    }
}
