//! Loading the settings: flags and environment variables over the TOML file over the defaults,
//! and errors that name the file's key and line.

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use serde::Deserialize;

use crate::error::RelayError;

use super::Config;
use super::validate::invalid;

/// A refusal of the settings the binary was given: an unreadable or malformed file, or a value
/// that [`Config::validate`] refuses. Each message names the file and the key or the setting.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    #[error(transparent)]
    Invalid(#[from] RelayError),
}

impl Config {
    /// The binary's settings: the flags and environment variables in `matches` (from a command
    /// that [`Config`] was flattened into) over the TOML file at `file` over the defaults,
    /// validated, with `listen` required.
    pub fn load(matches: &ArgMatches, file: Option<&Path>) -> Result<Config, SettingsError> {
        let text = file
            .map(|path| {
                std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                    path: path.to_owned(),
                    source,
                })
            })
            .transpose()?;
        let config = Config::merge(matches, text.as_deref()).map_err(|e| match (e, file) {
            (Merge::File(reason), Some(path)) => SettingsError::File {
                path: path.to_owned(),
                reason,
            },
            (Merge::File(reason), None) => SettingsError::Invalid(invalid("flags", reason)),
            (Merge::Invalid(e), _) => SettingsError::Invalid(e),
        })?;
        if config.listen.is_none() && config.peer_listen.is_none() {
            return Err(invalid(
                "listen",
                "missing: give --listen ADDR, CLONE_RELAY_LISTEN or listen = \"ADDR\" in the config file (or --peer-listen on a pair's donor side)",
            )
            .into());
        }
        if let Some(dir) = &config.state_dir
            && !dir.is_dir()
        {
            return Err(
                invalid("state_dir", format!("{} is not a directory", dir.display())).into(),
            );
        }
        Ok(config)
    }

    /// Flags and environment variables in `matches` over the TOML `file` text over the
    /// defaults, validated.
    ///
    /// The file's keys are checked first on their own (so an error points at its line); then
    /// each setting whose value came from the command line or the environment replaces the
    /// file's key, and the table is read into a [`Config`], the defaults filling what is left.
    pub(super) fn merge(matches: &ArgMatches, file: Option<&str>) -> Result<Config, Merge> {
        let given = Config::from_arg_matches(matches)
            .map_err(|e| Merge::Invalid(invalid("flags", e.kind().to_string())))?;
        let mut table = match file {
            Some(text) => {
                read_file(text).map_err(Merge::File)?;
                toml::from_str::<toml::Table>(text)
                    .map_err(|e| Merge::File(plumbing::toml_error::describe(text, &e, "")))?
            }
            None => toml::Table::new(),
        };
        if table.contains_key("admin_token") {
            // The value is not quoted: it is a secret.
            return Err(Merge::File(
                "admin_token is not read from the settings file: give it in the environment \
                 (CLONE_RELAY_ADMIN_TOKEN), where other local users cannot read it"
                    .into(),
            ));
        }
        let given_table = toml::Table::try_from(&given)
            .map_err(|e| Merge::Invalid(invalid("flags", e.to_string())))?;
        for id in setting_ids() {
            if !matches!(
                matches.value_source(&id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            // An id is the key's path in the file: `stall.min` is `min` in `[stall]`.
            let mut path: Vec<&str> = id.split('.').collect();
            let key = path.pop().expect("ids are not empty");
            let mut from = Some(&given_table);
            let mut into = &mut table;
            for part in path {
                from = from
                    .and_then(|t| t.get(part))
                    .and_then(toml::Value::as_table);
                into = into
                    .entry(part)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| Merge::File(format!("{part} must be a table")))?;
            }
            match from.and_then(|t| t.get(key)) {
                Some(value) => {
                    into.insert(key.to_owned(), value.clone());
                }
                // Not serialized (the token): taken from `given` below.
                None => {
                    into.remove(key);
                }
            }
        }
        let mut config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| Merge::File(e.message().to_owned()))?;
        if matches!(
            matches.value_source("admin_token"),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            config.admin_token = given.admin_token;
        }
        config.validate().map_err(Merge::Invalid)?;
        Ok(config)
    }
}

/// How [`Config::merge`] failed: in the file (the reason names the key), or in validation.
pub(super) enum Merge {
    File(String),
    Invalid(RelayError),
}

/// The ids of the settings' arguments, which are also their TOML keys (dotted for a table).
pub(super) fn setting_ids() -> Vec<String> {
    Config::augment_args(clap::Command::new("settings"))
        .get_arguments()
        .map(|arg| arg.get_id().as_str().to_owned())
        .collect()
}

/// The defaults of a settings struct: its clap defaults, without reading the environment.
pub(super) fn clap_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults").no_binary_name(true))
        .mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(std::iter::empty::<&str>())
        .expect("the defaults parse");
    T::from_arg_matches(&matches).expect("the defaults parse")
}

/// Reads `text` as the settings file alone, so that an error names its key and line. The
/// message never quotes a value (a wrong key's value may be a secret).
pub(super) fn read_file(text: &str) -> Result<Config, String> {
    plumbing::toml_error::read(text)
}

/// An upstream list in the file: one `"HOST:PORT"`, comma-separated ones, or an array.
pub(super) fn one_or_many<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(list) => list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        OneOrMany::Many(list) => list,
    })
}

/// A refused flag's message (clap's) on one line: its text without the usage and hint lines.
pub fn flag_error(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}
