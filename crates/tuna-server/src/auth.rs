//! API keys as Bearer tokens: the [`AuthUser`] extractor. Keys are looked up by their SHA-256;
//! the key itself is never stored.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use crate::error::ApiError;
use crate::ids;
use crate::state::AppState;
use crate::store::User;

/// The user whose key signed the request. Every handler that reads or changes user data takes it.
#[derive(Debug, Clone)]
pub struct AuthUser(pub User);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(AUTHORIZATION) else {
            return Err(ApiError::Unauthorized(
                "you didn't provide an API key; send it as `Authorization: Bearer <key>` (create one with `tuna users create NAME`)".into(),
            ));
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("the `Authorization` header must be `Bearer <key>`".into())
            })?;
        match state.store.user_by_key_hash(&ids::hash_key(key)).await? {
            Some(user) => Ok(AuthUser(user)),
            None => Err(ApiError::Unauthorized("incorrect API key provided".into())),
        }
    }
}

/// Creates a user with a fresh key; returns the key (shown once).
pub async fn create_user(
    store: &dyn crate::store::Store,
    name: &str,
) -> Result<(User, String), crate::store::StoreError> {
    let user = User {
        id: ids::new_id(ids::USER),
        name: name.to_string(),
        created_at: ids::now(),
    };
    let key = ids::new_api_key();
    store
        .create_user(&user, &ids::hash_key(&key), &ids::key_prefix(&key))
        .await?;
    Ok((user, key))
}
