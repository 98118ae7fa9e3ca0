//! Settings: built-in defaults, overridden by an optional TOML file, overridden by environment
//! variables, overridden by command-line flags (clap reads the last two together).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use callflow_sip::driver::TcpLimits;
use callflow_sip::trunk::{REDACTED, TrunkSpec, Trunks};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub sip_addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Defaults to `sqlite://<data_dir>/callflow.db`.
    pub database_url: Option<String>,
    /// The externally reachable base URL; defaults to `http://<http_addr>`.
    pub public_url: Option<String>,
    pub log_format: LogFormat,
    pub api: ApiSettings,
    pub webhooks: WebhookSettings,
    pub sip: SipSettings,
    pub dispatch: DispatchSettings,
    pub metrics: MetricsSettings,
    pub plugins: PluginSettings,
    pub cluster: ClusterSettings,
    pub storage: StorageSettings,
    /// SIP trunks (`[[trunks]]`); validated at load, passwords redacted when printed.
    pub trunks: Vec<TrunkSpec>,
}

/// Where uploaded plugins and recordings are kept: the data folder, or S3-compatible object
/// storage that several nodes share (see docs/scaling.md). Credentials may also come from the
/// usual `AWS_*` environment variables.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// `s3://bucket` or `s3://bucket/prefix`; unset: the data folder.
    pub url: Option<String>,
    /// An S3-compatible server's address (MinIO, Ceph, …), e.g. `http://10.0.0.5:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    /// Printed as `***`.
    pub secret_access_key: Option<Secret>,
}

impl StorageSettings {
    /// The engine's view of these settings.
    pub fn engine(&self) -> callflow_engine::blobs::StorageConfig {
        callflow_engine::blobs::StorageConfig {
            url: self.url.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.as_ref().map(|s| s.0.clone()),
        }
    }
}

/// This node among several sharing one PostgreSQL database (see docs/scaling.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// The node's name, unique among the nodes of a database; defaults to the host name.
    pub node: Option<String>,
    /// Where the other nodes reach this node's API; defaults to `http://<http_addr>`.
    pub node_url: Option<String>,
    /// A node silent this long is taken for dead: the leader ends its calls.
    pub dead_after_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            node: None,
            node_url: None,
            dead_after_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CallerId {
    /// `From` must be one of the account's incoming numbers (Twilio's rule).
    Owned,
    /// Any `From` (the trunk operator vouches for caller IDs).
    Any,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    pub max_body_bytes: usize,
    /// Bound on a callout's participant upload (CSV or JSON); 64 MiB holds 200,000 rows with room.
    pub max_upload_bytes: usize,
    /// Requests per second per account; 0 turns the limit off.
    pub rate_limit: f64,
    /// Burst allowance; 0 means the same as `rate_limit` (at least 1).
    pub rate_limit_burst: f64,
    pub caller_id: CallerId,
    pub recordings_public: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipSettings {
    /// The address peers reach our SIP at (Via, Contact, SDP), when it is not `sip_addr`
    /// (behind NAT, or listening on 0.0.0.0).
    pub advertised_addr: Option<SocketAddr>,
    /// The RTP port range SDP answers and offers name.
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Let `<Dial><Sip>` call loopback and private addresses (labs, tests); by default a SIP
    /// URI must resolve to public addresses only, like webhooks.
    pub dial_private_uris: bool,
    /// Bounds on SIP over TCP (defaults from [`TcpLimits`]): connections open at once, ours
    /// included; inbound ones over it are closed at accept.
    pub tcp_max_connections: usize,
    /// Inbound TCP connections open at once from one IPv4 address or IPv6 /64.
    pub tcp_max_per_source: usize,
    /// A TCP connection that has not carried a complete message yet is closed after this long
    /// without one (RFC 5626 keep-alive pings restart the wait).
    pub tcp_new_idle_timeout_ms: u64,
    /// The same for a connection that has carried one: long, since a connection carrying
    /// calls may be quiet for minutes.
    pub tcp_idle_timeout_ms: u64,
    /// Once a message's first byte has arrived over TCP, the whole message must arrive within
    /// this time.
    pub tcp_message_timeout_ms: u64,
}

impl SipSettings {
    pub fn tcp_limits(&self) -> TcpLimits {
        TcpLimits {
            max_connections: self.tcp_max_connections,
            max_per_source: self.tcp_max_per_source,
            new_idle_timeout: Duration::from_millis(self.tcp_new_idle_timeout_ms),
            idle_timeout: Duration::from_millis(self.tcp_idle_timeout_ms),
            message_timeout: Duration::from_millis(self.tcp_message_timeout_ms),
        }
    }
}

impl Default for SipSettings {
    fn default() -> Self {
        let tcp = TcpLimits::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        SipSettings {
            advertised_addr: None,
            rtp_port_min: 10_000,
            rtp_port_max: 19_998,
            dial_private_uris: false,
            tcp_max_connections: tcp.max_connections,
            tcp_max_per_source: tcp.max_per_source,
            tcp_new_idle_timeout_ms: ms(tcp.new_idle_timeout),
            tcp_idle_timeout_ms: ms(tcp.idle_timeout),
            tcp_message_timeout_ms: ms(tcp.message_timeout),
        }
    }
}

/// Limits on outbound calling beyond each trunk's `cps` and `max_channels`; 0 means none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatchSettings {
    /// Outbound calls live at once, all accounts together.
    pub max_calls: usize,
    /// Calls each account may start per second (smooth, not in bursts).
    pub account_calls_per_second: f64,
    /// Outbound calls each account may have live at once.
    pub account_max_calls: usize,
}

