//! The command line. Every flag can also be set by the `PUM_*` environment variable named in its
//! help.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use pum_shared::Limits;
use pum_shared::ratelimit::RateLimit;

use crate::server::HttpLimits;

/// pum: real-user monitoring for Prometheus.
///
/// Web pages push measurements to an ingest (`POST /record`); pum validates each push against an
/// allowlist, aggregates it exactly and serves the totals on `/metrics` for Prometheus.
#[derive(Debug, Parser)]
#[command(
    name = "pum-collector",
    version,
    propagate_version = true,
    after_help = "Examples:\n  pum-collector standalone                      # demo page on http://127.0.0.1:3000/, metrics on :9102\n  pum-collector standalone --config allowlist/  # your own allowlist (a file or a directory of *.json)\n  pum-collector check-config --config allowlist/\n  pum-collector serve --source cloudflare --url https://pum.example.workers.dev --token $PUM_EXPORT_TOKEN\n  pum-collector serve --source dynamodb --table pum-aggregates --region eu-west-1"
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ingest, embedded store and /metrics in one process (the local default, and a drop-in for
    /// the original aggregator).
    Standalone(StandaloneArgs),
    /// Read aggregates from an edge deployment's store and serve them on /metrics.
    Serve(ServeArgs),
    /// Check an allowlist and the push limits as standalone would run them, and print what the
    /// allowlist allows; exits 1 naming the file, metric and field (or the flag) of the first
    /// error.
    CheckConfig(CheckConfigArgs),
}

/// Flags of `check-config`: the allowlist and the push limits it is checked with.
#[derive(Debug, Args, Clone)]
pub struct CheckConfigArgs {
    /// The allowlist.
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Push limits.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Where the allowlist comes from.
#[derive(Debug, Args, Clone)]
pub struct ConfigArgs {
    /// Allowlist: a JSON file or a directory of *.json files, each {"allowedMetrics": [...]}.
    /// Without it, pum runs on its built-in example allowlist (the demo page's metrics).
    #[arg(long, env = "PUM_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Whether to allow the built-in browser pack too (navigation timing and Core Web Vitals
    /// metrics sent by pum's client): true or false.
    #[arg(
        long,
        env = "PUM_BROWSER_PACK",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub browser_pack: bool,

    /// The same as --browser-pack false.
    #[arg(long)]
    pub no_browser_pack: bool,
}

impl ConfigArgs {
    /// Reads and compiles the allowlist these flags name.
    pub fn load(&self) -> anyhow::Result<pum_shared::Allowlist> {
        let pack = self.browser_pack && !self.no_browser_pack;
        crate::standalone::load_allowlist(self.config.as_deref(), pack)
    }

    /// The allowlist, if `--config` names one (serve mode renders from the store's otherwise).
    pub fn load_given(&self) -> anyhow::Result<Option<pum_shared::Allowlist>> {
        self.config.as_ref().map(|_| self.load()).transpose()
    }
}

/// Flags of `standalone`.
#[derive(Debug, Args, Clone)]
pub struct StandaloneArgs {
    /// The allowlist.
    #[command(flatten)]
    pub config: ConfigArgs,

    /// Address for the public side: POST /record, the client script, the demo page, /healthz.
    #[arg(
        long,
        env = "PUM_INGEST_LISTEN",
        default_value = "127.0.0.1:3000",
        value_name = "ADDR"
    )]
    pub ingest_listen: SocketAddr,

    /// The Prometheus side.
    #[command(flatten)]
    pub metrics: MetricsArgs,

    /// Directory of the embedded store (created if missing; one process at a time).
    #[arg(
        long,
        env = "PUM_DATA_DIR",
        default_value = "pum-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// How often the store's log is fsynced: what a power loss can take at most (a crashed
    /// process loses nothing acknowledged). E.g. 1s, 250ms.
    #[arg(long, env = "PUM_SYNC_INTERVAL", default_value = "1s", value_parser = parse_duration, value_name = "DURATION")]
    pub sync_interval: Duration,

    /// Origins allowed to push, comma-separated (e.g. https://shop.example,https://www.shop.example);
    /// "*" allows any. Pushes from other origins are refused with 403 origin_not_allowed.
    #[arg(
        long,
        env = "PUM_ALLOWED_ORIGINS",
        default_value = "*",
        value_name = "LIST"
    )]
    pub allowed_origins: String,

    /// Push limits.
    #[command(flatten)]
    pub limits: LimitArgs,

    /// HTTP timeouts and bounds.
    #[command(flatten)]
    pub http: HttpArgs,

    /// Per-client rate limit.
    #[command(flatten)]
    pub rate: RateLimitArgs,
}

