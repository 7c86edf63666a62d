//! `GET /health` — no key needed.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::AppState;

pub async fn health(State(state): State<AppState>) -> Json<Value> {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    Json(json!({
        "status": "ok",
        "timestamp": now.format(&fmt).unwrap_or_default(),
        "version": env!("CARGO_PKG_VERSION"),
        "runtime": state.sandboxes.runtime.kind().as_str(),
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
}