/// The plugin threads and how accounts share them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSettings {
    /// Threads that run plugins; 0 means one per core plus one. A quarter of them (at least
    /// one) is kept for built-in plugins, and an account's uploaded plugins run on at most half
    /// of the rest (at least one).
    pub threads: usize,
    /// Invocations one account may have waiting for a thread (more are refused at once); 0
    /// means the default, 512.
    pub account_queued: usize,
}

impl PluginSettings {
    /// The runtime's scheduling for these settings.
    pub fn scheduling(&self) -> callflow_runtime::FairConfig {
        let defaults = callflow_runtime::RuntimeConfig::default().scheduling;
        let mut s = if self.threads == 0 {
            defaults
        } else {
            callflow_runtime::FairConfig::for_threads(self.threads)
        };
        if self.account_queued > 0 {
            s.account_queued = self.account_queued;
        }
        s
    }
}

/// Who may read `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSettings {
    /// When set, `/metrics` wants `Authorization: Bearer <token>`; when not, it is open (as
    /// before the setting existed). Also `CALLFLOW_METRICS_TOKEN`; printed as `***`.
    pub token: Option<Secret>,
}

/// A secret setting: `Debug` shows `***`, so it cannot reach a log through `{:?}`; serialised
/// as the plain string (`Config::redacted` replaces it before printing).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    pub connect_timeout_ms: u64,
    pub timeout_ms: u64,
    pub max_response_bytes: usize,
    /// Allow webhooks to loopback and private addresses.
    pub allow_private: bool,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub max_attempts: u32,
    /// A PEM file of certificate authorities trusted for HTTPS webhooks besides the built-in
    /// public roots (a private CA, or a test CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: ([127, 0, 0, 1], 8080).into(),
            sip_addr: ([127, 0, 0, 1], 5060).into(),
            data_dir: PathBuf::from("data"),
            database_url: None,
            public_url: None,
            log_format: LogFormat::Text,
            api: ApiSettings::default(),
            webhooks: WebhookSettings::default(),
            sip: SipSettings::default(),
            dispatch: DispatchSettings::default(),
            metrics: MetricsSettings::default(),
            plugins: PluginSettings::default(),
            cluster: ClusterSettings::default(),
            storage: StorageSettings::default(),
            trunks: Vec::new(),
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            max_body_bytes: 1 << 20,
            max_upload_bytes: 64 << 20,
            rate_limit: 0.0,
            rate_limit_burst: 0.0,
            caller_id: CallerId::Owned,
            recordings_public: true,
        }
    }
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            connect_timeout_ms: 5_000,
            timeout_ms: 15_000,
            max_response_bytes: 1 << 20,
            allow_private: false,
            retry_base_ms: 5_000,
            retry_max_ms: 3_600_000,
            max_attempts: 15,
            ca_file: None,
        }
    }
}

