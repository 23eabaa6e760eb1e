//! HTTP handlers, one file per resource. `crate::router` lists every route.

pub mod chat;
pub mod files;
pub mod jobs;
pub mod models;
pub mod tuna;

use crate::error::ApiError;
use crate::store::Page;

/// A page request with `limit` checked against `1..=max` (default `default`).
pub fn page(
    after: Option<String>,
    limit: Option<i64>,
    default: i64,
    max: i64,
) -> Result<Page, ApiError> {
    let limit = limit.unwrap_or(default);
    if !(1..=max).contains(&limit) {
        return Err(ApiError::invalid_param(
            format!("`limit` must be between 1 and {max}, got {limit}"),
            "limit",
        ));
    }
    Ok(Page {
        after: after.filter(|a| !a.is_empty()),
        limit,
    })
}

/// 400 for a cursor that is not one of the listed objects.
pub fn bad_cursor(after: &Option<String>) -> ApiError {
    ApiError::invalid_param(
        format!(
            "`after` `{}` is not an object of this list",
            after.as_deref().unwrap_or_default()
        ),
        "after",
    )
}
