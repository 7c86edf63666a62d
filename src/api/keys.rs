//! `/api-keys`: create (bootstrap without a key while none exists; admin
//! afterwards), list (admin, prefixes only), revoke (admin).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit::CreatedResource;
use super::error::ErrorBody;
use super::extract::JsonOrEmpty;
use super::{ApiError, AppResult, AppState, Auth, Message};
use crate::auth::{self, Caller};
use crate::db::Db;

const MAX_NAME: usize = 128;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    #[serde(default)]
    name: Option<String>,
    /// Extension: an admin may create further admin keys.
    #[serde(default)]
    admin: bool,
}

/// A new key; `key` is shown only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    id: i64,
    key: String,
    name: Option<String>,
    admin: bool,
    created_at: String,
    message: &'static str,
}

/// One key as listed: its display prefix, never the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    id: i64,
    /// The key's prefix, e.g. `rw_ab12…`.
    key: String,
    name: Option<String>,
    admin: bool,
    created_at: String,
    revoked_at: Option<String>,
}

/// `{"api_keys": [...]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    api_keys: Vec<KeyView>,
}

/// No key needed while no key exists (that first key is an admin key), or
/// with `auth.open_key_creation`; otherwise an admin key.
#[utoipa::path(post, path = "/api-keys", tag = "keys",
    request_body(content = Option<CreateKey>, description = "optional; an empty body is `{}`"),
    security((), ("api_key" = [])),
    responses(
        (status = 201, description = "the key (shown once)", body = CreatedKey),
        (status = 400, description = "bad body; the message names the field", body = ErrorBody),
        (status = 401, description = "keys exist and no key was sent", body = ErrorBody),
        (status = 403, description = "the key is unknown or not an admin key", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    JsonOrEmpty(body): JsonOrEmpty<CreateKey>,
) -> AppResult<Response> {
    if let Some(name) = &body.name {
        if name.len() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(ApiError::BadRequest(format!(
                "name: must be at most {MAX_NAME} characters without control characters"
            )));
        }
    }
    let db = state.sandboxes.db.clone();
    let presented = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let caller = match presented {
        Some(k) => Some(auth::verify(&db, Some(k)).await?),
        None => None,
    };
    if caller.is_some_and(|c| !c.admin) {
        return Err(ApiError::Forbidden(
            "creating API keys needs an admin key".into(),
        ));
    }
    let key = auth::generate()?;
    // Without a key: the first key (an admin) — or, with
    // `auth.open_key_creation`, a plain key whenever keys already exist.
    let open = caller.is_none() && state.sandboxes.config.auth.open_key_creation;
    let open_plain = open && has_keys(&db).await?;
    if open_plain && body.admin {
        return Err(ApiError::Forbidden(
            "admin: creating an admin key needs an admin key".into(),
        ));
    }
    let first = caller.is_none() && !open_plain;
    let bootstrap = first;
    let admin = first || body.admin;
    let (name, prefix, hash) = (body.name.clone(), key.prefix.clone(), key.hash.clone());
    let row = db
        .call(move |c| Db::insert_key(c, name.as_deref(), &prefix, &hash, admin, bootstrap))
        .await
        .map_err(|e| ApiError::internal_chain(&e))?;
    let Some(row) = row else {
        return Err(ApiError::Unauthorized);
    };
    tracing::info!(key_id = row.id, admin, bootstrap, "api key created");
    let created = CreatedKey {
        id: row.id,
        key: key.secret,
        name: row.name,
        admin: row.admin,
        created_at: row.created_at,
        message: "Save your API key - it won't be shown again!",
    };
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    let extensions = response.extensions_mut();
    extensions.insert(CreatedResource(row.id.to_string()));
    if let Some(caller) = caller {
        extensions.insert(caller);
    }
    Ok(response)
}

async fn has_keys(db: &Db) -> AppResult<bool> {
    db.call(Db::count_active_keys)
        .await
        .map(|n| n > 0)
        .map_err(|e| ApiError::internal_chain(&e))
}

fn require_admin(caller: &Caller) -> AppResult<()> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::Forbidden("this needs an admin key".into()))
    }
}

#[utoipa::path(get, path = "/api-keys", tag = "keys",
    responses(
        (status = 200, description = "every key, prefixes only", body = KeyList),
        (status = 403, description = "not an admin key", body = ErrorBody),
    ))]
pub async fn list(State(state): State<AppState>, caller: Auth) -> AppResult<Json<KeyList>> {
    require_admin(&caller)?;
    let rows = state
        .sandboxes
        .db
        .call(Db::list_keys)
        .await
        .map_err(|e| ApiError::internal_chain(&e))?;
    let api_keys = rows
        .iter()
        .map(|r| KeyView {
            id: r.id,
            key: auth::display_prefix(r),
            name: r.name.clone(),
            admin: r.admin,
            created_at: r.created_at.clone(),
            revoked_at: r.revoked_at.clone(),
        })
        .collect();
    Ok(Json(KeyList { api_keys }))
}

#[utoipa::path(delete, path = "/api-keys/{id}", tag = "keys",
    params(("id" = i64, Path, description = "key id")),
    responses(
        (status = 200, description = "revoked", body = Message),
        (status = 400, description = "the id is not a number", body = ErrorBody),
        (status = 403, description = "not an admin key", body = ErrorBody),
        (status = 404, description = "no such key", body = ErrorBody),
    ))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Auth,
    Path(id): Path<String>,
) -> AppResult<Json<Message>> {
    require_admin(&caller)?;
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("id: `{id}` is not a key id")))?;
    let revoked = state
        .sandboxes
        .db
        .call(move |c| Db::revoke_key(c, id))
        .await
        .map_err(|e| ApiError::internal_chain(&e))?;
    if !revoked {
        return Err(ApiError::NotFound(format!("API key {id} not found")));
    }
    tracing::info!(key_id = id, "api key revoked");
    Ok(Message::json(format!("API key {id} revoked")))
}
