//! One module per resource, each with its own `router()`.

pub mod health;
pub mod keys;
pub mod plans;
pub mod sync;
pub mod tenants;

use crate::error::ApiError;

/// Display names: 1 to 200 characters, not blank.
pub(crate) fn validate_name(field: &str, name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ApiError::invalid(
            "invalid_name",
            format!("{field} must be 1 to 200 characters and not blank."),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "invalid_name",
            format!("{field} must not contain control characters."),
        ));
    }
    Ok(())
}
