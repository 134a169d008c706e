//! Fake providers that follow the services' documents (`shared/seeds/`),
//! quirks included, served over loopback HTTP. Used by the tests, the
//! benchmark, `docfetch sim` and `docfetch demo`. One module per provider,
//! named like the provider module it imitates.

pub mod atol;
pub mod fresh;
pub mod identity;
pub mod kontur_diadoc;
pub mod kontur_extern;
pub mod ofd;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `std::sync::Mutex` that shrugs off poisoning: a simulator's state stays
/// usable even if a handler panicked while holding it.
#[derive(Debug, Default)]
pub struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub fn new(value: T) -> Self {
        Mutex(std::sync::Mutex::new(value))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a simulator is reached (`http://127.0.0.1:PORT`), known only once
/// its listener is bound; each simulator builds its `base_url` on it.
#[derive(Debug, Default)]
pub struct Origin(Mutex<String>);

impl Origin {
    pub fn set(&self, origin: &str) {
        *self.0.lock() = origin.to_string();
    }

    pub fn get(&self) -> String {
        self.0.lock().clone()
    }
}

/// Settings for all simulated services.
#[derive(Debug, Clone, Default)]
pub struct SimConfig {
    pub fresh: fresh::FreshSimConfig,
    pub ofd: ofd::OfdSimConfig,
    pub atol: atol::AtolSimConfig,
    pub identity: identity::IdentitySimConfig,
    pub kontur_extern: kontur_extern::KonturExternSimConfig,
    pub kontur_diadoc: kontur_diadoc::KonturDiadocSimConfig,
}

/// A running simulator.
pub struct Sim {
    pub addr: SocketAddr,
    pub config: SimConfig,
    pub fresh: Arc<fresh::FreshSim>,
    pub ofd: Arc<ofd::OfdSim>,
    pub atol: Arc<atol::AtolSim>,
    pub identity: Arc<identity::IdentitySim>,
    pub kontur_extern: Arc<kontur_extern::KonturExternSim>,
    pub kontur_diadoc: Arc<kontur_diadoc::KonturDiadocSim>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Sim {
    /// Binds `addr` (use port 0 for any free port) and serves until stopped.
    pub async fn start(addr: SocketAddr, config: SimConfig) -> std::io::Result<Sim> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let origin = format!("http://{addr}");
        let fresh = fresh::FreshSim::new(config.fresh.clone());
        fresh.set_origin(&origin);
        // Each service gets its own origin path so their routes never clash.
        let ofd = ofd::OfdSim::new(config.ofd.clone());
        ofd.set_origin(&format!("{origin}{}", ofd::PREFIX));
        let atol = atol::AtolSim::new(config.atol.clone());
        atol.set_origin(&format!("{origin}{}", atol::PREFIX));
        let identity = identity::IdentitySim::new(config.identity.clone());
        identity.set_origin(&format!("{origin}{}", identity::PREFIX));
        let kontur_extern =
            kontur_extern::KonturExternSim::new(config.kontur_extern.clone(), identity.clone());
        kontur_extern.set_origin(&format!("{origin}{}", kontur_extern::PREFIX));
        let kontur_diadoc =
            kontur_diadoc::KonturDiadocSim::new(config.kontur_diadoc.clone(), identity.clone());
        kontur_diadoc.set_origin(&format!("{origin}{}", kontur_diadoc::PREFIX));
        let app = axum::Router::new()
            .merge(fresh.router())
            .nest(ofd::PREFIX, ofd.router())
            .nest(atol::PREFIX, atol.router())
            .nest(identity::PREFIX, identity.router())
            .nest(kontur_extern::PREFIX, kontur_extern.router())
            .nest(kontur_diadoc::PREFIX, kontur_diadoc.router());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "simulator stopped");
            }
        });
        Ok(Sim {
            addr,
            config,
            fresh,
            ofd,
            atol,
            identity,
            kontur_extern,
            kontur_diadoc,
            stop,
            task,
        })
    }

    /// Starts on a free loopback port.
    pub async fn start_local(config: SimConfig) -> std::io::Result<Sim> {
        Sim::start(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// A config snippet with one account per simulated service.
    pub fn accounts_toml(&self) -> String {
        let f = &self.config.fresh;
        let mut out = String::new();
        for (name, flow) in [("fresh-sim", "ibsession"), ("fresh-sim-plain", "plain")] {
            out.push_str(&format!(
                "[accounts.{name}]\nprovider = \"1c-fresh\"\nflow = \"{flow}\"\nbase_url = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\n\n",
                self.fresh.base_url(),
                f.username,
                f.password
            ));
        }
        let o = &self.config.ofd;
        out.push_str(&format!(
            "[accounts.ofd-sim]\nprovider = \"ofd-ru\"\nbase_url = \"{}\"\nlogin = \"{}\"\npassword = \"{}\"\n\n",
            self.ofd.base_url(),
            o.login,
            o.password
        ));
        let a = &self.config.atol;
        out.push_str(&format!(
            "[accounts.atol-sim]\nprovider = \"atol-kkt\"\nbase_url = \"{}\"\nlogin = \"{}\"\npassword = \"{}\"\n\n",
            self.atol.base_url(),
            a.login,
            a.password
        ));
        out.push_str(&self.kontur_extern.accounts_toml());
        out.push_str(&self.kontur_diadoc.accounts_toml());
        out
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
