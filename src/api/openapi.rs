//! The OpenAPI 3 document of both APIs (native and `/api/v1`), served at
//! `GET /openapi.json`, and the Swagger UI docs page at `GET /docs` (assets
//! bundled in the binary by `utoipa-swagger-ui`'s `vendored` feature: no
//! CDN, no download at build time). Neither needs a key.
//!
//! The operations come from the handlers' `#[utoipa::path]` attributes,
//! collected by the router itself ([`super::app`] registers every route
//! through `utoipa_axum::routes!`). This file adds what no handler states:
//! the title, the security schemes, the default security of each API, the
//! authentication errors every keyed route can answer, and the operations
//! served by something other than a handler (`/mcp`, this document, the
//! docs page).

use axum::Router;
use serde_json::json;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    Content, ContentBuilder, OpenApi as Document, Ref, RefOr, Response, ResponseBuilder,
};
use utoipa::OpenApi;
use utoipa_swagger_ui::{Config, SwaggerUi};

use super::archive::ARCHIVE_TYPE;
use super::AppState;

/// Where the document and the docs page are served.
pub const DOCUMENT_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

/// The part of the document no handler carries.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rewind",
        description = "Snapshot-first sandboxes: every command leaves a Btrfs snapshot. \
            Native routes (OpenSandbox-compatible, `x-api-key`) and the MicroVM Sandbox API \
            under `/api/v1` (`Authorization: Bearer <JWT or API key>`, or `x-api-key`), \
            plus microsandbox JSON-RPC at `/api/v1/rpc` and an MCP server at `/mcp`."
    ),
    paths(mcp_post, mcp_get, mcp_delete, document, docs),
    tags(
        (name = "sandboxes", description = "native: create, inspect, stop, start, destroy"),
        (name = "run", description = "native: commands, REPL cells, terminals, wipe"),
        (name = "files", description = "native: files of the live sandbox or of a snapshot; diffs"),
        (name = "snapshots", description = "native: history, restore, fork, export, import"),
        (name = "port-forwards", description = "native: host ports into a sandbox"),
        (name = "keys", description = "native: API keys"),
        (name = "operations", description = "native: audit log, Prometheus metrics"),
        (name = "service", description = "liveness, this document, the docs page"),
        (name = "json-rpc", description = "microsandbox-compatible JSON-RPC 2.0"),
        (name = "mcp", description = "Model Context Protocol server (Streamable HTTP)"),
    )
)]
struct Base;

/// The document's fixed part: title, tags, the non-handler operations.
pub fn base() -> Document {
    Base::openapi()
}

/// Complete the document the router collected: security schemes, each
/// operation's default security (`/api/v1`: bearer or `x-api-key`; native:
/// `x-api-key`) and the answers of the authentication layers.
pub fn finish(doc: &mut Document) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "x-api-key",
            "a rewind API key (POST /api-keys)",
        ))),
    );
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT (POST /api/v1/auth/login) or a rewind API key")
                .build(),
        ),
    );
    for (path, item) in doc.paths.paths.iter_mut() {
        let v1 = path.starts_with("/api/v1");
        for (method, op) in operations(item) {
            op.operation_id = Some(operation_id(method, path));
            add_auth(op, path, v1);
            binary_bodies(op);
        }
    }
}

/// Raw-byte bodies (files, archives) as `type: string, format: binary`
/// rather than the array of integers a `Vec<u8>` would give.
fn binary_bodies(op: &mut Operation) {
    if let Some(body) = op.request_body.as_mut() {
        set_binary(body.content.iter_mut());
    }
    for response in op.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            set_binary(response.content.iter_mut());
        }
    }
}

fn set_binary<'a>(contents: impl Iterator<Item = (&'a String, &'a mut Content)>) {
    for (media_type, content) in contents {
        if media_type == "application/octet-stream" || media_type == ARCHIVE_TYPE {
            let binary = ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)));
            content.schema = Some(binary.into());
        }
    }
}