/// Flags, each also readable from its environment variable (clap gives flags precedence).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "CALLFLOW_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP API listen address.
    #[arg(long = "http", env = "CALLFLOW_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// SIP listen address.
    #[arg(long = "sip", env = "CALLFLOW_SIP_ADDR")]
    pub sip_addr: Option<SocketAddr>,
    /// Data directory (database, recordings, caches).
    #[arg(long = "data", env = "CALLFLOW_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL; SQLite in the data directory by default.
    #[arg(long, env = "CALLFLOW_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Externally reachable base URL, used in absolute URLs such as recording media.
    #[arg(long, env = "CALLFLOW_PUBLIC_URL")]
    pub public_url: Option<String>,
    #[arg(long, env = "CALLFLOW_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// API requests per second per account (0 = unlimited).
    #[arg(long, env = "CALLFLOW_API_RATE_LIMIT")]
    pub api_rate_limit: Option<f64>,
    #[arg(long, env = "CALLFLOW_CALLER_ID", value_enum)]
    pub caller_id: Option<CallerId>,
    /// Allow webhooks to loopback and private addresses.
    #[arg(long, env = "CALLFLOW_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: Option<bool>,
    #[arg(long, env = "CALLFLOW_WEBHOOK_TIMEOUT_MS")]
    pub webhook_timeout_ms: Option<u64>,
    #[arg(long, env = "CALLFLOW_WEBHOOK_RETRY_BASE_MS")]
    pub webhook_retry_base_ms: Option<u64>,
    #[arg(long, env = "CALLFLOW_WEBHOOK_RETRY_MAX_MS")]
    pub webhook_retry_max_ms: Option<u64>,
    /// PEM file of extra certificate authorities trusted for HTTPS webhooks.
    #[arg(long, env = "CALLFLOW_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<PathBuf>,
    /// This node's name among the nodes sharing a database (`cluster.node`).
    #[arg(long = "node", env = "CALLFLOW_NODE")]
    pub node: Option<String>,
    /// Where plugins and recordings are kept (`storage.url`: `s3://bucket/prefix`).
    #[arg(long = "storage-url", env = "CALLFLOW_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// An S3-compatible server's address (`storage.endpoint`).
    #[arg(long = "storage-endpoint", env = "CALLFLOW_STORAGE_ENDPOINT")]
    pub storage_endpoint: Option<String>,
    /// `metrics.token` from `CALLFLOW_METRICS_TOKEN`: environment only, no flag (flags show up
    /// in `ps`), so clap skips it and reads the variable itself.
    #[arg(skip = std::env::var("CALLFLOW_METRICS_TOKEN").ok().map(Secret))]
    pub metrics_token: Option<Secret>,
}

impl Config {
    /// Defaults, then the file named by `o.config` (if any), then `o`.
    pub fn load(o: &Overrides) -> anyhow::Result<Config> {
        let mut c = match &o.config {
            Some(path) => Self::from_file(path)?,
            None => Config::default(),
        };
        c.apply(o);
        c.validate()?;
        Ok(c)
    }

    fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn apply(&mut self, o: &Overrides) {
        fn set<T: Clone>(field: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *field = v.clone();
            }
        }
        set(&mut self.http_addr, &o.http_addr);
        set(&mut self.sip_addr, &o.sip_addr);
        set(&mut self.data_dir, &o.data_dir);
        set(&mut self.log_format, &o.log_format);
        set(&mut self.api.rate_limit, &o.api_rate_limit);
        set(&mut self.api.caller_id, &o.caller_id);
        set(&mut self.webhooks.allow_private, &o.webhook_allow_private);
        set(&mut self.webhooks.timeout_ms, &o.webhook_timeout_ms);
        set(&mut self.webhooks.retry_base_ms, &o.webhook_retry_base_ms);
        set(&mut self.webhooks.retry_max_ms, &o.webhook_retry_max_ms);
        if o.webhook_ca_file.is_some() {
            self.webhooks.ca_file = o.webhook_ca_file.clone();
        }
        if o.database_url.is_some() {
            self.database_url = o.database_url.clone();
        }
        if o.public_url.is_some() {
            self.public_url = o.public_url.clone();
        }
        if o.node.is_some() {
            self.cluster.node = o.node.clone();
        }
        if o.storage_url.is_some() {
            self.storage.url = o.storage_url.clone();
        }
        if o.storage_endpoint.is_some() {
            self.storage.endpoint = o.storage_endpoint.clone();
        }
        if o.metrics_token.is_some() {
            self.metrics.token = o.metrics_token.clone();
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        if !(self.api.rate_limit >= 0.0 && self.api.rate_limit.is_finite()) {
            bail!("api.rate_limit must be a non-negative number");
        }
        if self.api.max_body_bytes < 1024 {
            bail!("api.max_body_bytes must be at least 1024");
        }
        if self.api.max_upload_bytes < self.api.max_body_bytes {
            bail!("api.max_upload_bytes must be at least api.max_body_bytes");
        }
        if self.webhooks.max_attempts == 0 {
            bail!("webhooks.max_attempts must be at least 1");
        }
        if self.plugins.threads == 1 || self.plugins.threads > 1024 {
            bail!("plugins.threads must be 0 (one per core plus one) or 2 to 1024");
        }
        let sip = &self.sip;
        if sip.tcp_max_connections == 0 || sip.tcp_max_per_source == 0 {
            bail!("sip.tcp_max_connections and sip.tcp_max_per_source must be at least 1");
        }
        if sip.tcp_new_idle_timeout_ms == 0
            || sip.tcp_idle_timeout_ms == 0
            || sip.tcp_message_timeout_ms == 0
        {
            bail!("sip.tcp_*_timeout_ms must be at least 1");
        }
        if let Some(url) = &self.database_url
            && !url.starts_with("sqlite:")
            && !callflow_store::is_postgres(url)
        {
            bail!(
                "database_url {:?}: sqlite: or postgres:// URLs only",
                redact_url_password(url)
            );
        }
        if let Some(node) = &self.cluster.node
            && (node.is_empty()
                || node.len() > 64
                || !node
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
        {
            bail!("cluster.node {node:?}: 1 to 64 letters, digits, '-', '_' or '.'");
        }
        if let Some(url) = &self.storage.url
            && !url.starts_with("s3://")
        {
            bail!(
                "storage.url {url:?}: s3://bucket or s3://bucket/prefix (unset: the data folder)"
            );
        }
        if let Some(endpoint) = &self.storage.endpoint
            && !endpoint.starts_with("http://")
            && !endpoint.starts_with("https://")
        {
            bail!("storage.endpoint {endpoint:?}: an http:// or https:// address");
        }
        if self.cluster.dead_after_ms < 2_000 {
            bail!("cluster.dead_after_ms must be at least 2000 (nodes beat every second)");
        }
        // the error never quotes the token
        if let Some(token) = &self.metrics.token
            && (token.0.is_empty() || !token.0.bytes().all(|b| b.is_ascii_graphic()))
        {
            bail!("metrics.token must be printable ASCII without spaces, and not empty");
        }
        Trunks::new(self.trunks.clone()).context("invalid [[trunks]]")?;
        Ok(())
    }

    /// A copy fit for printing: trunk passwords and the metrics token replaced by `***`.
    pub fn redacted(&self) -> Config {
        Config {
            trunks: self.trunks.iter().map(TrunkSpec::redacted).collect(),
            metrics: MetricsSettings {
                token: self.metrics.token.as_ref().map(|_| Secret(REDACTED.into())),
            },
            database_url: self.database_url.as_deref().map(redact_url_password),
            storage: StorageSettings {
                secret_access_key: self
                    .storage
                    .secret_access_key
                    .as_ref()
                    .map(|_| Secret(REDACTED.into())),
                ..self.storage.clone()
            },
            ..self.clone()
        }
    }

    /// The database to open: `database_url` when set (`sqlite:` or `postgres://`), else
    /// `callflow.db` in the data directory.
    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.data_dir.join("callflow.db").display()))
    }

    /// This node's name: `cluster.node`, else the host name.
    pub fn node_name(&self) -> String {
        self.cluster.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "callflow".into())
        })
    }

    /// Where the other nodes reach this node's API.
    pub fn node_url(&self) -> String {
        self.cluster
            .node_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.http_addr))
    }

    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.http_addr))
    }
}

