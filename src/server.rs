//! Service start-up and shutdown: open the database and the storage pool,
//! pick the runtime, reconcile, serve until SIGTERM/SIGINT, then drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use rewind_storage::{PoolConfig, QuotaMode, Storage};

use crate::api::{app, AppState};
use crate::config::{Config, RuntimeChoice};
use crate::db::Db;
use crate::runtime::cloud_hypervisor::CloudHypervisorRuntime;
use crate::runtime::namespace::NamespaceRuntime;
use crate::runtime::Runtime;
use crate::sandbox::Sandboxes;

/// Open everything the service needs and run startup recovery.
pub async fn build(config: Config) -> anyhow::Result<Sandboxes> {
    let config = Arc::new(config);
    if config.auth.open_key_creation {
        tracing::warn!(
            "auth.open_key_creation is on: anyone who can reach this service can create an API key"
        );
    }
    let db = Db::open(&config.db_path).context("opening the database")?;
    let storage = open_storage(&config).await?;
    let runtime = choose_runtime(&config).await?;
    let sandboxes = Sandboxes::new(config, db, storage, runtime);
    let report = sandboxes.recover().await.context("startup recovery")?;
    tracing::info!(actions = report.actions.len(), "startup recovery done");
    let forwards = sandboxes
        .open_recorded_forwards()
        .await
        .context("reopening port forwards")?;
    tracing::info!(forwards, "port forwards open");
    Ok(sandboxes)
}

async fn open_storage(config: &Config) -> anyhow::Result<Storage> {
    let mut pool = PoolConfig::new(config.data_dir.clone());
    pool.image_size_bytes = config.storage.pool_size_gb * 1024 * 1024 * 1024;
    pool.max_auto_snapshots = config.storage.max_auto_snapshots;
    pool.keep_recent = config.storage.keep_recent_snapshots;
    pool.quotas = config.storage.quotas;
    pool.cold_history = config.storage.cold_history;
    pool.disk_limits = config.limits.disk_mb > 0;
    let storage = tokio::task::spawn_blocking(move || Storage::open(pool))
        .await?
        .context("opening the storage pool")?;
    let quota = storage.quota_mode();
    tracing::info!(pool = %storage.pool_path().display(), quotas = storage.quotas_enabled(), ?quota, "storage ready");
    if config.limits.disk_mb > 0 && quota == QuotaMode::Off {
        tracing::warn!(
            "limits.disk_mb is set but the pool has no quotas: sandboxes have NO disk limit"
        );
    }
    Ok(storage)
}

async fn choose_runtime(config: &Config) -> anyhow::Result<Arc<dyn Runtime>> {
    let ch = || CloudHypervisorRuntime::from_config(config);
    match config.runtime {
        RuntimeChoice::Namespace => Ok(Arc::new(NamespaceRuntime::new(config).await?)),
        RuntimeChoice::CloudHypervisor => Ok(Arc::new(ch().context("cloud-hypervisor runtime")?)),
        RuntimeChoice::Auto => match CloudHypervisorRuntime::probe(config) {
            Ok(()) => {
                tracing::info!("runtime auto: using cloud-hypervisor (binary, /dev/kvm and guest images present)");
                Ok(Arc::new(ch()?))
            }
            Err(reason) => {
                tracing::info!(reason = %reason, "runtime auto: using namespace");
                Ok(Arc::new(NamespaceRuntime::new(config).await?))
            }
        },
    }
}

/// Serve the API until SIGTERM or SIGINT. In-flight requests get
/// `shutdown_grace_secs` to finish; snapshots are atomic, so a request cut
/// off after the grace period never leaves half a snapshot.
/// Streamed responses (SSE, WebSockets) are many small writes: without
/// TCP_NODELAY, Nagle + the client's delayed ACK hold each one back ~40 ms.
pub fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

pub async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = SocketAddr::new(config.bind.parse()?, config.port);
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let sandboxes = build(config).await?;
    let storage = sandboxes.storage.clone();
    let router = app(AppState::new(sandboxes));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?
        .tap_io(no_delay);
    tracing::info!(%addr, "rewind listening");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // The peer address feeds the login backoff of /api/v1/auth/login and
    // the source_ip of audit rows.
    let router = router.into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, router).with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested; draining in-flight requests");
        let _ = stop_tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    let _ = stop_rx.await;
    match tokio::time::timeout(grace, server).await {
        Ok(result) => result??,
        Err(_) => tracing::warn!(
            grace_secs = grace.as_secs(),
            "grace period over; exiting with requests in flight"
        ),
    }
    tokio::task::spawn_blocking(move || storage.flush_background()).await?;
    tracing::info!("rewind stopped");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
