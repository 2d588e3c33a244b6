//! tenantgate configuration: the TOML schema, its defaults, and validation.
//!
//! Loading is two steps so that a reload can be refused as a whole: [`Config::from_toml`] parses
//! (unknown keys are errors) and [`Config::validate`] checks every rule, returning *all* problems
//! with their field paths (`databases[1].pool_size: must be > 0`). [`load`] does both and resolves
//! `password_env` indirections.

mod model;
mod tenants;
mod validate;

pub use model::*;
pub use tenants::{database_name_ok, expand, schema_name_ok, Isolation, Placement, TenantConfig};

use std::fmt;
use std::path::Path;

/// One problem with a configuration, located by its field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found while loading a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            path: path.into(),
            message: message.into(),
        }])
    }
}

impl Config {
    /// Parses TOML text. Unknown keys, wrong types and malformed values are errors.
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        toml::from_str::<Config>(text).map_err(|e| {
            let msg = e.message().trim().to_string();
            let location = e
                .span()
                .map(|span| {
                    let line = text.as_bytes()[..span.start.min(text.len())]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                        + 1;
                    format!("line {line}")
                })
                .unwrap_or_default();
            ConfigErrors::one(location, msg)
        })
    }

    /// Checks every rule and returns all violations at once.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let errors = validate::validate(self);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Replaces each `password_env` with the environment variable's value. Errors name the field.
    pub fn resolve_secrets(&mut self) -> Result<(), ConfigErrors> {
        self.resolve_secrets_with(|name| std::env::var(name).ok())
    }

    fn resolve_secrets_with(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let mut resolve = |path: String, password: &mut Option<String>, env: &Option<String>| {
            if let Some(var) = env {
                match lookup(var) {
                    Some(value) if !value.is_empty() => *password = Some(value),
                    _ => errors.push(ConfigError {
                        path,
                        message: format!("environment variable {var} is not set or empty"),
                    }),
                }
            }
        };
        for (i, db) in self.databases.iter_mut().enumerate() {
            resolve(
                format!("databases[{i}].password_env"),
                &mut db.password,
                &db.password_env,
            );
        }
        if let Some(jwt) = self.auth.jwt.as_mut() {
            resolve(
                "auth.jwt.secret_env".into(),
                &mut jwt.secret,
                &jwt.secret_env,
            );
        }
        for (i, user) in self.users.iter_mut().enumerate() {
            resolve(
                format!("users[{i}].password_env"),
                &mut user.password,
                &user.password_env,
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    pub fn database(&self, name: &str) -> Option<&DatabaseConfig> {
        self.databases.iter().find(|d| d.name == name)
    }

    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// Reads, parses, resolves secrets and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::one("", format!("cannot read {}: {e}", path.display())))?;
    let mut config = Config::from_toml(&text)?;
    // Validate the shape first so that secrets errors are reported together with the others.
    let mut errors = config.validate().err().map(|e| e.0).unwrap_or_default();
    if let Err(e) = config.resolve_secrets() {
        errors.extend(e.0);
    }
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

#[cfg(test)]
mod tests;
