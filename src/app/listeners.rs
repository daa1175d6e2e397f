//! What a service serves over HTTP: health and metrics, the console, Quo's contact and activity
//! webhooks and the CRM's change signals, on one port or two.

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::ledger::Ledger;
use crate::ops::http::ReplicaRole;
use crate::ops::listener::ListenerLimits;
use crate::ops::live::ServiceStatus;
use crate::source::Source;

use super::AppError;

/// The operator console's routes when `service.console` is on (empty otherwise).
pub(super) fn console_routes(config: &Config, ledger: &Ledger, wake: &Arc<Notify>) -> axum::Router {
    if !config.service.console || config.service.listen.is_none() {
        return axum::Router::new();
    }
    crate::ops::console::routes(
        crate::ops::console::Console::new(
            ledger.clone(),
            config.service.console_token.clone(),
            wake.clone(),
            crate::ops::console::ServiceInfo::always_leader(
                config.schedule.interval.0,
                config.quo.requests_per_second,
            ),
        )
        .listening_on(config.service.listen),
    )
}

/// The console of a replica: it shows leader or standby as `role` says.
pub(super) fn replica_console_routes(
    config: &Config,
    ledger: &Ledger,
    wake: &Arc<Notify>,
    role: &ReplicaRole,
) -> axum::Router {
    if !config.service.console || config.service.listen.is_none() {
        return axum::Router::new();
    }
    let role = role.clone();
    let mut info = crate::ops::console::ServiceInfo::always_leader(
        config.schedule.interval.0,
        config.quo.requests_per_second,
    );
    info.role = Arc::new(move || match role.leader_epoch() {
        Some(_) => crate::ops::console::Role::Leader,
        None => crate::ops::console::Role::Standby,
    });
    crate::ops::console::routes(
        crate::ops::console::Console::new(
            ledger.clone(),
            config.service.console_token.clone(),
            wake.clone(),
            info,
        )
        .listening_on(config.service.listen),
    )
}

/// Binds the health/metrics router and the webhook receiver (on one port or two).
pub(super) async fn start_listeners(
    config: &Config,
    ledger: &Ledger,
    source: &Arc<Source>,
    ops: axum::Router,
    wake: &Arc<Notify>,
    cancel: &CancellationToken,
    status: &ServiceStatus,
) -> Result<Vec<tokio::task::JoinHandle<()>>, AppError> {
    use crate::reverse::receiver::Receiver;
    // The contact webhook: with the configured secret, or with the key of the one quo-sync
    // registered itself (reverse.public_url).
    let contact_routes = |receiver: Receiver| crate::activity::contact_routes(config, receiver);
    let receiver = (config.reverse.enabled && config.reverse.listen.is_some()).then(|| Receiver {
        ledger: ledger.clone(),
        secret: config.reverse.webhook_secret.clone(),
        wake: wake.clone(),
        max_body_bytes: config.reverse.max_body_bytes,
        read_timeout: config.reverse.read_timeout.0,
        received: status.webhooks(),
    });
    let mut routers: Vec<(std::net::SocketAddr, axum::Router)> = Vec::new();
    if let Some(addr) = config.service.listen {
        let mut router = ops;
        if let Some(receiver) = receiver
            .clone()
            .filter(|_| config.reverse.listen == Some(addr))
        {
            router = router.merge(contact_routes(receiver));
        }
        routers.push((addr, router));
    }
    if let (Some(receiver), Some(addr)) = (receiver, config.reverse.listen)
        && config.service.listen != Some(addr)
    {
        let health = axum::routing::get(|| async { "ok\n" });
        routers.push((addr, contact_routes(receiver).route("/healthz", health)));
    }
    // Quo's call and message webhooks (activity logging), beside the contact webhooks.
    if let (Some(activity), Some(addr)) = (
        crate::activity::receiver_routes(config, ledger),
        config.reverse.listen.or(config.service.listen),
    ) {
        serve_beside(&mut routers, addr, activity);
    }
    // CRM change signals (CSV file watch, POST /webhooks/crm) wake the loop like Quo webhooks.
    let signals = crate::source::watch::Signals::start(
        source.clone(),
        config.source.watch,
        ledger.clone(),
        wake.clone(),
        cancel.clone(),
    )?;
    if let (Some(crm), Some(addr)) = (
        signals.webhook_routes(),
        config.reverse.listen.or(config.service.listen),
    ) {
        serve_beside(&mut routers, addr, crm);
    }
    let mut servers = bind(config, routers, cancel).await?;
    // The file watcher lives as long as the listeners (it stops when dropped).
    let until = cancel.clone();
    servers.push(tokio::spawn(async move {
        until.cancelled().await;
        drop(signals);
    }));
    Ok(servers)
}

/// Serves `router` on the listener for `addr`: beside what it already serves, or on a new one.
fn serve_beside(
    routers: &mut Vec<(std::net::SocketAddr, axum::Router)>,
    addr: std::net::SocketAddr,
    router: axum::Router,
) {
    match routers.iter_mut().find(|(a, _)| *a == addr) {
        Some((_, existing)) => *existing = existing.clone().merge(router),
        None => routers.push((addr, router)),
    }
}

/// Binds every listener (a port that cannot be bound stops the service) and serves it until
/// `cancel` fires.
async fn bind(
    config: &Config,
    routers: Vec<(std::net::SocketAddr, axum::Router)>,
    cancel: &CancellationToken,
) -> Result<Vec<tokio::task::JoinHandle<()>>, AppError> {
    let mut servers = Vec::new();
    for (addr, router) in routers {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| AppError::Listen {
                addr,
                reason: e.to_string(),
            })?;
        info!(event = "listener_started", addr = %addr, "HTTP listener started");
        servers.push(tokio::spawn(crate::ops::listener::serve(
            listener,
            router,
            ListenerLimits::from_config(&config.service),
            cancel.clone(),
        )));
    }
    Ok(servers)
}
