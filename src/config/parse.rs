//! The checks that several settings share: strict booleans, durations, names.
//! Each group's own checks sit beside it.

use std::time::Duration;

use super::AllowedOrigins;

/// Only `true` and `false`: the first orchestrator compared with `'true'`, so
/// anything else (`yes`, `1`) would silently have meant false.
pub(super) fn parse_strict_bool(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("expected `true` or `false`, got `{other}`")),
    }
}

pub(super) fn parse_positive_seconds(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".to_owned()),
        Ok(seconds) if seconds <= 7 * 24 * 3600 => Ok(Duration::from_secs(seconds)),
        Ok(_) => Err("must be at most one week (604800 seconds)".to_owned()),
        Err(_) => Err(format!("expected a whole number of seconds, got `{value}`")),
    }
}

pub(super) fn parse_flush_interval(value: &str) -> Result<Duration, String> {
    match value.trim().parse::<u64>() {
        Ok(millis @ 10..=60_000) => Ok(Duration::from_millis(millis)),
        Ok(_) => Err("must be between 10 and 60000 milliseconds".to_owned()),
        Err(_) => Err(format!(
            "expected a whole number of milliseconds, got `{value}`"
        )),
    }
}

pub(super) fn parse_non_blank(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(value.to_owned())
    }
}

/// Instance ids go into a Docker label and into container names.
pub(super) fn parse_instance_id(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(value.to_owned())
    } else {
        Err("expected 1 to 64 characters from [A-Za-z0-9_.-]".to_owned())
    }
}

pub(super) fn parse_origins(value: &str) -> Result<AllowedOrigins, String> {
    let origins: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(|origin| origin.trim_end_matches('/').to_owned())
        .collect();
    if origins.is_empty() {
        return Err("expected `*` or a comma-separated list of origins".to_owned());
    }
    if origins.iter().any(|origin| origin == "*") {
        return Ok(AllowedOrigins::Any);
    }
    for origin in &origins {
        let parsed = origin
            .parse::<axum::http::HeaderValue>()
            .map_err(|_| format!("`{origin}` is not a valid origin"))?;
        let text = parsed.to_str().unwrap_or_default();
        if !(text.starts_with("http://") || text.starts_with("https://")) {
            return Err(format!("`{origin}` must start with http:// or https://"));
        }
    }
    Ok(AllowedOrigins::List(origins))
}
