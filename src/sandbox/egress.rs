//! Each sandbox's egress proxy ([`crate::runtime::egress`]): opened when the
//! sandbox starts (create, startup re-attach or restart, full restore),
//! closed when it stops; its address is given to commands as
//! `http_proxy`/`https_proxy`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use super::Sandboxes;
use crate::runtime::egress::{self, AllowList, EgressProxy};
use crate::runtime::{RuntimeState, SandboxContext};

/// Open proxies by sandbox name.
pub(super) type Proxies = Arc<Mutex<HashMap<String, EgressProxy>>>;

/// The parsed allow list, `None` when egress is off.
pub(super) fn allow_list(entries: &[String]) -> Option<Arc<AllowList>> {
    let list = AllowList::parse(entries).unwrap_or_default();
    (!list.is_empty()).then(|| Arc::new(list))
}

impl Sandboxes {
    /// (Re)open the proxy of a sandbox in runtime state `state`. A failure
    /// is logged: the sandbox then runs without egress.
    pub(super) async fn open_egress(&self, ctx: &SandboxContext, state: &RuntimeState) {
        let Some(allow) = self.egress_allow.clone() else {
            return;
        };
        self.close_egress(&ctx.name);
        let Some(at) = self.runtime.egress_listen(ctx, state) else {
            return;
        };
        match egress::spawn(&at, allow).await {
            Ok(proxy) => {
                tracing::debug!(sandbox = %ctx.name, listen = %proxy.listen, "egress proxy open");
                self.proxies().insert(ctx.name.clone(), proxy);
            }
            Err(e) => {
                tracing::warn!(sandbox = %ctx.name, error = %e, "cannot open the egress proxy; the sandbox has no egress");
            }
        }
    }

    pub(super) fn close_egress(&self, name: &str) {
        self.proxies().remove(name);
    }

    /// `http_proxy`, `https_proxy` (both cases) and `no_proxy` for commands
    /// of a sandbox whose proxy is open; empty otherwise.
    pub(super) fn egress_env(&self, name: &str) -> BTreeMap<String, String> {
        let Some(listen) = self.proxies().get(name).map(|p| p.listen) else {
            return BTreeMap::new();
        };
        let url = format!("http://{listen}");
        let mut env = BTreeMap::new();
        for key in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"] {
            env.insert(key.to_owned(), url.clone());
        }
        for key in ["no_proxy", "NO_PROXY"] {
            env.insert(key.to_owned(), "localhost,127.0.0.1,::1".to_owned());
        }
        env
    }

    /// Whether sandbox `name` has an egress proxy open (it can reach the
    /// hosts of `network.egress_allow`).
    pub fn egress_open(&self, name: &str) -> bool {
        self.proxies().contains_key(name)
    }

    fn proxies(&self) -> std::sync::MutexGuard<'_, HashMap<String, EgressProxy>> {
        self.egress.lock().unwrap_or_else(|p| p.into_inner())
    }
}