/// The per-client rate limit of pushes.
#[derive(Debug, Args, Clone)]
#[command(
    next_help_heading = "Rate limit (per client address; a push over it is answered 429 rate_limited)"
)]
pub struct RateLimitArgs {
    /// Sustained pushes a second one client address may send; 0 turns limiting off. A page
    /// pushes about once every 10 s, so 50 is about 500 open pages behind one address.
    #[arg(long, env = "PUM_RATE_LIMIT", default_value_t = RateLimit::default().per_second, value_name = "PER_SECOND")]
    pub rate_limit: f64,

    /// Pushes one address may send at once after a pause, before the sustained rate applies.
    #[arg(long, env = "PUM_RATE_BURST", default_value_t = RateLimit::default().burst, value_name = "N")]
    pub rate_burst: f64,

    /// Most client addresses tracked at once (16 bytes each); past it, the least recently
    /// limited are forgotten.
    #[arg(long, env = "PUM_RATE_LIMIT_CLIENTS", default_value_t = RateLimit::default().max_clients, value_name = "N")]
    pub rate_limit_clients: usize,

    /// Header naming the client behind a trusted reverse proxy or load balancer (e.g.
    /// X-Forwarded-For, X-Real-IP): its last address is the client's. Set it only when every
    /// push comes through that proxy, which must set or append the header; otherwise clients
    /// could name themselves. Without it, the connection's peer address is the client.
    #[arg(long, env = "PUM_CLIENT_IP_HEADER", value_name = "NAME", value_parser = parse_header_name)]
    pub client_ip_header: Option<axum::http::HeaderName>,
}

impl RateLimitArgs {
    /// The limit these flags set, checked; an error names the flag.
    pub fn limit(&self) -> Result<RateLimit, String> {
        let names = ["--rate-limit", "--rate-burst", "--rate-limit-clients"];
        RateLimit::from_vars(names, |name| {
            Some(match name {
                "--rate-limit" => self.rate_limit.to_string(),
                "--rate-burst" => self.rate_burst.to_string(),
                _ => self.rate_limit_clients.to_string(),
            })
        })
    }
}

fn parse_header_name(s: &str) -> Result<axum::http::HeaderName, String> {
    axum::http::HeaderName::from_bytes(s.trim().as_bytes())
        .map_err(|_| format!("{s:?} is not an HTTP header name"))
}

/// Timeouts and bounds of the HTTP listeners (see the `server` module).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "HTTP (timeouts and bounds for clients on the internet)")]
pub struct HttpArgs {
    /// Time a client has to send a whole request head (request line and headers), from its
    /// first byte, or from connecting; past it the connection is closed.
    #[arg(long, env = "PUM_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub header_timeout: Duration,

    /// Time a push body has to arrive whole once its head is read; past it the push is
    /// answered 408 body_timeout and the connection closed.
    #[arg(long, env = "PUM_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub body_timeout: Duration,

    /// Time a kept-alive connection may wait for its next request.
    #[arg(long, env = "PUM_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// Most connections the ingest keeps open at once. Past it, the connection that has waited
    /// longest without a request is closed to admit the new one, or the new one is answered 503
    /// when all are busy. /metrics has its own budget of 64. [default: three quarters of the
    /// open-file limit left after 128 reserved, at most 2048; logged at start]
    #[arg(long, env = "PUM_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Also serve HTTP/2 over cleartext (prior knowledge), with at most 16 streams per connection
    /// and 64 KiB windows. Off by default: browsers reach pum over HTTP/1.1 or through a proxy.
    #[arg(long, env = "PUM_HTTP2")]
    pub http2: bool,

