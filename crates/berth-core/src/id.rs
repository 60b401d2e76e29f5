//! Names chosen by callers: runtime ids, template names, owner names.
//!
//! They end up in container names (`<owner>-<id>`), network aliases
//! (`<template>-<id>`, a DNS name) and directory names
//! (`<data_dir>/runtimes/<id>`), so the rule is the strictest of the three:
//! lowercase DNS-label characters, which also rules out path traversal.

use crate::error::{ErrorCode, ValidationError};

pub const MAX_ID_LEN: usize = 63;

pub(crate) fn check_name(kind: &str, code: ErrorCode, value: &str) -> Result<(), ValidationError> {
    let fail = |why: &str| {
        Err(ValidationError::new(
            code,
            format!("{kind} {value:?} is invalid: {why}"),
        ))
    };
    if value.is_empty() {
        return Err(ValidationError::new(
            code,
            format!("{kind} must not be empty"),
        ));
    }
    if value.len() > MAX_ID_LEN {
        return Err(ValidationError::new(
            code,
            format!(
                "{kind} is {} characters long; at most {MAX_ID_LEN} are allowed",
                value.len()
            ),
        ));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return fail("use only lowercase letters, digits, '-' and '_'");
    }
    let first = value.as_bytes()[0];
    let last = value.as_bytes()[value.len() - 1];
    if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
        return fail("it must start and end with a letter or a digit");
    }
    Ok(())
}

/// A runtime id: 1–63 of `[a-z0-9_-]`, starting and ending alphanumeric.
pub fn validate_runtime_id(id: &str) -> Result<(), ValidationError> {
    check_name("runtime id", ErrorCode::InvalidId, id)
}

/// A template name, with the same rule as runtime ids.
pub fn validate_template_name(name: &str) -> Result<(), ValidationError> {
    check_name("template name", ErrorCode::InvalidRequest, name)
}

/// The owner name of a berth instance (container name prefix, owner label).
pub fn validate_owner(owner: &str) -> Result<(), ValidationError> {
    check_name("owner", ErrorCode::InvalidRequest, owner)
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn validate_env_name(name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::invalid_request(format!(
            "environment variable name {name:?} is invalid: use letters, digits and '_', not starting with a digit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_ids() {
        for id in [
            "a",
            "ws-1",
            "0f3c9a2e-7d1b-4c55-9b1e-2c8f9d0a1b2c",
            "game_42",
        ] {
            validate_runtime_id(id).unwrap();
        }
    }

    #[test]
    fn rejects_bad_ids_with_invalid_id() {
        let long = "a".repeat(300);
        for id in [
            "",
            "../x",
            "A",
            "Ws",
            "-a",
            "a-",
            "a/b",
            "a b",
            "a.b",
            long.as_str(),
            "é",
        ] {
            let err = validate_runtime_id(id).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidId, "{id:?}");
        }
    }

    #[test]
    fn env_names() {
        validate_env_name("KEY_1").unwrap();
        validate_env_name("_x").unwrap();
        for bad in ["", "1A", "A-B", "A=B", "A B"] {
            assert!(validate_env_name(bad).is_err(), "{bad:?}");
        }
    }
}