/// Unique per operation (handler names repeat across resources):
/// `get /api/v1/vms/{vm_name}` → `get_api_v1_vms_vm_name`.
fn operation_id(method: &str, path: &str) -> String {
    let words = path
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty());
    std::iter::once(method)
        .chain(words)
        .collect::<Vec<_>>()
        .join("_")
}

/// JSON-RPC answers every call with HTTP 200; authentication errors are in
/// the body.
const ERRORS_IN_BODY: &str = "/api/v1/rpc";

fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("patch", item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| Some((method, op?)))
}

/// Default security where the operation states none, and then, for an
/// operation that needs a credential, 401 (and, on native routes, 403 for
/// an unknown key and 429 for a spent rate limit).
fn add_auth(op: &mut Operation, path: &str, v1: bool) {
    let security = op.security.get_or_insert_with(|| {
        let mut schemes = vec![SecurityRequirement::new("api_key", Vec::<String>::new())];
        if v1 {
            schemes.insert(0, SecurityRequirement::new("bearer", Vec::<String>::new()));
        }
        schemes
    });
    let optional = security
        .iter()
        .any(|s| serde_json::to_value(s).ok() == Some(json!({})));
    if optional || path == ERRORS_IN_BODY {
        return;
    }
    let error = if v1 { "v1.Error" } else { "ErrorBody" };
    let responses = &mut op.responses.responses;
    let mut add = |code: &str, description: &str| {
        responses
            .entry(code.to_owned())
            .or_insert_with(|| error_response(description, error));
    };
    add(
        "401",
        "no credential, or (on /api/v1) an invalid or expired one",
    );
    if !v1 {
        add("403", "the API key is unknown or revoked");
        if path != "/mcp" {
            add(
                "429",
                "the key's rate limit is spent (`Retry-After` says when)",
            );
        }
    }
}

fn error_response(description: &str, schema: &str) -> RefOr<Response> {
    let content = ContentBuilder::new()
        .schema(Some(Ref::from_schema_name(schema)))
        .build();
    ResponseBuilder::new()
        .description(description)
        .content("application/json", content)
        .build()
        .into()
}

/// `GET /openapi.json` and `GET /docs` (Swagger UI, its assets under
/// `/docs/`).
pub fn serve(doc: Document) -> Router<AppState> {
    let config = Config::from(DOCUMENT_PATH).validator_url("none");
    SwaggerUi::new(DOCS_PATH)
        .url(DOCUMENT_PATH, doc)
        .config(config)
        .into()
}

/// MCP over Streamable HTTP: a JSON-RPC message (initialize, tools/list,
/// tools/call, …); the answer is JSON or an SSE stream. The first answer
/// carries the `mcp-session-id` header to send on later requests.
#[utoipa::path(post, path = "/mcp", tag = "mcp",
    security(("bearer" = []), ("api_key" = [])),
    request_body(content = Object, description = "an MCP JSON-RPC message"),
    responses(
        (status = 200, description = "the answer (JSON, or an SSE stream)"),
        (status = 202, description = "a notification or response was accepted"),
    ))]
#[allow(dead_code)]
fn mcp_post() {}

/// MCP: the server-to-client SSE stream of a session.
#[utoipa::path(get, path = "/mcp", tag = "mcp",
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, description = "server-sent events of the session", content_type = "text/event-stream")))]
#[allow(dead_code)]
fn mcp_get() {}

/// MCP: end a session.
#[utoipa::path(delete, path = "/mcp", tag = "mcp",
    security(("bearer" = []), ("api_key" = [])),
    responses((status = 202, description = "the session is closed")))]
#[allow(dead_code)]
fn mcp_delete() {}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "service", security(()),
    responses((status = 200, description = "the OpenAPI 3 document of every route", body = Object)))]
#[allow(dead_code)]
fn document() {}

/// The docs page (Swagger UI, served from the binary).
#[utoipa::path(get, path = "/docs", tag = "service", security(()),
    responses((status = 303, description = "to `/docs/`, the HTML page; its assets are under `/docs/`")))]
#[allow(dead_code)]
fn docs() {}