    /// On SIGTERM or SIGINT: time requests in progress get to finish before they are dropped and
    /// the store is flushed. Keep it under Kubernetes' terminationGracePeriodSeconds (30 s).
    #[arg(long, env = "PUM_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub shutdown_timeout: Duration,
}

impl HttpArgs {
    /// The limits these flags set, with the default connection bound sized from `fd_limit`.
    pub fn limits(&self, fd_limit: Option<u64>) -> HttpLimits {
        let mut limits = HttpLimits::new(fd_limit);
        limits.header_timeout = self.header_timeout;
        limits.body_timeout = self.body_timeout;
        limits.idle_timeout = self.idle_timeout;
        limits.http2 = self.http2;
        limits.shutdown_timeout = self.shutdown_timeout;
        if let Some(n) = self.max_connections {
            limits.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
        }
        limits
    }
}

/// Where and how `/metrics` is served.
#[derive(Debug, Args, Clone)]
pub struct MetricsArgs {
    /// Address for the Prometheus side: GET /metrics.
    #[arg(
        long,
        env = "PUM_METRICS_LISTEN",
        default_value = "127.0.0.1:9102",
        value_name = "ADDR"
    )]
    pub metrics_listen: SocketAddr,

    /// Require "Authorization: Bearer TOKEN" on /metrics.
    #[arg(
        long,
        env = "PUM_METRICS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub metrics_token: Option<String>,
}

/// Which remote store `serve` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// The Cloudflare Worker's export endpoint (--url, --token).
    Cloudflare,
    /// The DynamoDB table the Lambda writes (--table, --region, --endpoint-url).
    Dynamodb,
}

/// Flags of `serve`.
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// The store to read.
    #[arg(long, env = "PUM_SOURCE", value_enum)]
    pub source: SourceKind,

    /// Not needed: every ingest stores the allowlist it validates with, and serve renders from
    /// that. Given, it is used first, and where it differs from the stored one the difference
    /// is logged, metric by metric.
    #[command(flatten)]
    pub config: ConfigArgs,

    /// The Prometheus side.
    #[command(flatten)]
    pub metrics: MetricsArgs,

    /// HTTP timeouts and bounds.
    #[command(flatten)]
    pub http: HttpArgs,

    /// How often the store is read. E.g. 5s, 500ms.
    #[arg(long, env = "PUM_REFRESH", default_value = "5s", value_parser = parse_duration, value_name = "DURATION")]
    pub refresh: Duration,

    /// Cloudflare: base URL of the Worker (its /export endpoint is read).
    #[arg(
        long,
        env = "PUM_URL",
        value_name = "URL",
        required_if_eq("source", "cloudflare")
    )]
    pub url: Option<String>,

    /// Cloudflare: the export token (the Worker's PUM_EXPORT_TOKEN secret).
    #[arg(
        long,
        env = "PUM_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        required_if_eq("source", "cloudflare")
    )]
    pub token: Option<String>,

    /// DynamoDB: the table name.
    #[arg(
        long,
        env = "PUM_TABLE",
        value_name = "NAME",
        required_if_eq("source", "dynamodb")
    )]
    pub table: Option<String>,

    /// DynamoDB: the AWS region (default: from the AWS environment, e.g. AWS_REGION).
    #[arg(long, env = "PUM_REGION", value_name = "REGION")]
    pub region: Option<String>,

    /// DynamoDB: endpoint override, e.g. a local DynamoDB-compatible server.
    #[arg(long, env = "PUM_DYNAMODB_ENDPOINT", value_name = "URL")]
    pub endpoint_url: Option<String>,
}

