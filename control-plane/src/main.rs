//! `control-plane`: serve the admin API and the config feed, or run migrations.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::{Args, Parser, Subcommand};
use rand::distr::{Alphanumeric, SampleString};
use tollgate_control_plane::egress::Targets;
use tollgate_control_plane::leak_signatures::VerificationKeys;
use tollgate_control_plane::retention::RetentionArgs;
use tollgate_control_plane::sealing::Sealer;
use tollgate_control_plane::shares::Role;
use tollgate_control_plane::throttle::{Rate, ThrottleConfig, DEFAULT_MAX_ENTRIES};
use tollgate_control_plane::tls::{self, CertificateFiles, Https};
use tollgate_control_plane::{
    allocation, app, db, outage, replicas, retention, store, webhooks, AppState,
};

#[derive(Parser)]
#[command(name = "control-plane", about = "Tollgate control plane", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

// Parsed once, at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the admin API and the config feed (the default).
    Serve(ServeArgs),
    /// Create or upgrade the database schema, then exit.
    Migrate(DbArgs),
    /// Create the preset plans (Free, Pro, Business, Enterprise) whose names are free.
    Seed(SeedArgs),
}

#[derive(Args, Clone)]
struct SeedArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Do nothing unless the database has no plans at all.
    #[arg(long)]
    if_empty: bool,
}

#[derive(Args, Clone)]
struct DbArgs {
    /// Directory for the SQLite database (used when --database-url is not given).
    #[arg(long, env = "CONTROL_PLANE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Database URL: sqlite:///var/lib/tollgate/tollgate.db, or
    /// postgres://user:password@host/db to let several replicas share one database.
    #[arg(long, env = "CONTROL_PLANE_DATABASE_URL")]
    database_url: Option<String>,
}

