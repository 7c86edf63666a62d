//! The OpenAPI document at `/openapi.json` and the docs page at `/docs`,
//! against the real service (real storage, runtime and database; needs
//! root): every documented operation is served by the router, the router
//! registers routes only through `utoipa_axum::routes!` (so every route it
//! serves is documented), the README's route tables list exactly the
//! documented routes and status codes, the document validates as OpenAPI 3
//! (`openapi-spec-validator` from PyPI, in a venv this test makes), and the
//! docs page loads only local assets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use common::service::Service;
use rewind::api::app;
use serde_json::Value;
use tower::ServiceExt;

fn svc() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| Service::start("openapi", common::busybox_rootfs(), |_| {}))
}

/// Any request; status, headers and raw body bytes.
fn send(req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let svc = svc();
    svc.rt.block_on(async {
        let resp = app(svc.state.clone()).oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 64 * 1024 * 1024).await.unwrap();
        (parts.status, parts.headers, bytes.to_vec())
    })
}

fn get(path: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
    send(Request::get(path).body(Body::empty()).unwrap())
}

/// The document, fetched without a key.
fn document() -> Value {
    let (status, headers, body) = get("/openapi.json");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    serde_json::from_slice(&body).unwrap()
}

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// (METHOD, path) → the documented status codes.
fn operations(doc: &Value) -> BTreeMap<(String, String), BTreeSet<u16>> {
    let mut ops = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let Some(op) = item.get(method) else { continue };
            let codes = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|c| c.parse().unwrap())
                .collect();
            ops.insert((method.to_uppercase(), path.clone()), codes);
        }
    }
    ops
}

/// A documented path with every parameter filled in with something that
/// names nothing.
fn concrete(path: &str) -> String {
    path.replace("{name}", "no-such-vm-openapi")
        .replace("{vm_name}", "no-such-vm-openapi")
        .replace("{snapshot}", "no-such-snapshot")
        .replace("{snapshot_name}", "no-such-snapshot")
        .replace("{id}", "999999")
        .replace("{host_port}", "65000")
        .replace("{scan_id}", "no-such-scan")
}

/// The fallback's answer: the router has no such route (native or v1 shape).
fn is_no_such_route(status: StatusCode, body: &[u8]) -> bool {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    status == StatusCode::NOT_FOUND
        && (body["error"] == "no such route" || body["message"] == "no such route")
}

#[test]
fn every_documented_operation_is_served_by_the_router() {
    let svc = svc();
    let ops = operations(&document());
    assert!(ops.len() > 50, "only {} operations documented", ops.len());
    let mut unrouted = Vec::new();
    for (method, path) in ops.keys() {
        let uri = concrete(path);
        assert!(!uri.contains('{'), "unfilled parameter in {path}");
        let req = Request::builder()
            .method(method.as_str())
            .uri(&uri)
            .header("x-api-key", &svc.admin)
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = send(req);
        if status == StatusCode::METHOD_NOT_ALLOWED || is_no_such_route(status, &body) {
            unrouted.push(format!("{method} {path} -> {status}"));
        }
    }
    assert!(
        unrouted.is_empty(),
        "documented but not routed: {unrouted:#?}"
    );
}

#[test]
fn a_route_level_404_differs_from_a_missing_vm() {
    let svc = svc();
    let call = |path: &str| {
        let req = Request::get(path)
            .header("x-api-key", &svc.admin)
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = send(req);
        (status, body)
    };

    let (route_status, route_body) = call("/no/such/route");
    let (v1_status, v1_body) = call("/api/v1/no/such/route");
    let (vm_status, vm_body) = call("/vms/no-such-vm-openapi");

    assert!(is_no_such_route(route_status, &route_body));
    assert!(is_no_such_route(v1_status, &v1_body));
    assert_eq!(vm_status, StatusCode::NOT_FOUND);
    assert!(!is_no_such_route(vm_status, &vm_body));
}