/// `url` with the password of its user part (`scheme://user:password@host`) replaced by `***`.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{REDACTED}@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callflow.toml");
        std::fs::write(
            &path,
            "http_addr = \"127.0.0.1:9000\"\ndata_dir = \"/srv/cf\"\n[webhooks]\nallow_private = true\ntimeout_ms = 70000\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(path),
            http_addr: Some("127.0.0.1:9001".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::load(&o).unwrap();
        assert_eq!(c.http_addr.port(), 9001, "flag beats file");
        assert_eq!(c.data_dir, PathBuf::from("/srv/cf"), "file beats default");
        assert!(c.webhooks.allow_private);
        assert_eq!(c.webhooks.timeout_ms, 70_000);
        assert_eq!(c.sip_addr.port(), 5060, "default stays");
        assert_eq!(c.database_url(), "sqlite:///srv/cf/callflow.db");
        assert_eq!(c.public_url(), "http://127.0.0.1:9001");
    }

    #[test]
    fn a_postgres_url_is_accepted_and_its_password_never_printed() {
        let o = Overrides {
            database_url: Some("postgres://cf:s3cret-pw@db.example:5432/callflow".into()),
            ..Default::default()
        };
        let c = Config::load(&o).unwrap();
        assert_eq!(
            c.database_url(),
            "postgres://cf:s3cret-pw@db.example:5432/callflow"
        );
        let shown = format!("{:?}", c.redacted());
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(shown.contains("postgres://cf:"), "{shown}");
        let o = Overrides {
            database_url: Some("mysql://cf:s3cret-pw@db.example/callflow".into()),
            ..Default::default()
        };
        let e = format!("{:#}", Config::load(&o).unwrap_err());
        assert!(e.contains("postgres://") && !e.contains("s3cret-pw"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "htp_addr = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(&Overrides {
            config: Some(path.clone()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("htp_addr"), "{err:#}");
        std::fs::write(&path, "[api]\nrate_limit = -1\n").unwrap();
        assert!(
            Config::load(&Overrides {
                config: Some(path),
                ..Default::default()
            })
            .is_err()
        );
        let other = Overrides {
            database_url: Some("mysql://x".into()),
            ..Default::default()
        };
        assert!(Config::load(&other).is_err());
    }

    const TWO_TRUNKS: &str = r#"
[[trunks]]
name = "carrier"
host = "sip.carrier.example"
username = "acct"
password = "trunk-secret"
cps = 5
inbound_sources = ["192.0.2.0/24", "2001:db8::/32"]
default = true
dial = { plus = "strip", rewrite = [{ prefix = "+855", replace = "0" }] }

[[trunks]]
name = "pbx"
host = "10.0.0.2"
transport = "tcp"
"#;

    fn load_text(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callflow.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&Overrides {
            config: Some(path),
            ..Default::default()
        })
    }

    #[test]
    fn trunks_load_and_print_redacted() {
        let c = load_text(TWO_TRUNKS).unwrap();
        let names: Vec<&str> = c.trunks.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["carrier", "pbx"]);
        assert_eq!(c.trunks[0].cps, 5.0);
        assert_eq!(c.trunks[0].password.as_deref(), Some("trunk-secret"));
        assert_eq!(c.trunks[1].port, 5060);
        assert!(Config::default().trunks.is_empty());

        // what `callflow config` prints: no password, and it loads back as the same settings
        let printed = toml::to_string_pretty(&c.redacted()).unwrap();
        assert!(!printed.contains("trunk-secret"), "{printed}");
        assert!(printed.contains("password = \"***\""), "{printed}");
        let back: Config = toml::from_str(&printed).unwrap();
        assert_eq!(back, c.redacted());
        assert!(!format!("{c:?}").contains("trunk-secret"));
    }

    #[test]
    fn the_metrics_token_loads_is_overridden_by_the_environment_and_prints_redacted() {
        assert_eq!(Config::default().metrics.token, None, "open by default");
        let c = load_text("[metrics]\ntoken = \"file-s3cret\"\n").unwrap();
        assert_eq!(
            c.metrics.token.as_ref().map(Secret::expose),
            Some("file-s3cret")
        );

        // what `callflow config` prints: no token, and it loads back as the same settings
        let printed = toml::to_string_pretty(&c.redacted()).unwrap();
        assert!(!printed.contains("file-s3cret"), "{printed}");
        assert!(printed.contains("[metrics]\ntoken = \"***\""), "{printed}");
        let back: Config = toml::from_str(&printed).unwrap();
        assert_eq!(back, c.redacted());
        assert!(!format!("{c:?}").contains("file-s3cret"));

        // CALLFLOW_METRICS_TOKEN (read by clap into the overrides) beats the file
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callflow.toml");
        std::fs::write(&path, "[metrics]\ntoken = \"file-s3cret\"\n").unwrap();
        let o = Overrides {
            config: Some(path),
            metrics_token: Some(Secret::from("env-s3cret".to_owned())),
            ..Default::default()
        };
        assert!(!format!("{o:?}").contains("env-s3cret"));
        let c = Config::load(&o).unwrap();
        assert_eq!(
            c.metrics.token.as_ref().map(Secret::expose),
            Some("env-s3cret")
        );
    }

    #[test]
    fn bad_metrics_tokens_are_refused_without_quoting_them() {
        for bad in ["", "two words", "tab\\there"] {
            let err = load_text(&format!("[metrics]\ntoken = \"{bad}\"\n")).unwrap_err();
            let err = format!("{err:#}");
            assert!(
                err.contains("metrics.token must be printable ASCII"),
                "{err}"
            );
            if !bad.is_empty() {
                assert!(!err.contains(bad), "{err}");
            }
        }
        let err = format!("{:#}", load_text("[metrics]\ntokn = \"x\"\n").unwrap_err());
        assert!(err.contains("tokn"), "{err}");
    }

    #[test]
    fn bad_trunks_are_refused_naming_the_trunk() {
        let dup = format!("{TWO_TRUNKS}\n[[trunks]]\nname = \"pbx\"\nhost = \"10.0.0.3\"\n");
        let err = format!("{:#}", load_text(&dup).unwrap_err());
        assert!(err.contains("two trunks are named \"pbx\""), "{err}");
        let cidr = TWO_TRUNKS.replace("192.0.2.0/24", "192.0.2.0/33");
        let err = format!("{:#}", load_text(&cidr).unwrap_err());
        assert!(
            err.contains("trunk \"carrier\": inbound_sources entry \"192.0.2.0/33\""),
            "{err}"
        );
    }

    #[test]
    fn sip_tcp_limits_default_to_the_stacks_and_load_from_the_file() {
        assert_eq!(Config::default().sip.tcp_limits(), TcpLimits::default());
        let c = load_text(
            "[sip]\ntcp_max_connections = 100\ntcp_max_per_source = 5\n\
             tcp_new_idle_timeout_ms = 1000\ntcp_idle_timeout_ms = 2000\n\
             tcp_message_timeout_ms = 300\n",
        )
        .unwrap();
        assert_eq!(
            c.sip.tcp_limits(),
            TcpLimits {
                max_connections: 100,
                max_per_source: 5,
                new_idle_timeout: Duration::from_millis(1_000),
                idle_timeout: Duration::from_millis(2_000),
                message_timeout: Duration::from_millis(300),
            }
        );
        for bad in ["tcp_max_per_source = 0", "tcp_message_timeout_ms = 0"] {
            let err = format!("{:#}", load_text(&format!("[sip]\n{bad}\n")).unwrap_err());
            assert!(err.contains("must be at least 1"), "{err}");
        }
        let err = format!(
            "{:#}",
            load_text("[sip]\ntcp_max_conections = 1\n").unwrap_err()
        );
        assert!(err.contains("tcp_max_conections"), "{err}");
    }

    #[test]
    fn plugin_threads_default_to_the_cores_and_load_from_the_file() {
        assert_eq!(
            Config::default().plugins.scheduling(),
            callflow_runtime::RuntimeConfig::default().scheduling
        );
        let c = load_text("[plugins]\nthreads = 8\naccount_queued = 16\n").unwrap();
        let s = c.plugins.scheduling();
        assert_eq!(
            (s.threads, s.reserved, s.account_running, s.account_queued),
            (8, 2, 3, 16)
        );
        for bad in ["threads = 1", "threads = 5000"] {
            let err = format!(
                "{:#}",
                load_text(&format!("[plugins]\n{bad}\n")).unwrap_err()
            );
            assert!(err.contains("plugins.threads"), "{err}");
        }
    }
}