#[derive(Args, Clone)]
struct ServeArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Address to listen on.
    #[arg(long, env = "CONTROL_PLANE_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Where the other replicas reach this one (on PostgreSQL, the replica
    /// that allocates fleet-wide shares is reached there); by default
    /// `http://<addr>`, which serves only when the replicas share a host.
    #[arg(long, env = "CONTROL_PLANE_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Bearer token for the admin API; generated and printed once when unset.
    #[arg(long, env = "CONTROL_PLANE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Bearer token Envoys use for /v1/sync; generated and printed once when unset.
    #[arg(long, env = "CONTROL_PLANE_SYNC_TOKEN", hide_env_values = true)]
    sync_token: Option<String>,
    /// Admin API requests per minute allowed per bearer token (sustained rate),
    /// on everything under /v1 but the Envoys' /v1/sync and /v1/usage. Over it:
    /// 429 admin_rate_limited with Retry-After. 0 turns the per-token limit off.
    #[arg(
        long,
        env = "CONTROL_PLANE_ADMIN_RATE_PER_TOKEN",
        default_value_t = ThrottleConfig::DEFAULT_PER_TOKEN.per_minute
    )]
    admin_rate_per_token: u64,
    /// Burst per token: requests one token may send at once; its allowance
    /// then refills at the per-minute rate.
    #[arg(
        long,
        env = "CONTROL_PLANE_ADMIN_BURST_PER_TOKEN",
        default_value_t = ThrottleConfig::DEFAULT_PER_TOKEN.burst,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    admin_burst_per_token: u64,
    /// Admin API requests per minute allowed per client address (IPv6 per /64),
    /// with a missing or wrong token too, and on the public /v1/catalog. Behind
    /// a reverse proxy every client has the proxy's address. 0 turns it off.
    #[arg(
        long,
        env = "CONTROL_PLANE_ADMIN_RATE_PER_IP",
        default_value_t = ThrottleConfig::DEFAULT_PER_IP.per_minute
    )]
    admin_rate_per_ip: u64,
    /// Burst per client address: requests it may send at once; its allowance
    /// then refills at the per-minute rate.
    #[arg(
        long,
        env = "CONTROL_PLANE_ADMIN_BURST_PER_IP",
        default_value_t = ThrottleConfig::DEFAULT_PER_IP.burst,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    admin_burst_per_ip: u64,
    /// Bearer token Prometheus must send for GET /metrics. Unset: /metrics is
    /// open (it carries counts by route template, never tenant data).
    #[arg(long, env = "CONTROL_PLANE_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// Bearer token a secret scanner sends with POST /v1/leaked-keys, the one
    /// endpoint it opens (the admin token works there too). Unset: leak
    /// reports need the admin token.
    #[arg(long, env = "CONTROL_PLANE_LEAK_REPORT_TOKEN", hide_env_values = true)]
    leak_report_token: Option<String>,
    /// GitHub's secret-scanning public keys (the JSON document of
    /// https://api.github.com/meta/public_keys/secret_scanning, saved to a
    /// file): leak reports signed by one of them are taken without a token.
    /// Read at start. Unset: signed reports are refused.
    #[arg(long, env = "CONTROL_PLANE_LEAK_REPORT_KEYS_FILE")]
    leak_report_keys_file: Option<PathBuf>,
    /// The key webhook signing secrets are sealed with at rest: 64 hex
    /// digits (`openssl rand -hex 32`). Unset: they are stored in clear.
    #[arg(long, env = "CONTROL_PLANE_SECRETS_KEY", hide_env_values = true)]
    secrets_key: Option<String>,
    /// Keys secrets were sealed with before a rotation, comma-separated:
    /// what they sealed is sealed again under the current key at start.
    #[arg(long, env = "CONTROL_PLANE_SECRETS_OLD_KEYS", hide_env_values = true)]
    secrets_old_keys: Option<String>,
    /// `true` lets webhooks go to loopback, private (RFC 1918, fc00::/7),
    /// link-local (169.254.0.0/16 with cloud metadata, fe80::/10), CGNAT and
    /// other internal addresses, and to `localhost`; `false` (the default)
    /// refuses them when the URL is set and when an alert is sent. Only
    /// `true` or `false`.
    #[arg(
        long,
        env = "CONTROL_PLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS",
        value_name = "true|false",
        default_value = "false",
        action = clap::ArgAction::Set,
        value_parser = true_or_false
    )]
    webhook_allow_private_targets: bool,
    /// The certificate to serve HTTPS with: a PEM file, the leaf first, then
    /// its intermediates. With the key file set too the control plane serves
    /// HTTPS only; both are read again every second and a changed pair that
    /// loads is served to new connections. Neither set: plain HTTP.
    #[arg(long, env = "CONTROL_PLANE_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// The certificate's private key: a PEM file (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "CONTROL_PLANE_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// CA certificates (PEM) trusted besides the public roots when this
    /// replica forwards to the one that allocates over https:// (the CA
    /// that signed the replicas' certificates).
    #[arg(long, env = "CONTROL_PLANE_TLS_PEER_CA_FILE")]
    tls_peer_ca_file: Option<PathBuf>,
    /// The name each replica's certificate is checked for when forwarding,
    /// instead of the host in its advertised URL (on Kubernetes a pod IP,
    /// which no certificate names; the Service's name, which all do).
    /// Needs CONTROL_PLANE_TLS_PEER_CA_FILE.
    #[arg(long, env = "CONTROL_PLANE_TLS_PEER_NAME")]
    tls_peer_name: Option<String>,
    #[command(flatten)]
    retention: RetentionArgs,
}

/// A switch's value, strictly: a typo such as `ture` or `yes` must stop the
/// start rather than quietly leave the switch as it was.
fn true_or_false(text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("expected `true` or `false`, got {other:?}")),
    }
}

