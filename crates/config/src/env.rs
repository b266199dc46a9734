//! The environment layer: `SANDKIT_*` for every key, and the names users already have.

use std::collections::BTreeMap;

use figment::value::{Dict, Map, Tag, Value};
use figment::{Error, Metadata, Profile, Provider};

use crate::sections::SANDBOX_KEYS;

/// Variables outside the `SANDKIT_` and `SANDBOX_` families, and the key each sets.
const KNOWN: &[(&str, &str)] = &[
    ("RUNTIME", "core.runtime"),
    ("WORKSPACE_BASE", "core.workspace_base"),
    (
        "WORKSPACE_MOUNT_PATH_IN_SANDBOX",
        "core.workspace_mount_path_in_sandbox",
    ),
    ("E2B_API_KEY", "e2b.api_key"),
    ("E2B_DOMAIN", "e2b.domain"),
    ("E2B_API_URL", "e2b.api_url"),
    ("E2B_SANDBOX_URL", "e2b.sandbox_url"),
    ("E2B_DEBUG", "e2b.debug"),
    ("DOCKER_HOST", "docker.host"),
];

/// `SANDKIT_*` variables that are not configuration keys (test switches, the config path).
const SANDKIT_NOT_KEYS: &[&str] = &["SANDKIT_CONFIG", "SANDKIT_LOG"];

/// One variable mapped to a key.
#[derive(Debug, Clone)]
pub(crate) struct Setting {
    pub(crate) var: String,
    pub(crate) key: Vec<String>,
    pub(crate) value: String,
}

/// The environment as configuration.
///
/// Precedence among environment names for the same key: `SANDKIT_*` wins over the familiar
/// names (`SANDBOX_*`, `E2B_*`, `RUNTIME`, `DOCKER_HOST`, ...). Empty values are skipped.
#[derive(Debug, Clone)]
pub(crate) struct EnvLayer {
    settings: Vec<Setting>,
}

impl EnvLayer {
    pub(crate) fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut familiar = Vec::new();
        let mut sandkit = Vec::new();
        for (var, value) in vars {
            if value.is_empty() {
                continue;
            }
            if let Some(rest) = var.strip_prefix("SANDKIT_") {
                if SANDKIT_NOT_KEYS.contains(&var.as_str())
                    || rest.starts_with("TEST_")
                    || rest.starts_with("REQUIRE_")
                {
                    continue;
                }
                let key = rest.split("__").map(str::to_lowercase).collect();
                sandkit.push(Setting { var, key, value });
            } else if let Some((_, key)) = KNOWN.iter().find(|(v, _)| *v == var) {
                let key = key.split('.').map(String::from).collect();
                familiar.push(Setting { var, key, value });
            } else if let Some(rest) = var.strip_prefix("SANDBOX_ENV_") {
                // OpenHands passes SANDBOX_ENV_<NAME> into the sandbox as <NAME>.
                let key = vec![
                    "sandbox".into(),
                    "runtime_startup_env_vars".into(),
                    rest.to_string(),
                ];
                familiar.push(Setting { var, key, value });
            } else if let Some(rest) = var.strip_prefix("SANDBOX_") {
                let field = rest.to_lowercase();
                if SANDBOX_KEYS.contains(&field.as_str()) {
                    familiar.push(Setting {
                        var,
                        key: vec!["sandbox".into(), field],
                        value,
                    });
                }
            }
        }
        familiar.sort_by(|a, b| a.var.cmp(&b.var));
        sandkit.sort_by(|a, b| a.var.cmp(&b.var));
        familiar.extend(sandkit);
        EnvLayer { settings: familiar }
    }

    /// The variable that set `key`, the last one winning.
    pub(crate) fn var_for(&self, key: &[&str]) -> Option<&str> {
        self.settings
            .iter()
            .rev()
            .find(|s| s.key.iter().map(String::as_str).eq(key.iter().copied()))
            .map(|s| s.var.as_str())
    }
}

/// A raw value, as a string, or as JSON when it looks like a list or table.
fn value_of(raw: &str) -> Value {
    let trimmed = raw.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(raw) {
            if let Ok(v) = Value::serialize(v) {
                return v;
            }
        }
    }
    Value::from(raw.to_string())
}

fn insert(dict: &mut Dict, key: &[String], value: Value) {
    match key {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry(first.clone())
                .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::Dict(Tag::Default, Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

impl Provider for EnvLayer {
    fn metadata(&self) -> Metadata {
        let names: BTreeMap<String, String> = self
            .settings
            .iter()
            .map(|s| (s.key.join("."), s.var.clone()))
            .collect();
        Metadata::named("environment variable").interpolater(move |_: &Profile, path: &[&str]| {
            let key = path.join(".");
            names.get(&key).cloned().unwrap_or(key)
        })
    }

    fn data(&self) -> Result<Map<Profile, Dict>, Error> {
        let mut dict = Dict::new();
        for s in &self.settings {
            insert(&mut dict, &s.key, value_of(&s.value));
        }
        Ok(Profile::Default.collect(dict))
    }
}