/// Every route the router serves is documented: `src/api` adds routes only
/// through `routes!` (which takes method and path from the handler's
/// `#[utoipa::path]`), except the MCP service, documented by hand in
/// `src/api/openapi.rs` and checked to be in the document.
#[test]
fn the_router_registers_routes_only_through_the_routes_macro() {
    let mut offending = Vec::new();
    let mut nest_services = Vec::new();
    for file in rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api")) {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            let at = format!("{}:{}: {}", file.display(), n + 1, line.trim());
            if line.trim_start().starts_with("//") {
                continue;
            }
            if line.contains(".route(") || line.contains(".route_service(") {
                offending.push(at);
            } else if line.contains(".nest_service(") {
                nest_services.push(at);
            }
        }
    }
    assert!(
        offending.is_empty(),
        "routes outside routes!: {offending:#?}"
    );
    assert_eq!(nest_services.len(), 1, "{nest_services:#?}");
    assert!(nest_services[0].contains(r#".nest_service("/mcp""#));
    let ops = operations(&document());
    for method in ["GET", "POST", "DELETE"] {
        assert!(
            ops.contains_key(&(method.into(), "/mcp".into())),
            "{method} /mcp"
        );
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The rows of every `| method | path | what | status codes |` table of
/// the README: (METHOD, path as in the document) → status codes.
fn readme_routes() -> BTreeMap<(String, String), BTreeSet<u16>> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut rows = BTreeMap::new();
    let mut in_table = false;
    for line in readme.lines() {
        if line.starts_with("| method | path | what | status codes |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        let method = cells[0].trim_start_matches("| ").to_owned();
        let path = readme_path(cells[1]);
        let codes = status_codes(cells[cells.len() - 1]);
        let previous = rows.insert((method.clone(), path.clone()), codes);
        assert!(previous.is_none(), "README lists {method} {path} twice");
    }
    rows
}

/// `` `/vms/:name/files?path=` `` → `/vms/{name}/files`.
fn readme_path(cell: &str) -> String {
    let path = cell.trim().trim_matches('`');
    let path = path.split('?').next().unwrap();
    path.split('/')
        .map(|s| match s.strip_prefix(':') {
            Some(param) => format!("{{{param}}}"),
            None => s.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn status_codes(cell: &str) -> BTreeSet<u16> {
    cell.split(|c: char| !c.is_ascii_digit())
        .filter(|s| s.len() == 3)
        .map(|s| s.parse().unwrap())
        .collect()
}

/// 429 (a spent rate limit) is answered by every keyed native route; the
/// README says so once instead of on every row.
fn without_rate_limit(
    routes: BTreeMap<(String, String), BTreeSet<u16>>,
) -> BTreeMap<(String, String), BTreeSet<u16>> {
    routes
        .into_iter()
        .map(|(k, mut codes)| {
            codes.remove(&429);
            (k, codes)
        })
        .collect()
}

#[test]
fn readme_route_tables_list_exactly_the_documented_routes_and_codes() {
    let documented = without_rate_limit(operations(&document()));
    let readme = without_rate_limit(readme_routes());

    let only_documented: Vec<_> = documented
        .keys()
        .filter(|k| !readme.contains_key(*k))
        .collect();
    let only_readme: Vec<_> = readme
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let differing: Vec<_> = readme
        .iter()
        .filter_map(|(k, codes)| {
            let doc = documented.get(k)?;
            (doc != codes).then(|| format!("{} {}: README {codes:?}, document {doc:?}", k.0, k.1))
        })
        .collect();

    assert!(
        only_documented.is_empty(),
        "not in the README: {only_documented:#?}"
    );
    assert!(
        only_readme.is_empty(),
        "README rows with no route: {only_readme:#?}"
    );
    assert!(differing.is_empty(), "status codes differ: {differing:#?}");
}

#[test]
fn document_declares_both_security_schemes_and_uses_them() {
    let doc = document();
    let schemes = &doc["components"]["securitySchemes"];
    let v1_list = &doc["paths"]["/api/v1/vms"]["get"]["security"];
    let native_list = &doc["paths"]["/vms"]["get"]["security"];
    let health = &doc["paths"]["/health"]["get"]["security"];

    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(schemes["api_key"]["type"], "apiKey");
    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "x-api-key");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(
        v1_list,
        &serde_json::json!([{"bearer": []}, {"api_key": []}])
    );
    assert_eq!(native_list, &serde_json::json!([{"api_key": []}]));
    assert_eq!(health, &serde_json::json!([{}]));
}

/// A venv with `openapi-spec-validator`, made once per test root.
fn validator_venv() -> PathBuf {
    let venv = common::test_root().join("openapi-validator-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 (scripts/install-deps.sh installs it with python3-venv)");
        assert!(ok.success(), "python3 -m venv failed");
    }
    let ok = std::process::Command::new(&python)
        .args(["-m", "pip", "install", "--quiet"])
        .arg(format!("openapi-spec-validator=={VALIDATOR_VERSION}"))
        .status()
        .unwrap();
    assert!(ok.success(), "pip install openapi-spec-validator failed");
    python
}

const VALIDATOR_VERSION: &str = "0.7.2";

#[test]
fn document_validates_as_openapi_3() {
    let doc = document();
    let file = common::test_root().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let python = validator_venv();

    let out = std::process::Command::new(python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("OK"), "{stdout}");
}

/// `src="…"` and `href="…"` values of an HTML page.
fn asset_references(html: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attr) {
            let rest = &html[at + attr.len()..];
            refs.push(rest[..rest.find('"').unwrap()].to_owned());
        }
    }
    refs
}

fn is_remote(reference: &str) -> bool {
    reference.contains("://") || reference.starts_with("//")
}

#[test]
fn docs_page_loads_only_local_assets_that_are_served() {
    let (redirect, headers, _) = get("/docs");
    let (status, headers_page, page) = get("/docs/");
    let html = String::from_utf8(page).unwrap();
    let refs = asset_references(&html);

    assert_eq!(redirect, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/docs/");
    assert_eq!(status, StatusCode::OK);
    assert!(headers_page["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(refs.len() >= 3, "{refs:?}");
    let remote: Vec<_> = refs.iter().filter(|r| is_remote(r)).collect();
    assert!(remote.is_empty(), "remote assets: {remote:?}");
    for reference in &refs {
        let path = format!("/docs/{}", reference.trim_start_matches("./"));
        let (status, _, body) = get(&path);
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.is_empty(), "{path} is empty");
        if path.ends_with("swagger-initializer.js") {
            let js = String::from_utf8(body).unwrap();
            assert!(js.contains("/openapi.json"), "{js}");
            assert!(
                !js.contains("://"),
                "the initializer loads something remote: {js}"
            );
        }
    }
}