impl ServeArgs {
    fn throttle(&self) -> ThrottleConfig {
        ThrottleConfig {
            per_token: Rate::new(self.admin_rate_per_token, self.admin_burst_per_token),
            per_ip: Rate::new(self.admin_rate_per_ip, self.admin_burst_per_ip),
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }
}

impl DbArgs {
    async fn open(&self) -> anyhow::Result<db::Db> {
        let url = match &self.database_url {
            Some(url) => url.clone(),
            None => {
                std::fs::create_dir_all(&self.data_dir).with_context(|| {
                    format!("cannot create data directory {}", self.data_dir.display())
                })?;
                format!("sqlite://{}/tollgate.db", self.data_dir.display())
            }
        };
        let pool = db::connect(&url)
            .await
            .with_context(|| "cannot open the database")?;
        db::migrate(&pool)
            .await
            .with_context(|| "cannot migrate the database")?;
        Ok(pool)
    }
}

fn token_or_generate(given: Option<String>, what: &str, prefix: &str) -> anyhow::Result<String> {
    match given {
        Some(token) if token.trim().len() >= 16 => Ok(token.trim().to_owned()),
        Some(_) => anyhow::bail!("the {what} must be at least 16 characters"),
        None => {
            let token = format!(
                "{prefix}{}",
                Alphanumeric.sample_string(&mut rand::rng(), 40)
            );
            // Printed once, to stdout only, never logged.
            println!("{what} (shown once): {token}");
            Ok(token)
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let command = match Cli::parse().command {
        Some(command) => command,
        // Bare `control-plane` serves, with flags from the environment.
        None => Cli::parse_from(["control-plane", "serve"])
            .command
            .context("no command")?,
    };
    match command {
        Command::Migrate(args) => {
            args.open().await?;
            tracing::info!("database is up to date");
            Ok(())
        }
        Command::Serve(args) => serve(args).await,
        Command::Seed(args) => {
            let pool = args.db.open().await?;
            let version = store::feed::current_version(&pool).await?;
            // Tokens are irrelevant here: nothing is served.
            let state = AppState::new(pool, "-", "-", version);
            let outcome = tollgate_control_plane::seed::seed(&state, args.if_empty)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.detail))?;
            if outcome.created.is_empty() {
                println!(
                    "seed: nothing to do (existing plans: {})",
                    outcome.skipped.join(", ")
                );
            } else {
                println!("seed: created {}", outcome.created.join(", "));
            }
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // Before the database is touched: a policy that would lose counts never runs.
    let retention = args.retention.policy().map_err(anyhow::Error::msg)?;
    let https = CertificateFiles::from_flags(args.tls_cert_file.clone(), args.tls_key_file.clone())
        .and_then(|files| files.map(Https::load).transpose())
        .map_err(anyhow::Error::msg)?;
    let scheme = if https.is_some() { "https" } else { "http" };
    let peer_ca = args
        .tls_peer_ca_file
        .as_deref()
        .map(|path| {
            std::fs::read(path).with_context(|| {
                format!(
                    "cannot read CONTROL_PLANE_TLS_PEER_CA_FILE {}",
                    path.display()
                )
            })
        })
        .transpose()?;
    let peer_client = tls::peer_client(peer_ca.as_deref(), args.tls_peer_name.as_deref())
        .map_err(anyhow::Error::msg)?;
    let pool = args.db.open().await?;
    let throttle = args.throttle();
    let admin_token = token_or_generate(args.admin_token, "admin token", "tgadmin_")?;
    let sync_token = token_or_generate(args.sync_token, "sync token", "tgsync_")?;
    let version = store::feed::current_version(&pool).await?;
    if args
        .metrics_token
        .as_deref()
        .is_some_and(|t| t.trim().len() < 16)
    {
        anyhow::bail!("the metrics token must be at least 16 characters");
    }
    let leak_report_token = args.leak_report_token.as_deref().map(str::trim);
    if let Some(token) = leak_report_token {
        if token.len() < 16 {
            anyhow::bail!("the leak-report token must be at least 16 characters");
        }
        // Equal to another token, it would open what that one opens.
        if token == admin_token || token == sync_token {
            anyhow::bail!("the leak-report token must differ from the admin and sync tokens");
        }
    }
    let leak_report_keys = args
        .leak_report_keys_file
        .as_deref()
        .map(VerificationKeys::load)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let sealer = Sealer::from_settings(
        args.secrets_key.as_deref(),
        args.secrets_old_keys.as_deref(),
    )
    .map_err(anyhow::Error::msg)?;
    if !sealer.seals() {
        tracing::warn!(
            "CONTROL_PLANE_SECRETS_KEY is not set: webhook signing secrets are stored in clear"
        );
    }
    let resealed = store::webhooks::reseal(&pool, &sealer)
        .await
        .map_err(anyhow::Error::msg)?;
    if resealed > 0 {
        tracing::info!(
            resealed,
            "webhook signing secrets sealed again under the current key"
        );
    }
    let targets = if args.webhook_allow_private_targets {
        tracing::warn!("webhooks may go to internal addresses (loopback, private, link-local)");
        Targets::Any
    } else {
        Targets::PublicOnly
    };
    let state = AppState::new(pool, &admin_token, &sync_token, version)
        .with_throttle(throttle)
        .with_metrics_token(args.metrics_token.as_deref().map(str::trim))
        .with_leak_report_token(leak_report_token)
        .with_leak_report_keys(leak_report_keys)
        .with_sealer(sealer)
        .with_webhook_targets(targets)
        .with_retention(retention);
    state.leasing.forward_with(&sync_token, peer_client);
    if let Some(url) = args.db.database_url.filter(|url| db::is_postgres_url(url)) {
        // Perhaps one of several replicas: none leases until it knows
        // whether it is the one that allocates.
        state.leasing.set_role(Role::Follower(String::new()));
        let advertise = args
            .advertise_url
            .unwrap_or_else(|| format!("{scheme}://{}", args.addr));
        tokio::spawn(allocation::contend(state.clone(), url.clone(), advertise));
        tokio::spawn(outage::watch(state.clone(), url.clone()));
        tokio::spawn(replicas::follow(state.clone(), url));
    } else {
        state
            .leasing
            .replace(allocation::fresh_allocator(&state).await?);
    }
    // Quota alerts: every replica runs the worker; events are claimed before sending.
    tokio::spawn(webhooks::run(state.clone()));
    tokio::spawn(retention::run(state.clone()));
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    tracing::info!(addr = %args.addr, scheme, config_version = version, "control plane listening");
    let shutting_down = state.shutting_down.clone();
    let stopping = async move {
        shutdown_signal().await;
        // Answer held long-polls now instead of making shutdown wait for them.
        shutting_down.send_replace(true);
    };
    // The peer address feeds the admin API's per-client rate limit.
    let app = app(state).into_make_service_with_connect_info::<SocketAddr>();
    match https {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopping)
                .await?
        }
        Some(https) => {
            // tap_io does nothing to the stream; it is the wrapper axum
            // knows how to read a custom listener's peer address through.
            let listener = https.listen(listener)?.tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(stopping)
                .await?
        }
    }
    tracing::info!("control plane stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let argv = ["control-plane", "serve"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Some(Command::Serve(serve)) => Ok(serve),
            _ => panic!("not serve"),
        }
    }

    #[test]
    fn private_webhook_targets_are_refused_unless_switched_on_with_true() {
        // Only when the variable is not set by whoever runs the tests.
        if std::env::var_os("CONTROL_PLANE_WEBHOOK_ALLOW_PRIVATE_TARGETS").is_none() {
            assert!(!serve(&[]).unwrap().webhook_allow_private_targets);
        }
        let flag = "--webhook-allow-private-targets";
        assert!(
            serve(&[flag, "true"])
                .unwrap()
                .webhook_allow_private_targets
        );
        assert!(
            !serve(&[flag, "false"])
                .unwrap()
                .webhook_allow_private_targets
        );
        assert!(
            serve(&["--webhook-allow-private-targets=true"])
                .unwrap()
                .webhook_allow_private_targets
        );
        for bad in ["yes", "1", "TRUE", "True", "on", "", " true"] {
            assert!(serve(&[flag, bad]).is_err(), "{bad:?}");
        }
        assert_eq!(true_or_false("true"), Ok(true));
        assert_eq!(true_or_false("false"), Ok(false));
        assert!(true_or_false("ture").is_err());
    }
}
