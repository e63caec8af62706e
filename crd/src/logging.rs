//! Log output, the same for the operator, the webhook and the runner: `text` (one human line per
//! event, colour only when stdout is a terminal, so `kubectl logs` never shows escape codes) or
//! `json` (one object per line, for log collectors). The filter is `RUST_LOG`'s syntax, from
//! `--log-level` / `VRG_LOG_LEVEL` or else `RUST_LOG`.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `fields.message`, ...).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("log format {other:?}: expected text or json")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// The log flags every binary takes (`#[command(flatten)]`), also read from `VRG_LOG_FORMAT` and
/// `VRG_LOG_LEVEL` (how the operator hands its choice to the runner Jobs).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct LogSettings {
    /// Log output: `text` (human lines; colour only on a terminal) or `json` (one object per line).
    #[arg(long = "log-format", env = "VRG_LOG_FORMAT", default_value_t = LogFormat::Text, global = true)]
    pub format: LogFormat,
    /// Log filter in RUST_LOG syntax (`info`, `debug,kube=warn`); default: RUST_LOG, else info.
    #[arg(long = "log-level", env = "VRG_LOG_LEVEL", global = true)]
    pub level: Option<String>,
    /// Whether lines name the module they come from.
    #[arg(skip = true)]
    pub with_target: bool,
}

/// The filter `settings` ask for: the explicit level, else `RUST_LOG`, else `default`. A level
/// that does not parse is an error naming it (a typo must not silence the logs).
pub fn filter(settings: &LogSettings, default: &str) -> Result<EnvFilter, String> {
    match &settings.level {
        Some(level) => EnvFilter::try_new(level).map_err(|e| format!("log level {level:?}: {e}")),
        None => Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))),
    }
}

/// Installs the global subscriber.
pub fn init(settings: &LogSettings, default: &str) -> Result<(), String> {
    let filter = filter(settings, default)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(settings.with_target);
    let result = match settings.format {
        LogFormat::Text => builder
            .with_ansi(std::io::stdout().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    result.map_err(|e| format!("logging: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print_back() {
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(f.to_string().parse::<LogFormat>(), Ok(f));
        }
        assert_eq!(
            "yaml".parse::<LogFormat>(),
            Err("log format \"yaml\": expected text or json".into())
        );
    }

    #[test]
    fn an_explicit_level_wins_and_a_bad_one_is_named() {
        let settings = |level: Option<&str>| LogSettings {
            format: LogFormat::Text,
            level: level.map(str::to_owned),
            with_target: false,
        };
        assert_eq!(
            filter(&settings(Some("debug")), "info")
                .unwrap()
                .to_string(),
            "debug"
        );
        let err = filter(&settings(Some("info,kube=loud")), "info").unwrap_err();
        assert!(err.contains("\"info,kube=loud\""), "{err}");
    }
}
