//! `POST /api/v1/auth/register` and `POST /api/v1/auth/login`.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{FieldError, V1Error, V1Result};
use super::extract::Json as Body;
use crate::api::audit::CreatedResource;
use crate::api::AppState;
use crate::auth::users::{self, MAX_PASSWORD, MIN_PASSWORD};

const MAX_USERNAME: usize = 64;

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = v1::Register)]
#[serde(deny_unknown_fields)]
pub struct Register {
    username: String,
    password: String,
    #[serde(default)]
    role: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::UserView)]
pub struct UserView {
    user_id: String,
    username: String,
    role: &'static str,
    created_at: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = v1::Login)]
#[serde(deny_unknown_fields)]
pub struct Login {
    username: String,
    password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::TokenView)]
pub struct TokenView {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

fn validate(body: &Register) -> V1Result<bool> {
    let mut details = Vec::new();
    let name_ok = (1..=MAX_USERNAME).contains(&body.username.len())
        && body
            .username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if !name_ok {
        details.push(FieldError::new(
            "username",
            format!("must be 1-{MAX_USERNAME} characters of letters, digits, . _ - @"),
        ));
    }
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&body.password.len()) {
        details.push(FieldError::new(
            "password",
            format!("must be {MIN_PASSWORD}-{MAX_PASSWORD} bytes long"),
        ));
    }
    let admin = match body.role.as_deref() {
        None | Some("user") => false,
        Some("admin") => true,
        Some(_) => {
            details.push(FieldError::new("role", "must be user or admin"));
            false
        }
    };
    if details.is_empty() {
        Ok(admin)
    } else {
        Err(V1Error::Validation(details))
    }
}

#[utoipa::path(post, path = "/auth/register", tag = "v1 auth",
    request_body = Register,
    security((), ("bearer" = []), ("api_key" = [])),
    responses(
        (status = 201, description = "the user", body = UserView),
        (status = 400, description = "malformed JSON", body = super::error::Body),
        (status = 403, description = "registering an admin needs an admin caller", body = super::error::Body),
        (status = 409, description = "the username is taken", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn register(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(body): Body<Register>,
) -> V1Result<(StatusCode, Extension<CreatedResource>, Json<UserView>)> {
    let admin = validate(&body)?;
    let caller = super::caller_of(&state, &headers).await?;
    let row = users::register(
        &state.sandboxes.db,
        caller.as_ref(),
        &body.username,
        &body.password,
        admin,
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Extension(CreatedResource(row.id.to_string())),
        Json(UserView {
            user_id: row.id.to_string(),
            username: row.username,
            role: if row.admin { "admin" } else { "user" },
            created_at: super::utc(&row.created_at),
        }),
    ))
}

#[utoipa::path(post, path = "/auth/login", tag = "v1 auth",
    request_body = Login,
    security(()),
    responses(
        (status = 200, description = "a bearer JWT", body = TokenView),
        (status = 401, description = "wrong username or password", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
        (status = 429, description = "too many failed logins for this username and address; retry_after_seconds says when", body = super::error::Body),
    ))]
pub async fn login(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    Body(body): Body<Login>,
) -> V1Result<Json<TokenView>> {
    // Absent when the router is driven without a socket (tests).
    let addr = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let ttl = state.sandboxes.config.auth.jwt_expiry_secs;
    let tokens = state.tokens().await?;
    let token = users::login(
        &state.sandboxes.db,
        tokens,
        &state.v1.logins,
        (&body.username, addr),
        &body.password,
        ttl,
    )
    .await?;
    Ok(Json(TokenView {
        access_token: token,
        token_type: "bearer",
        expires_in: ttl,
    }))
}