/// Push limits.
#[derive(Debug, Args, Clone)]
#[command(
    next_help_heading = "Push limits (a push over them is refused or its sample rejected, with a reason)"
)]
pub struct LimitArgs {
    /// Largest push body in bytes.
    #[arg(long, env = "PUM_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Most samples in one push. It bounds what one push can add to a total: start-up refuses
    /// limits under which 10^12 pushes could overflow one.
    #[arg(long, env = "PUM_MAX_SAMPLES", default_value_t = Limits::default().max_samples)]
    pub max_samples: usize,
    /// Most observations in one histogram sample. Start-up refuses one under which 10^12 pushes
    /// could overflow a bucket count (at most about 92,000 with 200 samples a push).
    #[arg(long, env = "PUM_MAX_OBSERVATIONS", default_value_t = Limits::default().max_observations)]
    pub max_observations: usize,
    /// Longest label value in bytes.
    #[arg(long, env = "PUM_MAX_LABEL_VALUE_LEN", default_value_t = Limits::default().max_label_value_len)]
    pub max_label_value_len: usize,
    /// Largest counter increment in one sample (a metric's maxValue overrides it). Start-up
    /// refuses one that 10^12 pushes could overflow a total with (at most about 1.7e18 with 200
    /// samples a push).
    #[arg(long, env = "PUM_MAX_INCREMENT", default_value_t = Limits::default().max_increment)]
    pub max_increment: f64,
    /// Largest histogram observation (a metric's maxValue overrides it). Start-up refuses one
    /// that 10^12 pushes could overflow a sum with (at most about 1.7e16 with 200 samples of 100
    /// observations a push).
    #[arg(long, env = "PUM_MAX_OBSERVATION", default_value_t = Limits::default().max_observation)]
    pub max_observation: f64,
}

impl LimitArgs {
    /// The limits these flags set, checked with `allowlist` ([`Limits::check`]: no total can
    /// overflow within a plausible number of pushes). An error about a limit names its flag.
    pub fn check(&self, allowlist: &pum_shared::Allowlist) -> anyhow::Result<Limits> {
        let limits = Limits::from(self);
        limits.check(allowlist).map_err(|e| match &e.field {
            Some(field) if e.source_name == pum_shared::limits::LIMITS_SOURCE => {
                anyhow::anyhow!("--{}: {}", field.replace('_', "-"), e.message)
            }
            _ => e.into(),
        })?;
        Ok(limits)
    }
}

impl From<&LimitArgs> for Limits {
    fn from(a: &LimitArgs) -> Self {
        Limits {
            max_body_bytes: a.max_body_bytes,
            max_samples: a.max_samples,
            max_observations: a.max_observations,
            max_label_value_len: a.max_label_value_len,
            max_increment: a.max_increment,
            max_observation: a.max_observation,
        }
    }
}

/// Parses `1s`, `250ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 1s or 250ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{s:?} must be more than 0 and at most 1 hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_limit_that_could_overflow_a_total_names_its_flag() {
        let cli = Cli::try_parse_from(["pum-collector", "check-config"]).expect("parses");
        let Command::CheckConfig(args) = cli.command else {
            panic!("check-config");
        };
        let allowlist = args.config.load().expect("the example allowlist");
        assert_eq!(
            args.limits.check(&allowlist).expect("the defaults pass"),
            Limits::default()
        );
        let standalone = Cli::command();
        let standalone = standalone
            .find_subcommand("standalone")
            .expect("standalone");
        for (flag, value) in [
            ("--max-increment", "1e20"),
            ("--max-observation", "1e18"),
            ("--max-observations", "100000"),
            ("--max-samples", "1000000000"),
        ] {
            let cli = Cli::try_parse_from(["pum-collector", "check-config", flag, value])
                .expect("parses");
            let Command::CheckConfig(args) = cli.command else {
                panic!("check-config");
            };
            let e = args.limits.check(&allowlist).expect_err(flag).to_string();
            assert!(e.starts_with(&format!("{flag}: ")), "{e}");
            let name = flag.trim_start_matches('-');
            assert!(
                standalone
                    .get_arguments()
                    .any(|a| a.get_long() == Some(name)),
                "standalone takes {flag}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
